"""Toeplitz hashing over GF(2): privacy amplification and the error-verification tag.

Both ends of a link hash their own bit string with the same public random seed. Hashing with a
random Toeplitz matrix is a 2-universal family (Carter & Wegman, JCSS 18, 143 (1979); Krawczyk,
CRYPTO 1994, LNCS 839), which is what the leftover hash lemma needs for privacy amplification and
what bounds the probability that two different corrected keys get the same verification tag.

Construction: the *modified* Toeplitz matrix of Hayashi & Tsurumaru, IEEE Trans. Inf. Theory 62,
2213 (2016), ``T' = [I | T]`` with ``I`` the ``n_out × n_out`` identity and ``T`` an
``n_out × (n_in − n_out)`` Toeplitz matrix. It is still 2-universal: for ``x = (x1, x2) ≠ 0``,
``T'x = x1 ⊕ T x2`` is never 0 when ``x2 = 0`` and is uniform when ``x2 ≠ 0`` (a uniformly random
Toeplitz matrix maps any fixed non-zero vector to a uniform vector), so any two different inputs
collide with probability at most ``2^-n_out``. It needs ``n_in − 1`` seed bits instead of
``n_in + n_out − 1``, and its product is a correlation of length ``≈ n_in`` instead of ``n_in + n_out``.
Privacy amplification never expands, so ``n_out ≥ n_in`` is refused.

Seed convention (``m = n_in − n_out``, seed bits ``s[0] … s[n_in − 2]``)::

    T[i, j] = s[j − i + n_out − 1]          (0 ≤ i < n_out, 0 ≤ j < m)
    y[i]    = x[i] ⊕ ⊕_j T[i, j] · x[n_out + j]

so row ``i`` of ``T`` is the contiguous seed window ``s[n_out − 1 − i : n_out − 1 − i + m]``.

Bits are bit-packed ``uint8`` arrays as ``np.packbits`` makes them (big bit order, pad bits 0).

Two exact kernels, chosen by output length:

* ``n_out ≤ 128`` (verification tags): bit-packed on ``uint64`` words — each output bit is the
  parity of ``x AND (seed window)``; one shifted copy of the seed per bit offset, XOR-folded.
* larger outputs (privacy amplification): ``T x2`` is a correlation of the seed with ``x2``,
  computed with real FFTs in float64 (``scipy.fft``, one worker, so the cost is per core) laid out
  in 2-D by the Good–Thomas index map (``_plan_2d``), rounded and reduced mod 2. Every sum is an integer
  ≤ the segment length, and float64 FFT error stays far below 0.5 at these sizes (measured: see docs/benchmarks.md); the rounding distance is
  checked on every call anyway, and ``x2`` is cut into segments of at most ``_FFT_MAX_SEGMENT``
  bits (overlap-add) so that partial sums stay small for inputs beyond those measured.
"""

from __future__ import annotations

import sys

import numpy as np
import scipy.fft

__all__ = ["random_seed", "seed_bits", "toeplitz_hash"]

_PACKED_MAX_OUT = 128
"""Outputs up to this many bits use the bit-packed kernel; above it the FFT kernel is cheaper."""

_FFT_MAX_SEGMENT = 1 << 27
"""Largest ``x2`` segment per FFT: partial sums ≤ 1.3e8 keep float64 rounding error far below 0.5."""

_ROUND_MAGIC = 1.5 * 2.0**52
"""Adding it rounds a float64 of magnitude < 2^51 to an integer held in the low mantissa bits."""

_SKEW_BAND = 64
"""Columns per band in ``_skew``: a band of 64 rows × 64 columns stays in L1."""

_LOW_BYTE = 0 if sys.byteorder == "little" else 7
"""Index of a float64's least significant mantissa byte in memory."""

_MAX_ROUNDING_ERROR = 0.25
"""An FFT result farther than this from an integer is not trusted (it never happens in practice)."""


