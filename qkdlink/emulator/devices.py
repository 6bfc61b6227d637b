"""Stateful device models: how the hardware of a link drifts, and what that does to the physics.

Two parameter sets exist for every link. The *nominal* set is what Alice and Bob believe (the
configured intensities, choice probabilities, detector figures): estimation uses it. The *effective*
set is what the optics really do: the link samples counts and computes the single-photon truth from
it. Each device below evolves over emulated time with the link's generator and then ``apply``s
itself to a copy of the nominal set; its docstring says which effective parameters it moves and why.

Devices never read or touch key material: they only shape the statistics the link samples.

Independent bit-flip processes compose as e = a + b − 2ab (a click is wrong iff exactly one of the
two processes flipped it); that is how every device adds to the protocol's ``misalignment_error``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, fields

import numpy as np
from scipy.special import bdtrc

from qkdlink.physics.detector import dark_count_temperature_factor
from qkdlink.settings import (
    ClassicalSettings, ClockSettings, DetectorSettings, PhaseSettings, PolarizationSettings, RngSettings,
    SourceSettings,
)

FIBER_GROUP_INDEX = 1.468  # SMF-28 group index at 1550 nm (Corning datasheet): 4.9 µs per km
SPEED_OF_LIGHT_M_PER_S = 299_792_458.0
MISALIGNMENT = "misalignment_error"
PHASE_MISMATCH = "phase_mismatch_rad"
# Monitor readings a modulator retune averages while it dithers the bias (sets its residual power error).
RETUNE_READINGS = 16
# NIST SP 800-90B §4.4.2 adaptive-proportion test for a binary source: window and false-alarm rate.
APT_WINDOW = 1024
APT_ALPHA_LOG2 = 40  # α = 2^−40


def compose_errors(a: float, b: float) -> float:
    """Error rate of two independent bit-flip processes with rates a and b."""
    return a + b - 2.0 * a * b


# ---- disturbances (what active faults push into the devices) ----------------------------------

@dataclass(frozen=True)
class Disturbance:
    """External inputs to the devices, the sum over active faults (``faults.py`` makes them)."""

    extra_loss_db: float = 0.0
    phase_drift_rad_per_s: float = 0.0
    polarization_drift_rad_per_s: float = 0.0
    polarization_diffusion_rad2_per_s: float = 0.0
    modulator_bias_drift_rad_per_s: float = 0.0
    laser_power_drift_per_s: float = 0.0
    temperature_drift_k_per_s: float = 0.0
    background_photons: float = 0.0
    rng_bias: float = 0.0
    clock_drift_s_per_s: float = 0.0
    classical_channel_down: bool = False

    def __add__(self, other: Disturbance) -> Disturbance:
        values = {f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)
                  if f.name != "classical_channel_down"}
        return Disturbance(**values, classical_channel_down=self.classical_channel_down or other.classical_channel_down)


NO_DISTURBANCE = Disturbance()


# ---- devices ----------------------------------------------------------------------------------

class FiberChannel:
    """The quantum channel's lumped extra loss: faults add dB to ``extra_loss_db``.

    η = 10^(−(αL + extra)/10) (Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), eq. (2)); loss faults act
    only through η, so counts fall by exactly the transmittance ratio and dark counts remain.
    Stateless: a repaired fibre is back at its nominal loss.
    """

    @staticmethod
    def apply(p: MutableMapping[str, float], d: Disturbance) -> None:
        p["extra_loss_db"] = p["extra_loss_db"] + d.extra_loss_db


class Source:
    """Laser and Mach-Zehnder intensity modulator (MZM): actual mean photon numbers vs commanded.

    An MZM transmits T(φ) = cos²(φ/2) (Wooten et al., IEEE J. Sel. Top. Quantum Electron. 6, 69
    (2000)); each intensity k is set by a phase φ_k with k = μ_peak cos²(φ_k/2), μ_peak the largest
    commanded intensity. LiNbO3 MZMs suffer DC-bias drift δ (same paper, Sec. V), so the actual level
    is P μ_peak cos²((φ_k + δ)/2) with P the relative laser power: the peak barely moves (first order
    zero) while decoys shift and the vacuum level becomes μ_peak sin²(δ/2) > 0. Estimation keeps the
    commanded values, so drift biases the decoy bounds. Effect: every ``photons`` parameter.
    The monitor photodiode reads the actual level with relative noise ``monitor_noise``.
    """

    def __init__(self, settings: SourceSettings, commanded: Mapping[str, float]) -> None:
        self.settings = settings
        self.commanded = dict(commanded)
        self.peak = max(self.commanded.values(), default=0.0)
        self._phase = {k: 2.0 * math.acos(math.sqrt(v / self.peak)) if self.peak > 0 else 0.0
                       for k, v in self.commanded.items()}
        self.log_power = 0.0
        self.bias_rad = 0.0

    def evolve(self, dt: float, rng: np.random.Generator, d: Disturbance) -> None:
        s, root_dt = self.settings, math.sqrt(dt)
        self.log_power += d.laser_power_drift_per_s * dt + s.power_walk_per_sqrt_s * root_dt * rng.standard_normal()
        self.bias_rad += d.modulator_bias_drift_rad_per_s * dt + s.bias_walk_rad_per_sqrt_s * root_dt * rng.standard_normal()

    def actual(self) -> dict[str, float]:
        scale = self.peak * math.exp(self.log_power)
        return {k: scale * math.cos((phi + self.bias_rad) / 2.0) ** 2 for k, phi in self._phase.items()}

    def apply(self, p: MutableMapping[str, float]) -> None:
        p.update(self.actual())

    def measure(self, rng: np.random.Generator) -> dict[str, float]:
        noise = rng.standard_normal(len(self._phase)) * self.settings.monitor_noise
        return {k: v * (1.0 + float(n)) for (k, v), n in zip(self.actual().items(), noise)}

    def retune(self, rng: np.random.Generator) -> tuple[dict[str, float], dict[str, float]]:
        """Re-find the MZM null by dithering (δ → 0) and set the power from the monitor.

        The power is trimmed until the monitor, averaged over the ``RETUNE_READINGS`` readings of
        the dither, reads the commanded peak, so what remains is the monitor's error of that
        average (noise / √16: 0.25 % at the default 1 %). Returns the actual intensities (before, after).
        """
        before = self.actual()
        self.bias_rad = 0.0
        noise = self.settings.monitor_noise / math.sqrt(RETUNE_READINGS)
        self.log_power = -math.log1p(noise * float(rng.standard_normal()))
        return before, self.actual()


class PhaseReference:
    """Phase-lock loop keeping the two users' lasers in phase at the relay (MDI, TF).

    The relative phase drifts linearly at rate r (laser frequency offset, fibre thermal drift) plus
    Wiener phase noise of diffusion D (Var = D t). The rate wanders as an Ornstein–Uhlenbeck process
    about its mean r₀ — dr = −(r − r₀)/τ dt + σ dW (Uhlenbeck and Ornstein, Phys. Rev. 36, 823
    (1930)), stepped with the exact update of Gillespie, Phys. Rev. E 54, 2084 (1996) —
    because the users' lasers are temperature-stabilised: their offset wanders by σ√(τ/2) (0.3 rad/s
    at the defaults) but does not run away, as a pure random walk of r would (σ√t: 3 rad/s after a
    day, a stretcher wound through in a minute). A first-order loop of
    gain K (Gardner, *Phaselock Techniques*, 3rd ed., Wiley 2005, ch. 2 and 9) holds a static error
    sin δ_s = r/K and a jitter of variance D/(2K); its hold range is |r| < K. The correction is
    applied by a fibre stretcher of finite range: tracking a drift winds it up, and at the end of
    its range the loop opens (as in TF-QKD phase stabilisation: Minder et al., Nat. Photon. 13, 334
    (2019); Pittaluga et al., Nat. Photon. 15, 530 (2021)). Unlocked, the free phase sweeps many
    fringes per frame and the interference visibility averages to zero. ``relock`` re-centres the
    stretcher and re-acquires lock if |r| < K.

    Frame-averaged effect of the error: ⟨cos δ⟩ = cos δ_s e^(−σ²/2), expressed as one effective
    mismatch δ_eff = arccos⟨cos δ⟩. TF: added to ``phase_mismatch_rad`` in quadrature (the small-angle
    errors δ²/4 add); otherwise adds sin²(δ_eff/2) = (1 − V)/2 to ``misalignment_error``.
    Only links whose protocol interferes two users' pulses (two arms) have one.
    """

    def __init__(self, settings: PhaseSettings, active: bool) -> None:
        self.settings = settings
        self.active = active
        self.drift_rad_per_s = settings.drift_rad_per_s
        self.fault_rad_per_s = 0.0
        self.actuator_rad = 0.0
        self.locked = True
        self.relock_count = 0

    @property
    def total_rate(self) -> float:
        return self.drift_rad_per_s + self.fault_rad_per_s

    def evolve(self, dt: float, rng: np.random.Generator, d: Disturbance) -> None:
        if not self.active:
            return
        s = self.settings
        decay = math.exp(-dt / s.drift_correlation_s)
        spread = s.drift_walk_rad_per_s_per_sqrt_s * math.sqrt(s.drift_correlation_s / 2.0 * (1.0 - decay * decay))
        self.drift_rad_per_s = s.drift_rad_per_s + (self.drift_rad_per_s - s.drift_rad_per_s) * decay + spread * rng.standard_normal()
        self.fault_rad_per_s = d.phase_drift_rad_per_s
        if self.locked:
            self.actuator_rad += self.total_rate * dt
            if abs(self.actuator_rad) > s.actuator_range_rad or abs(self.total_rate) >= s.loop_gain_rad_per_s:
                self.locked = False

    def actuator_usage(self) -> float:
        """|stretcher position| / range: at 1 the loop opens. Operators re-centre (relock) before that."""
        return min(1.0, abs(self.actuator_rad) / self.settings.actuator_range_rad) if self.settings.actuator_range_rad > 0 else 1.0

    def error_rad(self) -> float:
        """Frame-effective phase error δ_eff in [0, π/2] (π/2: unlocked, no interference)."""
        if not self.active:
            return 0.0
        if not self.locked:
            return math.pi / 2.0
        k = self.settings.loop_gain_rad_per_s
        static = math.asin(max(-1.0, min(1.0, self.total_rate / k)))
        variance = self.settings.diffusion_rad2_per_s / (2.0 * k)
        return math.acos(math.cos(static) * math.exp(-variance / 2.0))

    def apply(self, p: MutableMapping[str, float]) -> None:
        if not self.active:
            return
        delta = self.error_rad()
        if PHASE_MISMATCH in p:
            nominal = p[PHASE_MISMATCH]
            p[PHASE_MISMATCH] = math.copysign(min(math.pi, math.hypot(nominal, delta)), nominal)
        elif MISALIGNMENT in p:
            p[MISALIGNMENT] = compose_errors(p[MISALIGNMENT], math.sin(delta / 2.0) ** 2)

    def relock(self) -> bool:
        """Re-centre the stretcher and close the loop; False if the drift exceeds the hold range."""
        if not self.active:
            return False
        self.actuator_rad = 0.0
        self.locked = abs(self.total_rate) < self.settings.loop_gain_rad_per_s
        if self.locked:
            self.relock_count += 1
        return self.locked


class Polarization:
    """Polarization reference frame of the fibre: drift angle θ between the users' frames.

    Polarization in installed fibre wanders as a random walk (Karlsson, Brentel, Andrekson, J.
    Lightwave Technol. 18, 941 (2000)); a fault adds a linear drift and extra diffusion. A frame
    rotated by θ flips a polarization qubit with probability sin²θ (Malus), added to
    ``misalignment_error``. (For TF the single-photon interference error of a mismatch θ is
    sin²(θ/2) ≤ sin²θ: the model is conservative there.) ``realign`` returns θ to a small residual.

    A frame's pulses see θ sweep from its value at the frame's start, θ₀, to its end, θ₁, so the
    flip probability is Malus averaged over the frame, taking the sweep as linear:
    ⟨sin²θ⟩ = ½ − (sin 2θ₁ − sin 2θ₀) / (4(θ₁ − θ₀)). For one-second frames this is sin²θ₁ to
    within a fraction of a percent; for the ten-second frames of a history run under a fast drift
    (0.2 rad a frame) it is a third of it, as the pulses of a real block would see.
    """

    def __init__(self, settings: PolarizationSettings) -> None:
        self.settings = settings
        self.theta_rad = 0.0
        self.theta_start_rad = 0.0   # θ₀: where this frame's sweep began

    def evolve(self, dt: float, rng: np.random.Generator, d: Disturbance) -> None:
        diffusion = self.settings.diffusion_rad2_per_s + d.polarization_diffusion_rad2_per_s
        self.theta_start_rad = self.theta_rad
        self.theta_rad += d.polarization_drift_rad_per_s * dt + math.sqrt(diffusion * dt) * rng.standard_normal()

    def flip_probability(self) -> float:
        """⟨sin²θ⟩ over the frame's sweep θ₀ → θ₁."""
        a, b = self.theta_start_rad, self.theta_rad
        if abs(b - a) < 1e-6:
            return math.sin((a + b) / 2.0) ** 2
        return 0.5 - (math.sin(2.0 * b) - math.sin(2.0 * a)) / (4.0 * (b - a))

    def apply(self, p: MutableMapping[str, float]) -> None:
        if MISALIGNMENT in p:
            p[MISALIGNMENT] = compose_errors(p[MISALIGNMENT], self.flip_probability())

    def realign(self, rng: np.random.Generator) -> tuple[float, float]:
        before = self.theta_rad
        self.theta_rad = self.theta_start_rad = self.settings.realign_residual_rad * float(rng.standard_normal())
        return before, self.theta_rad


