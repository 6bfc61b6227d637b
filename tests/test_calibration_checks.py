"""The four device checks on hand-built ``LinkSignals``: when each acts, what it says, how it verifies.

Tolerances are given explicitly (not read from the shipped ``jobs.yaml``), so these tests pin the
checks' rules, not the file's tuning.
"""

from __future__ import annotations

from typing import Any

import pytest

from calibration_jobs.checks import CHECKS, TWO_ARM_PROTOCOLS, Decision, DetectorRegate, IntensityRetune, PhaseRelock, PolarizationRealign
from calibration_jobs.config import JOB_NAMES, THRESHOLDS, JobSettings
from calibration_jobs.signals import LinkSignals
from exporters.catalogue import CATALOGUE

RELOCK = JobSettings("phase_relock", thresholds={"actuator_usage": 0.8, "phase_error_rad": 0.3})
RETUNE = JobSettings("intensity_retune", thresholds={"relative_deviation": 0.02, "vacuum_leak_ratio": 0.005})
REALIGN = JobSettings("polarization_realign", thresholds={"angle_rad": 0.03, "qber_alarm_ratio": 0.4})
REGATE = JobSettings("detector_regate", thresholds={"dark_count_ratio": 1.5, "live_time_drop_ratio": 0.5})
TF_LEVELS = {"signal": 0.45, "decoy": 0.09, "decoy2": 0.42}
BB84_LEVELS = {"signal": 0.5, "decoy": 0.1, "vacuum": 0.0002}


def tf(**changes: Any) -> LinkSignals:
    """A healthy TF link's readings (status source), with ``changes``."""
    values: dict[str, Any] = dict(
        link="tf-a", protocol="tf", source="status", observed_at=1.7e9, phase_locked=True, phase_error_rad=0.09,
        phase_actuator_usage=0.1, intensity_commanded=dict(TF_LEVELS), intensity_measured=dict(TF_LEVELS),
        dark_count_rate_hz=10.0, dark_count_rate_nominal_hz=10.0, live_time_ratio=0.64, polarization_angle_rad=0.0,
        visibility=0.94, detection_rate_hz=2.0e4, block_qber=0.02, block_end_timestamp=1.7e9 - 1, qber_threshold=0.11)
    values.update(changes)
    return LinkSignals(**values)


def bb84(**changes: Any) -> LinkSignals:
    """A healthy BB84 link's readings: no phase reference."""
    values: dict[str, Any] = dict(
        link="bb84-a", protocol="bb84-decoy", phase_locked=None, phase_error_rad=None, phase_actuator_usage=None,
        intensity_commanded=dict(BB84_LEVELS), intensity_measured=dict(BB84_LEVELS), dark_count_rate_hz=600.0,
        dark_count_rate_nominal_hz=600.0, live_time_ratio=0.82, visibility=0.99)
    values.update(changes)
    return tf(**values)


def test_every_job_has_a_check_whose_action_is_in_the_catalogue() -> None:
    assert set(CHECKS) | {"decoy_estimation"} == set(JOB_NAMES)
    assert {c.action for c in CHECKS.values()} == CATALOGUE.labels["action"]
    assert PhaseRelock.protocols == TWO_ARM_PROTOCOLS and "bb84-decoy" not in PhaseRelock.protocols
    for name, check in CHECKS.items():
        assert check.name == name and set(THRESHOLDS[name])


# ---- phase relock ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "words"), [
    ({"phase_locked": False}, "phase lock lost"),
    ({"phase_locked": False, "phase_actuator_usage": 0.0, "phase_error_rad": 0.0}, "phase lock lost"),
    ({"phase_actuator_usage": 0.8}, "phase actuator at 80% of its range (limit 80%)"),
    ({"phase_actuator_usage": 0.97}, "phase actuator at 97%"),
    ({"phase_error_rad": 0.31}, "phase error 0.310 rad above 0.3 rad"),
])
def test_phase_relock_acts_on_lost_lock_used_actuator_or_phase_error(changes: dict[str, Any], words: str) -> None:
    decision = PhaseRelock().assess(tf(**changes), RELOCK, {})
    assert decision.act and words in decision.reason, decision
    assert decision.verify_on == "now"  # lock and stretcher are device state


@pytest.mark.parametrize("changes", [{}, {"phase_actuator_usage": 0.79}, {"phase_error_rad": 0.3},
                                     {"phase_actuator_usage": 0.79, "phase_error_rad": 0.29},
                                     {"phase_actuator_usage": None, "phase_error_rad": None}])
