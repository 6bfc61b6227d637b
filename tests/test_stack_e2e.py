"""End to end with real servers: `qkdops up` as a process, Debian's Prometheus and Alertmanager.

Slow (a minute or two) but run in CI: this is what an ops team sees after the README's first command.
"""

from __future__ import annotations

import functools
import contextlib
import json
import signal
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qkdlink.keyrate import predict
from qkdlink.protocols import get_protocol
from qkdops import credentials
from qkdops.config import load_config
from qkdops.http_client import Auth, open_url
from qkdops.processes import pid_alive
from monitoring.config import load_monitoring_config
from qkdops_cli.stack import SCHEDULER
from stack_helpers import FAST_LINK, RunningStack, e2e_profile, wait_for

pytestmark = pytest.mark.slow
needs_servers = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None,
    reason="Prometheus/Alertmanager not installed: `bash scripts/setup.sh` installs them (CI always has them)")
EXPORTER_JOBS = 'up{job=~"qkd-device|qkd-postprocessing"} == 1'


@functools.cache
def scheduler_cli() -> bool:
    """Whether `qkdops scheduler` exists yet (calibration_jobs/, qkdops/scheduler_cmd.py)."""
    return subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "scheduler", "--help"], capture_output=True, timeout=60).returncode == 0


def needs_scheduler() -> None:
    if not scheduler_cli():
        pytest.skip("`python -m qkdops_cli.cli scheduler --help` fails: the calibration scheduler CLI is not there yet")


def _calibration_args() -> list[str]:
    """The full stack; without the scheduler while its CLI does not exist (`qkdops up` would refuse to start)."""
    return [] if scheduler_cli() else ["--no-calibration"]


def _targets(stack: RunningStack) -> list[dict]:
    return stack.get_json("prometheus_port", "/api/v1/targets")["data"]["activeTargets"]


def _status(url: str, method: str, body: bytes | None = None, auth: Auth | None = None) -> int:
    """The HTTP status ``method url`` answers (with ``auth``'s header, if any); a body that is not JSON is a form."""
    form = body is not None and not body.startswith((b"{", b"["))
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    try:
        with open_url(url, auth, method=method, data=body, headers={"Content-Type": content_type}) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def _assert_writes_need_credentials(stack: RunningStack) -> None:
    """Unauthenticated (or wrongly authenticated) writes to Prometheus, Alertmanager and the pager sink
    are refused with 401; with the credentials from the state dir they work."""
    prometheus, am, sink = stack.url("prometheus_port"), stack.url("alertmanager_port"), stack.url("pager_sink_port")
    wrong_basic = Auth(credentials.basic(credentials.USER, "not-the-password"), "test")
    silence = json.dumps({"matchers": [{"name": "alertname", "value": "QKDNoSuchAlert", "isRegex": False}],
                          "startsAt": "2020-01-01T00:00:00Z", "endsAt": "2099-01-01T00:00:00Z",
                          "createdBy": "test", "comment": "auth check"}).encode()
    query = b"query=up"
    page = json.dumps({"version": "4", "status": "firing", "receiver": "x", "alerts": []}).encode()
    for auth in (None, wrong_basic):
        assert _status(f"{prometheus}/api/v1/query", "POST", query, auth) == 401
        assert _status(f"{prometheus}/api/v1/admin/tsdb/snapshot", "POST", b"", auth) == 401
        assert _status(f"{prometheus}/-/ready", "GET", None, auth) == 401
        assert _status(f"{am}/api/v2/silences", "POST", silence, auth) == 401
        assert _status(f"{am}/api/v2/alerts", "POST", b"[]", auth) == 401
        assert _status(f"{sink}/webhook/page", "POST", page, auth) == 401
        assert _status(f"{sink}/api/v1/notifications", "GET", None, auth) == 401
    assert _status(f"{sink}/webhook/page", "POST", page, Auth("Bearer not-the-token", "test")) == 401
    assert _status(f"{prometheus}/api/v1/query", "POST", query, stack.auth.prometheus) == 200
    assert _status(f"{am}/api/v2/silences", "POST", silence, stack.auth.alertmanager) == 200
    assert _status(f"{am}/api/v2/silences", "POST", silence, stack.auth.prometheus) == 401  # each its own password
    assert _status(f"{sink}/api/v1/notifications", "GET", None, stack.auth.pager_sink) == 200
    assert _status(f"{sink}/healthz", "GET") == 200  # liveness stays open
    for name in ("prometheus-web.yml", "alertmanager-web.yml", "prometheus-password", "alertmanager-password", "pager-sink-token"):
        assert stat.S_IMODE((stack.state_dir / name).stat().st_mode) == 0o600, name


