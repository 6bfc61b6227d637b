"""The two ends' sifted key strings of one block: what the optics hand to post-processing.

The emulator samples counts, not pulses (``sampling``): a block's key-basis class says how many
sifted key bits the two ends share (n) and how many of them differ (e). This module turns those
two numbers into the strings themselves, as a real link's detectors and basis reconciliation
would leave them: Alice's bits uniform (her RNG picks each bit), Bob's equal to Alice's except at
exactly e positions chosen uniformly at random — errors in a sifted key are independent of the
key, so their positions are a uniform e-subset (the model every error-correction analysis assumes,
e.g. Martinez-Mateo et al., QIC 15 (2015), Sec. 2).

Everything is drawn from one seed, so the archive keeps the seed, not the bits, and ``qkdops
replay`` rebuilds both strings exactly. Strings are bit-packed (``np.packbits``, big bit order,
trailing pad bits zero): 13 Mbit of a metro block are 1.6 MB per end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SiftedStrings:
    """Alice's and Bob's sifted key strings of one block (bit-packed) and their length in bits."""

    alice: np.ndarray
    bob: np.ndarray
    n_bits: int


def sifted_strings(seed: int, n_bits: int, errors: int) -> SiftedStrings:
    """Both ends' strings for a block of ``n_bits`` sifted key bits with exactly ``errors`` errors."""
    if n_bits < 0 or not 0 <= errors <= n_bits:
        raise ValueError(f"need 0 <= errors <= n_bits, got n_bits={n_bits}, errors={errors}")
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 256, size=(n_bits + 7) // 8, dtype=np.uint8)
    if n_bits % 8:
        alice[-1] &= np.uint8((0xFF << (8 - n_bits % 8)) & 0xFF)
    flips = np.zeros(n_bits, dtype=bool)
    flips[error_positions(rng, n_bits, errors)] = True
    return SiftedStrings(alice, alice ^ np.packbits(flips), n_bits)


def error_positions(rng: np.random.Generator, n_bits: int, errors: int) -> np.ndarray:
    """A uniformly random ``errors``-subset of range(n_bits), sorted.

    ``Generator.choice(replace=False)`` costs 0.3 s for 3e5 of 1.3e7; marking uniform draws in a
    mask until enough distinct positions are set, then dropping a uniform random surplus, gives the
    same uniform law (every subset of the final size is equally likely by symmetry) in a few ms.
    """
    if errors == 0:
        return np.zeros(0, dtype=np.int64)
    if 2 * errors > n_bits:  # dense: the complement is the sparse set
        keep = np.ones(n_bits, dtype=bool)
        keep[error_positions(rng, n_bits, n_bits - errors)] = False
        return np.flatnonzero(keep)
    mask = np.zeros(n_bits, dtype=bool)
    have = 0
    while have < errors:
        mask[rng.integers(0, n_bits, size=errors - have + errors // 16 + 8)] = True
        have = int(np.count_nonzero(mask))
    chosen = np.flatnonzero(mask)
    if have > errors:
        chosen = np.sort(rng.choice(chosen, size=errors, replace=False))
    return chosen
