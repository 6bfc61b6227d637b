"""Threshold single-photon detector: efficiency, dark counts, afterpulsing, dead time, temperature.

These are the per-gate probabilities the protocol models combine; the emulator's stateful detector
(``qkdlink.emulator.devices``) moves their inputs (temperature, bias, incident flux) over time.
"""

from __future__ import annotations

import math


def click_probability(mean_photons: float, efficiency: float, dark_count_probability: float) -> float:
    """P(click) = 1 − (1 − p_dc) e^(−η_det n̄) for a threshold detector hit by a Poissonian flux n̄.

    Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), eq. (3) (to first order in p_dc); the exact product
    form is that of Lim et al., PRA 89, 022307 (2014), Sec. "Simulation". Dark counts and signal
    clicks are independent, so the no-click probabilities multiply.
    """
    _check_probability("efficiency", efficiency)
    _check_probability("dark_count_probability", dark_count_probability)
    return 1.0 - (1.0 - dark_count_probability) * math.exp(-efficiency * max(mean_photons, 0.0))


def with_afterpulsing(click_prob: float, afterpulse_probability: float) -> float:
    """R = D (1 + p_ap): detection probability including afterpulses (Lim et al. 2014, eq. (9)).

    First-order model: each click triggers, with probability p_ap, a spurious click in a later gate.
    """
    _check_probability("afterpulse_probability", afterpulse_probability)
    return min(1.0, click_prob * (1.0 + afterpulse_probability))


def afterpulse_error_probability(click_prob: float, afterpulse_probability: float) -> float:
    """p_ap D / 2: afterpulses are uncorrelated with the bit, so half of them are errors (Lim et al. 2014)."""
    return afterpulse_probability * click_prob / 2.0


def dead_time_live_fraction(click_rate_hz: float, dead_time_s: float) -> float:
    """Fraction of gates a non-paralysable detector is armed: 1 / (1 + R τ_dead).

    Rogers et al., New J. Phys. 9, 319 (2007), "Detector dead-time effects and paralyzability in
    high-speed quantum key distribution", eq. (1): a click blinds the detector for τ_dead, so at a
    raw click rate R the live fraction falls as 1/(1 + R τ). This is the saturation that a bright
    pulse or a blinding attack drives to ~0.
    """
    if click_rate_hz < 0 or dead_time_s < 0:
        raise ValueError("click rate and dead time must be >= 0")
    return 1.0 / (1.0 + click_rate_hz * dead_time_s)


def dark_count_probability_from_rate(dark_count_rate_hz: float, gate_width_s: float) -> float:
    """p_dc = 1 − e^(−R_dc t_gate): dark-count probability per gate from a dark-count rate (Poisson)."""
    if dark_count_rate_hz < 0 or gate_width_s <= 0:
        raise ValueError("dark-count rate must be >= 0 and gate width > 0")
    return 1.0 - math.exp(-dark_count_rate_hz * gate_width_s)


def dark_count_rate_from_probability(dark_count_probability: float, gate_width_s: float) -> float:
    """Inverse of :func:`dark_count_probability_from_rate`: the rate in hertz an exporter publishes."""
    _check_probability("dark_count_probability", dark_count_probability)
    if gate_width_s <= 0:
        raise ValueError("gate width must be > 0")
    return -math.log1p(-dark_count_probability) / gate_width_s


def dark_count_temperature_factor(temperature_celsius: float, reference_celsius: float,
                                  doubling_kelvin: float = 10.0) -> float:
    """Thermal dark counts grow about ×2 every ~10 K for cooled InGaAs/InP SPADs.

    Itzler et al., J. Mod. Opt. 58, 174 (2011), Fig. 6: dark-count rate vs temperature is close to
    exponential over −50…−20 °C (thermal generation), roughly doubling per 10 K.
    """
    if doubling_kelvin <= 0:
        raise ValueError("doubling_kelvin must be > 0")
    return 2.0 ** ((temperature_celsius - reference_celsius) / doubling_kelvin)


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
