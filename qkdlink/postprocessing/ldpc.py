"""One-way, rate-adaptive LDPC error correction (syndrome coding) with blind rounds, vectorised over frames.

Why it exists next to Cascade: Cascade needs a thousand or more round trips per block (one per halving
of every binary search, and the cascade re-opens searches), so on a real wire its latency is round
trips × RTT — seconds on a metro link. Syndrome coding is (almost) one-way: Alice sends each frame's
syndrome once, Bob decodes alone; a round trip more happens only for frames that failed to decode.

The protocol — blind reconciliation (J. Martinez-Mateo, D. Elkouss and V. Martin, "Blind
reconciliation", Quantum Information & Computation 12 (2012) 791–812) on a family of mother codes as
in the rate-compatible protocol of D. Elkouss, J. Martinez-Mateo, D. Lancho and V. Martin, "Rate
compatible protocol for information reconciliation: an application to QKD", IEEE ITW 2010:

* A frame is one codeword of a mother code (N bits, M checks). ``p`` of its symbols are *punctured*:
  Alice fills them with private random bits that are not key; the others carry key bits or are
  *shortened* (public zeros). The code and the starting ``p`` are chosen from the QBER estimate so
  that the first attempt discloses F_START·h(q) per key bit (:func:`plan`).
* Alice sends the syndrome of every frame (M bits each). Bob decodes each with his bits as channel
  information (log-likelihood ±ln((1−q)/q)), punctured symbols as erasures, shortened ones as known.
* A frame that does not reach its syndrome is *failed*; Bob says which, and Alice reveals the values
  of ``step`` more of its punctured symbols (making them shortened); once none is left, of key bits at
  public pseudo-random positions, doubling their number each round (a key bit shown costs as much leak
  as a punctured one but helps decoding far less). Bob decodes again, resuming from the failed attempt's
  messages (a warm start: 10–15 % less CPU than starting over, same f); after ``MAX_ROUNDS`` rounds, or
  every symbol shown, a frame still failing is dropped: both ends set its key bits to public zeros,
  counted as leak.

Leak, counted, not estimated: a syndrome is M bits, but the punctured symbols are private uniform bits,
so if the columns of the parity-check matrix H at the still-punctured positions P have full rank |P|
the syndrome tells Eve at most M − |P| bits about the key (I(S; X_key) = H(S) − H(S | X_key) ≤
M − rank(H_P)). Puncturing here is *untainted* (D. Elkouss, J. Martinez-Mateo and V. Martin,
"Untainted puncturing for irregular low-density parity-check codes", IEEE Wireless Commun. Lett. 1
(2012) 585–588): every punctured symbol has a check of its own with no other punctured neighbour, so
H_P contains a permuted identity and rank(H_P) = |P| for every subset — each leak term below is exact.
Leak per frame = M − (punctured symbols still unrevealed) + (key bits revealed), plus the key bits of a
dropped frame.

Codes: irregular parity-check matrices drawn from a node-perspective variable degree distribution
per rate (:data:`DEGREES`, optimised by density evolution for this decoder) with check degrees
concentrated on two consecutive values, the degree-2 symbols in a zigzag chain and the other edges
placed by a random socket matching, from a fixed public seed per (N, rate) — both ends build the same
code. What it costs, measured (docs/benchmarks.md): f ≈ 1.3 at QBER 2–4 %, ≈ 1.4–1.5 at 0.5–1 %, where
Cascade reaches 1.05–1.09 — short frames and min-sum decoding are far from the Shannon limit at high
code rates; what it buys is one round trip per blind round instead of a thousand.

Decoding is layered (row-serial) normalised min-sum (J. Chen and M. Fossorier,
"Near optimum universal belief propagation based decoding of LDPC codes", IEEE Trans. Commun. 50 (2002)
406–414; layered schedule: D. E. Hocevar, IEEE SiPS 2004) with early stopping on the syndrome, compiled
with numba (no GIL held, so frames of different links decode on different cores).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numba
import numpy as np

from qkdlink.physics.entropy import binary_entropy
from qkdlink.postprocessing.cascade import check_arguments
from qkdlink.postprocessing.channel import ClassicalChannel

FRAME_BITS = 16384                      # largest mother code: longer frames gain little efficiency and cost latency
MIN_FRAME_BITS = 1024
RATES = tuple(round(0.40 + 0.05 * i, 2) for i in range(11)) + (0.92, 0.94, 0.96, 0.97, 0.98)  # mother code rates
# Node-perspective variable degrees (fraction of variable nodes of each degree). Degree-2 symbols are
# what makes irregular codes beat regular ones near capacity; the high-degree ones anchor decoding.
# Node-perspective variable degree distributions (fraction of symbols of each degree) per mother-code
# rate, optimised for this decoder: discretised density evolution (T. Richardson and R. Urbanke, "The
# capacity of low-density parity-check codes under message-passing decoding", IEEE Trans. Inf. Theory
# 47 (2001) 599–618) of normalised min-sum (α = 0.75) on the BSC, check degrees concentrated, average
# symbol degree ≤ 4.5 (decoder cost). Threshold efficiencies f* = (1 − R)/h(q*) in the comment: the
# best an infinitely long code of that ensemble reaches; 16,384-bit frames need ≈ 0.05–0.1 more.
# (For comparison {2: 0.2, 3: 0.55, 8: 0.25} has f* = 1.40 at R = 0.8.) Rates below 0.70 use the 0.70
# ensemble, above 0.96 the 0.96 one.
DEGREES: dict[float, dict[int, float]] = {
    0.70: {2: 0.175, 3: 0.648, 11: 0.177},                  # f* = 1.14
    0.75: {2: 0.170, 3: 0.631, 10: 0.189, 23: 0.010},       # f* = 1.15
    0.80: {2: 0.115, 3: 0.680, 10: 0.155, 13: 0.050},       # f* = 1.17
    0.85: {2: 0.150, 3: 0.575, 8: 0.260, 23: 0.015},        # f* = 1.20
    0.90: {2: 0.075, 3: 0.610, 8: 0.315},                   # f* = 1.24
    0.92: {2: 0.080, 3: 0.624, 8: 0.286, 18: 0.010},        # f* = 1.26
    0.94: {2: 0.035, 3: 0.678, 8: 0.277, 18: 0.010},        # f* = 1.32
    0.96: {2: 0.040, 3: 0.453, 6: 0.497, 7: 0.010},         # f* = 1.43
}


def degree_distribution(rate: float) -> dict[int, float]:
    """The ensemble of :data:`DEGREES` for a mother code of ``rate`` (the nearest tabulated rate below, or the lowest)."""
    below = [r for r in DEGREES if r <= rate + 1e-9]
    return DEGREES[max(below) if below else min(DEGREES)]


ADAPTABLE = 0.10                        # at most 10 % of a frame's symbols are untainted (puncturable)
F_START = 1.20                          # first attempt at efficiency f = 1.20 …
F_END = 1.50                            # … and puncturing room to reach 1.5 by revealing punctured symbols
STEP_EFFICIENCY = 0.06                  # each blind round reveals 0.06·h(q)·k symbols of a failed frame
MAX_ROUNDS = 16
MAX_ITERATIONS = 50
STALL_ITERATIONS = 8
NORMALISATION = 0.75                    # min-sum messages scaled by 0.75 (Chen & Fossorier 2002)
DECODER_THREADS = 2                     # frames of one block decode on this many threads (the kernel drops the GIL)
_MIN_QBER = 1e-3
_KNOWN_LLR = 64.0                       # a shortened (known) symbol: certainty, within float32 comfort
_CODE_SEED = 0x51D1                     # public: both ends build the same codes


@dataclass(frozen=True)
class Code:
    """A parity-check matrix in CSR form (rows = checks) and its untainted puncturing order."""

    n: int
    m: int
    rate: float
    check_ptr: np.ndarray      # int32, m + 1
    check_var: np.ndarray      # int32, edges: the variables of check c are check_var[check_ptr[c]:check_ptr[c+1]]
    punctured: np.ndarray      # int64: untainted symbols, in the order they are punctured (revealed from the end)

    def syndrome(self, words: np.ndarray) -> np.ndarray:
        """Syndromes of ``words`` (frames × n, one uint8 per bit): frames × m."""
        return np.bitwise_xor.reduceat(words[:, self.check_var], self.check_ptr[:-1], axis=1)


@dataclass(frozen=True)
class LdpcResult:
    """Outcome of :func:`reconcile`; the fields Cascade's result also has mean the same.

    ``alice`` is Alice's key after reconciliation: her input, except that the key bits of dropped frames
    (no decoding after every blind round) are public zeros at both ends and counted in
    ``disclosed_bits``. ``decoder_cpu_seconds`` is the CPU the decoder threads used (not the caller's).
    """

    corrected: np.ndarray
    alice: np.ndarray
    disclosed_bits: int
    messages: int
    round_trips: int
    frames: int
    frame_key_bits: int
    flipped_bits: int
    emulated_seconds: float
    dropped_frames: int
    rounds: int
    decoder_cpu_seconds: float


@lru_cache(maxsize=64)
def mother_code(n: int, rate: float) -> Code:
    """The public mother code of length ``n`` and design rate ``rate`` (cached: both ends, every block).

    The degree-2 symbols form a zigzag: the j-th joins checks π(j) and π(j+1) of a random order π, so
    they make no cycle among themselves — a cycle of degree-2 symbols is a low-weight codeword the
    decoder can converge to (two degree-2 symbols on the same two checks differ by a weight-2 codeword),
    the same reason the dual-diagonal part of IEEE 802.11n and DVB-S2 codes is a chain. The other
    sockets are matched at random, repeated (symbol, check) pairs re-drawn.
    """
    rng = np.random.default_rng([_CODE_SEED, n, round(rate * 1000)])
    m = int(round(n * (1.0 - rate)))
    distribution = degree_distribution(rate)
    degrees = np.concatenate([np.full(int(round(share * n)), d, dtype=np.int64) for d, share in distribution.items()])
    degrees = np.minimum(np.resize(degrees, n), m)
    rng.shuffle(degrees)
    two = np.flatnonzero(degrees == 2)
    degrees[two[m - 1:]] = 3           # a zigzag has at most m − 1 symbols
    two = two[: m - 1]
    edges = int(degrees.sum())
    check_degrees = np.full(m, edges // m, dtype=np.int64)
    check_degrees[rng.permutation(m)[: edges % m]] += 1
    chain = rng.permutation(m)
    zig_var = np.repeat(two, 2)
    zig_check = np.stack([chain[: two.size], chain[1: two.size + 1]], axis=1).reshape(-1)
    free = check_degrees - np.bincount(zig_check, minlength=m)
    if free.min() < 0:
        raise ValueError(f"degree distribution {distribution} leaves too few edges per check at rate {rate}")
    var_sockets = np.repeat(np.flatnonzero(degrees != 2), degrees[degrees != 2])
    check_of = np.repeat(np.arange(m, dtype=np.int64), free)[rng.permutation(int(free.sum()))]
    for _ in range(200):  # re-draw the checks of repeated (symbol, check) pairs among themselves
        key = var_sockets * m + check_of
        order = np.argsort(key, kind="stable")
        repeated = order[1:][np.diff(key[order]) == 0]
        if repeated.size == 0:
            break
        swap = rng.integers(0, check_of.size, size=repeated.size)
        check_of[repeated], check_of[swap] = check_of[swap], check_of[repeated].copy()
    else:
        raise ValueError(f"could not place the edges of the ({n}, {rate}) code without repeats")
    all_vars = np.concatenate([zig_var, var_sockets])
    all_checks = np.concatenate([zig_check, check_of])
    order = np.lexsort((all_vars, all_checks))
    check_var = all_vars[order].astype(np.int32)
    check_ptr = np.zeros(m + 1, dtype=np.int32)
    np.cumsum(np.bincount(all_checks, minlength=m), out=check_ptr[1:])
    return Code(n, m, rate, check_ptr, check_var, _untainted(n, m, check_ptr, check_var, degrees, rng))


def _untainted(n: int, m: int, check_ptr: np.ndarray, check_var: np.ndarray, degrees: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """Greedy untainted puncturing (Elkouss et al. 2012): take symbols (lowest degree first, random among equals)
    none of whose checks has a punctured neighbour yet; then every check of the symbol is tainted. So each
    punctured symbol is the only punctured neighbour of all its checks (recoverable in one step)."""
    checks_of: list[list[int]] = [[] for _ in range(n)]
    for c in range(m):
        for v in check_var[check_ptr[c]:check_ptr[c + 1]]:
            checks_of[v].append(c)
    tainted = np.zeros(m, dtype=bool)
    chosen: list[int] = []
    for v in np.lexsort((rng.random(n), degrees)).tolist():
        if len(chosen) == int(ADAPTABLE * n):
            break
        mine = checks_of[v]
        if not tainted[mine].any():
            chosen.append(v)
            tainted[mine] = True
    return np.array(chosen, dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def _decode(check_ptr, check_var, syndrome, prior, r, llr, max_iterations, alpha):  # pragma: no cover - compiled
    """Layered normalised min-sum on one frame from the channel information ``prior`` and the check → symbol
    messages ``r`` (float32 per edge; zeros the first time), both updated in place: ``llr`` to the posterior,
    ``r`` to the last messages, so that a blind round resumes where the failed attempt stopped instead of
    starting over (the revealed symbols' certainty enters through ``prior``).
    Returns the iterations used, or -1 if the syndrome was not reached — within ``max_iterations``, or
    because the number of unsatisfied checks has not improved for STALL_ITERATIONS iterations (a frame that
    will not decode stalls early; giving up there saves most of the CPU of a failed attempt)."""
    m = check_ptr.size - 1
    widest = 0
    for c in range(m):
        widest = max(widest, check_ptr[c + 1] - check_ptr[c])
    for v in range(prior.size):
        llr[v] = prior[v]
    for e in range(check_var.size):
        llr[check_var[e]] += r[e]
    q = np.empty(widest, dtype=np.float32)           # symbol → check messages of the current check
    best, best_at = m + 1, 0
    for iteration in range(max_iterations):
        for c in range(m):
            start, end = check_ptr[c], check_ptr[c + 1]
            min1 = np.float32(1e30)
            min2 = np.float32(1e30)
            where = -1
            sign = np.float32(-1.0) if syndrome[c] else np.float32(1.0)
            for e in range(start, end):
                value = llr[check_var[e]] - r[e]
                q[e - start] = value
                magnitude = abs(value)
                if value < 0:
                    sign = -sign
                if magnitude < min1:
                    min2 = min1
                    min1 = magnitude
                    where = e
                elif magnitude < min2:
                    min2 = magnitude
            small = alpha * min1 * sign
            second = alpha * min2 * sign
            for e in range(start, end):
                value = q[e - start]
                out = second if e == where else small
                if value < 0:
                    out = -out
                r[e] = out
                llr[check_var[e]] = value + out
        unsatisfied = 0
        for c in range(m):
            parity = syndrome[c]
            for e in range(check_ptr[c], check_ptr[c + 1]):
                if llr[check_var[e]] < 0:
                    parity ^= 1
            unsatisfied += parity
        if unsatisfied == 0:
            return iteration + 1
        if unsatisfied < best:
            best, best_at = unsatisfied, iteration
        elif iteration - best_at >= STALL_ITERATIONS:
            return -1   # no progress for a while: this attempt will not decode, stop paying for it
    return -1


@numba.njit(cache=True, nogil=True)
def _decode_frames(check_ptr, check_var, syndromes, priors, rs, llrs, max_iterations, alpha):  # pragma: no cover - compiled
    """:func:`_decode` on each row; returns iterations per frame (-1: failed)."""
    out = np.empty(llrs.shape[0], dtype=np.int64)
    for f in range(llrs.shape[0]):
        out[f] = _decode(check_ptr, check_var, syndromes[f], priors[f], rs[f], llrs[f], max_iterations, alpha)
    return out


@dataclass(frozen=True)
class Plan:
    """How a key of ``n_bits`` is cut into frames of one mother code, and where blind rounds start."""

    code: Code
    frames: int
    key_per_frame: int        # key bits a frame carries (the last frame's surplus carriers are public zeros)
    start_punctured: int      # p at the first attempt
    step: int                 # symbols revealed per failed frame and round

    @cached_property
    def carriers(self) -> np.ndarray:
        """The symbols that carry key bits, in key order: the first ``key_per_frame`` non-untainted ones. The other
        non-untainted symbols of a frame (when the key does not fill it) are shortened: public zeros."""
        return np.setdiff1d(np.arange(self.code.n), self.code.punctured)[: self.key_per_frame]


def plan(n_bits: int, qber_estimate: float) -> Plan:
    """Frame length, mother code and starting puncturing for ``n_bits`` at ``qber_estimate``.

    The frame is the shortest power of two (1024 … FRAME_BITS) whose non-untainted part holds the key, or
    the longest; the key is spread evenly over the frames, k = ⌈n_bits / frames⌉ each, the rest of a
    frame's symbols shortened. A frame discloses M − p. Blind rounds adapt best by revealing punctured
    symbols (each lowers the rate of the code being decoded) — revealing key bits costs as much leak but
    helps decoding far less — so the mother code is the highest-rate one of :data:`RATES` that can both
    start at efficiency F_START (M − |untainted| ≤ F_START·h(q)·k) and reach F_END with every punctured
    symbol revealed (M ≥ F_END·h(q)·k); if none can start that low, the highest-rate one that reaches
    F_END. p = M − F_START·h(q)·k, clipped to [0, |untainted|].
    """
    q = min(max(qber_estimate, _MIN_QBER), 0.45)
    h = binary_entropy(q)
    n = MIN_FRAME_BITS
    while n < FRAME_BITS and n * (1.0 - ADAPTABLE) < n_bits:
        n *= 2
    code = None
    for rate in reversed(RATES):
        candidate = mother_code(n, rate)
        k = -(-n_bits // -(-n_bits // (n - candidate.punctured.size)))
        if candidate.m >= F_END * h * k or rate == RATES[0]:
            if candidate.m - candidate.punctured.size <= F_START * h * k:
                code = candidate
                break
            code = code or candidate   # no room to start at F_START: the highest rate that reaches F_END
    assert code is not None
    frames = -(-n_bits // (n - code.punctured.size))
    k = -(-n_bits // frames)
    p = int(np.clip(code.m - math.ceil(F_START * h * k), 0, code.punctured.size))
    return Plan(code, frames, k, p, max(1, math.ceil(STEP_EFFICIENCY * h * k)))


class _Frames:
    """One party's frames: key bits laid into the carrier symbols of each codeword, every other symbol 0."""

    def __init__(self, bits: np.ndarray, n_bits: int, layout: Plan) -> None:
        padded = np.zeros(layout.frames * layout.key_per_frame, dtype=np.uint8)
        padded[:n_bits] = np.unpackbits(np.asarray(bits, dtype=np.uint8)[: (n_bits + 7) // 8])[:n_bits]
        self.words = np.zeros((layout.frames, layout.code.n), dtype=np.uint8)
        self.words[:, layout.carriers] = padded.reshape(layout.frames, layout.key_per_frame)


def _key(words: np.ndarray, layout: Plan, n_bits: int, keep: np.ndarray) -> np.ndarray:
    """The key bits held in ``words`` (one uint8 per bit), the frames not kept zeroed."""
    return (words[:, layout.carriers] * keep[:, None]).reshape(-1)[:n_bits]


def _reveal_order(layout: Plan, seed: int) -> np.ndarray:
    """Public order of the symbols revealed on failure: still-punctured ones (last punctured first), then key
    symbols in a pseudo-random order from the public ``seed`` (chosen without looking at any bit)."""
    shuffled = layout.carriers[np.random.default_rng([seed, 1]).permutation(layout.key_per_frame)]
    return np.concatenate([layout.code.punctured[: layout.start_punctured][::-1], shuffled])


def _decode_parallel(code: Code, syndromes: np.ndarray, priors: np.ndarray, rs: np.ndarray,
                     llrs: np.ndarray) -> tuple[np.ndarray, float]:
    """Decode the frames (rows; ``rs`` and ``llrs`` in place) on up to DECODER_THREADS threads; (iterations per
    frame, CPU seconds)."""
    def work(rows: slice) -> tuple[np.ndarray, float]:
        started = time.thread_time()
        used = _decode_frames(code.check_ptr, code.check_var, syndromes[rows], priors[rows], rs[rows], llrs[rows],
                              MAX_ITERATIONS, np.float32(NORMALISATION))
        return used, time.thread_time() - started

    bounds = np.linspace(0, llrs.shape[0], min(DECODER_THREADS, llrs.shape[0]) + 1).astype(int)
    parts = list(_DECODERS.map(work, [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]))
    return np.concatenate([used for used, _ in parts]), sum(cpu for _, cpu in parts)


_DECODERS = ThreadPoolExecutor(DECODER_THREADS, thread_name_prefix="ldpc-decoder")


def reconcile(alice: np.ndarray, bob: np.ndarray, n_bits: int, qber_estimate: float, seed: int,
              channel: ClassicalChannel) -> LdpcResult:
    """Correct Bob's sifted key to Alice's by blind syndrome decoding over ``channel``.

    ``alice``/``bob`` are ``np.packbits`` keys of ``n_bits`` bits; ``qber_estimate`` (0 ≤ q < 0.5) sizes the
    code and Bob's channel information; ``seed`` drives Alice's private punctured bits and the public reveal
    order. Alice's array is read only by the Alice side, Bob's only by the Bob side; what crosses is counted
    by ``channel``. Raises :class:`~qkdlink.postprocessing.channel.ChannelDown` if the channel goes down.
    """
    check_arguments(alice, bob, n_bits, qber_estimate, seed)
    layout = plan(n_bits, qber_estimate)
    code, frames, k = layout.code, layout.frames, layout.key_per_frame
    before = channel.stats()
    order = _reveal_order(layout, seed)
    # Alice: her key in the codewords, private random bits in the punctured symbols, the other untainted ones 0.
    a = _Frames(alice, n_bits, layout)
    a.words[:, code.punctured[: layout.start_punctured]] = np.random.default_rng([seed, 0]).integers(
        0, 2, size=(frames, layout.start_punctured), dtype=np.uint8)
    syndromes = channel.send("alice", code.syndrome(a.words).astype(np.uint8)).reshape(frames, code.m)
    disclosed = frames * (code.m - layout.start_punctured)
    # Bob: his bits as channel information; punctured symbols erased; shortened ones and padding known (zero).
    b = _Frames(bob, n_bits, layout)
    q = min(max(qber_estimate, _MIN_QBER), 0.45)
    confidence = np.float32(math.log((1.0 - q) / q))
    prior = np.where(b.words == 0, confidence, -confidence).astype(np.float32)
    known = np.ones(code.n, dtype=bool)      # shortened: untainted symbols not punctured, carriers left unused
    known[layout.carriers] = False
    known[code.punctured[: layout.start_punctured]] = False
    prior[:, known] = _KNOWN_LLR
    prior[:, code.punctured[: layout.start_punctured]] = 0.0
    prior[-1, layout.carriers[n_bits - (frames - 1) * k:]] = _KNOWN_LLR  # the last frame's padding
    decoded = np.empty((frames, code.n), dtype=np.uint8)
    pending = np.arange(frames)
    revealed = rounds = 0
    cpu = 0.0
    # check → symbol messages kept between blind rounds: ≈ 18 bytes per key bit (4.5 edges per symbol), one
    # reason (with its CPU) why LDPC is for small links
    messages = np.zeros((frames, code.check_var.size), dtype=np.float32)
    while True:
        llrs = np.empty((pending.size, code.n), dtype=np.float32)
        resumed = messages[pending]
        used, spent = _decode_parallel(code, syndromes[pending], prior[pending], resumed, llrs)
        messages[pending] = resumed
        cpu += spent
        decoded[pending] = llrs < 0
        failed = pending[used < 0]
        status = np.zeros(frames, dtype=np.uint8)
        status[failed] = 1
        failed = np.flatnonzero(channel.send("bob", status))  # Bob → Alice: which frames did not decode
        if failed.size == 0 or rounds == MAX_ROUNDS or revealed >= order.size:
            break
        rounds += 1
        # punctured symbols in steps; key bits (far less help per bit of leak) doubling, so that a stubborn frame
        # is settled in a few rounds rather than discarded
        size = layout.step if revealed < layout.start_punctured else max(layout.step, revealed - layout.start_punctured)
        symbols = order[revealed: revealed + size]
        revealed += symbols.size
        values = channel.send("alice", a.words[np.ix_(failed, symbols)])
        prior[np.ix_(failed, symbols)] = np.where(values == 0, _KNOWN_LLR, -_KNOWN_LLR)
        disclosed += failed.size * symbols.size  # a punctured symbol's credit given back, or a key bit shown
        pending = failed
    # Frames still failing are dropped: their key bits become public zeros at both ends, all counted as leak.
    keep = np.ones(frames, dtype=bool)
    keep[failed] = False
    disclosed += int(failed.size) * k
    alice_key = _key(a.words, layout, n_bits, keep)
    bob_key = _key(decoded, layout, n_bits, keep)
    own = _key(b.words, layout, n_bits, np.ones(frames, dtype=bool))
    flipped = int(np.count_nonzero((bob_key != own) & np.repeat(keep, k)[:n_bits]))
    after = channel.stats()
    return LdpcResult(np.packbits(bob_key), np.packbits(alice_key), disclosed, after.messages - before.messages,
                      after.round_trips - before.round_trips, frames, k, flipped,
                      after.emulated_seconds - before.emulated_seconds, int(failed.size), rounds, cpu)