class Detector:
    """Single-photon detectors: temperature → dark counts, and stray light → background clicks.

    The diode temperature is the set point plus a controller offset (which a fault makes creep up,
    bounded by ambient: a cooler cannot heat) plus Ornstein-Uhlenbeck fluctuations. Thermal dark
    counts scale as 2^(ΔT/10 K) (Itzler et al., J. Mod. Opt. 58, 174 (2011)); a rate scaled by F
    gives a per-gate probability 1 − (1 − p_dc)^F. Effect: ``dark_count_probability``; stray light
    adds to ``background_photons``, which the protocol models turn into clicks and, through the
    dead time, into the live fraction of Rogers et al., NJP 9, 319 (2007). ``regate`` recalibrates
    the cooler (dark-count measurement with the source blocked → temperature → offset removed).
    Efficiency, afterpulsing and dead time stay nominal here; the clock moves the gate capture.
    """

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self.offset_k = 0.0
        self.fluctuation_k = 0.0

    @property
    def temperature_c(self) -> float:
        return self.settings.setpoint_c + self.offset_k + self.fluctuation_k

    def evolve(self, dt: float, rng: np.random.Generator, d: Disturbance) -> None:
        s = self.settings
        self.offset_k = min(self.offset_k + d.temperature_drift_k_per_s * dt, s.ambient_c - s.setpoint_c)
        decay = math.exp(-dt / s.thermal_time_constant_s)
        self.fluctuation_k = (self.fluctuation_k * decay
                              + s.temperature_noise_k * math.sqrt(1.0 - decay * decay) * rng.standard_normal())

    def dark_count_factor(self) -> float:
        s = self.settings
        return dark_count_temperature_factor(self.temperature_c, s.setpoint_c, s.dark_count_doubling_k)

    def apply(self, p: MutableMapping[str, float], d: Disturbance) -> None:
        p_dc = p["dark_count_probability"]
        p["dark_count_probability"] = min(0.5, -math.expm1(self.dark_count_factor() * math.log1p(-p_dc)))
        p["background_photons"] = p["background_photons"] + d.background_photons

    def regate(self) -> tuple[float, float]:
        before = self.temperature_c
        self.offset_k = 0.0
        return before, self.temperature_c


