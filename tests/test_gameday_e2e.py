"""Game days against the real local stack: `qkdops up` (Prometheus, Alertmanager, pager sink,
calibration scheduler) on the test profile (1-s scrapes and evaluations, Alertmanager timers scaled
to match), driven by `qkdops gameday run` exactly as an SRE would run it.

The fibre cut, phase drift and detector saturation scenarios must pass — expected page received
(or the calibration job's correction seen), no unexpected page, recovery verified — and the report
(Markdown, JSON, timeline PNGs) must be written. A run interrupted with Ctrl-C right after its
injection must still clear the fault.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stack_helpers import RunningStack, e2e_profile, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="Prometheus not installed: `bash scripts/setup.sh` installs it (CI always has it)")]
MUST_PASS = ("fiber-cut", "phase-drift", "detector-saturation")
RUN_LIMIT_S = 1500  # three scenarios: each waits ≤ 300 s for steady state and runs ≤ its run_s (300 s)


def _gameday(*args: str) -> list[str]:
    return [sys.executable, "-m", "qkdops_cli.cli", "gameday", *args]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("gameday")
    running = RunningStack(e2e_profile(directory))
    try:
        running.wait_up(60)
        yield running
    finally:
        running.stop()


def test_fiber_cut_phase_drift_and_detector_saturation_pass_with_a_report(stack: RunningStack, tmp_path: Path) -> None:
    report = tmp_path / "report"
    run = subprocess.run([*_gameday("run", *MUST_PASS, "--config", str(stack.config_path), "--report", str(report))],
                         capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert "=> FAILED" not in run.stdout and run.stdout.count("=> PASSED") == len(MUST_PASS)

    results = {r["scenario"]: r for r in json.loads((report / "report.json").read_text())}
    assert set(results) == set(MUST_PASS)
    for name, result in results.items():
        assert result["passed"] and result["status"] == "completed" and not result["unexpected"], result
        assert result["detect_s"] and all(0 < t <= result["limits"]["detect_s"] for t in result["detect_s"].values()), result
        assert 0 < result["recover_s"] <= result["limits"]["recover_s"], result
        assert (report / f"{name}.png").stat().st_size > 10_000
    assert results["fiber-cut"]["detect_s"].keys() == {"QKDFiberCut"}
    assert results["detector-saturation"]["detect_s"].keys() == {"QKDDetectorSaturated"}
    assert results["phase-drift"]["detect_s"].keys() == {"phase_relock corrected"}
    markdown = (report / "report.md").read_text()
    assert all(f"{name}" in markdown for name in MUST_PASS) and "time to detect" in markdown.lower()
    for link in ("metro-bb84", "relay-mdi"):
        assert stack.api("GET", f"/api/v1/links/{link}/faults")["active_faults"] == []


def _as_background_job() -> None:
    """What a non-interactive shell does to `cmd &`: the child starts with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c-in-a-background-job", "sigterm"])
def test_an_interrupted_run_still_clears_its_fault(stack: RunningStack, tmp_path: Path, stop: signal.Signals) -> None:
    process = subprocess.Popen([*_gameday("run", "fiber-cut", "loss-step", "--config", str(stack.config_path),
                                          "--report", str(tmp_path / "report"))],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_as_background_job)
    try:
        deadline, seen = time.monotonic() + 400, ""
        while "cut the fibre: succeeded" not in seen:
            assert time.monotonic() < deadline and process.poll() is None, seen
            seen += process.stdout.readline()
        assert stack.api("GET", "/api/v1/links/metro-bb84/faults")["active_faults"]
        process.send_signal(stop)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 130, seen + rest
    assert "the remaining scenarios were not run" in rest and "loss-step:" not in rest, rest
    wait_for(lambda: stack.api("GET", "/api/v1/links/metro-bb84/faults")["active_faults"] == [], 10,
             "the interrupted run's fault to be cleared", stack)
    assert (tmp_path / "report" / "report.json").exists()
