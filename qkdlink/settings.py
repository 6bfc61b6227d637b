"""What a link is, as configured: its protocol, frame size, rate, seed and device settings.

The description of a link, kept apart from the emulator that runs it (``qkdlink.emulator``) so
that the configuration layer and the calibration jobs can read and validate link settings without
loading device models, the fault catalogue or the sampler. Every check raises with the field's
name (``LinkConfigError`` or ``ValueError``) so a bad ``links.yaml`` says what to fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from qkdlink.protocols import PROTOCOL_NAMES
from qkdlink.protocols.base import Protocol

# Choice probabilities the link's RNG realises, across the protocol models. Parameters named p_*
# are the shares of one multi-way choice (the weakest level gets the rest); the others are binary.
MULTIWAY_CHOICE_PREFIX = "p_"
BINARY_CHOICES = ("key_basis_probability", "z_window_probability", "epsilon_send")

# The decoy-state names of the intensity settings (signal μ, decoys ν and ν₂, vacuum ω; Lo, Ma & Chen,
# PRL 94, 230504 (2005)): the ``intensity`` label every metric, the decoy counters and the calibration
# jobs share, so measured / commanded / recommended line up on one label.
INTENSITY_OF_PARAMETER = {"mu": "signal", "nu": "decoy", "nu2": "decoy2", "omega": "vacuum"}


def intensity_parameters(protocol: Protocol) -> tuple[str, ...]:
    """The protocol's mean-photon-number settings: every parameter whose unit is ``photons``."""
    return tuple(p.name for p in protocol.parameters if p.unit == "photons")


def choice_parameters(protocol: Protocol) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(multi-way shares in declaration order, binary choice probabilities) of the protocol."""
    names = [p.name for p in protocol.parameters if p.unit == "ratio"]
    return (tuple(n for n in names if n.startswith(MULTIWAY_CHOICE_PREFIX)),
            tuple(n for n in names if n in BINARY_CHOICES))


def _require(obj: object, name: str, minimum: float | None = None, maximum: float | None = None) -> None:
    value = getattr(obj, name)
    where = f"{type(obj).__name__}.{name}"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{where} must be <= {maximum}, got {value}")


def _require_non_negative(obj: object, *skip: str) -> None:
    for f in fields(obj):  # type: ignore[arg-type]
        if f.name not in skip:
            _require(obj, f.name, 0.0)


# ---- device settings ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceSettings:
    """Laser power and intensity-modulator bias drift, and the power monitor's reading noise."""

    power_walk_per_sqrt_s: float = 2e-4      # relative laser power random walk (1 h → 1.2 %)
    bias_walk_rad_per_sqrt_s: float = 2e-4   # MZM DC-bias random walk (1 h → 0.012 rad)
    monitor_noise: float = 0.01              # relative standard deviation of one monitor reading

    def __post_init__(self) -> None:
        _require_non_negative(self)


@dataclass(frozen=True)
class PhaseSettings:
    """Relative phase of the two users' lasers at the relay and the phase-lock loop that tracks it."""

    loop_gain_rad_per_s: float = 2.0 * math.pi * 1e3   # first-order loop gain K = hold range
    actuator_range_rad: float = 200.0                   # fibre-stretcher range (≈ 30 fringes)
    drift_rad_per_s: float = 0.1                        # mean linear drift (laser frequency offset)
    drift_walk_rad_per_s_per_sqrt_s: float = 0.01       # how fast that drift rate wanders (σ of the OU process)
    drift_correlation_s: float = 1800.0                 # ... and how long before it reverts to the mean (τ)
    diffusion_rad2_per_s: float = 100.0                 # phase noise (fibre, lasers): Var = D t

    def __post_init__(self) -> None:
        _require_non_negative(self, "drift_rad_per_s")
        _require(self, "drift_rad_per_s")
        _require(self, "loop_gain_rad_per_s", 1e-9)
        _require(self, "drift_correlation_s", 1e-9)


@dataclass(frozen=True)
class PolarizationSettings:
    """Random walk of the polarization reference frame and the residual left by a realignment."""

    diffusion_rad2_per_s: float = 1e-6
    realign_residual_rad: float = 0.005

    def __post_init__(self) -> None:
        _require_non_negative(self)


@dataclass(frozen=True)
class DetectorSettings:
    """Detector temperature control: set point (where the nominal dark counts hold) and its noise."""

    setpoint_c: float = -40.0
    ambient_c: float = 25.0
    temperature_noise_k: float = 0.02
    thermal_time_constant_s: float = 10.0
    dark_count_doubling_k: float = 10.0

    def __post_init__(self) -> None:
        _require(self, "setpoint_c", -273.15)
        _require(self, "ambient_c", self.setpoint_c)
        _require_non_negative(self, "setpoint_c", "ambient_c")
        _require(self, "thermal_time_constant_s", 1e-9)
        _require(self, "dark_count_doubling_k", 1e-9)


