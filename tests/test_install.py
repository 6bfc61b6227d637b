"""Installed from a wheel, outside the checkout, qkdops finds what it ships beside its code (the
default fleet, monitoring config, runbooks, alert rules and their templates, SLO specs) under ``<prefix>/share/qkdops`` (qkdops/assets.py),
never through the repository's layout: ``qkdops keyrate`` and ``qkdops up --config …`` run there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from stack_helpers import free_ports

ROOT = Path(__file__).resolve().parent.parent
SITE_PACKAGES = next(Path(sys.prefix).glob("lib/python3*/site-packages"))


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_runs_keyrate_and_up(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # the package alone, its dependencies from this environment (PYTHONPATH: no .pth, so not our editable install)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", str(ROOT)], check=True, timeout=600,
                   capture_output=True)
    share = venv / "share" / "qkdops"
    assert {p.name for p in share.iterdir()} == {"links.yaml", "monitoring.yaml", "alert_rules", "runbooks", "slo"}
    env = {**os.environ, "PYTHONPATH": str(SITE_PACKAGES)}
    env.pop("QKDOPS_ASSETS", None)
    work = tmp_path / "elsewhere"
    work.mkdir()
    # the rules render from the shipped templates, SLO specs and monitoring config (what `qkdops up` loads)
    rendered = subprocess.run([str(venv / "bin" / "python"), "-c", "from monitoring.config import load_monitoring_config as l; "
                               "from monitoring.rules import render_rule_files as r; print(*sorted(r(l())))"],
                              cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert rendered.stdout.split() == ["qkd-alerts.yml", "qkd-recording.yml", "qkd-slos.yml"], rendered.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import qkdops, qkdops.assets as a; print(qkdops.__file__, a.asset('runbooks'))"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert where[0].startswith(str(venv)) and where[1] == str(share / "runbooks")
    keyrate = subprocess.run([str(venv / "bin" / "qkdops"), "keyrate", "--protocol", "tf", "--distance-km", "300"], cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
    assert keyrate.returncode == 0 and "PLOB" in keyrate.stdout, keyrate.stderr

    raw = yaml.safe_load((ROOT / "links.yaml").read_text())
    control, device, pp, prom, am, sink, calibration, *kmes = free_ports(7 + 2 * len(raw["key_delivery"]["kmes"]))
    raw["runtime"].update(state_dir=str(tmp_path / "state"), control_port=control, device_exporter_port=device,
                          postprocessing_exporter_port=pp, prometheus_port=prom, alertmanager_port=am, pager_sink_port=sink,
                          calibration_exporter_port=calibration)
    for kme, port, skip_port in zip(raw["key_delivery"]["kmes"], kmes, kmes[len(kmes) // 2:]):
        kme.update(port=port, skip_port=skip_port)
    config = work / "links.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    up = subprocess.Popen([str(venv / "bin" / "qkdops"), "up", "--config", str(config), "--no-prometheus", "--duration", "60"],
                          cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, runbook = time.monotonic() + 60, None
        while runbook is None and time.monotonic() < deadline and up.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{control}/runbooks/QKDFiberCut", timeout=2) as response:
                    runbook = response.read().decode()
            except OSError:
                time.sleep(0.5)
        assert runbook == (ROOT / "runbooks" / "QKDFiberCut.md").read_text()   # served from share/qkdops/runbooks
    finally:
        up.terminate()
        out, _ = up.communicate(timeout=30)
    assert b"qkdops up: stopped" in out, out[-2000:]