def test_phase_relock_leaves_a_locked_loop_within_tolerance_alone(changes: dict[str, Any]) -> None:
    decision = PhaseRelock().assess(tf(**changes), RELOCK, {})
    assert not decision.act and decision.reason.startswith("locked"), decision


def test_phase_relock_does_not_apply_to_bb84() -> None:
    decision = PhaseRelock().assess(bb84(), RELOCK, {})
    assert decision == Decision(False, "no phase reference on this link")


def test_phase_relock_verification() -> None:
    check, before = PhaseRelock(), tf(phase_actuator_usage=0.85)
    decision = check.assess(before, RELOCK, {})
    ok = check.verify(before, tf(phase_actuator_usage=0.0, phase_error_rad=0.08), decision, RELOCK, {})
    assert ok.ok and "85% → 0%" in ok.reason
    lost = check.verify(before, tf(phase_locked=False, phase_actuator_usage=0.0), decision, RELOCK, {})
    assert not lost.ok and lost.reason == "phase lock not re-acquired"
    still = check.verify(before, tf(phase_actuator_usage=0.9), decision, RELOCK, {})
    assert not still.ok and still.reason.startswith("after relock: phase actuator at 90%")
    noisy = check.verify(before, tf(phase_actuator_usage=0.0, phase_error_rad=0.5), decision, RELOCK, {})
    assert not noisy.ok and "phase error 0.500 rad" in noisy.reason


# ---- intensity retune ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("level", "factor", "words"), [
    ("signal", 1.03, "signal 0.4635 vs 0.45 commanded (+3.0%)"),
    ("decoy", 0.975, "decoy 0.08775 vs 0.09 commanded (-2.5%)"),
    ("decoy2", 1.021, "decoy2"),
])
def test_intensity_retune_acts_on_a_relative_deviation_beyond_tolerance(level: str, factor: float, words: str) -> None:
    measured = {**TF_LEVELS, level: TF_LEVELS[level] * factor}
    decision = IntensityRetune().assess(tf(intensity_measured=measured), RETUNE, {})
    assert decision.act and decision.reason.startswith("intensities off their commands: ") and words in decision.reason, decision
    assert decision.verify_on == "frame"  # the monitor needs a frame measured after the action
    assert [other for other in TF_LEVELS if other != level and f"{other} " in decision.reason] == []


@pytest.mark.parametrize("factor", [1.0, 1.019, 0.981])
def test_intensity_retune_leaves_levels_within_tolerance_alone(factor: float) -> None:
    measured = {k: v * factor for k, v in TF_LEVELS.items()}
    decision = IntensityRetune().assess(tf(intensity_measured=measured), RETUNE, {})
    assert not decision.act and decision.reason == "all 3 levels within 2%", decision


def test_intensity_retune_judges_a_vacuum_like_level_by_its_leak_relative_to_the_signal() -> None:
    check, peak = IntensityRetune(), BB84_LEVELS["signal"]
    # 20x its tiny command, yet only 0.4 % of the signal: within the 0.5 % leak tolerance
    quiet = {**BB84_LEVELS, "vacuum": BB84_LEVELS["vacuum"] + 0.004 * peak}
    assert not check.assess(bb84(intensity_measured=quiet), RETUNE, {}).act
    leaking = {**BB84_LEVELS, "vacuum": BB84_LEVELS["vacuum"] + 0.006 * peak}
    decision = check.assess(bb84(intensity_measured=leaking), RETUNE, {})
    assert decision.act and "vacuum" in decision.reason and "leak 0.60% of signal" in decision.reason, decision
    assert decision.verify_on == "frame"
    # below its command is no leak (and a true vacuum, commanded 0, divides by nothing)
    assert not check.assess(bb84(intensity_measured={**BB84_LEVELS, "vacuum": 0.0}), RETUNE, {}).act
    zero = {**BB84_LEVELS, "vacuum": 0.0}
    assert not check.assess(bb84(intensity_commanded=zero, intensity_measured={**zero, "vacuum": 0.001}), RETUNE, {}).act
    assert check.assess(bb84(intensity_commanded=zero, intensity_measured={**zero, "vacuum": 0.004}), RETUNE, {}).act