def _check_sizes(n_in: int, n_out: int) -> None:
    for name, value in (("n_in", n_in), ("n_out", n_out)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if n_out < 1:
        raise ValueError(f"n_out must be ≥ 1, got {n_out}")
    if n_out >= n_in:
        raise ValueError(f"n_out must be < n_in (privacy amplification never expands), got n_in={n_in}, n_out={n_out}")


def _check_packed(name: str, packed: object, n_bits: int) -> np.ndarray:
    if not isinstance(packed, np.ndarray):
        raise ValueError(f"{name} must be a numpy uint8 array, got {type(packed).__name__}")
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise ValueError(f"{name} must be a 1-D uint8 array (np.packbits), got dtype {packed.dtype} with shape {packed.shape}")
    n_bytes = (n_bits + 7) // 8
    if packed.size != n_bytes:
        raise ValueError(f"{name} must hold {n_bits} bits = {n_bytes} bytes, got {packed.size} bytes")
    pad = 8 * n_bytes - n_bits
    if pad and int(packed[-1]) & ((1 << pad) - 1):
        raise ValueError(f"{name}: the {pad} pad bit(s) after bit {n_bits} must be 0")
    return packed


def seed_bits(n_in: int, n_out: int) -> int:
    """Seed bits for hashing ``n_in`` bits to ``n_out``: ``n_in − 1`` (modified Toeplitz, see module doc)."""
    _check_sizes(n_in, n_out)
    return int(n_in) - 1


def random_seed(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """A uniformly random packed seed of ``seed_bits(n_in, n_out)`` bits (pad bits 0) drawn from ``rng``."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    n_seed = seed_bits(n_in, n_out)
    seed = rng.integers(0, 256, size=(n_seed + 7) // 8, dtype=np.uint8)
    pad = -n_seed % 8
    if pad:
        seed[-1] &= np.uint8((0xFF << pad) & 0xFF)
    return seed


def toeplitz_hash(bits: np.ndarray, n_in: int, n_out: int, seed: np.ndarray) -> np.ndarray:
    """``y = [I | T] x`` over GF(2): ``n_in`` packed bits → ``n_out`` packed bits (pad bits 0).

    ``seed`` is ``seed_bits(n_in, n_out)`` packed bits defining ``T`` (module doc). Exact for every
    size; the kernel (bit-packed or FFT) depends only on ``n_out`` and does not change the result.
    """
    _check_sizes(n_in, n_out)
    n_in, n_out = int(n_in), int(n_out)
    _check_packed("bits", bits, n_in)
    _check_packed("seed", seed, n_in - 1)
    if n_out <= _PACKED_MAX_OUT:
        return _hash_packed(bits, n_in, n_out, seed)
    return _hash_fft(bits, n_in, n_out, seed)


# ---- bit-packed kernel (tags) ------------------------------------------------------------------------
def _words(packed: np.ndarray, n_words: int) -> np.ndarray:
    """Packed bytes as native uint64 words, most significant bit first, zero-padded to ``n_words``."""
    buf = np.zeros(8 * n_words, dtype=np.uint8)
    buf[: packed.size] = packed
    return buf.view(">u8").astype(np.uint64)


def _hash_packed(bits: np.ndarray, n_in: int, n_out: int, seed: np.ndarray) -> np.ndarray:
    """Output bit ``i`` = ``x[i]`` ⊕ parity(``x2`` AND the seed delayed by ``i + 1`` bits).

    In full-input coordinates ``k = n_out + j``, row ``i`` reads ``s[k − 1 − i]``: the seed stream
    delayed by ``d = i + 1`` bits lines up with ``x`` whose first ``n_out`` bits are masked out.
    A delay ``d = 64 q + r`` is one word shift ``r`` (shared by the rows with the same ``r``) and a
    word offset ``q``; the parity of an AND is the popcount parity of the XOR-fold of its words.
    """
    n_words = (n_in + 63) // 64
    x = _words(bits, n_words)
    q0, r0 = divmod(n_out, 64)
    x[:q0] = 0
    if r0:
        x[q0] &= np.uint64((1 << (64 - r0)) - 1)
    lead = _PACKED_MAX_OUT // 64 + 1
    padded = np.zeros(lead + n_words + 1, dtype=np.uint64)
    padded[lead : lead + (n_in - 1 + 63) // 64] = _words(seed, (n_in - 1 + 63) // 64)
    hi, lo, shifted, anded = (np.empty(padded.size - 1, dtype=np.uint64) for _ in range(4))
    head = np.unpackbits(bits, count=n_out)
    out = np.empty(n_out, dtype=np.uint8)
    delays = np.arange(1, n_out + 1)
    for r in np.unique(delays % 64):
        if r:
            np.right_shift(padded[1:], np.uint64(r), out=hi)
            np.left_shift(padded[:-1], np.uint64(64 - r), out=lo)
            np.bitwise_or(hi, lo, out=shifted)
        else:
            shifted[:] = padded[1:]
        for d in delays[delays % 64 == r]:
            start = lead - 1 - d // 64
            fold = np.bitwise_xor.reduce(np.bitwise_and(x, shifted[start : start + n_words], out=anded[:n_words]))
            out[d - 1] = head[d - 1] ^ (int(fold).bit_count() & 1)
    return np.packbits(out)


# ---- FFT kernel (privacy amplification) -------------------------------------------------------------
def _odd_smooth(limit: int) -> np.ndarray:
    """Odd 5-smooth numbers ``3^a 5^b ≤ limit``, sorted: the odd FFT lengths pocketfft does fastest."""
    values = [1]
    for prime in (3, 5):
        values = [v * prime**e for v in values for e in range(64) if v * prime**e <= limit]
    return np.unique(np.array(values, dtype=np.int64))


_ODD_LENGTHS = _odd_smooth(1 << 40)

_PLAN_ROWS = (512, 1024, 2048, 4096)
"""Row counts of the 2-D layout: short columns (one complex FFT of ``R`` points per column pair of
the wide real rows) were fastest here, 512–4096 rows by 10⁵–10⁶ columns (docs/benchmarks.md)."""


def _plan_2d(need: int) -> tuple[int, int]:
    """``(R, C)``: ``R`` a power of two, ``C = 3^a 5^b``, ``R·C ≥ need``: the smallest such ``R·C``
    with ``R`` in ``_PLAN_ROWS`` (``(2^⌈log2 need⌉, 1)`` up to 4096 points).

    Coprime sides make ``Z_L ≅ Z_R × Z_C`` (Good–Thomas prime-factor mapping, ``L = R·C``), so the
    length-``L`` cyclic correlation becomes a 2-D one whose rows and columns fit in cache: 3–4×
    faster than one long 1-D transform at 10⁷–10⁸ points. Among 2-D shapes, pocketfft's speed
    depends more on the factors than on ``L``: measured at 10⁸ points, 1024 × 3^9·5 took 4.6 s per
    hash and 16384 × 5^3·7^2 5.6 s, 3 % more points at 2048 × 3^4·5^4 4.4 s; columns with a factor
    7 and very tall or very wide arrays were slower (docs/benchmarks.md).
    """
    if need <= _PLAN_ROWS[-1]:
        return 1 << max(0, need - 1).bit_length(), 1
    best: tuple[int, int, int] | None = None
    for rows in _PLAN_ROWS:
        cols = int(_ODD_LENGTHS[int(np.searchsorted(_ODD_LENGTHS, -(-need // rows)))])
        if best is None or rows * cols < best[0]:
            best = (rows * cols, rows, cols)
    assert best is not None
    return best[1], best[2]


def _skew(src: np.ndarray, sign: int, dtype: type) -> np.ndarray:
    """``out[r, b] = src[(r + sign·b) mod R, b]`` as ``dtype``, in bands of ``_SKEW_BAND`` columns.

    Each band is first rolled by its first column's shift (a row gather of short contiguous rows),
    then skewed by ``< _SKEW_BAND`` rows through a strided view, so every read stays within a few
    KiB — a whole-array diagonal view costs ~1 s at 10⁸ points in cache and TLB misses.
    """
    rows, cols = src.shape
    out = np.empty((rows, cols), dtype=dtype)
    for b0 in range(0, cols, _SKEW_BAND):
        band = src[:, b0 : b0 + _SKEW_BAND]
        width = band.shape[1]
        if sign > 0:  # stacked[t] = src[(t + b0) mod R]: rows b0 … b0 + R + width − 2
            stacked = band[(np.arange(rows + width - 1) + b0) % rows]
            rs, cs = stacked.strides
            view = np.lib.stride_tricks.as_strided(stacked, shape=(rows, width), strides=(rs, cs + rs), writeable=False)
        else:  # stacked[t] = src[(t − (width − 1) − b0) mod R]
            stacked = band[(np.arange(rows + width - 1) - (width - 1) - b0) % rows]
            rs, cs = stacked.strides
            view = np.lib.stride_tricks.as_strided(stacked[width - 1 :], shape=(rows, width), strides=(rs, cs - rs), writeable=False)
        out[:, b0 : b0 + width] = view
    return out


def _to_2d(v: np.ndarray, rows: int, cols: int, unperm: np.ndarray) -> np.ndarray:
    """Float64 ``A`` with ``A[n mod R, n mod C] = v[n]`` (``v`` zero-padded to ``R·C``).

    With ``n = aC + b``: ``A[(π(a) + b) mod R, b] = v[aC + b]``, ``π(a) = aC mod R``. Rows are
    permuted (``Y = X[π⁻¹]``), then column ``b`` is rolled down by ``b`` (``_skew``) — no fancy
    indexing over all ``R·C`` points.
    """
    padded = np.zeros(rows * cols, dtype=np.uint8)
    padded[: v.size] = v
    return _skew(padded.reshape(rows, cols)[unperm], -1, np.float64)


def _from_2d(e: np.ndarray, count: int, perm: np.ndarray) -> np.ndarray:
    """``c[k] = e[k mod R, k mod C]`` for ``k < count``: the inverse of ``_to_2d`` (on parity bytes)."""
    cols = e.shape[1]
    return _skew(e, 1, np.uint8)[perm[: -(-count // cols)]].reshape(-1)[:count]


def _round_parity(values: np.ndarray) -> tuple[np.ndarray, float]:
    """``(round(values) mod 2`` as uint8, max distance to the nearest integer``); ``values`` is overwritten.

    Adding ``1.5·2^52`` leaves ``round(v)`` in the low mantissa bits (|v| < 2^51), so the parity is
    the lowest bit of the float's least significant byte: no float → int conversion pass.
    """
    shifted = values + _ROUND_MAGIC
    parity = shifted.view(np.uint8)[..., _LOW_BYTE :: values.itemsize] & np.uint8(1)
    shifted -= _ROUND_MAGIC
    values -= shifted
    return parity, max(float(values.max()), -float(values.min()))


def _hash_fft(bits: np.ndarray, n_in: int, n_out: int, seed: np.ndarray) -> np.ndarray:
    """``x1 ⊕ T x2`` with ``(T x2)[i] = Σ_j s[j + n_out − 1 − i] x2[j]``: a correlation, by real FFTs.

    With ``c[k] = Σ_j s[j + k] x2[j]`` (``k < n_out``), ``(T x2)[i] = c[n_out − 1 − i]``. A cyclic
    correlation of length ``L ≥ len(seed segment)`` has no wrap-around at those ``k``; it is computed
    as a 2-D cyclic correlation (``_plan_2d``), ``irfft2(rfft2(s) · conj(rfft2(x2)))``, exact up to
    float rounding, which is checked.
    """
    m = n_in - n_out
    x_all = np.unpackbits(bits, count=n_in)
    s_all = np.unpackbits(seed, count=n_in - 1)
    parity = x_all[:n_out].copy()
    for j0 in range(0, m, _FFT_MAX_SEGMENT):
        j1 = min(m, j0 + _FFT_MAX_SEGMENT)
        x2 = x_all[n_out + j0 : n_out + j1]
        if not x2.any():
            continue
        # rows i read s[j + n_out - 1 - i] for j in [j0, j1): seed indices [j0, j1 + n_out - 1)
        s = s_all[j0 : j1 + n_out - 1]
        rows, cols = _plan_2d(s.size)
        perm = np.arange(rows, dtype=np.int64) * cols % rows
        unperm = np.empty_like(perm)
        unperm[perm] = np.arange(rows)
        spectrum = scipy.fft.rfft2(_to_2d(s, rows, cols, unperm), workers=1, overwrite_x=True)
        x_spectrum = scipy.fft.rfft2(_to_2d(x2, rows, cols, unperm), workers=1, overwrite_x=True)
        np.conjugate(x_spectrum, out=x_spectrum)
        spectrum *= x_spectrum
        del x_spectrum
        corr = scipy.fft.irfft2(spectrum, s=(rows, cols), workers=1, overwrite_x=True)
        del spectrum
        odd, error = _round_parity(corr)
        if error > _MAX_ROUNDING_ERROR:
            raise ArithmeticError(f"FFT rounding error {error:.3g} too close to 0.5 (segment of {j1 - j0} bits); lower _FFT_MAX_SEGMENT")
        parity ^= _from_2d(odd, n_out, perm)[::-1]
    return np.packbits(parity)
