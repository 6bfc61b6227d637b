"""qkdops_cli.stack without Prometheus: config rendering, the scheduler's command line, and how the
calibration scheduler child is supervised (with a stand-in process that honours its contract:
``/healthz`` answers "ok", SIGTERM exits 0)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from qkdops_cli import stack as stack_module
from qkdops.config import RuntimeSettings, load_config
from qkdops.http_client import StackAuth, get_json
from monitoring.config import load_monitoring_config
from monitoring.prometheus import local_hosts, prometheus_config
from qkdops_cli.stack import (
    RESTART_BACKOFF_MAX_S,
    RESTART_RESET_AFTER_S,
    SCHEDULER,
    Stack,
    StackError,
    scheduler_argv,
)
from stack_helpers import e2e_profile, free_ports, wait_for

# A stand-in scheduler: serves /healthz and /metrics on argv[1]; on SIGTERM writes argv[2] (the time, and
# whether the URL argv[3] still answered) and exits 0 after argv[4] seconds; "ignore" as argv[5] makes it
# ignore SIGTERM. Exits at once with status argv[6] when given.
STAND_IN = r'''
import http.server, signal, sys, threading, time, urllib.request
port, marker, probe, linger = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
if len(sys.argv) > 6:
    print("stand-in: cannot start", flush=True)
    sys.exit(int(sys.argv[6]))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/healthz" else b"qkd_calibration_runs_total 0\n"
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
def on_term(signum, frame):
    try:
        urllib.request.urlopen(probe, timeout=1); answered = True
    except OSError:
        answered = False
    with open(marker, "w") as f:
        f.write(f"{time.time()} {answered}")
    time.sleep(linger)
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[5:6] == ["ignore"] else on_term)
threading.Thread(target=server.serve_forever, daemon=True).start()
while True:
    time.sleep(0.1)
'''


def _rt(tmp_path: Path) -> RuntimeSettings:
    control, prom, calibration = free_ports(3)
    return RuntimeSettings(state_dir=tmp_path / "state", control_port=control, prometheus_port=prom,
                           calibration_exporter_port=calibration)


def _stand_in(tmp_path: Path, rt: RuntimeSettings, marker: str = "term", probe: str = "http://127.0.0.1:1/",
              linger_s: float = 0.0, *extra: str) -> list[str]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return [sys.executable, str(script), str(rt.calibration_exporter_port), str(tmp_path / marker), probe, str(linger_s), *extra]


def _healthz(rt: RuntimeSettings) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{rt.calibration_exporter_port}/healthz", timeout=1) as response:
            return response.read() == b"ok"
    except OSError:
        return False


@pytest.fixture
def stacks():
    """Stacks made by a test; stopped whatever happens."""
    made: list[Stack] = []
    yield made
    for s in made:
        s.stop(grace_s=2)


# ---- rendering ------------------------------------------------------------------------------------------
def test_the_calibration_scrape_job_targets_the_scheduler_and_only_when_it_runs():
    rt = RuntimeSettings(bind="127.0.0.1", calibration_exporter_port=9999)
    with_it = prometheus_config(load_monitoring_config(), local_hosts(rt, "127.0.0.1"), "rules/*.yml", 1.0, alertmanager_password_file="/s/am")
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in with_it["scrape_configs"]}
    assert jobs == {"qkd-device": ["127.0.0.1:9810"], "qkd-postprocessing": ["127.0.0.1:9811"], "qkd-calibration": ["127.0.0.1:9999"]}
    assert load_monitoring_config().jobs.calibration == "qkd-calibration"
    without = prometheus_config(load_monitoring_config(), local_hosts(rt), "rules/*.yml", 1.0, alertmanager_password_file="/s/am")
    assert [j["job_name"] for j in without["scrape_configs"]] == ["qkd-device", "qkd-postprocessing"]
    # `qkdops up --bind X` moves its own servers, not the scheduler (which listens at its file's bind)
    moved = local_hosts(RuntimeSettings(bind="10.0.0.5", calibration_exporter_port=9999), "127.0.0.1")
    assert moved.device == "10.0.0.5:9810" and moved.calibration == "127.0.0.1:9999"


def test_prometheus_sends_alerts_with_basic_auth_from_the_password_file():
    config = prometheus_config(load_monitoring_config(), local_hosts(RuntimeSettings()), "rules/*.yml", 1.0,
                               alertmanager_password_file="/state/alertmanager-password")
    (alertmanager,) = config["alerting"]["alertmanagers"]
    assert alertmanager["basic_auth"] == {"username": "qkdops", "password_file": "/state/alertmanager-password"}


def test_the_scheduler_is_told_every_address_explicitly(tmp_path: Path):
    config = tmp_path / "links.yaml"
    rt = RuntimeSettings(control_port=9900, prometheus_port=9191)
    assert scheduler_argv(config, rt) == [sys.executable, "-m", "qkdops_cli.cli", "scheduler", "--config", str(config),
                                          "--api", "http://127.0.0.1:9900", "--prometheus", "http://127.0.0.1:9191",
                                          "--exit-with-parent"]
    wildcard = scheduler_argv(config, RuntimeSettings(bind="0.0.0.0"))
    assert wildcard[-5:-1] == ["--api", "http://127.0.0.1:9800", "--prometheus", "http://127.0.0.1:9090"]
    v6 = scheduler_argv(config, RuntimeSettings(bind="::1"))
    assert v6[-5:-1] == ["--api", "http://[::1]:9800", "--prometheus", "http://[::1]:9090"]


# ---- supervision ----------------------------------------------------------------------------------------
def test_the_scheduler_is_started_ready_and_stopped_with_sigterm(tmp_path: Path, stacks: list[Stack]):
    rt = _rt(tmp_path)
    rt.state_dir.mkdir(parents=True)
    stack = Stack(rt, tmp_path / "links.yaml", "127.0.0.1")
    stacks.append(stack)
    assert stack.scheduler_url == f"http://127.0.0.1:{rt.calibration_exporter_port}/metrics"
    stack.start_scheduler(_stand_in(tmp_path, rt))
    assert _healthz(rt)  # start_scheduler returned only once /healthz answered
    [child] = stack.children
    assert child.name == SCHEDULER and not child.essential and child.log_path == rt.state_dir / f"{SCHEDULER}.log"
    assert stack.dead() is None and not stack.tend()
    stack.stop()
    assert child.process.returncode == 0 and (tmp_path / "term").exists()  # stopped by SIGTERM, cleanly


def test_a_scheduler_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path, stacks: list[Stack], monkeypatch):
    monkeypatch.setattr(stack_module, "SCHEDULER_STOP_GRACE_S", 0.5)
    rt = _rt(tmp_path)
    rt.state_dir.mkdir(parents=True)
    stack = Stack(rt, tmp_path / "links.yaml")
    stacks.append(stack)
    stack.start_scheduler(_stand_in(tmp_path, rt, "term", "http://127.0.0.1:1/", 0.0, "ignore"))
    started = time.monotonic()
    stack.stop()
    assert stack.children[0].process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 3


@pytest.mark.parametrize(("status", "hint"), [(1, "calibration.lock"), (2, "bad configuration")])
def test_a_scheduler_that_cannot_start_fails_the_start_with_its_log_and_the_way_out(tmp_path: Path, stacks: list[Stack],
                                                                                     status: int, hint: str):
    rt = _rt(tmp_path)
    rt.state_dir.mkdir(parents=True)
    stack = Stack(rt, tmp_path / "links.yaml")
    stacks.append(stack)
    with pytest.raises(StackError) as error:
        stack.start_scheduler(_stand_in(tmp_path, rt, "term", "http://127.0.0.1:1/", 0.0, "-", str(status)))
    message = str(error.value)
    assert f"{SCHEDULER} exited with status {status}" in message and "stand-in: cannot start" in message
    assert hint in message and "--no-calibration" in message


def test_a_dead_scheduler_is_restarted_with_backoff_and_never_stops_the_stack(tmp_path: Path, stacks: list[Stack], caplog):
    caplog.set_level(logging.INFO, logger="qkdops_cli.stack")
    rt = _rt(tmp_path)
    rt.state_dir.mkdir(parents=True)
    stack = Stack(rt, tmp_path / "links.yaml")
    stacks.append(stack)
    stack.start_scheduler(_stand_in(tmp_path, rt))
    child = stack.children[0]
    delays = []
    for _ in range(4):
        old_pid = child.process.pid
        os.kill(old_pid, signal.SIGKILL)
        child.process.wait(timeout=5)
        assert stack.dead() is None  # not essential: the stack keeps running
        now = child.started_at + 1.0  # each run short: the backoff grows
        assert not stack.tend(now)  # notices, schedules
        assert child.restart_at is not None
        delays.append(child.restart_at - now)
        assert not stack.tend(child.restart_at - 0.01)  # not before its time
        assert stack.tend(child.restart_at)  # restarted: a new pid for up.json
        assert child.process.pid != old_pid and child.restart_at is None
        deadline = time.monotonic() + 10
        while not _healthz(rt):
            assert time.monotonic() < deadline, "restarted stand-in never answered"
            time.sleep(0.1)
    assert delays == [1.0, 2.0, 4.0, 8.0] and child.restarts == 4
    # once it has run long enough, the next death starts the backoff again
    os.kill(child.process.pid, signal.SIGKILL)
    child.process.wait(timeout=5)
    stack.tend(child.started_at + RESTART_RESET_AFTER_S)
    assert child.restart_at == child.started_at + RESTART_RESET_AFTER_S + 1.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 5 and all(f"{SCHEDULER} exited with status -9; restarting it in" in m for m in errors)
    assert "the stack keeps running" in errors[0] and str(child.log_path) in errors[0]


def test_the_backoff_is_capped():
    rt = RuntimeSettings()
    stack = Stack(rt, Path("links.yaml"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    child = stack_module.Child(SCHEDULER, "http://x/metrics", dead, Path("/nonexistent.log"), ["true"], essential=False, failures=20)
    stack.children.append(child)
    stack.tend(child.started_at + 1.0)
    assert child.restart_at == child.started_at + 1.0 + RESTART_BACKOFF_MAX_S


def test_shutdown_stops_the_scheduler_before_the_essential_children(tmp_path: Path, stacks: list[Stack]):
    """The scheduler is gone before Prometheus/Alertmanager (here: an essential stand-in) get SIGTERM,
    and while it stops, what it acts through still answers."""
    rt = _rt(tmp_path)
    rt.state_dir.mkdir(parents=True)
    stack = Stack(rt, tmp_path / "links.yaml")
    stacks.append(stack)
    essential_rt = RuntimeSettings(state_dir=rt.state_dir, calibration_exporter_port=free_ports(1)[0])
    essential_argv = _stand_in(tmp_path, essential_rt, "essential-term")
    stack._spawn("prometheus", f"http://127.0.0.1:{essential_rt.calibration_exporter_port}", essential_argv,
                 ready_url=f"http://127.0.0.1:{essential_rt.calibration_exporter_port}/healthz")
    stack.wait_ready(10)
    stack.start_scheduler(_stand_in(tmp_path, rt, "scheduler-term", f"http://127.0.0.1:{essential_rt.calibration_exporter_port}/healthz", 0.3))
    stack.stop()
    scheduler_at, answered = (tmp_path / "scheduler-term").read_text().split()
    essential_at, _ = (tmp_path / "essential-term").read_text().split()
    assert answered == "True"  # what the scheduler reads still answered when it was told to stop
    assert float(essential_at) >= float(scheduler_at) + 0.3  # the essential child was signalled only after it exited
    assert all(c.process.returncode == 0 for c in stack.children)


# ---- with the real Prometheus: `qkdops up` supervising a stand-in scheduler ------------------------------
needs_servers = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None,
    reason="Prometheus/Alertmanager not installed: `bash scripts/setup.sh` installs them")


def _target_health(rt: RuntimeSettings, job: str) -> str | None:
    targets = get_json(f"http://127.0.0.1:{rt.prometheus_port}/api/v1/targets", StackAuth(rt.state_dir, {}).prometheus)["data"]["activeTargets"]
    return next((t["health"] for t in targets if t["labels"]["job"] == job), None)


@pytest.mark.slow
@needs_servers
def test_up_starts_the_scheduler_last_restarts_it_and_stops_it_first(tmp_path: Path, monkeypatch):
    """`qkdops up` in this process, the scheduler replaced by the stand-in (the real one: test_stack_e2e)."""
    from qkdops_cli import up_cmd

    config = load_config(e2e_profile(tmp_path))
    rt = config.runtime
    argv_seen: list[list[str]] = []

    def stand_in_argv(config_path: Path, runtime: RuntimeSettings) -> list[str]:
        argv_seen.append(scheduler_argv(config_path, runtime))
        return _stand_in(tmp_path, runtime, "term", f"http://127.0.0.1:{runtime.control_port}/healthz", 0.0)

    monkeypatch.setattr(stack_module, "scheduler_argv", stand_in_argv)
    stacks_seen: list[stack_module.Stack] = []
    real_stack = up_cmd.Stack

    def recording_stack(*args, **kwargs):
        stacks_seen.append(made := real_stack(*args, **kwargs))
        return made

    monkeypatch.setattr(up_cmd, "Stack", recording_stack)
    stopping = threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(up_cmd._run(config, True, stopping, 0.0, {}, rt.bind)))
    runner.start()
    up_file = rt.state_dir / up_cmd.UP_FILE
    try:
        wait_for(lambda: up_file.exists(), 60, "up.json")
        recorded = json.loads(up_file.read_text())
        assert recorded["endpoints"][SCHEDULER] == f"http://{rt.bind}:{rt.calibration_exporter_port}/metrics"
        assert recorded["disabled"] == {}
        assert argv_seen == [[sys.executable, "-m", "qkdops_cli.cli", "scheduler", "--config", str(config.source.resolve()),
                              "--api", f"http://127.0.0.1:{rt.control_port}", "--prometheus", f"http://127.0.0.1:{rt.prometheus_port}",
                              "--exit-with-parent"]]
        wait_for(lambda: _target_health(rt, load_monitoring_config().jobs.calibration) == "up", 30, "Prometheus to scrape qkd-calibration")
        # the scheduler reads the credentials of this stack's state dir, named explicitly
        scheduler_env = next(c.env for c in stacks_seen[0].children if c.name == SCHEDULER)
        assert scheduler_env["QKDOPS_PROMETHEUS_PASSWORD_FILE"] == str((rt.state_dir / "prometheus-password").resolve())
        # killed: restarted, up.json follows, key production never stopped
        first = recorded["pids"][SCHEDULER]
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: json.loads(up_file.read_text())["pids"][SCHEDULER] != first, 15, "a restarted scheduler in up.json")
        wait_for(lambda: _healthz(rt), 15, "the restarted scheduler's /healthz")
        assert runner.is_alive() and not result
        assert (rt.state_dir / f"{SCHEDULER}.log").exists()
    finally:
        stopping.set()
        runner.join(60)
    assert result == [0]
    _at, control_api_answered = (tmp_path / "term").read_text().split()
    assert control_api_answered == "True"  # stopped while the control API was still up
    assert not up_file.exists()
