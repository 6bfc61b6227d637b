"""Toeplitz hashing (qkdlink.postprocessing.toeplitz): exact against a naive GF(2) matrix product,
linear, 2-universal in an empirical collision test, and strict about its inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qkdlink.postprocessing import toeplitz as tz

ROOT = Path(__file__).resolve().parent.parent


def naive_hash(bits: np.ndarray, n_in: int, n_out: int, seed: np.ndarray) -> np.ndarray:
    """``[I | T] x mod 2`` with the matrix written out: ``T[i, j] = s[j − i + n_out − 1]``."""
    x = np.unpackbits(bits, count=n_in).astype(np.int64)
    s = np.unpackbits(seed, count=n_in - 1).astype(np.int64)
    i = np.arange(n_out)[:, None]
    j = np.arange(n_in - n_out)[None, :]
    matrix = np.hstack((np.eye(n_out, dtype=np.int64), s[j - i + n_out - 1]))
    return np.packbits(matrix @ x % 2)


def random_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.packbits(rng.integers(0, 2, n, dtype=np.uint8))


SIZES = [
    (2, 1), (9, 1), (64, 1), (65, 64), (100, 99), (1001, 1000), (257, 128), (257, 129), (1000, 127), (1000, 128),
    (1000, 129), (130, 129), (4099, 2500), (3001, 64), (3001, 65), (777, 300), (5003, 4000), (6007, 3001),
]


@pytest.mark.parametrize(("n_in", "n_out"), SIZES)
def test_matches_naive_reference(n_in: int, n_out: int) -> None:
    rng = np.random.default_rng(n_in * 7919 + n_out)
    for _ in range(3):
        x, seed = random_bits(rng, n_in), tz.random_seed(rng, n_in, n_out)
        assert np.array_equal(tz.toeplitz_hash(x, n_in, n_out, seed), naive_hash(x, n_in, n_out, seed))


def test_both_kernels_match_naive_on_random_sizes() -> None:
    """The packed kernel (tags) and the FFT kernel (PA) each against the reference, beyond their ranges."""
    rng = np.random.default_rng(2024)
    for _ in range(60):
        n_in = int(rng.integers(2, 3000))
        n_out = int(rng.integers(1, min(n_in, tz._PACKED_MAX_OUT + 1)))
        x, seed = random_bits(rng, n_in), tz.random_seed(rng, n_in, n_out)
        want = naive_hash(x, n_in, n_out, seed)
        assert np.array_equal(tz._hash_packed(x, n_in, n_out, seed), want), (n_in, n_out)
        assert np.array_equal(tz._hash_fft(x, n_in, n_out, seed), want), (n_in, n_out)
    for _ in range(40):
        n_in = int(rng.integers(3, 6000))
        n_out = int(rng.integers(1, n_in))
        x, seed = random_bits(rng, n_in), tz.random_seed(rng, n_in, n_out)
        assert np.array_equal(tz._hash_fft(x, n_in, n_out, seed), naive_hash(x, n_in, n_out, seed)), (n_in, n_out)


def test_fft_segments_match_naive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Overlap-add over x2 segments (what keeps the float sums small beyond 10⁸ bits) is exact too."""
    monkeypatch.setattr(tz, "_FFT_MAX_SEGMENT", 97)
    rng = np.random.default_rng(5)
    for n_in, n_out in [(1000, 500), (1000, 903), (1000, 130), (4321, 2000), (300, 203)]:
        x, seed = random_bits(rng, n_in), tz.random_seed(rng, n_in, n_out)
        assert np.array_equal(tz.toeplitz_hash(x, n_in, n_out, seed), naive_hash(x, n_in, n_out, seed))


def test_plan_2d_is_coprime_and_large_enough() -> None:
    for need in [1, 2, 300, 1000, 4096, 4097, 10**6 - 1, 10**7 - 1, 44_309_446, 10**8 - 1, 3 * 10**9]:
        rows, cols = tz._plan_2d(need)
        assert rows * cols >= need and cols % 2 == 1 and rows & (rows - 1) == 0 and rows >= 1
        assert cols == 1 or 512 <= rows <= 4096                   # the measured fast shapes
        odd = cols
        for prime in (3, 5):
            while odd % prime == 0:
                odd //= prime
        assert odd == 1                                            # C = 3^a 5^b
        assert rows * cols < 1.1 * need + 4096                     # at most 10 % padding beyond small sizes


def test_large_input_matches_sparse_reference() -> None:
    """10⁶ bits through the FFT kernel: a sparse x makes the reference cheap (XOR of seed windows)."""
    rng = np.random.default_rng(11)
    n_in, n_out = 1_000_003, 600_001
    ones = np.sort(rng.choice(n_in, size=40, replace=False))
    x = np.zeros(n_in, dtype=np.uint8)
    x[ones] = 1
    seed = tz.random_seed(rng, n_in, n_out)
    s = np.unpackbits(seed, count=n_in - 1)
    want = np.zeros(n_out, dtype=np.uint8)
    for k in ones:
        if k < n_out:
            want[k] ^= 1
        else:  # column k of [I | T]: T[i, k - n_out] = s[k - n_out - i + n_out - 1] = s[k - 1 - i]
            want ^= s[k - 1 - np.arange(n_out)]
    assert np.array_equal(tz.toeplitz_hash(np.packbits(x), n_in, n_out, seed), np.packbits(want))


