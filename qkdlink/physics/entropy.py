"""Binary Shannon entropy, the information-theoretic cost of a bit error rate."""

from __future__ import annotations

import math


def binary_entropy(p: float) -> float:
    """H2(p) = −p log2 p − (1−p) log2(1−p), with H2(0) = H2(1) = 0.

    Shannon, Bell Syst. Tech. J. 27, 379 (1948). Arguments above 1/2 are not folded: a QBER
    above 1/2 is a broken link, and callers abort before they reach the entropy.
    """
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)
