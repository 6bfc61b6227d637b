"""`qkdops up` / `qkdops status` failure modes: clear messages, exit codes, nothing left running."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from qkdops_cli import cli
from qkdops_cli.stack import KME_PROBE, SCHEDULER, write_up_file
from stack_helpers import RunningStack, e2e_profile


def _up(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "up", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def _up_with_port_taken(config: Path, port_key: str, *args: str) -> tuple[int, subprocess.CompletedProcess[str]]:
    """`qkdops up` while something else listens on the config's ``port_key``; (that port, the result)."""
    port = yaml.safe_load(config.read_text())["runtime"][port_key]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        return port, _up(config, *args)


def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path):
    config = e2e_profile(tmp_path)
    port, result = _up_with_port_taken(config, "device_exporter_port", "--no-prometheus")
    assert result.returncode == 1
    assert f"device exporter cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "state" / "up.json").exists()


def test_missing_prometheus_says_how_to_install_it(tmp_path: Path):
    config = e2e_profile(tmp_path)
    result = _up(config, env={**os.environ, "PATH": str(tmp_path / "empty-bin")})
    assert result.returncode == 1
    assert "prometheus not found on PATH" in result.stderr and "scripts/setup.sh" in result.stderr


def test_status_reports_not_running_then_every_endpoint_and_link(tmp_path: Path):
    config = e2e_profile(tmp_path)
    status = [sys.executable, "-m", "qkdops_cli.cli", "status", "--config", str(config)]
    assert subprocess.run(status, capture_output=True, text=True, timeout=30).returncode == 3
    stack = RunningStack(config, "--no-prometheus", "--duration", "30")
    try:
        stack.wait_up(30)
        result = subprocess.run(status, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout
        assert "control_api" in result.stdout and "link metro-bb84" in result.stdout
        assert any(line.split()[:2] == ["pager_sink", "up"] for line in result.stdout.splitlines()), result.stdout
        # no Prometheus of its own, so no scheduler either: listed as left out, not as down
        assert any(line.split() == [SCHEDULER, "off", "(--no-prometheus)"] for line in result.stdout.splitlines()), result.stdout
        assert f"{SCHEDULER:<24} off (--no-prometheus)" in stack.output()
        recorded = json.loads((tmp_path / "state" / "up.json").read_text())
        assert recorded["disabled"] == {SCHEDULER: "--no-prometheus", KME_PROBE: "--no-prometheus"}
        assert SCHEDULER not in recorded["endpoints"] and KME_PROBE not in recorded["endpoints"]
    finally:
        assert stack.stop() == 0
    assert subprocess.run(status, capture_output=True, text=True, timeout=30).returncode == 3


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus not installed: `bash scripts/setup.sh`")
def test_a_missing_pager_key_file_is_named_and_nothing_starts(tmp_path: Path):
    config = e2e_profile(tmp_path)
    missing = tmp_path / "no-such-routing-key"
    result = _up(config, env={**os.environ, "QKDOPS_PAGERDUTY_ROUTING_KEY_FILE": str(missing)})
    assert result.returncode == 1
    assert f"QKDOPS_PAGERDUTY_ROUTING_KEY_FILE names {missing}, which cannot be read" in result.stderr
    assert not (tmp_path / "state" / "up.json").exists()


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`qkdops status` in this process (what it reads is up.json and the endpoints, not its parent)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["status", "--config", str(config), *args])
    return subprocess.CompletedProcess(["qkdops", "status"], code, out.getvalue(), "")


def test_status_probes_the_scheduler_at_healthz_and_lists_what_was_left_out(tmp_path: Path):
    """up.json as `qkdops up` writes it (this test process stands in for qkdops up)."""
    config = e2e_profile(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    metrics_url = f"http://127.0.0.1:{server.server_address[1]}/metrics"  # recorded: its metrics endpoint
    try:
        write_up_file(state / "up.json", {SCHEDULER: metrics_url}, {"qkdops": os.getpid(), SCHEDULER: os.getpid()})
        result = _status(config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.split() == [SCHEDULER, "up", metrics_url]
        as_json = json.loads(_status(config, "--json").stdout)
        assert as_json["endpoints"] == {SCHEDULER: {"url": metrics_url, "up": True}} and as_json["disabled"] == {}
    finally:
        server.shutdown()
        server.server_close()
    result = _status(config)  # a scheduler between restarts: down, and status says so
    assert result.returncode == 1 and result.stdout.split() == [SCHEDULER, "DOWN", metrics_url]

    write_up_file(state / "up.json", {}, {"qkdops": os.getpid()}, {SCHEDULER: "--no-calibration"})
    result = _status(config)
    assert result.returncode == 0 and result.stdout.split() == [SCHEDULER, "off", "(--no-calibration)"]
    assert json.loads(_status(config, "--json").stdout)["disabled"] == {SCHEDULER: "--no-calibration"}


def test_status_reads_an_up_file_from_before_the_scheduler(tmp_path: Path):
    config = e2e_profile(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "up.json").write_text(json.dumps({"endpoints": {}, "pids": {"qkdops": os.getpid()}}))
    result = _status(config)
    assert result.returncode == 0 and result.stdout == ""


def test_up_takes_no_calibration_and_names_the_flag_in_its_help():
    result = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "up", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--no-calibration" in result.stdout


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus not installed: `bash scripts/setup.sh`")
def test_a_scheduler_that_cannot_start_is_named_and_nothing_keeps_running(tmp_path: Path):
    """The scheduler fails at start-up (here its metrics port is taken): `qkdops up` says so and stops."""
    config = e2e_profile(tmp_path)
    port, result = _up_with_port_taken(config, "calibration_exporter_port")
    assert result.returncode == 1
    assert f"qkdops up: error: {SCHEDULER}" in result.stderr and "--no-calibration" in result.stderr, result.stderr
    assert not (tmp_path / "state" / "up.json").exists()
    assert "qkdops up: stopped" in result.stdout
    for name in ("prometheus", "alertmanager"):  # its children were stopped: their ports are free again
        port = yaml.safe_load(config.read_text())["runtime"][f"{name}_port"]
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener is not
            probe.bind(("127.0.0.1", port))
            probe.listen()