def test_intensity_retune_without_monitor_readings_does_nothing() -> None:
    assert IntensityRetune().assess(tf(intensity_measured={}), RETUNE, {}) == Decision(False, "no intensity monitor readings yet")
    only_signal = IntensityRetune().assess(tf(intensity_measured={"signal": 0.45}), RETUNE, {})
    assert not only_signal.act  # levels without a reading are not judged


def test_intensity_retune_verification() -> None:
    """Back in tolerance, or the worst error at least halved a frame later (a modulator drifting
    faster than the tolerance holds); anything less did not work."""
    check = IntensityRetune()
    before = tf(intensity_measured={**TF_LEVELS, "decoy": 0.1})  # +11.1 %: 5.6x the 2 % tolerance
    decision = check.assess(before, RETUNE, {})
    back = check.verify(before, tf(), decision, RETUNE, {})
    assert back.ok and back.reason == "monitor readings back within tolerance"
    halved = check.verify(before, tf(intensity_measured={**TF_LEVELS, "decoy": 0.094}), decision, RETUNE, {})
    assert halved.ok and halved.reason.startswith("worst level cut from 5.6x to 2.2x its tolerance"), halved
    little = check.verify(before, tf(intensity_measured={**TF_LEVELS, "decoy": 0.096}), decision, RETUNE, {})
    assert not little.ok and little.reason == "after retune: decoy 0.096 vs 0.09 commanded (+6.7%)", little
    elsewhere = check.verify(before, tf(intensity_measured={**TF_LEVELS, "signal": 0.5}), decision, RETUNE, {})
    assert not elsewhere.ok and elsewhere.reason == "after retune: signal 0.5 vs 0.45 commanded (+11.1%)"  # moved the error
    leak_before = bb84(intensity_measured={**BB84_LEVELS, "vacuum": 0.0002 + 0.02 * 0.5})  # leak 2 %: 4x
    leak_decision = check.assess(leak_before, RETUNE, {})
    still = check.verify(leak_before, bb84(intensity_measured={**BB84_LEVELS, "vacuum": 0.0002 + 0.015 * 0.5}), leak_decision, RETUNE, {})
    assert not still.ok and "leak 1.50% of signal" in still.reason


# ---- polarization realignment ----------------------------------------------------------------------------------

@pytest.mark.parametrize("angle", [0.05, -0.05, 0.031])
def test_polarization_angle_beyond_tolerance_acts_and_verifies_at_once(angle: float) -> None:
    decision = PolarizationRealign().assess(bb84(polarization_angle_rad=angle), REALIGN, {})
    assert decision.act and decision.verify_on == "now"
    assert f"polarization frame rotated {abs(angle):.3f} rad (limit 0.03 rad" in decision.reason, decision


def test_polarization_qber_beyond_its_alarm_acts_and_verifies_on_a_block() -> None:
    # alarm at 40 % of the link's 11 % abort threshold: 4.4 %
    decision = PolarizationRealign().assess(bb84(polarization_angle_rad=0.01, block_qber=0.05), REALIGN, {})
    assert decision.act and decision.verify_on == "block"
    assert decision.reason == "key-basis QBER 5.00% above 4.40%"


@pytest.mark.parametrize("changes", [{"polarization_angle_rad": 0.03, "block_qber": 0.044},
                                     {"block_qber": None}, {"block_qber": 0.09, "qber_threshold": None}])
def test_polarization_within_tolerance_or_without_a_block_does_nothing(changes: dict[str, Any]) -> None:
    decision = PolarizationRealign().assess(bb84(**changes), REALIGN, {})
    assert not decision.act, decision


def test_polarization_verification_of_an_angle_fix() -> None:
    check, before = PolarizationRealign(), bb84(polarization_angle_rad=0.2, block_qber=0.06)
    decision = check.assess(before, REALIGN, {})
    assert decision.verify_on == "now"
    # the last block predates the action: its QBER does not judge an angle fix
    ok = check.verify(before, bb84(polarization_angle_rad=0.002, block_qber=0.06), decision, REALIGN, {})
    assert ok.ok and ok.reason == "frame angle 0.200 → 0.002 rad"
    still = check.verify(before, bb84(polarization_angle_rad=-0.1), decision, REALIGN, {})
    assert not still.ok and still.reason == "frame still rotated 0.100 rad after realignment"


