"""Photon statistics of phase-randomised weak coherent pulses."""

from __future__ import annotations

import math
from collections.abc import Sequence


def poisson_probability(mean_photon_number: float, n: int) -> float:
    """P(n | μ) = e^(−μ) μ^n / n!: photon-number distribution of a phase-randomised coherent state.

    Lo, Ma, Chen, PRL 94, 230504 (2005): phase randomisation turns a laser pulse into a Poisson
    mixture of Fock states, the premise of the decoy-state method.
    """
    if mean_photon_number < 0:
        raise ValueError(f"mean photon number must be >= 0, got {mean_photon_number}")
    if n < 0:
        raise ValueError(f"photon number must be >= 0, got {n}")
    if mean_photon_number == 0.0:
        return 1.0 if n == 0 else 0.0
    return math.exp(-mean_photon_number + n * math.log(mean_photon_number) - math.lgamma(n + 1))


def tau(n: int, intensities: Sequence[float], probabilities: Sequence[float]) -> float:
    """τ_n = Σ_k p_k e^(−k) k^n / n!: probability that Alice emits n photons, averaged over intensities.

    Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), text after eq. (2).
    """
    if len(intensities) != len(probabilities):
        raise ValueError("intensities and probabilities must have the same length")
    return sum(p * poisson_probability(k, n) for k, p in zip(intensities, probabilities))
