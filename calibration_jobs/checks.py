"""The four device calibrations: what each reads, when it acts, and how it knows the action worked.

Each check looks at ``LinkSignals`` against its tolerances (``jobs.yaml``) and returns a
``Decision``; when it acts, the runner calls its control-API action and hands the check the link's
fresh read-outs to ``verify``. A check never acts on a signal its action cannot move: the reason it
gives says which reading was out of tolerance and by how much, and the verification says what the
action did to it — so a fault no calibration fixes (fibre cut, stray light) ends as a *failed*
outcome with that reason, and the runner's bounded retries stop the job from repeating it.

Tolerances are physical: the added QBER of a polarization frame rotated by θ is sin²θ (Malus), a
first-order phase-lock loop opens when its actuator runs out of range (Gardner, *Phaselock
Techniques*, 3rd ed., Wiley 2005, ch. 9), and thermal dark counts double about every 10 K (Itzler et
al., J. Mod. Opt. 58, 174 (2011)); the emulator's device models (``qkdlink.emulator.devices``) cite
the same papers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from calibration_jobs.config import JobSettings
from calibration_jobs.signals import LinkSignals

TWO_ARM_PROTOCOLS = ("mdi", "tf")
ALL_PROTOCOLS = ("bb84-decoy", "mdi", "tf")
# Reference readings a check learns from healthy runs decay towards new ones at this rate per run.
REFERENCE_WEIGHT = 0.2
# Memory key (set by the runner when it acts): blocks ending up to this link-clock time were measured
# at least partly before the last action, so their QBER says nothing about the state it left.
STALE_BLOCKS_UNTIL = "stale_blocks_until"
# A level commanded below this share of the signal is a vacuum (or near-vacuum) decoy: its error is
# judged as leaked light relative to the signal, since a relative error of ~0 is meaningless.
VACUUM_LIKE = 0.01
# A retune that leaves a level out of tolerance still worked if it cut the worst error to this share:
# a modulator drifting faster than the tolerance per frame is out again by the next reading.
EFFECTIVE = 0.5


@dataclass(frozen=True)
class Decision:
    """Whether to act, and why: ``reason`` names the reading and the tolerance it crossed.

    ``verify_on`` says what verification must wait for: ``now`` — device state read-outs (lock,
    stretcher, frame angle, temperature) answer as soon as the action returns; ``frame`` — a sampled
    reading (the intensity monitor) needs a frame measured after the action; ``block`` — a block
    statistic (QBER) needs a block measured after the action.
    """

    act: bool
    reason: str
    verify_on: str = "now"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


class Check(ABC):
    """One calibration job: its control-API action, the protocols it applies to, decide, verify."""

    name: str
    action: str
    protocols: tuple[str, ...] = ALL_PROTOCOLS

    @abstractmethod
    def assess(self, s: LinkSignals, settings: JobSettings, memory: MutableMapping[str, float]) -> Decision:
        """Decide from ``s``; ``memory`` holds the references this check learns per link (persisted)."""

    @abstractmethod
    def verify(self, before: LinkSignals, after: LinkSignals, decision: Decision, settings: JobSettings,
               memory: Mapping[str, float]) -> Verdict:
        """Judge the action from the read-outs ``after`` it (see ``Decision.verify_on``)."""


class PhaseRelock(Check):
    """Re-centre the fibre stretcher and re-acquire lock before (or after) the loop opens.

    Acts when lock is lost, when the actuator has used ``actuator_usage`` of its range (the loop
    would open at 1), or when the residual phase error exceeds ``phase_error_rad``.
    """

    name, action, protocols = "phase_relock", "relock_phase", TWO_ARM_PROTOCOLS

    def assess(self, s: LinkSignals, settings: JobSettings, memory: MutableMapping[str, float]) -> Decision:
        if s.phase_locked is None:
            return Decision(False, "no phase reference on this link")
        if not s.phase_locked:
            return Decision(True, "phase lock lost")
        usage, error = s.phase_actuator_usage, s.phase_error_rad
        if usage is not None and usage >= settings.threshold("actuator_usage"):
            return Decision(True, f"phase actuator at {usage:.0%} of its range (limit {settings.threshold('actuator_usage'):.0%})")
        if error is not None and error > settings.threshold("phase_error_rad"):
            return Decision(True, f"phase error {error:.3f} rad above {settings.threshold('phase_error_rad'):g} rad")
        return Decision(False, f"locked; actuator at {usage or 0.0:.0%}, phase error {error or 0.0:.3f} rad")

    def verify(self, before: LinkSignals, after: LinkSignals, decision: Decision, settings: JobSettings,
               memory: Mapping[str, float]) -> Verdict:
        if not after.phase_locked:
            return Verdict(False, "phase lock not re-acquired")
        still = self.assess(after, settings, {})
        if still.act:
            return Verdict(False, f"after relock: {still.reason}")
        return Verdict(True, f"locked; actuator {before.phase_actuator_usage or 0.0:.0%} → {after.phase_actuator_usage or 0.0:.0%}, "
                             f"phase error {after.phase_error_rad or 0.0:.3f} rad")


class IntensityRetune(Check):
    """Bring the monitored mean photon numbers back to their commanded values.

    Each level may be off by ``relative_deviation`` of its command; a vacuum-like level (commanded
    below 1 % of the signal) may not exceed its command by more than ``vacuum_leak_ratio`` of the
    signal level — the light an MZM leaks through a drifted null (Wooten et al., IEEE JSTQE 6, 69
    (2000)). Decoy bounds assume the commanded values, so a drifted modulator biases them. The next
    frame's reading verifies: back in tolerance, or at least the worst error halved (a modulator
    drifting faster than the tolerance per frame); otherwise the retune did not work.
    """

    name, action = "intensity_retune", "retune_intensities"

    def errors(self, s: LinkSignals, settings: JobSettings) -> dict[str, tuple[float, str]]:
        """Per level out of tolerance: (error in units of its tolerance, description)."""
        peak = max(s.intensity_commanded.values(), default=0.0)
        out = {}
        for level, commanded in sorted(s.intensity_commanded.items()):
            measured = s.intensity_measured.get(level)
            if measured is None or peak <= 0:
                continue
            if commanded >= VACUUM_LIKE * peak:
                relative = measured / commanded - 1.0
                score = abs(relative) / settings.threshold("relative_deviation")
                text = f"{level} {measured:.4g} vs {commanded:.4g} commanded ({relative:+.1%})"
            else:
                leak = (measured - commanded) / peak
                score = leak / settings.threshold("vacuum_leak_ratio")
                text = f"{level} {measured:.3g} vs {commanded:.3g} commanded (leak {leak:.2%} of signal)"
            if score > 1.0:
                out[level] = (score, text)
        return out

    def assess(self, s: LinkSignals, settings: JobSettings, memory: MutableMapping[str, float]) -> Decision:
        if not s.intensity_measured:
            return Decision(False, "no intensity monitor readings yet")
        off = self.errors(s, settings)
        if off:
            return Decision(True, "intensities off their commands: " + "; ".join(t for _, t in off.values()), verify_on="frame")
        return Decision(False, f"all {len(s.intensity_measured)} levels within {settings.threshold('relative_deviation'):.0%}")

    def verify(self, before: LinkSignals, after: LinkSignals, decision: Decision, settings: JobSettings,
               memory: Mapping[str, float]) -> Verdict:
        off, was = self.errors(after, settings), self.errors(before, settings)
        if not off:
            return Verdict(True, "monitor readings back within tolerance")
        worst_before = max((score for score, _ in was.values()), default=0.0)
        worst_after = max(score for score, _ in off.values())
        if worst_after <= EFFECTIVE * worst_before:
            return Verdict(True, f"worst level cut from {worst_before:.1f}x to {worst_after:.1f}x its tolerance a frame later: "
                                 "the modulator drifts faster than the tolerance holds")
        return Verdict(False, "after retune: " + "; ".join(t for _, t in off.values()))


class PolarizationRealign(Check):
    """Realign the polarization reference frame when it has rotated or the key-basis QBER is up.

    Two triggers: the frame angle θ measured on the reference pulses beyond ``angle_rad`` (adds
    sin²θ to the QBER), or the last block's key-basis QBER above ``qber_alarm_ratio`` of the link's
    abort threshold — unless that block was measured before the job's last action. A QBER that stays
    up after a good realignment is not polarization (loss, stray light, timing): the verdict says so
    and the job fails rather than realigning again.
    """

    name, action = "polarization_realign", "realign_polarization"

    def _qber_limit(self, s: LinkSignals, settings: JobSettings) -> float | None:
        return None if s.qber_threshold is None else settings.threshold("qber_alarm_ratio") * s.qber_threshold

    def assess(self, s: LinkSignals, settings: JobSettings, memory: MutableMapping[str, float]) -> Decision:
        angle, limit = abs(s.polarization_angle_rad), settings.threshold("angle_rad")
        if angle > limit:
            return Decision(True, f"polarization frame rotated {angle:.3f} rad (limit {limit:g} rad: "
                                  f"+{math.sin(angle) ** 2:.2%} QBER)")
        qber_limit = self._qber_limit(s, settings)
        measured_before_fix = s.block_end_timestamp is not None and s.block_end_timestamp <= memory.get(STALE_BLOCKS_UNTIL, -math.inf)
        if s.block_qber is not None and qber_limit is not None and s.block_qber > qber_limit and not measured_before_fix:
            return Decision(True, f"key-basis QBER {s.block_qber:.2%} above {qber_limit:.2%}", verify_on="block")
        qber = "no block yet" if s.block_qber is None else f"QBER {s.block_qber:.2%}"
        return Decision(False, f"frame angle {angle:.3f} rad, {qber}")

    def verify(self, before: LinkSignals, after: LinkSignals, decision: Decision, settings: JobSettings,
               memory: Mapping[str, float]) -> Verdict:
        angle = abs(after.polarization_angle_rad)
        if angle > settings.threshold("angle_rad"):
            return Verdict(False, f"frame still rotated {angle:.3f} rad after realignment")
        qber_limit = self._qber_limit(after, settings)
        if decision.verify_on == "block" and after.block_qber is not None and qber_limit is not None and after.block_qber > qber_limit:
            return Verdict(False, f"QBER {after.block_qber:.2%} still above {qber_limit:.2%} with the frame aligned "
                                  f"({angle:.3f} rad): not polarization drift (check loss, stray light, timing)")
        return Verdict(True, f"frame angle {abs(before.polarization_angle_rad):.3f} → {angle:.3f} rad"
                             + (f", QBER {after.block_qber:.2%}" if decision.verify_on == "block" and after.block_qber is not None else ""))


class DetectorRegate(Check):
    """Recalibrate detector cooling and gating when dark counts rise or dead time saturates the detector.

    Dark counts beyond ``dark_count_ratio`` × the healthy detector's rate point at the cooler; an
    armed-gate (live-time) fraction below ``live_time_drop_ratio`` of the fraction this link had while
    healthy (a reference learned from healthy runs: a busy metro link is legitimately at ~0.45) means
    the detector is saturating. Re-gating fixes the first; if the live time stays low it is stray
    light, which no calibration removes.

    Healthy, for the reference, means the link is making key: its last block's QBER is within the
    abort threshold. A dark fibre (cut, or a loss step) leaves the detectors idle — live time near 1 —
    with nothing else wrong for this check; learning from those runs raised a metro link's reference
    to ~1 in a 15-minute cut, after which its normal 0.45 read as saturation, re-gating could not
    change it, and the job held off for good (found in a backfilled history's ALERTS).
    """

    name, action = "detector_regate", "regate_detectors"

    def _problems(self, s: LinkSignals, settings: JobSettings, memory: Mapping[str, float]) -> list[str]:
        out = []
        if s.dark_count_rate_nominal_hz > 0:
            ratio = s.dark_count_rate_hz / s.dark_count_rate_nominal_hz
            if ratio > settings.threshold("dark_count_ratio"):
                out.append(f"dark counts {s.dark_count_rate_hz:.4g} Hz, {ratio:.2f}x the healthy {s.dark_count_rate_nominal_hz:.4g} Hz")
        reference = memory.get("live_time_reference")
        if reference and s.live_time_ratio < settings.threshold("live_time_drop_ratio") * reference:
            out.append(f"live time {s.live_time_ratio:.3f}, below {settings.threshold('live_time_drop_ratio'):.0%} "
                       f"of the healthy {reference:.3f}")
        return out

    def assess(self, s: LinkSignals, settings: JobSettings, memory: MutableMapping[str, float]) -> Decision:
        problems = self._problems(s, settings, memory)
        if problems:
            return Decision(True, "; ".join(problems))
        reference = memory.get("live_time_reference")
        if s.block_qber is not None and s.qber_threshold is not None and s.block_qber <= s.qber_threshold:
            memory["live_time_reference"] = s.live_time_ratio if reference is None else \
                (1 - REFERENCE_WEIGHT) * reference + REFERENCE_WEIGHT * s.live_time_ratio
        return Decision(False, f"dark counts {s.dark_count_rate_hz:.4g} Hz (healthy {s.dark_count_rate_nominal_hz:.4g} Hz), "
                               f"live time {s.live_time_ratio:.3f}")

    def verify(self, before: LinkSignals, after: LinkSignals, decision: Decision, settings: JobSettings,
               memory: Mapping[str, float]) -> Verdict:
        problems = self._problems(after, settings, memory)
        if problems:
            hint = " (stray light or blinding: re-gating cannot remove it)" if any("live time" in p for p in problems) else ""
            return Verdict(False, "after re-gating: " + "; ".join(problems) + hint)
        return Verdict(True, f"dark counts {before.dark_count_rate_hz:.4g} → {after.dark_count_rate_hz:.4g} Hz")


CHECKS: Mapping[str, Check] = {c.name: c for c in (PhaseRelock(), IntensityRetune(), PolarizationRealign(), DetectorRegate())}