class Clock:
    """Gate timing: a clock offset moves photon arrivals out of their gate and into a neighbour's.

    Arrivals are Gaussian with the detector/clock jitter σ around the offset Δt; a gate of width w
    every period T captures P(|Δt + J − kT| < w/2) of the light for slot k. Light in its own slot
    (k = 0) keeps its bit; light in a neighbouring slot is attributed to the wrong pulse and is
    uncorrelated with it (error 1/2). Effect: ``detector_efficiency`` × (f + g)/f₀ and
    ``misalignment_error`` composed with g/(2(f + g)), f own-slot, g other-slot capture, f₀ = f(0).
    Normally a servo holds Δt near zero (Ornstein-Uhlenbeck, time constant τ); a desync fault (lost
    reference, holdover) makes it ramp, and when the fault clears the servo pulls it back.
    """

    def __init__(self, settings: ClockSettings, period_s: float) -> None:
        self.settings = settings
        self.period_s = period_s
        self.gate_s = settings.gate_fraction * period_s
        self.offset_s = 0.0
        self._aligned = self._capture(0.0)[0]

    def evolve(self, dt: float, rng: np.random.Generator, d: Disturbance) -> None:
        if d.clock_drift_s_per_s:
            self.offset_s += d.clock_drift_s_per_s * dt
            return
        s = self.settings
        decay = math.exp(-dt / s.servo_time_constant_s)
        self.offset_s = self.offset_s * decay + s.offset_noise_s * math.sqrt(1.0 - decay * decay) * rng.standard_normal()

    def _window(self, centre_s: float) -> float:
        """P(|centre + J| < w/2) for Gaussian jitter J."""
        half, sigma = self.gate_s / 2.0, self.settings.jitter_s
        if sigma <= 0.0:
            return 1.0 if abs(centre_s) < half else 0.0
        scale = sigma * math.sqrt(2.0)
        return 0.5 * (math.erf((half - centre_s) / scale) + math.erf((half + centre_s) / scale))

    def _capture(self, offset_s: float) -> tuple[float, float]:
        """(own-slot, other-slot) capture fractions at clock offset ``offset_s``."""
        nearest = round(offset_s / self.period_s)
        own = self._window(offset_s)
        other = sum(self._window(offset_s - k * self.period_s)
                    for k in {nearest - 1, nearest, nearest + 1, -1, 1} if k != 0)
        return own, other

    def apply(self, p: MutableMapping[str, float]) -> None:
        own, other = self._capture(self.offset_s)
        if own == self._aligned and other == 0.0:
            return
        captured = own + other
        p["detector_efficiency"] = min(1.0, p["detector_efficiency"] * captured / self._aligned)
        if MISALIGNMENT in p and captured > 0.0:
            p[MISALIGNMENT] = compose_errors(p[MISALIGNMENT], other / captured / 2.0)