@dataclass(frozen=True)
class ClockSettings:
    """Gate timing: gate width as a fraction of the pulse period, jitter, and clock-servo residual."""

    gate_fraction: float = 0.4
    jitter_s: float = 30e-12
    offset_noise_s: float = 2e-12
    servo_time_constant_s: float = 0.1

    def __post_init__(self) -> None:
        _require_non_negative(self)
        _require(self, "gate_fraction", 1e-6, 1.0)
        _require(self, "servo_time_constant_s", 1e-12)


@dataclass(frozen=True)
class RngSettings:
    """Random bits drawn per pulse (basis, bit value, intensity) and the generator's intrinsic bias."""

    bits_per_pulse: float = 4.0
    bias: float = 0.0
    monobit_z_limit: float = 5.0

    def __post_init__(self) -> None:
        _require(self, "bits_per_pulse", 0.0)
        _require(self, "bias", -0.49, 0.49)
        _require(self, "monobit_z_limit", 0.0)


@dataclass(frozen=True)
class ClassicalSettings:
    """Classical (authenticated) channel: processing latency added to the fibre delay, and its jitter."""

    processing_latency_s: float = 1e-3
    latency_jitter: float = 0.1   # σ of the log-normal latency factor

    def __post_init__(self) -> None:
        _require_non_negative(self)


@dataclass(frozen=True)
class DeviceSettings:
    """Settings of every device of a link; the defaults are a healthy deployed link."""

    source: SourceSettings = field(default_factory=SourceSettings)
    phase: PhaseSettings = field(default_factory=PhaseSettings)
    polarization: PolarizationSettings = field(default_factory=PolarizationSettings)
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    clock: ClockSettings = field(default_factory=ClockSettings)
    rng: RngSettings = field(default_factory=RngSettings)
    classical: ClassicalSettings = field(default_factory=ClassicalSettings)

    @classmethod
    def static(cls) -> DeviceSettings:
        """No drift and no noise: effective parameters equal the nominal ones until a fault acts."""
        return cls(
            source=SourceSettings(0.0, 0.0, 0.0),
            phase=PhaseSettings(drift_rad_per_s=0.0, drift_walk_rad_per_s_per_sqrt_s=0.0, diffusion_rad2_per_s=0.0),
            polarization=PolarizationSettings(0.0, 0.0),
            detector=DetectorSettings(temperature_noise_k=0.0),
            clock=ClockSettings(jitter_s=0.0, offset_noise_s=0.0),
            classical=ClassicalSettings(latency_jitter=0.0),
        )


MAX_FRAME_PULSES = 2 ** 62


class LinkConfigError(ValueError):
    """A link configuration field is invalid; the message names the field and what was expected."""


@dataclass(frozen=True)
class LinkConfig:
    """Everything that defines one emulated link.

    ``overrides`` are protocol parameters on top of ``preset`` (see the protocol's ``parameters``);
    ``repetition_rate_hz`` is the source's pulse rate and sets the protocol parameter of that name.
    ``frame_pulses`` is the length of one emulator step (``Link.step_frame``), ``frame_seconds`` its
    duration; how many frames make a post-processing block is the runtime's business (links.yaml's
    ``block_pulses``, ``qkdops.runtime.blocks``).
    """

    link_id: str
    protocol: str = "bb84-decoy"
    preset: str | None = None
    overrides: Mapping[str, float] = field(default_factory=dict)
    frame_pulses: int = 10 ** 9
    repetition_rate_hz: float = 1e9
    seed: int = 0
    devices: DeviceSettings = field(default_factory=DeviceSettings)

    def __post_init__(self) -> None:
        where = f"link {self.link_id!r}"
        if not isinstance(self.link_id, str) or not self.link_id:
            raise LinkConfigError(f"link_id must be a non-empty string, got {self.link_id!r}")
        if self.protocol not in PROTOCOL_NAMES:
            raise LinkConfigError(f"{where}: protocol must be one of {', '.join(PROTOCOL_NAMES)}, got {self.protocol!r}")
        if isinstance(self.frame_pulses, bool) or not isinstance(self.frame_pulses, int) \
                or not 1 <= self.frame_pulses <= MAX_FRAME_PULSES:
            raise LinkConfigError(f"{where}: frame_pulses must be an integer in [1, 2^62], got {self.frame_pulses!r}")
        if isinstance(self.repetition_rate_hz, bool) or not isinstance(self.repetition_rate_hz, (int, float)) \
                or not 0 < self.repetition_rate_hz < math.inf:
            raise LinkConfigError(f"{where}: repetition_rate_hz must be a positive number, got {self.repetition_rate_hz!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise LinkConfigError(f"{where}: seed must be a non-negative integer, got {self.seed!r}")
        if "repetition_rate_hz" in self.overrides and self.overrides["repetition_rate_hz"] != self.repetition_rate_hz:
            raise LinkConfigError(f"{where}: overrides.repetition_rate_hz contradicts repetition_rate_hz; set only the latter")
        if not isinstance(self.devices, DeviceSettings):
            raise LinkConfigError(f"{where}: devices must be a DeviceSettings, got {type(self.devices).__name__}")

    @property
    def frame_seconds(self) -> float:
        return self.frame_pulses / self.repetition_rate_hz
