"""Concentration bounds shared by the finite-key analyses.

Each function states which tail it bounds and fails with probability at most ``eps`` (or the
``terms``-split of it), so a protocol's ε_sec budget is the sum of the calls it makes.
"""

from __future__ import annotations

import math


def hoeffding_delta(total: float, epsilon: float, terms: float = 21.0) -> float:
    """δ = √(n/2 · ln(terms/ε)): Hoeffding deviation for counts drawn from a pool of ``total`` events.

    Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), text after eq. (2): the observed count
    of intensity k deviates from its expectation by at most δ except with probability ε/terms.
    """
    if total <= 0:
        return 0.0
    return math.sqrt(total / 2.0 * math.log(terms / epsilon))


# Multiplicative Chernoff tails for a sum X of independent Bernoulli variables with mean E
# (Chernoff, Ann. Math. Stat. 23, 493 (1952); Mitzenmacher & Upfal, "Probability and Computing",
# Thms. 4.4–4.5): P(X ≥ E + t) ≤ exp(−t²/(2E + t)), P(X ≤ E − t) ≤ exp(−t²/(2E)). With L = ln(1/ε)
# they invert exactly, without case distinctions, both ways: the mean from an observed count (decoy
# estimation) and a count from a bounded mean (the untagged events of the actual block). Unlike
# Hoeffding over a whole basis, the deviation grows with the cell's own count, which matters where
# cells differ by orders of magnitude (MDI's intensity grid, TF's windows).

def chernoff_mean_lower(observed: float, eps: float) -> float:
    """E ≥ X + L/2 − √(2XL + L²/4) except with probability ε (from the upper tail)."""
    big_l = math.log(1.0 / eps)
    x = max(observed, 0.0)
    return max(0.0, x + big_l / 2.0 - math.sqrt(2.0 * big_l * x + big_l * big_l / 4.0))


def chernoff_mean_upper(observed: float, eps: float) -> float:
    """E ≤ X + L + √(2XL + L²) except with probability ε (from the lower tail)."""
    big_l = math.log(1.0 / eps)
    x = max(observed, 0.0)
    return x + big_l + math.sqrt(2.0 * big_l * x + big_l * big_l)


def chernoff_count_lower(mean: float, eps: float) -> float:
    """X ≥ E − √(2EL) except with probability ε (lower tail)."""
    return max(0.0, mean - math.sqrt(2.0 * max(mean, 0.0) * math.log(1.0 / eps)))


def chernoff_count_upper(mean: float, eps: float) -> float:
    """X ≤ E + L/2 + √(2EL + L²/4) except with probability ε (upper tail)."""
    big_l = math.log(1.0 / eps)
    m = max(mean, 0.0)
    return m + big_l / 2.0 + math.sqrt(2.0 * big_l * m + big_l * big_l / 4.0)


def sampling_gamma(eps: float, error_rate: float, n_key: float, n_test: float) -> float:
    """γ: how far the key events' phase-error rate may exceed the test events' rate ``error_rate``.

    Lim et al. 2014, eq. (5) (random sampling without replacement; Fung, Ma, Chau, PRA 81, 012318
    (2010)), failing with probability ``eps``; Lim's γ(ε_sec, …) is ``sampling_gamma(ε_sec/21, …)``.
    """
    e = min(max(error_rate, 1e-12), 1.0 - 1e-12)
    total = n_key + n_test
    inner = total / (n_key * n_test * (1.0 - e) * e * eps * eps)
    return math.sqrt(total * (1.0 - e) * e / (n_key * n_test * math.log(2.0)) * math.log2(inner))
