"""What a link hands out: per-frame records, device telemetry and calibration results.

These are the contracts of the exporters, the block store and the control API. Fields are in base
units (seconds, hertz, decibels, degrees Celsius, radians, ratios). Nothing here carries key
material: counts, probabilities and device readings only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from qkdlink.protocols.base import BlockCounts, SinglePhotonTruth


@dataclass(frozen=True)
class DeviceTelemetry:
    """What the link's devices report, as of the end of the last frame (or of an action since).

    Quantities a real link measures with noise (monitor intensities, detection rate, RNG tests,
    latency) are this frame's samples; state read-outs are the device state. Fields that do not
    apply to the link's protocol are None (the phase reference of a single-arm BB84 link).
    """

    link_id: str
    protocol: str
    time_s: float
    channel_transmittance: float
    channel_loss_db: float
    detection_rate_hz: float
    dark_count_rate_hz: float
    dark_count_probability: float
    detector_efficiency: float
    detector_temperature_c: float
    dead_time_live_fraction: float
    afterpulse_probability: float
    mean_photon_number_commanded: Mapping[str, float]
    mean_photon_number_measured: Mapping[str, float]
    phase_error_rad: float | None
    phase_locked: bool | None
    phase_relock_count: int
    phase_actuator_usage: float | None
    visibility: float
    polarization_drift_rad: float
    clock_offset_s: float
    timing_jitter_s: float
    rng_bias: float
    rng_monobit_z: float
    rng_apt_failures: int
    rng_health_pass: bool
    classical_channel_up: bool
    classical_latency_s: float | None


@dataclass(frozen=True)
class FrameRecord:
    """One frame (emulator step): integer counts per (intensity, basis) class, the truth behind them,
    telemetry. The runtime sums frames into post-processing blocks; ``counts`` is a ``BlockCounts``
    because estimation takes the same table, of one frame or of a block.

    ``nominal`` is the link's (shared, read-only) nominal parameter set that estimation must use;
    ``effective`` the parameters the physics ran on for this frame; ``truth`` the single-photon
    (pair) yield and phase-error rate from ``effective``, which the estimator's bounds must bracket.
    ``detected_total`` counts all detection events, unsifted pulses included.
    """

    link_id: str
    protocol: str
    index: int
    start_s: float
    end_s: float
    counts: BlockCounts
    detected_total: int
    nominal: Mapping[str, float]
    effective: Mapping[str, float]
    truth: SinglePhotonTruth
    telemetry: DeviceTelemetry
    active_faults: tuple[str, ...]


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of a calibration action: the readings it changed, before and after."""

    action: str
    ok: bool
    message: str
    before: Mapping[str, float]
    after: Mapping[str, float]