@needs_servers
def test_stack_comes_up_scrapes_every_link_and_a_fibre_cut_shows_within_two_scrapes(tmp_path: Path):
    config_path = e2e_profile(tmp_path, [FAST_LINK])
    config = load_config(config_path)
    stack = RunningStack(config_path, *_calibration_args())
    started = time.monotonic()
    try:
        stack.wait_up(60)
        links = {spec.id for spec in config.links}
        # every target up, every link keyed, within 60 s of start
        wait_for(lambda: len(stack.prometheus(EXPORTER_JOBS)) == 2,
                 60 - (time.monotonic() - started), "both exporter targets up", stack)
        rates = wait_for(lambda: (r := stack.by_link("rate(qkd_secret_key_bits_total[1m]) > 0")).keys() >= links and r,
                         60 - (time.monotonic() - started), "a key rate for every link", stack)
        assert time.monotonic() - started < 60
        # the rules Prometheus loaded link their runbooks at this runtime's control API, not at a default
        annotations = [r["annotations"] for g in stack.get_json("prometheus_port", "/api/v1/rules")["data"]["groups"]
                       for r in g["rules"] if r["type"] == "alerting"]
        assert annotations and all(a["runbook_url"].startswith(f"{stack.url('control_port')}/runbooks/QKD") for a in annotations)
        # The key per successful block is in the range the library predicts for the link's block size:
        # near the drift-free prediction (statistical fluctuation moves a block by ~10 %), and not far
        # below it — the devices' phase noise, polarization
        # wander and detector temperature noise cost up to ~40 % on the 80 km MDI link.
        per_block = stack.by_link('qkd_secret_key_bits_total / on(link, protocol) qkd_blocks_total{outcome="success"}')
        for spec in config.links:
            protocol = get_protocol(spec.protocol)
            expected = predict(protocol, spec.parameters, "finite", float(spec.block_pulses)).secret_key_bits
            assert 0.5 * expected <= per_block[spec.id] <= 1.25 * expected, (spec.id, per_block[spec.id], expected)
        assert all(v > 0 for v in rates.values())
        # no lifecycle API: nobody on the host can stop Prometheus (and with it the alerting) over HTTP,
        # not even with its password
        assert _status(f"{stack.url('prometheus_port')}/-/quit", "POST") == 401
        assert _status(f"{stack.url('prometheus_port')}/-/quit", "POST", auth=stack.auth.prometheus) == 403
        _assert_writes_need_credentials(stack)

        # fibre cut through the control API: detections and key of that link stop within two scrapes
        stack.api("POST", "/api/v1/links/e2e-fast/faults", {"fault": "fiber_cut"})
        cut_at = time.monotonic()
        detections = 'rate(qkd_detections_total{link="e2e-fast"}[3s])'
        healthy = stack.by_link(detections)["e2e-fast"]
        wait_for(lambda: stack.by_link(detections)["e2e-fast"] < 1e-3 * healthy, 10, "detections to fall to dark counts", stack)
        wait_for(lambda: stack.by_link('increase(qkd_secret_key_bits_total{link="e2e-fast"}[3s])')["e2e-fast"] == 0,
                 10, "the key counter to stop", stack)
        assert time.monotonic() - cut_at < 2 * 1.0 + 1.0 + 2.5  # two scrapes, one 1-s block, query slack
        assert stack.by_link("rate(qkd_secret_key_bits_total[1m]) > 0").keys() >= links - {"e2e-fast"}
        stack.api("DELETE", "/api/v1/links/e2e-fast/faults/fiber_cut")
        wait_for(lambda: stack.by_link('increase(qkd_secret_key_bits_total{link="e2e-fast"}[3s])')["e2e-fast"] > 0,
                 15, "the key to come back after clearing the cut", stack)
    finally:
        status = stack.stop()
    assert status == 0, stack.output()[-2000:]
    assert "qkdops up: stopped" in stack.output()


