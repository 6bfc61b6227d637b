"""The emulated link: devices, faults and calibration actions around one protocol model.

``Link.step_frame`` advances emulated time by one frame (frame_pulses / repetition_rate seconds),
lets every device evolve, derives the *effective* parameters from the *nominal* ones, and samples
the frame's counts from the protocol's exact class statistics (``sampling.py``). The same seed and
the same sequence of calls give the same frames: counts, device noise and calibration residuals
draw from three independent streams spawned from the seed, so e.g. reading telemetry never
perturbs the counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from qkdlink.emulator.devices import (
    MISALIGNMENT, NO_DISTURBANCE, PHASE_MISMATCH, Clock, ClassicalChannel, Detector, Disturbance, FiberChannel,
    PhaseReference, Polarization, RandomNumberGenerator, Source,
)
from qkdlink.emulator.faults import FAULTS, ActiveFault, ActiveFaults, spec
from qkdlink.emulator.records import FrameRecord, CalibrationResult, DeviceTelemetry
from qkdlink.emulator.sampling import sample_frame
from qkdlink.protocols import get_protocol
from qkdlink.protocols.base import PulseClass, SinglePhotonTruth
from qkdlink.settings import LinkConfig, choice_parameters, intensity_parameters

class Link:
    """One emulated QKD link: step frames, inject and clear faults, run calibration actions."""

    def __init__(self, config: LinkConfig) -> None:
        self.config = config
        self.protocol = get_protocol(config.protocol)
        overrides = dict(config.overrides)
        if any(p.name == "repetition_rate_hz" for p in self.protocol.parameters):
            overrides["repetition_rate_hz"] = config.repetition_rate_hz
        self.nominal: Mapping[str, float] = MappingProxyType(
            self.protocol.resolve(overrides, config.preset, where=f"link {config.link_id!r}"))
        counts_seed, devices_seed, actions_seed = np.random.SeedSequence(config.seed).spawn(3)
        self._rng_counts = np.random.default_rng(counts_seed)
        self._rng_devices = np.random.default_rng(devices_seed)
        self._rng_actions = np.random.default_rng(actions_seed)

        settings = config.devices
        two_arm = len(self.protocol.geometry(self.nominal).arm_transmittances) > 1
        self.source = Source(settings.source, {k: self.nominal[k] for k in intensity_parameters(self.protocol)})
        self.phase = PhaseReference(settings.phase, active=two_arm)
        self.polarization = Polarization(settings.polarization)
        self.detector = Detector(settings.detector)
        self.clock = Clock(settings.clock, 1.0 / config.repetition_rate_hz)
        self.rng = RandomNumberGenerator(settings.rng, *choice_parameters(self.protocol))
        self.classical = ClassicalChannel(settings.classical, self.nominal.get("distance_km", 0.0))

        self.index = 0
        self._faults = ActiveFaults(FAULTS)
        self._measured = _Measured(self.source.actual(), 0, 0.0, 0.0, 0.0, 0, True, self.classical.base_latency_s)

    # ---- time ---------------------------------------------------------------------------------
    @property
    def time_s(self) -> float:
        """Emulated time at the end of the last frame."""
        return self.index * self.config.frame_seconds

    def step_frame(self) -> FrameRecord:
        """Advance one frame: evolve devices, sample counts from the effective physics, record."""
        dt = self.config.frame_seconds
        start = self.time_s
        disturbance = self._disturbance(start + dt / 2.0)
        rng = self._rng_devices
        for device in (self.source, self.phase, self.polarization, self.detector, self.clock):
            device.evolve(dt, rng, disturbance)
        effective = self._effective(disturbance)
        classes = self.protocol.pulse_classes(effective)
        counts, detected_total = sample_frame(classes, self.config.frame_pulses, self._rng_counts)
        truth = self.protocol.single_photon_truth(effective)
        bits = int(self.config.frame_pulses * self.config.devices.rng.bits_per_pulse)
        self._measured = _Measured(self.source.measure(rng), detected_total, dt,
                                   *self.rng.measure(rng, bits, disturbance), self.classical.measure(rng, disturbance))
        self.index += 1
        return FrameRecord(
            link_id=self.config.link_id, protocol=self.protocol.name, index=self.index - 1,
            start_s=start, end_s=self.time_s, counts=counts, detected_total=detected_total,
            nominal=self.nominal, effective=MappingProxyType(effective), truth=truth,
            telemetry=self._telemetry(effective, disturbance, classes), active_faults=self._faults.names())

    # ---- physics views --------------------------------------------------------------------------
    def _disturbance(self, now_s: float) -> Disturbance:
        total = NO_DISTURBANCE
        for fault in self._faults.active():
            total = total + spec(fault.name).disturb(fault.parameters, max(0.0, now_s - fault.injected_at_s))
        return total

    def _effective(self, d: Disturbance) -> dict[str, float]:
        p = dict(self.nominal)
        FiberChannel.apply(p, d)
        self.source.apply(p)
        self.rng.apply(p, d)
        self.detector.apply(p, d)
        self.clock.apply(p)
        self.polarization.apply(p)
        self.phase.apply(p)
        return p

    def effective_parameters(self) -> dict[str, float]:
        """The parameters the physics would run on now (device state and faults as they are)."""
        return self._effective(self._disturbance(self.time_s))

    def truth(self) -> SinglePhotonTruth:
        """True single-photon (pair) yield and phase-error rate of the current effective physics."""
        return self.protocol.single_photon_truth(self.effective_parameters())

    def telemetry(self) -> DeviceTelemetry:
        """Device readings now: state read-outs are current, sampled readings are the last frame's."""
        d = self._disturbance(self.time_s)
        return self._telemetry(self._effective(d), d)

    def _live_fraction(self, p: Mapping[str, float], classes: Sequence[PulseClass] | None) -> float:
        """Armed-gate fraction under dead time, as the detectors' hold-off counters report it.

        Every protocol model scales all its gains by one live fraction (Rogers et al., NJP 9, 319
        (2007)), so it is the ratio of the sifted gain with and without the dead time.
        """
        if not p.get("dead_time_s", 0.0):
            return 1.0
        classes = self.protocol.pulse_classes(p) if classes is None else classes
        armed = sum(c.probability * c.gain for c in self.protocol.pulse_classes({**p, "dead_time_s": 0.0}))
        return sum(c.probability * c.gain for c in classes) / armed if armed > 0 else 1.0

    def _telemetry(self, p: Mapping[str, float], d: Disturbance,
                   classes: Sequence[PulseClass] | None = None) -> DeviceTelemetry:
        """Telemetry for effective parameters ``p`` (``classes``: their pulse classes, if computed)."""
        m = self._measured
        eta = self.protocol.geometry(p).fiber_transmittance
        rate = p.get("repetition_rate_hz", self.config.repetition_rate_hz)
        detection_rate = m.detected / m.seconds if m.seconds > 0 else 0.0
        visibility = (1.0 - 2.0 * p.get(MISALIGNMENT, 0.0)) * math.cos(p.get(PHASE_MISMATCH, 0.0))
        latency = m.latency_s if not d.classical_channel_down else None
        return DeviceTelemetry(
            link_id=self.config.link_id, protocol=self.protocol.name, time_s=self.time_s,
            channel_transmittance=eta, channel_loss_db=-10.0 * math.log10(eta) if eta > 0 else math.inf,
            detection_rate_hz=detection_rate,
            dark_count_rate_hz=p["dark_count_probability"] * rate,
            dark_count_probability=p["dark_count_probability"],
            detector_efficiency=p["detector_efficiency"],
            detector_temperature_c=self.detector.temperature_c,
            dead_time_live_fraction=self._live_fraction(p, classes),
            afterpulse_probability=p["afterpulse_probability"],
            mean_photon_number_commanded=MappingProxyType(dict(self.source.commanded)),
            mean_photon_number_measured=MappingProxyType(m.intensities),
            phase_error_rad=self.phase.error_rad() if self.phase.active else None,
            phase_locked=self.phase.locked if self.phase.active else None,
            phase_relock_count=self.phase.relock_count,
            phase_actuator_usage=self.phase.actuator_usage() if self.phase.active else None,
            visibility=visibility,
            polarization_drift_rad=self.polarization.theta_rad,
            clock_offset_s=self.clock.offset_s,
            timing_jitter_s=self.config.devices.clock.jitter_s,
            rng_bias=m.rng_bias, rng_monobit_z=m.rng_monobit_z, rng_apt_failures=m.rng_apt_failures,
            rng_health_pass=m.rng_health_pass,
            classical_channel_up=not d.classical_channel_down, classical_latency_s=latency)

    # ---- faults ---------------------------------------------------------------------------------
    def inject(self, name: str, **parameters: float) -> ActiveFault:
        """Put fault ``name`` in force (re-injecting replaces its parameters and restarts it).

        Raises FaultError, leaving the link unchanged, for an unknown fault or a bad parameter.
        """
        return self._faults.inject(name, parameters, self.time_s)

    def clear(self, name: str | None = None) -> tuple[str, ...]:
        """Clear fault ``name`` (None: all); returns the names cleared. Unknown name: FaultError."""
        return self._faults.clear(name)

    def active_faults(self) -> tuple[ActiveFault, ...]:
        return self._faults.active()

    # ---- calibration actions --------------------------------------------------------------------
    def relock_phase(self) -> CalibrationResult:
        """Re-centre the phase actuator and re-acquire lock (MDI/TF); fails beyond the hold range."""
        if not self.phase.active:
            return CalibrationResult("relock_phase", True, "no phase reference on a single-arm link", {}, {})
        before = {"phase_error_rad": self.phase.error_rad(), "phase_locked": float(self.phase.locked)}
        locked = self.phase.relock()
        after = {"phase_error_rad": self.phase.error_rad(), "phase_locked": float(locked)}
        message = "locked" if locked else (f"drift {self.phase.total_rate:.3g} rad/s exceeds the hold range "
                                           f"{self.config.devices.phase.loop_gain_rad_per_s:.3g} rad/s")
        return CalibrationResult("relock_phase", locked, message, before, after)

    def retune_intensities(self) -> CalibrationResult:
        """Re-null the modulator bias and trim the laser power to the commanded intensities."""
        before, after = self.source.retune(self._rng_actions)
        return CalibrationResult("retune_intensities", True, "intensities set from the power monitor",
                                 {f"mean_photon_number_{k}": v for k, v in before.items()},
                                 {f"mean_photon_number_{k}": v for k, v in after.items()})

    def realign_polarization(self) -> CalibrationResult:
        """Rotate the polarization controller back onto the reference frame."""
        before, after = self.polarization.realign(self._rng_actions)
        return CalibrationResult("realign_polarization", True, "reference frame realigned",
                                 {"polarization_drift_rad": before}, {"polarization_drift_rad": after})

    def regate_detectors(self) -> CalibrationResult:
        """Recalibrate detector cooling and gating: dark counts back to their set-point level."""
        nominal_dc = self.nominal["dark_count_probability"]
        before_t = self.detector.temperature_c
        before_dc = self.effective_parameters()["dark_count_probability"]
        self.detector.regate()
        after_dc = self.effective_parameters()["dark_count_probability"]
        ratio = before_dc / nominal_dc if nominal_dc > 0 else 1.0
        return CalibrationResult(
            "regate_detectors", True, f"dark counts were {ratio:.3g}x nominal",
            {"detector_temperature_c": before_t, "dark_count_probability": before_dc},
            {"detector_temperature_c": self.detector.temperature_c, "dark_count_probability": after_dc})


@dataclass(frozen=True)
class _Measured:
    """Sampled readings of the last frame (noisy monitors and statistical tests)."""

    intensities: dict[str, float]
    detected: int
    seconds: float
    rng_bias: float
    rng_monobit_z: float
    rng_apt_failures: int
    rng_health_pass: bool
    latency_s: float | None

