"""The error-correction efficiency the ``model`` engine charges: what our EC methods measured.

A link on the ``model`` engine builds no bit strings, so its leak cannot be counted; it is
λ_EC = f·n·H2(E) with f taken from this table for the link's ``error_correction`` — the mean
efficiency f = disclosed / (n·H2(E)) that ``qkdlink.postprocessing.cascade.reconcile`` (Cascade) or
``qkdlink.postprocessing.ldpc.reconcile`` (blind LDPC) achieved on sifted strings of n bits with QBER E
(uniform error positions, QBER estimate exact), on this code. So a model link is charged what the
bits engine would have disclosed, not a textbook constant (Martinez-Mateo et al., QIC 15 (2015),
Fig. 4, show the same shape for Cascade: f grows for short frames and high QBER).

Measured by ``measure`` (``python -m qkdlink.postprocessing.efficiency [cascade|ldpc]`` prints a
method's table: means over 3e6 bits per cell, or one string at n = 1e7; Cascade's standard
deviations ≤ 0.015 at n = 1e4, ≤ 0.002 from 1e6). tests/test_cascade.py and tests/test_ldpc.py
re-measure cells and fail if a method no longer matches its table. Between grid points f is
interpolated linearly in log10(n) and in QBER; outside, the nearest edge is used (n ≥ 1e7 behaves as
1e7: Cascade's frames are 2^16 bits from there on, LDPC's 2^14 from 1e5).
"""

from __future__ import annotations

import math
import sys

import numpy as np

from qkdlink.emulator.sifted import sifted_strings
from qkdlink.physics.entropy import binary_entropy
from qkdlink.postprocessing import cascade, ldpc
from qkdlink.postprocessing.channel import ClassicalChannel

QBERS = (0.005, 0.01, 0.02, 0.04, 0.07, 0.11)
LOG10_N = (4.0, 5.0, 6.0, 7.0)
# f[n][qber] per method: rows n = 1e4, 1e5, 1e6, 1e7; columns QBERS.
CASCADE = (
    (1.1468, 1.1480, 1.1587, 1.1944, 1.2263, 1.2922),
    (1.0820, 1.0928, 1.0980, 1.1339, 1.1496, 1.1956),
    (1.0474, 1.0552, 1.0577, 1.0918, 1.0946, 1.1235),
    (1.0406, 1.0488, 1.0505, 1.0838, 1.0853, 1.1095),
)

LDPC = (   # blind LDPC, qkdlink.postprocessing.ldpc: frames of ≤ 2^14 symbols, so f hardly improves past 1e5
    (1.5349, 1.3563, 1.3207, 1.2866, 1.3085, 1.4650),
    (1.6507, 1.4411, 1.3370, 1.3169, 1.3662, 1.2697),
    (1.4782, 1.4249, 1.3075, 1.3178, 1.3330, 1.2505),
    (1.8347, 1.4185, 1.3091, 1.3135, 1.3349, 1.2488),   # QBER 0.5 %: one string; a few frames needed many key bits shown
)

MEASURED = {"cascade": CASCADE, "ldpc": LDPC}
RECONCILE = {"cascade": cascade.reconcile, "ldpc": ldpc.reconcile}   # error_correction → its reconcile()


def measured_efficiency(method: str, qber: float, n_bits: float) -> float:
    """The measured efficiency f (≥ 1) of ``method`` for a sifted string of ``n_bits`` at ``qber``."""
    log_n = math.log10(max(n_bits, 1.0))
    by_n = [float(np.interp(qber, QBERS, row)) for row in MEASURED[method]]
    return float(np.interp(log_n, LOG10_N, by_n))


def measure(qber: float, n_bits: int, strings: int, seed: int = 7, method: str = "cascade") -> float:
    """Mean f of ``method``'s ``reconcile`` over ``strings`` sifted strings of ``n_bits`` with round(qber·n) errors."""
    errors = round(qber * n_bits)
    values = []
    for i in range(strings):
        s = sifted_strings(seed * 1_000 + i, n_bits, errors)
        result = RECONCILE[method](s.alice, s.bob, n_bits, qber, seed + i, ClassicalChannel())
        values.append(result.disclosed_bits / (n_bits * binary_entropy(errors / n_bits)))
    return float(np.mean(values))


if __name__ == "__main__":
    chosen = sys.argv[1] if len(sys.argv) > 1 else "cascade"
    for log_n in LOG10_N:
        n = int(10 ** log_n)
        print(f"    ({', '.join(f'{measure(q, n, min(30, max(1, 3_000_000 // n)), method=chosen):.4f}' for q in QBERS)}),  # n = 1e{log_n:.0f}")