@pytest.mark.parametrize(("n_in", "n_out"), [(1000, 50), (5000, 3001)])
def test_linear(n_in: int, n_out: int) -> None:
    rng = np.random.default_rng(3)
    seed = tz.random_seed(rng, n_in, n_out)
    for _ in range(5):
        x, y = random_bits(rng, n_in), random_bits(rng, n_in)
        h = [tz.toeplitz_hash(v, n_in, n_out, seed) for v in (x, y, x ^ y)]
        assert np.array_equal(h[2], h[0] ^ h[1])


@pytest.mark.parametrize(("n_in", "n_out"), [(13, 5), (200, 3), (1001, 129), (1000, 1)])
def test_output_length_and_pad_bits(n_in: int, n_out: int) -> None:
    rng = np.random.default_rng(4)
    out = tz.toeplitz_hash(np.packbits(np.ones(n_in, dtype=np.uint8)), n_in, n_out, tz.random_seed(rng, n_in, n_out))
    assert out.dtype == np.uint8 and out.shape == ((n_out + 7) // 8,)
    assert not np.unpackbits(out)[n_out:].any()
    seed = tz.random_seed(rng, n_in, n_out)
    assert tz.seed_bits(n_in, n_out) == n_in - 1 and seed.size == (n_in - 1 + 7) // 8
    assert not np.unpackbits(seed)[n_in - 1 :].any()


def test_different_seeds_give_different_outputs() -> None:
    rng = np.random.default_rng(6)
    for n_in, n_out in [(10_000, 64), (10_000, 6000)]:
        x = random_bits(rng, n_in)
        outs = {tz.toeplitz_hash(x, n_in, n_out, tz.random_seed(rng, n_in, n_out)).tobytes() for _ in range(8)}
        assert len(outs) == 8
        assert np.array_equal(tz.random_seed(np.random.default_rng(1), n_in, n_out), tz.random_seed(np.random.default_rng(1), n_in, n_out))


@pytest.mark.parametrize(
    ("n_in", "n_out", "flip"), [(24, 6, "low"), (24, 6, "high"), (24, 6, "bit"), (40, 8, "bit"), (300, 8, "both"), (200, 150, "bit")]
)
def test_collision_probability_is_2_to_minus_n_out(n_in: int, n_out: int, flip: str) -> None:
    """Empirical Pr[h(x) = h(x')] over random seeds for random pairs x ≠ x', against 2^-n_out.

    2-universality bounds every pair by 2^-n_out. A hash that ignores some input bits collides with
    probability 1 on pairs differing only there: ``flip`` makes pairs differing in one uniformly
    chosen bit (``bit``), or in random bits of the first n_out (``low``), of the rest (``high``) or
    of all (``both``). Bound: mean + 8 binomial standard deviations + 5 — beyond chance (p < 1e-12),
    far below what a hash ignoring even one byte shows on ``bit`` pairs (≥ 8/200 of the trials).
    """
    rng = np.random.default_rng(hash((n_in, n_out, flip)) & 0xFFFF)
    trials = 2500 if n_out <= 8 else 600
    lo, hi = {"low": (0, n_out), "high": (n_out, n_in), "both": (0, n_in), "bit": (0, n_in)}[flip]
    collisions = 0
    for _ in range(trials):
        x = rng.integers(0, 2, n_in, dtype=np.uint8)
        delta = np.zeros(n_in, dtype=np.uint8)
        if flip == "bit":
            delta[rng.integers(n_in)] = 1
        while not delta.any():
            delta[lo:hi] = rng.integers(0, 2, hi - lo, dtype=np.uint8)
        seed = tz.random_seed(rng, n_in, n_out)
        collisions += np.array_equal(tz.toeplitz_hash(np.packbits(x), n_in, n_out, seed), tz.toeplitz_hash(np.packbits(x ^ delta), n_in, n_out, seed))
    p = 2.0**-n_out
    assert collisions <= trials * p + 8 * np.sqrt(trials * p) + 5, (collisions, trials * p)


def test_bad_inputs_name_the_argument() -> None:
    rng = np.random.default_rng(0)
    seed = tz.random_seed(rng, 100, 10)
    x = random_bits(rng, 100)
    cases = [
        ("n_out", lambda: tz.seed_bits(100, 100)),
        ("n_out", lambda: tz.seed_bits(100, 0)),
        ("n_in", lambda: tz.seed_bits(100.0, 10)),
        ("n_out", lambda: tz.seed_bits(100, True)),
        ("n_out", lambda: tz.toeplitz_hash(x, 100, 120, seed)),
        ("bits", lambda: tz.toeplitz_hash(x[:-1], 100, 10, seed)),
        ("bits", lambda: tz.toeplitz_hash(x.astype(np.int64), 100, 10, seed)),
        ("bits", lambda: tz.toeplitz_hash(list(x), 100, 10, seed)),
        ("bits", lambda: tz.toeplitz_hash(x.reshape(1, -1), 100, 10, seed)),
        ("bits", lambda: tz.toeplitz_hash(x | np.uint8(1), 100, 10, seed)),  # bit 103 is a pad bit
        ("seed", lambda: tz.toeplitz_hash(x, 100, 10, np.concatenate((seed, seed[:1])))),
        ("seed", lambda: tz.toeplitz_hash(x, 100, 10, seed | np.uint8(1))),  # 99 seed bits: bit 103 is a pad bit
        ("rng", lambda: tz.random_seed(np.random.RandomState(0), 100, 10)),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=name):
            call()