class RandomNumberGenerator:
    """The link's random-number generator: bias of its bits tilts every random choice it makes.

    A raw-bit bias b (P(1) = 1/2 + b) shifts the log-odds of each decision by λ = ln((1/2+b)/(1/2−b)),
    the log-likelihood ratio of one biased bit, so a choice made with probability p is made with
    p' = p e^λ / (p e^λ + 1 − p) (exact for a one-bit 50/50 choice). Multi-way choices are a chain of
    binary ones (stick-breaking over the p_* shares). Effect: the choice-probability parameters;
    estimation keeps the nominal ones. Health (``measure``): the NIST SP 800-90B §4.4.2 adaptive
    proportion test over windows of 1024 bits (α = 2⁻⁴⁰) and the NIST SP 800-22 §2.1 monobit
    statistic, both sampled from their exact laws over the bits the frame consumed.
    """

    def __init__(self, settings: RngSettings, multiway: tuple[str, ...], binary: tuple[str, ...]) -> None:
        self.settings = settings
        self.multiway = multiway
        self.binary = binary
        self._fail_cache: dict[float, float] = {}

    def bias(self, d: Disturbance) -> float:
        return max(-0.49, min(0.49, self.settings.bias + d.rng_bias))

    def apply(self, p: MutableMapping[str, float], d: Disturbance) -> None:
        b = self.bias(d)
        if b == 0.0:
            return
        odds = (0.5 + b) / (0.5 - b)
        for name in self.binary:
            p[name] = _tilt(p[name], odds)
        remaining, remaining_eff = 1.0, 1.0
        for name in self.multiway:
            share = p[name]
            tilted = _tilt(min(1.0, share / remaining), odds) * remaining_eff if remaining > 0 else 0.0
            remaining -= share
            remaining_eff -= tilted
            p[name] = tilted

    def measure(self, rng: np.random.Generator, bits: int, d: Disturbance) -> tuple[float, float, int, bool]:
        """(measured bias, monobit z, APT window failures, health pass) for ``bits`` raw bits."""
        b = self.bias(d)
        if bits <= 0:
            return 0.0, 0.0, 0, True
        ones = int(rng.binomial(bits, 0.5 + b))
        z = (2.0 * ones - bits) / math.sqrt(bits)
        windows = bits // APT_WINDOW
        failures = int(rng.binomial(windows, self._apt_failure_probability(b))) if windows else 0
        healthy = failures == 0 and abs(z) < self.settings.monobit_z_limit
        return ones / bits - 0.5, z, failures, healthy

    def _apt_failure_probability(self, b: float) -> float:
        """P(one APT window fails): the first bit's value recurs >= C times among the W bits."""
        if b not in self._fail_cache:
            p1 = 0.5 + b
            self._fail_cache[b] = float(p1 * bdtrc(APT_CUTOFF - 2, APT_WINDOW - 1, p1)
                                        + (1.0 - p1) * bdtrc(APT_CUTOFF - 2, APT_WINDOW - 1, 1.0 - p1))
        return self._fail_cache[b]