def test_polarization_verification_of_a_qber_fix_names_what_it_is_not() -> None:
    check, before = PolarizationRealign(), bb84(block_qber=0.5)
    decision = check.assess(before, REALIGN, {})
    assert decision.verify_on == "block"
    fixed = check.verify(before, bb84(block_qber=0.02), decision, REALIGN, {})
    assert fixed.ok and "QBER 2.00%" in fixed.reason
    cut = check.verify(before, bb84(block_qber=0.5, polarization_angle_rad=0.001), decision, REALIGN, {})
    assert not cut.ok
    assert "QBER 50.00% still above 4.40% with the frame aligned" in cut.reason and "not polarization drift" in cut.reason, cut


# ---- detector re-gating ------------------------------------------------------------------------------------------

def test_detector_regate_acts_on_dark_counts_beyond_the_ratio() -> None:
    check = DetectorRegate()
    decision = check.assess(bb84(dark_count_rate_hz=1000.0), REGATE, {})
    assert decision.act and decision.verify_on == "now"
    assert decision.reason == "dark counts 1000 Hz, 1.67x the healthy 600 Hz"
    assert not check.assess(bb84(dark_count_rate_hz=900.0), REGATE, {}).act  # 1.5x exactly
    assert not check.assess(bb84(dark_count_rate_nominal_hz=0.0, dark_count_rate_hz=1e6), REGATE, {}).act  # no reference


def test_detector_live_time_reference_is_learned_only_from_healthy_runs() -> None:
    check, memory = DetectorRegate(), {}
    # an unhealthy assessment (dark counts up) teaches nothing, whatever its live time
    assert check.assess(bb84(dark_count_rate_hz=5000.0, live_time_ratio=0.95), REGATE, memory).act
    assert memory == {}
    assert not check.assess(bb84(live_time_ratio=0.8), REGATE, memory).act
    assert memory == {"live_time_reference": 0.8}
    assert not check.assess(bb84(live_time_ratio=0.6), REGATE, memory).act
    assert memory["live_time_reference"] == pytest.approx(0.76)  # moves 20 % towards each healthy reading
    # a drop below half the reference acts, and the saturated reading is not learned
    decision = check.assess(bb84(live_time_ratio=0.3), REGATE, memory)
    assert decision.act and decision.reason == "live time 0.300, below 50% of the healthy 0.760"
    assert memory["live_time_reference"] == pytest.approx(0.76)
    assert not check.assess(bb84(live_time_ratio=0.39), REGATE, memory).act  # above 0.38


def test_a_dark_fibre_teaches_the_live_time_reference_nothing() -> None:
    """A fibre cut idles the detectors (live time ~1, QBER of dark counts alone): learning from it made a
    metro link's normal live time read as saturation after the cut, for good."""
    check, memory = DetectorRegate(), {}
    assert not check.assess(bb84(live_time_ratio=0.45), REGATE, memory).act
    for _ in range(30):   # 15 minutes of runs every 30 s in the cut
        assert not check.assess(bb84(live_time_ratio=0.99, block_qber=0.5), REGATE, memory).act
    assert not check.assess(bb84(live_time_ratio=0.99, block_qber=None), REGATE, memory).act   # no block yet
    assert memory == {"live_time_reference": 0.45}
    assert not check.assess(bb84(live_time_ratio=0.45), REGATE, memory).act   # the cut mended: healthy again


def test_detector_live_time_alone_never_acts_without_a_reference() -> None:
    assert not DetectorRegate().assess(bb84(live_time_ratio=0.05), REGATE, {}).act


def test_detector_regate_verification_blames_stray_light_when_live_time_stays_low() -> None:
    check, memory = DetectorRegate(), {"live_time_reference": 0.8}
    before = bb84(dark_count_rate_hz=2000.0, live_time_ratio=0.2)
    decision = check.assess(before, REGATE, memory)
    assert decision.act and "dark counts" in decision.reason and "live time" in decision.reason
    fixed = check.verify(before, bb84(dark_count_rate_hz=610.0, live_time_ratio=0.8), decision, REGATE, memory)
    assert fixed.ok and fixed.reason == "dark counts 2000 → 610 Hz"
    blinded = check.verify(before, bb84(dark_count_rate_hz=610.0, live_time_ratio=0.2), decision, REGATE, memory)
    assert not blinded.ok and blinded.reason.startswith("after re-gating: live time 0.200") and "stray light" in blinded.reason
    warm = check.verify(before, bb84(dark_count_rate_hz=2000.0, live_time_ratio=0.8), decision, REGATE, memory)
    assert not warm.ok and "dark counts 2000 Hz" in warm.reason and "stray light" not in warm.reason
    assert memory == {"live_time_reference": 0.8}  # verification never teaches the reference
