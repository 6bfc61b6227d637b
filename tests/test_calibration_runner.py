"""JobRunner and CalibrationStore: outcomes, bounded retries and back-off, counters, leases, ledger.

A fake control client stands in for the control API (status dicts shaped like ``Fleet.status``,
action answers shaped like ``POST /links/{link}/actions/{action}``), signals come from its link
status (``SignalReader(api, None, 30)``), time is a fake clock moved by the test and by the runner's
own sleeps (nothing really waits), and the store is a real SQLite file in tmp_path.
"""

from __future__ import annotations

import copy
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import calibration_jobs.store as store_module
from calibration_jobs.checks import CHECKS
from calibration_jobs.config import DEFAULT_JOBS_FILE, JobsConfig, parse_jobs_config
from calibration_jobs.runner import FAILED_ACTIONS, OUTCOMES, JobRunner, RunReport, applicable_links
from calibration_jobs.signals import SignalReader
from calibration_jobs.store import CalibrationStore, RunBusy
from qkdops.config import parse_config
from qkdops.control_client import ApiUnreachable
from qkdops.runtime.fleet import Fleet

T0 = 1.75e9
TF, BB84 = "tf-a", "bb84-a"
BACKOFF_S, BACKOFF_MAX_S = 30.0, 600.0
FIRST_BLOCK = 4  # the last block at T0


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def status_of(link: str, protocol: str) -> dict[str, Any]:
    """A healthy link's ``Fleet.status`` (values of a fresh emulated link of that protocol)."""
    two_arm = protocol != "bb84-decoy"
    commanded = {"mu": 0.45, "nu": 0.09, "nu2": 0.42} if two_arm else {"mu": 0.5, "nu": 0.1, "omega": 0.0002}
    return {
        "link": link, "protocol": protocol, "sites": {"alice": "a", "bob": "b", "charlie": "c" if two_arm else None},
        "emulated_seconds": 0.0, "frames": 0, "next_block": FIRST_BLOCK + 1, "block_seconds": 2.0, "frame_seconds": 1.0,
        "telemetry": {
            "link_id": link, "protocol": protocol, "time_s": 0.0, "channel_transmittance": 0.1, "channel_loss_db": 10.0,
            "detection_rate_hz": 2.0e4, "dark_count_rate_hz": 10.0, "dark_count_probability": 1e-8, "detector_efficiency": 0.6,
            "detector_temperature_c": -40.0, "dead_time_live_fraction": 0.64, "afterpulse_probability": 0.0,
            "mean_photon_number_commanded": dict(commanded), "mean_photon_number_measured": dict(commanded),
            "phase_error_rad": 0.09 if two_arm else None, "phase_locked": True if two_arm else None, "phase_relock_count": 0,
            "phase_actuator_usage": 0.1 if two_arm else None, "visibility": 0.94, "polarization_drift_rad": 0.0,
            "clock_offset_s": 0.0, "timing_jitter_s": 3e-11, "rng_bias": 0.0, "rng_monobit_z": 0.0, "rng_apt_failures": 0,
            "rng_health_pass": True, "classical_channel_up": True, "classical_latency_s": 1e-3},
        "active_faults": [],
        "last_block": {"index": FIRST_BLOCK, "end_timestamp": T0, "reason": "none", "secret_key_bits": 1.0e5, "qber": 0.02,
                       "y1_lower": 0.05, "e1_upper": 0.04},
        "key_delivery": {"buffered_bits": 0, "stores": {"a": {"available_bytes": 1000, "pending_bytes": 0},
                                                         "b": {"available_bytes": 1000, "pending_bytes": 0}}},
        "objectives": {"block_seconds": 2.0, "key_rate_target_bps": 0.0, "qber_threshold": 0.11, "nominal_dark_count_rate_hz": 10.0,
                       "nominal_channel_loss_db": 10.0, "model_ec_efficiency": 1.16},
    }


Effect = Callable[[dict[str, Any]], None]