def _apt_cutoff() -> int:
    """C = 1 + CRITBINOM(W, 2^−H, 1 − α) for H = 1 bit per sample (NIST SP 800-90B §4.4.2), exactly."""
    total, cdf = 2 ** APT_WINDOW, 0
    threshold = total - (total >> APT_ALPHA_LOG2)  # (1 − α) 2^W, exact in integers
    for k in range(APT_WINDOW + 1):
        cdf += math.comb(APT_WINDOW, k)
        if cdf >= threshold:
            return 1 + k
    return 1 + APT_WINDOW


APT_CUTOFF = _apt_cutoff()


def _tilt(p: float, odds: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return p
    return p * odds / (p * odds + 1.0 - p)


class ClassicalChannel:
    """The authenticated classical channel post-processing needs: up/down and latency.

    Latency = fibre delay (group index 1.468: 4.9 µs/km over the Alice–Bob distance) plus
    processing, with log-normal jitter. Down during an outage; the quantum layer is unaffected, but
    post-processing aborts such blocks (reason ``classical_channel``).
    """

    def __init__(self, settings: ClassicalSettings, distance_km: float) -> None:
        self.settings = settings
        self.base_latency_s = distance_km * 1e3 * FIBER_GROUP_INDEX / SPEED_OF_LIGHT_M_PER_S + settings.processing_latency_s

    def measure(self, rng: np.random.Generator, d: Disturbance) -> float | None:
        """Latency of this frame's exchange in seconds, or None when the channel is down."""
        if d.classical_channel_down:
            return None
        return self.base_latency_s * math.exp(self.settings.latency_jitter * rng.standard_normal())