@needs_servers
def test_up_supervises_the_calibration_scheduler_and_stops_it_on_shutdown(tmp_path: Path):
    needs_scheduler()
    config_path = e2e_profile(tmp_path)
    stack = RunningStack(config_path)
    try:
        stack.wait_up(90)
        recorded = json.loads((stack.state_dir / "up.json").read_text())
        metrics = f"http://127.0.0.1:{stack.ports['calibration_exporter_port']}/metrics"
        assert recorded["endpoints"][SCHEDULER] == metrics and recorded["disabled"] == {}
        pid = recorded["pids"][SCHEDULER]
        assert f"{SCHEDULER:<24} {metrics}" in stack.output()
        with urllib.request.urlopen(metrics, timeout=5) as response:
            assert response.status == 200 and "qkd_calibration_" in response.read().decode()
        with urllib.request.urlopen(metrics.replace("/metrics", "/healthz"), timeout=5) as response:
            assert response.status == 200 and response.read().decode().strip() == "ok"
        wait_for(lambda: any(t["labels"]["job"] == load_monitoring_config().jobs.calibration and t["health"] == "up" for t in _targets(stack)),
                 30, "Prometheus target qkd-calibration up", stack)
        assert (stack.state_dir / "calibration.sqlite").exists()
        status = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "status", "--config", str(config_path)],
                                capture_output=True, text=True, timeout=30)
        assert any(line.split()[:2] == [SCHEDULER, "up"] for line in status.stdout.splitlines()), status.stdout
        # Prometheus's and Alertmanager's /-/ready want basic auth: status reads it from the state dir
        for name in ("prometheus", "alertmanager", "pager_sink"):
            assert any(line.split()[:2] == [name, "up"] for line in status.stdout.splitlines()), status.stdout
    finally:
        code = stack.stop()
    assert code == 0, stack.output()[-3000:]
    assert not pid_alive(pid)  # stopped with the stack, not left behind
    log = (stack.state_dir / f"{SCHEDULER}.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


@needs_servers
def test_a_scheduler_does_not_outlive_a_killed_up(tmp_path: Path):
    """kill -9 of `qkdops up` alone: its scheduler stops by itself, so the next `up` finds the state lock free."""
    needs_scheduler()
    stack = RunningStack(e2e_profile(tmp_path))
    children: dict[str, int] = {}
    try:
        stack.wait_up(90)
        children = json.loads((stack.state_dir / "up.json").read_text())["pids"]
        pid = children[SCHEDULER]
        os.kill(stack.process.pid, signal.SIGKILL)
        stack.process.wait(10)
        wait_for(lambda: not pid_alive(pid), 15, "the orphaned scheduler to stop")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.process.pid, signal.SIGKILL)  # whatever is left of the group
        for name, child in children.items():  # Prometheus and Alertmanager run in sessions of their own
            if name != "qkdops":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
        stack.process.wait(10)
        stack.log.close()
    log = (stack.state_dir / f"{SCHEDULER}.log").read_text(errors="replace")
    assert "is gone; stopping" in log and "Traceback" not in log, log[-3000:]


@needs_servers
def test_the_next_up_stops_what_a_killed_up_left_running(tmp_path: Path):
    """Prometheus and Alertmanager run in sessions of their own: a kill -9 of `up` leaves them
    holding their ports, and the next `up` stops them before it starts its own."""
    config_path = e2e_profile(tmp_path)
    first = RunningStack(config_path)
    try:
        first.wait_up(90)
        left = {n: p for n, p in json.loads((first.state_dir / "up.json").read_text())["pids"].items()
                if n in ("prometheus", "alertmanager")}
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        assert set(left) == {"prometheus", "alertmanager"} and all(pid_alive(p) for p in left.values())
    finally:
        first.log.close()
    second = RunningStack(config_path)
    try:
        second.wait_up(90)
        assert not any(pid_alive(p) for p in left.values())
    finally:
        code = second.stop()
        for pid in left.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert code == 0, second.output()[-3000:]
    assert "left running by a `qkdops up` that was killed" in second.output()


