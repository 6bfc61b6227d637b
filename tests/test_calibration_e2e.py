"""The loop on the real stack: `qkdops up` with Prometheus, the scheduler reading Prometheus.

Polarization drift on the 1-s-block test link and a fast phase drift on the MDI relay link; the
scheduler (shipped jobs.yaml, signals from Prometheus's HTTP API) corrects both. Its own metrics
reach Prometheus, the MDI link never loses lock, and the test link's key rate over the last 30 s is
back within 10 % of its pre-fault rate while the polarization keeps drifting.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from calibration_jobs.store import CalibrationStore
from tests.stack_helpers import FAST_LINK, RunningStack, e2e_profile, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="Prometheus not installed: `bash scripts/setup.sh` installs it (CI always has it)")]
FAST = FAST_LINK["id"]
KEY_RATE = 'rate(qkd_secret_key_bits_total{link="e2e-fast"}[30s])'


def test_scheduler_corrects_drift_from_prometheus_signals(tmp_path: Path) -> None:
    stack = RunningStack(e2e_profile(tmp_path, [FAST_LINK]))
    try:
        stack.wait_up(60)
        wait_for(lambda: stack.prometheus('up{job="qkd-calibration"} == 1'), 60, "the scheduler scraped", stack)
        wait_for(lambda: stack.prometheus(f'count_over_time(qkd_secret_key_bits_total{{link="{FAST}"}}[40s]) >= 35'), 90,
                 "40 s of key on the test link", stack)
        before = stack.by_link(KEY_RATE)[FAST]
        assert before > 0
        stack.api("POST", f"/api/v1/links/{FAST}/faults", {"fault": "polarization_drift", "parameters": {"rate_rad_per_s": 0.01}})
        stack.api("POST", "/api/v1/links/relay-mdi/faults", {"fault": "phase_drift", "parameters": {"drift_rate_rad_per_s": 5.0}})
        injected = time.time()
        corrected = ('sum by (link, job_name) (qkd_calibration_runs_total{outcome="corrected",'
                     'job_name=~"polarization_realign|phase_relock",link=~"e2e-fast|relay-mdi"})')
        runs = wait_for(lambda: (r := {(x["metric"]["link"], x["metric"]["job_name"]) for x in stack.prometheus(corrected)})
                        >= {(FAST, "polarization_realign"), ("relay-mdi", "phase_relock")} and r, 90,
                        "both corrections counted in Prometheus", stack)
        assert runs
        time.sleep(max(0.0, injected + 50 - time.time()))  # 30 s of key fully after the first corrections
        after = stack.by_link(KEY_RATE)[FAST]
        never_unlocked = stack.prometheus(f'min_over_time(qkd_phase_locked{{link="relay-mdi"}}[{int(time.time() - injected) + 5}s])')
        active = stack.api("GET", f"/api/v1/links/{FAST}")["active_faults"]
    finally:
        assert stack.stop() == 0, stack.output()[-3000:]
    assert [f["name"] for f in active] == ["polarization_drift"], "the fault kept drifting"
    assert float(never_unlocked[0]["value"][1]) == 1.0, "the relay link's phase lock never opened"
    assert after == pytest.approx(before, rel=0.10), (before, after)
    store = CalibrationStore(stack.state_dir / "calibration.sqlite")
    try:
        fixes = [r for r in store.runs("polarization_realign", FAST, 200) if r["outcome"] == "corrected"]
    finally:
        store.close()
    assert fixes and "polarization frame rotated" in fixes[-1]["reason"]
    assert any(r["report"]["signals"]["source"] == "prometheus" for r in fixes), "decisions read Prometheus"
