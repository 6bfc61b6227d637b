"""The error-correction efficiency the ``model`` engine charges: what our Cascade measured.

A link on the ``model`` engine builds no bit strings, so its leak cannot be counted; it is
λ_EC = f·n·H2(E) with f taken from this table — the mean efficiency f = disclosed / (n·H2(E)) that
``qkdlink.postprocessing.cascade.reconcile`` achieved on sifted strings of n bits with QBER E
(uniform error positions, QBER estimate exact), on this code. So a model link is charged what the
bits engine would have disclosed, not a textbook constant (Martinez-Mateo et al., QIC 15 (2015),
Fig. 4, show the same shape: f grows for short frames and high QBER).

Measured by ``measure`` (``python -m qkdlink.postprocessing.efficiency`` prints the whole table:
means over 3e6 bits per cell, or one string at n = 1e7; standard deviations ≤ 0.015 at n = 1e4,
≤ 0.002 from 1e6). tests/test_cascade.py re-measures cells and fails if Cascade no longer matches
its table. Between grid points f is interpolated
linearly in log10(n) and in QBER; outside, the nearest edge is used (n ≥ 1e7 behaves as 1e7:
frames are 2^16 bits from there on).
"""

from __future__ import annotations

import math

import numpy as np

from qkdlink.emulator.sifted import sifted_strings
from qkdlink.physics.entropy import binary_entropy
from qkdlink.postprocessing.cascade import reconcile
from qkdlink.postprocessing.channel import ClassicalChannel

QBERS = (0.005, 0.01, 0.02, 0.04, 0.07, 0.11)
LOG10_N = (4.0, 5.0, 6.0, 7.0)
# f[n][qber]: rows n = 1e4, 1e5, 1e6, 1e7; columns QBERS.
MEASURED = (
    (1.1468, 1.1480, 1.1587, 1.1944, 1.2263, 1.2922),
    (1.0820, 1.0928, 1.0980, 1.1339, 1.1496, 1.1956),
    (1.0474, 1.0552, 1.0577, 1.0918, 1.0946, 1.1235),
    (1.0406, 1.0488, 1.0505, 1.0838, 1.0853, 1.1095),
)


def cascade_efficiency(qber: float, n_bits: float) -> float:
    """Cascade's measured efficiency f (≥ 1) for a sifted string of ``n_bits`` at ``qber``."""
    log_n = math.log10(max(n_bits, 1.0))
    by_n = [float(np.interp(qber, QBERS, row)) for row in MEASURED]
    return float(np.interp(log_n, LOG10_N, by_n))


def measure(qber: float, n_bits: int, strings: int, seed: int = 7) -> float:
    """Mean f of ``reconcile`` over ``strings`` sifted strings of ``n_bits`` with round(qber·n) errors."""
    errors = round(qber * n_bits)
    values = []
    for i in range(strings):
        s = sifted_strings(seed * 1_000 + i, n_bits, errors)
        result = reconcile(s.alice, s.bob, n_bits, qber, seed + i, ClassicalChannel())
        values.append(result.disclosed_bits / (n_bits * binary_entropy(errors / n_bits)))
    return float(np.mean(values))


if __name__ == "__main__":
    for log_n in LOG10_N:
        n = int(10 ** log_n)
        print(f"    ({', '.join(f'{measure(q, n, min(30, max(1, 3_000_000 // n))):.4f}' for q in QBERS)}),  # n = 1e{log_n:.0f}")