class FakeApi:
    """ControlClient's status/act/links/blocks over in-memory link statuses.

    Frames and blocks advance with the fake clock (frame 1 s, block 2 s) unless ``stalled``; a block
    closing measures the link's ``qber`` at that time. ``effects[action]`` changes a link's status
    when the action runs (nothing by default: an action that does not help); ``refuse`` makes
    actions answer ok=false; ``unreachable`` makes every call raise ApiUnreachable.
    """

    url = "http://fake-control-api"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.statuses = {TF: status_of(TF, "tf"), BB84: status_of(BB84, "bb84-decoy")}
        self.qber = {TF: 0.02, BB84: 0.02}
        self.effects: dict[str, Effect] = {}
        self.refuse = False
        self.unreachable = False
        self.stalled = False
        self.actions: list[tuple[str, str]] = []

    def _check(self) -> None:
        if self.unreachable:
            raise ApiUnreachable(self.url, "Connection refused")

    def links(self) -> list[dict[str, Any]]:
        self._check()
        return [{"link": s["link"], "protocol": s["protocol"]} for s in self.statuses.values()]

    def status(self, link: str) -> dict[str, Any]:
        self._check()
        status = self.statuses[link]
        if not self.stalled:
            elapsed = self.clock() - T0
            status["frames"] = int(elapsed // status["frame_seconds"])
            closed = int(elapsed // status["block_seconds"])
            if FIRST_BLOCK + closed > status["last_block"]["index"]:
                status["last_block"].update(index=FIRST_BLOCK + closed, end_timestamp=T0 + closed * status["block_seconds"],
                                            qber=self.qber[link])
            status["next_block"] = status["last_block"]["index"] + 1
        return copy.deepcopy(status)

    def act(self, link: str, action: str) -> dict[str, Any]:
        self._check()
        self.actions.append((link, action))
        if self.refuse:
            return {"link": link, "action": action, "ok": False, "message": "actuator fault", "before": {}, "after": {}}
        telemetry = self.statuses[link]["telemetry"]
        before = {"phase_actuator_usage": telemetry["phase_actuator_usage"]}
        self.effects.get(action, lambda status: None)(self.statuses[link])
        return {"link": link, "action": action, "ok": True, "message": "done", "before": before,
                "after": {"phase_actuator_usage": telemetry["phase_actuator_usage"]}}

    def blocks(self, link: str, last: int) -> dict[str, Any]:
        self._check()
        return {"link": link, "protocol": self.statuses[link]["protocol"], "nominal": {}, "repetition_rate_hz": 1e9, "blocks": []}

    def telemetry(self, link: str) -> dict[str, Any]:
        return self.statuses[link]["telemetry"]


def jobs_config(max_attempts: int = 3) -> JobsConfig:
    raw = yaml.safe_load(DEFAULT_JOBS_FILE.read_text(encoding="utf-8"))
    raw["signals"]["source"] = "status"
    raw["defaults"]["retry"] = {"max_attempts": max_attempts, "backoff_s": BACKOFF_S, "backoff_max_s": BACKOFF_MAX_S}
    return parse_jobs_config(raw, DEFAULT_JOBS_FILE)


class Rig:
    def __init__(self, tmp_path: Path, max_attempts: int = 3) -> None:
        self.clock = FakeClock()
        self.api = FakeApi(self.clock)
        self.store = CalibrationStore(tmp_path / "calibration.sqlite", clock=self.clock)
        self.durations: list[tuple[str, str, str, float]] = []
        self.runner = JobRunner(jobs_config(max_attempts), self.api, SignalReader(self.api, None, 30, clock=self.clock),  # type: ignore[arg-type]
                                self.store, clock=self.clock, sleep=self.clock.sleep,
                                observe_duration=lambda *args: self.durations.append(args))
        self.reports: list[RunReport] = []

    def run(self, job: str = "phase_relock", link: str = TF, manual: bool = False) -> RunReport:
        protocol = self.api.statuses[link]["protocol"]
        report = self.runner.run(job, link, protocol, trigger="manual" if manual else "schedule", manual=manual)
        self.reports.append(report)
        return report

    def counters(self) -> dict[tuple[str, str, str, str], float]:
        return {(metric, job, link, key): value for metric, job, link, _, key, value in self.store.counters()}

    def drift_phase(self, usage: float = 0.9) -> None:
        self.api.telemetry(TF)["phase_actuator_usage"] = usage

    def recentre_on_relock(self) -> None:
        self.api.effects["relock_phase"] = lambda status: status["telemetry"].update(phase_actuator_usage=0.0)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.store.close()


def test_the_fake_status_has_the_shape_of_fleet_status(tmp_path: Path) -> None:
    """The fake answers what the real fleet answers (same keys), so the runner is tested on real shapes."""
    spec = {"id": "tf-x", "protocol": "tf", "preset": "snspd", "sites": {"alice": "a", "bob": "b", "charlie": "c"},
            "distances_km": {"alice_charlie": 25, "charlie_bob": 25},
            "source": {"mu": 0.45, "epsilon_send": 0.023, "nu": 0.09, "nu2": 0.42, "z_window_probability": 0.7}, "block_pulses": 2.0e9}
    fleet = Fleet(parse_config({"runtime": {"state_dir": str(tmp_path / "state")}, "links": [spec]}, tmp_path / "links.yaml"))
    try:
        real = fleet.status("tf-x")
    finally:
        fleet.stop()
    fake = status_of("tf-x", "tf")
    assert set(fake) == set(real)
    assert set(fake["telemetry"]) == set(real["telemetry"]) and set(fake["objectives"]) == set(real["objectives"])
    assert set(fake["telemetry"]["mean_photon_number_commanded"]) == set(real["telemetry"]["mean_photon_number_commanded"])


# ---- outcomes --------------------------------------------------------------------------------------------------

def test_healthy_run_does_nothing(rig: Rig) -> None:
    report = rig.run()
    assert (report.outcome, report.action, rig.api.actions) == ("healthy", None, [])
    assert report.reason.startswith("locked; actuator at 10%") and report.decision.startswith("no action: ")
    assert report.signals["source"] == "status" and report.signals["phase_actuator_usage"] == 0.1
    state = rig.store.state("phase_relock", TF, "tf")
    assert state.last_success_at == T0 and state.failures == 0 and state.last_outcome == "healthy"
    assert rig.durations == [("phase_relock", TF, "tf", report.duration_s)]


def test_corrected_run_acts_once_and_verifies(rig: Rig) -> None:
    rig.drift_phase(0.85)
    rig.recentre_on_relock()
    report = rig.run()
    assert report.outcome == "corrected", report.reason
    assert rig.api.actions == [(TF, "relock_phase")]
    assert report.reason.startswith("phase actuator at 85% of its range (limit 80%) → relock_phase: locked; actuator 85% → 0%")
    assert report.action == {"name": "relock_phase", "ok": True, "message": "done",
                             "before": {"phase_actuator_usage": 0.85}, "after": {"phase_actuator_usage": 0.0}}
    assert report.verification["ok"] and report.verification["signals"]["phase_actuator_usage"] == 0.0
    state = rig.store.state("phase_relock", TF, "tf")
    assert state.last_action_at == T0 and state.last_success_at == T0 and state.failures == 0


def test_refused_action_fails_and_says_so(rig: Rig) -> None:
    rig.drift_phase()
    rig.api.refuse = True
    report = rig.run()
    assert report.outcome == "failed" and report.verification is None
    assert report.reason.endswith("relock_phase refused: actuator fault"), report.reason


def test_ineffective_action_fails_with_the_verification(rig: Rig) -> None:
    rig.drift_phase()
    report = rig.run()
    assert report.outcome == "failed" and rig.api.actions == [(TF, "relock_phase")]
    assert "→ relock_phase: after relock: phase actuator at 90%" in report.reason, report.reason
    assert report.verification["ok"] is False
    state = rig.store.state("phase_relock", TF, "tf")
    assert state.failures == 1 and state.held_until == T0 + BACKOFF_S and not state.exhausted
    assert state.memory[FAILED_ACTIONS] == 1 and state.last_success_at is None


def test_unreachable_api_is_an_error_outcome_not_an_exception(rig: Rig) -> None:
    rig.api.unreachable = True
    report = rig.run()
    assert report.outcome == "error" and "not reachable" in report.reason and report.reason.startswith("SignalsUnavailable")
    state = rig.store.state("phase_relock", TF, "tf")
    assert state.failures == 1 and state.held_until == T0 + BACKOFF_S  # an error backs off …
    assert FAILED_ACTIONS not in state.memory and not state.exhausted  # … but is no failed action


def test_held_run_reports_the_hold_and_does_not_act(rig: Rig) -> None:
    rig.drift_phase()
    rig.run()
    rig.clock.now += 1.0
    report = rig.run()
    assert report.outcome == "held" and report.action is None and len(rig.api.actions) == 1
    assert report.reason.startswith("phase actuator at 90%") and "holding off after 1 failed run(s): next attempt after" in report.reason
    assert rig.store.state("phase_relock", TF, "tf").failures == 1  # a hold is not another failure


def test_not_applicable_and_decoy_without_blocks_are_healthy(rig: Rig) -> None:
    assert rig.run("phase_relock", BB84).reason == "not applicable to bb84-decoy links"
    report = rig.run("decoy_estimation", BB84)
    assert (report.outcome, report.reason) == ("healthy", "no archived blocks yet")
    assert rig.api.actions == []
    links = rig.api.links()
    assert applicable_links(rig.runner.config.jobs["phase_relock"], links) == [(TF, "tf")]
    assert applicable_links(rig.runner.config.jobs["detector_regate"], links) == [(TF, "tf"), (BB84, "bb84-decoy")]


# ---- bounded retries and back-off ------------------------------------------------------------------------------

def test_an_action_that_never_works_is_tried_max_attempts_times_then_held(rig: Rig) -> None:
    rig.drift_phase()  # the relock never re-centres the stretcher (a fault no calibration fixes)
    for _ in range(60):  # 60 runs, 10 s apart: 10 minutes of the job's schedule
        rig.run()
        rig.clock.now += 10.0
    assert rig.api.actions == [(TF, "relock_phase")] * 3
    outcomes = [r.outcome for r in rig.reports]
    assert outcomes.count("failed") == 3 and set(outcomes) == {"failed", "held"}
    last_failed = [r for r in rig.reports if r.outcome == "failed"][-1]
    assert last_failed.reason.endswith("(attempt 3 of 3: holding off until the signals recover)")
    assert rig.reports[-1].outcome == "held" and rig.reports[-1].reason.endswith("waiting for the signals to return to tolerance")
    state = rig.store.state("phase_relock", TF, "tf")
    assert state.exhausted and state.failures == 3


def test_back_off_doubles_between_attempts(rig: Rig) -> None:
    rig.drift_phase()
    rig.run()  # failure 1 at T0: hold 30 s
    assert rig.store.state("phase_relock", TF, "tf").held_until == T0 + 30.0
    rig.clock.now = T0 + 29.9
    assert rig.run().outcome == "held"
    rig.clock.now = T0 + 30.0
    assert rig.run().outcome == "failed" and len(rig.api.actions) == 2  # failure 2: hold 60 s
    assert rig.store.state("phase_relock", TF, "tf").held_until == T0 + 90.0
    rig.clock.now = T0 + 89.0
    assert rig.run().outcome == "held"
    rig.clock.now = T0 + 90.0
    assert rig.run().outcome == "failed" and len(rig.api.actions) == 3
    rig.clock.now = T0 + 10_000.0  # long after any back-off: exhausted, still held
    assert rig.run().outcome == "held" and len(rig.api.actions) == 3


def test_errors_back_off_but_do_not_exhaust_the_attempts(rig: Rig) -> None:
    rig.drift_phase()
    rig.run()
    rig.clock.now += BACKOFF_S
    rig.run()  # two failed actions
    rig.api.unreachable = True
    for _ in range(10):
        rig.clock.now += BACKOFF_MAX_S
        assert rig.run().outcome == "error"
    state = rig.store.state("phase_relock", TF, "tf")
    assert state.failures == 12 and state.memory[FAILED_ACTIONS] == 2 and not state.exhausted
    assert state.held_until == rig.clock.now + BACKOFF_MAX_S  # 12 failures in a row: the cap
    rig.api.unreachable = False
    rig.clock.now += 1.0
    assert rig.run().outcome == "held"  # the errors' back-off holds
    rig.clock.now += BACKOFF_MAX_S
    third = rig.run()
    assert third.outcome == "failed" and len(rig.api.actions) == 3 and "attempt 3 of 3" in third.reason
    assert rig.store.state("phase_relock", TF, "tf").exhausted


def test_an_error_first_then_back_off_holds_the_next_run(rig: Rig) -> None:
    rig.api.unreachable = True
    assert rig.run().outcome == "error"
    rig.api.unreachable = False
    rig.drift_phase()
    rig.clock.now += 1.0
    assert rig.run().outcome == "held" and rig.api.actions == []
    rig.clock.now = T0 + BACKOFF_S
    assert rig.run().outcome == "failed" and len(rig.api.actions) == 1


def test_a_manual_run_ignores_the_hold_and_a_fix_ends_the_streak(rig: Rig) -> None:
    rig.drift_phase()
    for _ in range(3):
        rig.run()
        rig.clock.now += BACKOFF_MAX_S
    assert rig.store.state("phase_relock", TF, "tf").exhausted
    assert rig.run().outcome == "held" and len(rig.api.actions) == 3
    manual = rig.run(manual=True)  # still broken: a human may try anyway
    assert manual.outcome == "failed" and len(rig.api.actions) == 4
    rig.recentre_on_relock()
    fixed = rig.run(manual=True)
    assert fixed.outcome == "corrected" and len(rig.api.actions) == 5
    state = rig.store.state("phase_relock", TF, "tf")
    assert (state.failures, state.held_until, state.exhausted) == (0, 0.0, False) and FAILED_ACTIONS not in state.memory
    assert [r["trigger"] for r in rig.store.runs("phase_relock", TF, limit=2)] == ["manual", "manual"]


def test_a_healthy_run_resets_the_streak(rig: Rig) -> None:
    rig.drift_phase()
    rig.run()
    rig.clock.now += BACKOFF_S
    rig.run()
    assert rig.store.state("phase_relock", TF, "tf").failures == 2
    rig.drift_phase(0.2)  # the drift went away by itself
    rig.clock.now += 1.0
    assert rig.run().outcome == "healthy"  # even while held: in tolerance is healthy
    state = rig.store.state("phase_relock", TF, "tf")
    assert (state.failures, state.held_until, state.exhausted) == (0, 0.0, False) and FAILED_ACTIONS not in state.memory
    rig.drift_phase()
    rig.clock.now += 1.0
    assert rig.run().outcome == "failed"  # acts at once: no hold left over
    for _ in range(2):
        rig.clock.now += BACKOFF_MAX_S
        rig.run()
    assert len(rig.api.actions) == 5 and rig.store.state("phase_relock", TF, "tf").exhausted  # three new attempts


def test_store_counters_match_the_runs(rig: Rig) -> None:
    rig.run()                                   # healthy
    rig.drift_phase()
    rig.run()                                   # failed
    rig.run()                                   # held
    rig.api.unreachable = True
    rig.run()                                   # error
    rig.api.unreachable = False
    rig.recentre_on_relock()
    rig.run(manual=True)                        # corrected
    rig.run("detector_regate")                  # healthy
    rig.api.telemetry(TF)["dark_count_rate_hz"] = 100.0
    rig.run("detector_regate")                  # failed (no effect)
    assert [r.outcome for r in rig.reports] == ["healthy", "failed", "held", "error", "corrected", "healthy", "failed"]
    expected = Counter(("runs", r.job, r.link, r.outcome) for r in rig.reports)
    expected.update(("actions", r.job, r.link, r.action["name"]) for r in rig.reports if r.action)
    assert rig.counters() == {key: float(n) for key, n in expected.items()}
    assert {r.outcome for r in rig.reports} == set(OUTCOMES)
    ledger = rig.store.runs(limit=100)
    assert [(r["job"], r["outcome"], r["reason"]) for r in reversed(ledger)] == [(r.job, r.outcome, r.reason) for r in rig.reports]
    assert [r["id"] for r in reversed(ledger)] == [r.run_id for r in rig.reports]
    assert all(r["report"]["outcome"] == r["outcome"] and r["finished_at"] is not None for r in ledger)
    assert rig.store.state("detector_regate", TF, "tf").failures == 1
    assert rig.store.state("phase_relock", TF, "tf").failures == 0


def test_a_bug_in_a_check_is_an_error_outcome_and_the_runner_survives(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any) -> Any:
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(CHECKS["polarization_realign"], "assess", broken)
    report = rig.run("polarization_realign")
    assert report.outcome == "error" and report.reason == "unexpected ZeroDivisionError: float division by zero"
    assert "polarization_realign on tf-a failed unexpectedly" in caplog.text
    assert rig.store.runs("polarization_realign", TF, limit=1)[0]["outcome"] == "error"
    assert rig.counters()[("runs", "polarization_realign", TF, "error")] == 1.0
    monkeypatch.undo()
    rig.clock.now += BACKOFF_S
    assert rig.run("polarization_realign").outcome == "healthy"  # lease released, the job runs again


def test_monitor_readings_are_confirmed_and_verified_on_means_of_frames(rig: Rig) -> None:
    levels = rig.api.telemetry(BB84)["mean_photon_number_measured"]
    levels["nu"] = 0.11
    rig.api.effects["retune_intensities"] = lambda status: status["telemetry"]["mean_photon_number_measured"].update(nu=0.1)
    report = rig.run("intensity_retune", BB84)
    assert report.outcome == "corrected", report.reason
    # the reading at T0 confirmed by the frames ending at T0 + 1 and + 2, then acted; verified on the
    # three frames measured entirely after the action (ending T0 + 3, + 4, + 5)
    assert rig.clock.now - T0 == pytest.approx(5.0, abs=0.06)
    assert "sampled readings averaged over 3 frames" in report.verification["signals"]["notes"]
    assert report.duration_s == pytest.approx(rig.clock.now - T0)


def test_one_noisy_monitor_reading_is_not_acted_on(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A single reading 3 % high whose next frames read true averages to 1 %: no action."""
    levels = rig.api.telemetry(BB84)["mean_photon_number_measured"]
    levels["nu"] = 0.103
    real_status = rig.api.status

    def status(link: str) -> dict[str, Any]:
        answer = real_status(link)
        levels["nu"] = 0.1  # every frame after the first reads true
        return answer

    monkeypatch.setattr(rig.api, "status", status)
    report = rig.run("intensity_retune", BB84)
    assert report.outcome == "healthy" and not rig.api.actions, report.reason
    assert report.signals["intensity_measured"]["decoy"] == pytest.approx(0.101)
    assert "sampled readings averaged over 3 frames" in report.signals["notes"]


def test_a_qber_fix_is_judged_on_the_first_block_measured_entirely_after_the_action(rig: Rig) -> None:
    rig.api.statuses[BB84]["last_block"]["qber"] = rig.api.qber[BB84] = 0.08
    rig.api.effects["realign_polarization"] = lambda status: rig.api.qber.update({BB84: 0.02})
    rig.clock.now = T0 + 0.5  # mid-block 5 (T0 … T0 + 2): its QBER is half from before the action
    report = rig.run("polarization_realign", BB84)
    assert report.outcome == "corrected", report.reason
    assert report.reason == "key-basis QBER 8.00% above 4.40% → realign_polarization: frame angle 0.000 → 0.000 rad, QBER 2.00%"
    assert rig.clock.now == pytest.approx(T0 + 4.0, abs=0.06)  # block 6 closed at T0 + 4
    assert report.verification["signals"]["block_end_timestamp"] == T0 + 4.0


def test_a_qber_that_realignment_does_not_move_fails_as_not_polarization(rig: Rig) -> None:
    rig.api.statuses[BB84]["last_block"]["qber"] = rig.api.qber[BB84] = 0.5  # fibre cut: dark counts only
    report = rig.run("polarization_realign", BB84)
    assert report.outcome == "failed" and len(rig.api.actions) == 1
    assert report.reason.endswith("QBER 50.00% still above 4.40% with the frame aligned (0.000 rad): "
                                  "not polarization drift (check loss, stray light, timing)"), report.reason


def test_a_verification_that_never_gets_its_frame_times_out_as_an_error(rig: Rig) -> None:
    rig.api.effects["retune_intensities"] = lambda status: setattr(rig.api, "stalled", True)  # frames stop
    rig.api.telemetry(BB84)["mean_photon_number_measured"]["nu"] = 0.11
    report = rig.run("intensity_retune", BB84)
    assert report.outcome == "error" and report.action["name"] == "retune_intensities"
    assert report.reason == "ValueError: only 0 of 3 frames measured within 12 s: cannot verify"
    assert rig.clock.now - T0 == pytest.approx(2.0 + 12.5, abs=0.15)  # acted at T0 + 2 (polled); 2.5 x 3 frames + 5 s slack


def test_actions_stay_bounded_when_their_verification_never_completes(rig: Rig) -> None:
    rig.api.effects["retune_intensities"] = lambda status: setattr(rig.api, "stalled", True)
    rig.api.telemetry(BB84)["mean_photon_number_measured"]["nu"] = 0.11
    for _ in range(8):
        rig.run("intensity_retune", BB84)
        rig.clock.now += BACKOFF_MAX_S
    assert len(rig.api.actions) <= 3, [r.outcome for r in rig.reports]


def test_a_block_measured_before_the_last_action_does_not_trigger_again(rig: Rig) -> None:
    rig.api.telemetry(BB84)["polarization_drift_rad"] = 0.25  # +6 % QBER …
    rig.api.statuses[BB84]["last_block"]["qber"] = rig.api.qber[BB84] = 0.065  # … in the last block
    rig.api.effects["realign_polarization"] = lambda status: (status["telemetry"].update(polarization_drift_rad=0.0),
                                                              rig.api.qber.update({BB84: 0.02}))
    assert rig.run("polarization_realign", BB84).outcome == "corrected"  # angle trigger, verified at once
    rig.clock.now += 1.0  # the next run, before the next block closes
    report = rig.run("polarization_realign", BB84)
    assert (report.outcome, len(rig.api.actions)) == ("healthy", 1), report.reason


# ---- store: leases and ledger -----------------------------------------------------------------------------------

def test_a_second_lease_on_the_same_job_and_link_is_refused(rig: Rig) -> None:
    with rig.store.lease("phase_relock", TF, "schedule") as first:
        with pytest.raises(RunBusy, match=rf"phase_relock on tf-a is already running \(run {first}, "):
            with rig.store.lease("phase_relock", TF, "manual"):
                pass
        with pytest.raises(RunBusy):
            rig.run()  # a runner run is refused too, and records nothing
        with rig.store.lease("phase_relock", BB84, "schedule"), rig.store.lease("detector_regate", TF, "schedule"):
            pass  # other (job, link) pairs are free
    assert rig.api.actions == [] and rig.counters() == {}
    with rig.store.lease("phase_relock", TF, "manual") as second:
        assert second > first


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant_lease(path: Path, job: str, link: str, pid: int, host: str, acquired_at: float) -> int:
    """What a run of another process leaves in the store: an unfinished run and its lease."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        run_id = db.execute("INSERT INTO runs (job, link, trigger, owner, started_at) VALUES (?,?,?,?,?)",
                            (job, link, "schedule", f"{host}:{pid}", acquired_at)).lastrowid
        db.execute("INSERT INTO leases VALUES (?,?,?,?,?,?,?)", (job, link, f"{host}:{pid}", pid, host, acquired_at, run_id))
    finally:
        db.close()
    return run_id


def test_a_lease_of_a_dead_process_is_broken_and_its_run_marked_interrupted(rig: Rig) -> None:
    pid = _dead_pid()
    owner = f"{socket.gethostname()}:{pid}"
    stale = _plant_lease(rig.store.path, "phase_relock", TF, pid, socket.gethostname(), T0 - 5.0)
    report = rig.run()
    assert report.outcome == "healthy" and report.run_id != stale
    runs = {r["id"]: r for r in rig.store.runs("phase_relock", TF)}
    assert runs[stale]["outcome"] == "interrupted" and runs[stale]["finished_at"] == T0
    assert runs[stale]["reason"] == f"its process ({owner}) stopped mid-run"
    assert rig.counters() == {("runs", "phase_relock", TF, "healthy"): 1.0}  # an interruption is no run outcome


def test_opening_the_store_records_a_killed_holders_run_as_interrupted_at_once(rig: Rig) -> None:
    dead = _plant_lease(rig.store.path, "phase_relock", TF, _dead_pid(), socket.gethostname(), T0 - 5.0)
    live = _plant_lease(rig.store.path, "detector_regate", TF, 1, "another-host", T0 - 5.0)
    reopened = CalibrationStore(rig.store.path, clock=lambda: T0 + 1.0)  # what a restarted scheduler does first
    try:
        runs = {r["id"]: r for r in reopened.runs(None, TF)}
        assert runs[dead]["outcome"] == "interrupted" and runs[dead]["finished_at"] == T0 + 1.0
        assert runs[live]["finished_at"] is None  # a holder that may still run keeps its lease
        with pytest.raises(RunBusy):
            with reopened.lease("detector_regate", TF, "manual"):
                pass
    finally:
        reopened.close()


def test_a_live_lease_elsewhere_is_respected_until_its_ttl(rig: Rig) -> None:
    _plant_lease(rig.store.path, "phase_relock", TF, 1, "another-host", T0 - 10.0)
    with pytest.raises(RunBusy, match="another-host:1"):
        rig.run()
    rig.clock.now = T0 - 10.0 + store_module.LEASE_TTL_S  # a lease that old is broken (pid reuse, lost host)
    assert rig.run().outcome == "healthy"
    assert rig.store.runs("phase_relock", TF)[1]["outcome"] == "interrupted"


def test_the_ledger_keeps_the_newest_runs_per_job_and_link(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "LEDGER_PER_JOB", 5)
    for _ in range(12):
        rig.run()
        rig.clock.now += 1.0
    for _ in range(3):
        rig.run("detector_regate")
    relock = rig.store.runs("phase_relock", TF, limit=100)
    assert [r["id"] for r in relock] == [r.run_id for r in reversed(rig.reports[7:12])]
    assert len(rig.store.runs("detector_regate", TF, limit=100)) == 3
    assert rig.counters()[("runs", "phase_relock", TF, "healthy")] == 12.0  # counters are not pruned


def test_state_and_counters_survive_a_new_store(tmp_path: Path) -> None:
    first = Rig(tmp_path)
    first.drift_phase()
    first.run()
    first.store.close()
    second = Rig(tmp_path)
    try:
        second.drift_phase()
        second.clock.now = T0 + 1.0
        assert second.run().outcome == "held"  # the back-off outlived the restart
        assert second.counters() == {("runs", "phase_relock", TF, "failed"): 1.0, ("actions", "phase_relock", TF, "relock_phase"): 1.0,
                                     ("runs", "phase_relock", TF, "held"): 1.0}
    finally:
        second.store.close()