@needs_servers
def test_up_restarts_a_killed_scheduler_and_key_production_goes_on(tmp_path: Path):
    needs_scheduler()
    config_path = e2e_profile(tmp_path, [FAST_LINK])
    stack = RunningStack(config_path)
    try:
        stack.wait_up(90)
        up_file = stack.state_dir / "up.json"
        first = json.loads(up_file.read_text())["pids"][SCHEDULER]
        os.kill(first, 9)
        second = wait_for(lambda: (p := json.loads(up_file.read_text())["pids"][SCHEDULER]) != first and p, 20,
                          "up.json to record the restarted scheduler", stack)
        assert pid_alive(second) and stack.process.poll() is None
        wait_for(lambda: any(t["labels"]["job"] == load_monitoring_config().jobs.calibration and t["health"] == "up" for t in _targets(stack)),
                 30, "qkd-calibration up again", stack)
        wait_for(lambda: stack.by_link('increase(qkd_secret_key_bits_total{link="e2e-fast"}[5s])').get("e2e-fast", 0) > 0,
                 20, "key still produced", stack)
    finally:
        code = stack.stop()
    assert code == 0, stack.output()[-3000:]
    assert f"{SCHEDULER} exited with status -9; restarting it in 1 s" in stack.output()


@needs_servers
def test_up_without_calibration_runs_no_scheduler_and_no_scrape_job(tmp_path: Path):
    config_path = e2e_profile(tmp_path)
    stack = RunningStack(config_path, "--no-calibration")
    try:
        stack.wait_up(60)
        recorded = json.loads((stack.state_dir / "up.json").read_text())
        assert SCHEDULER not in recorded["endpoints"] and SCHEDULER not in recorded["pids"]
        assert recorded["disabled"] == {SCHEDULER: "--no-calibration"}
        assert f"{SCHEDULER:<24} off (--no-calibration)" in stack.output()
        wait_for(lambda: len(stack.prometheus(EXPORTER_JOBS)) == 2, 30, "both exporter targets up", stack)
        assert {t["labels"]["job"] for t in _targets(stack)} == {"qkd-device", "qkd-postprocessing", "qkd-kme-probe"}
        assert not (stack.state_dir / f"{SCHEDULER}.log").exists()
    finally:
        assert stack.stop() == 0


def _archive(state_dir: Path) -> list[tuple[str, int, str]]:
    db = sqlite3.connect(state_dir / "blocks.sqlite")
    try:
        return db.execute("SELECT link, idx, body FROM blocks ORDER BY link, idx").fetchall()
    finally:
        db.close()


def _metric(url: str, name: str, link: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + "{") and f'link="{link}"' in line:
                return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_kill_9_mid_block_loses_and_duplicates_no_archived_block(tmp_path: Path):
    config_path = e2e_profile(tmp_path, [FAST_LINK])
    first = RunningStack(config_path, "--no-prometheus")
    try:
        first.wait_up(30)
        wait_for(lambda: sum(1 for row in _archive(first.state_dir) if row[0] == "e2e-fast") >= 3, 30,
                 "three archived blocks", first)
        time.sleep(0.4)  # somewhere inside the next block
        pp = f"{first.url('postprocessing_exporter_port')}/metrics"
        before_counter = _metric(pp, "qkd_secret_key_bits_total", "e2e-fast")
        before = _archive(first.state_dir)
        first.kill9()
    finally:
        first.stop()
    second = RunningStack(config_path, "--no-prometheus")
    try:
        second.wait_up(30)
        after_restart = _metric(f"{second.url('postprocessing_exporter_port')}/metrics", "qkd_secret_key_bits_total", "e2e-fast")
        assert after_restart < before_counter  # counters restart from zero; Prometheus rate() sees a reset
        wait_for(lambda: len(_archive(second.state_dir)) >= len(before) + 2, 30, "new blocks after the restart", second)
    finally:
        assert second.stop() == 0
    after = _archive(second.state_dir)
    assert after[: len(before)] == before or set(before) <= set(after)  # nothing archived was lost or rewritten
    for link in {row[0] for row in after}:
        indices = [idx for lnk, idx, _ in after if lnk == link]
        assert indices == list(range(len(indices))), (link, indices)  # no gap, no duplicate
    bodies = [json.loads(body) for lnk, _, body in after if lnk == "e2e-fast"]
    assert len({(b["start_timestamp"], b["end_timestamp"]) for b in bodies}) == len(bodies)
