"""Two-party Cascade error correction, vectorised over every frame of a sifted key at once.

Cascade (G. Brassard & L. Salvail, "Secret-key reconciliation by public discussion", EUROCRYPT 1993,
LNCS 765) corrects Bob's copy of the sifted key to Alice's by interactive parity comparisons: in each
pass the (shuffled) frame is cut into blocks, Alice discloses each block's parity, Bob finds one error
in every block whose parity differs by a binary search (Alice disclosing the parity of each left half),
and every bit he flips changes the parity of the blocks containing it in all earlier passes — the
*cascade* that makes those blocks odd again and lets him correct the partner errors hidden in them.

Parameters are the near-optimal choice "Cascade opt. (8)" of J. Martinez-Mateo, C. Pacher, M. Peev,
A. Ciurana and V. Martin, "Demystifying the information reconciliation protocol Cascade", Quantum
Information & Computation 15 (2015) 453-477: 14 passes, power-of-two block sizes
``k1 = 2^⌈α⌉``, ``k2 = 2^⌈(α + 12)/2⌉``, ``k3 = 4096`` and ``k_i = n/2`` for ``i ≥ 4``, with
``α = log2(1/p) − 1/2`` (each clamped to ``[2, n/2]`` for short frames), and sub-block reuse: a
cascade search starts from the smallest sub-block already known to be odd, not from the top of the
block (see :class:`_Bob`). Also block-parity inference: after the first pass Bob knows the parity of
Alice's whole frame, so in later passes each frame's last block parity is inferred, not disclosed.

Why vectorised and batched: a 13-Mbit block is ~200 frames of 2^16 bits, each needing thousands of
parity exchanges; exchanging them frame by frame and bit by bit in Python is orders of magnitude too
slow and needs orders of magnitude more round trips. Here one message carries the requests (or
answers) of every frame. Alice's first answer holds the block parities of every pass: she discloses
all of them in any Cascade, and they depend on her bits alone, so asking pass by pass only added a
round trip per pass and made every frame wait for the slowest at each pass (asking once: 0–20 % fewer
round trips, the same leak bit for bit). Within a frame, Bob searches all odd blocks of the lowest
pass that has any (the blocks of one pass are disjoint, so they can be searched simultaneously), one
round trip per halving; frames do not wait for each other, so one message mixes passes. After the
flips, the parities of the affected blocks of every pass are updated in place and the next odd
blocks are searched, until none remains (the cascade). Within a frame this is the order of
operations of sequential Cascade, so the leak is that of sequential Cascade. Permutations are the
same for every frame of a pass (frames carry independent errors, so this changes no frame's
statistics) and come from the public shared ``seed``; the first pass needs none (the bits are
i.i.d. already). Each party keeps its bits packed in the shuffled order of every pass it has
searched in (:class:`_Views`), so the parity of an aligned sub-block is a popcount over contiguous
bytes.

Two real parties: :class:`_Alice` holds only her bits and answers parity requests; :class:`_Bob`
holds only his bits and drives the protocol; everything between them crosses the
:class:`~qkdlink.postprocessing.channel.ClassicalChannel`, which counts it. A request names each
sub-block by pass, frame, start and length (its size in bits is stated as what that naming needs);
an answer is one parity bit per sub-block.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qkdlink.postprocessing.channel import ClassicalChannel

PASSES = 14
_MIN_QBER = 1e-5  # smaller estimates (log2(1/0) is undefined) count as this; the block sizes then clamp to n/2
_MIN_FRAME_BITS = 1024
_HEADER_BITS = 16  # the block-parity request: the number of passes


@dataclass(frozen=True)
class CascadeResult:
    """Outcome of :func:`reconcile`.

    ``disclosed_bits`` is the leak λ_EC to subtract in privacy amplification: every parity Alice sent
    (block parities and binary-search parities), one bit each. Bob's messages are not counted: they
    say which sub-blocks he asks about, a function of the error pattern and of Alice's already public
    parities, and the error pattern is independent of Alice's key, so they tell Eve nothing more about
    it.
    """

    corrected: np.ndarray
    disclosed_bits: int
    messages: int
    round_trips: int
    frames: int
    flipped_bits: int
    emulated_seconds: float
    frame_key_bits: int = 0   # bits per frame (:func:`frame_size`); the last frame is padded with public zeros


def frame_size(n_bits: int, frame_bits: int = 65536) -> int:
    """The frame length actually used: ``frame_bits``, or for a short key the next power of two ≥ n_bits (at
    least 1024), so that a 1,000-bit key is not padded to 65,536 bits of public zeros."""
    if frame_bits < 64 or frame_bits & (frame_bits - 1):
        raise ValueError(f"frame_bits must be a power of two >= 64, got {frame_bits}")
    return min(frame_bits, max(_MIN_FRAME_BITS, 1 << max(0, n_bits - 1).bit_length()))


def failed_frames(alice: np.ndarray, corrected: np.ndarray, n_bits: int, frame_bits: int | None = None) -> int:
    """Frames (of ``frame_bits`` key bits; default Cascade's ``frame_size(n_bits)``) whose corrected bits still
    differ from Alice's (both packed).

    Truth only an emulator has: Cascade cannot know it failed (all its parities agree at the end), nor can
    a syndrome decoder that converged to the wrong word; a real link learns it only through verification."""
    if n_bits == 0:
        return 0
    wrong = np.flatnonzero(np.unpackbits(alice ^ corrected, count=n_bits))
    return int(np.unique(wrong // (frame_bits or frame_size(n_bits))).size)


def block_sizes(qber_estimate: float, frame_bits: int, passes: int = PASSES) -> tuple[int, ...]:
    """Block size per pass, Martinez-Mateo et al. (2015) opt. (8), clamped to ``[2, frame_bits/2]``."""
    p = min(max(qber_estimate, _MIN_QBER), 0.5)
    alpha = math.log2(1.0 / p) - 0.5
    raw = [2 ** math.ceil(alpha), 2 ** math.ceil((alpha + 12.0) / 2.0), 4096] + [frame_bits // 2] * (passes - 3)
    return tuple(min(max(k, 2), frame_bits // 2) for k in raw[:passes])


class _Shuffles:
    """The public per-pass permutations, derived from the shared seed (each party builds its own copy)."""

    def __init__(self, seed: int, frame_bits: int) -> None:
        self._seed = seed
        self._n = frame_bits
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, pass_index: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(permutation, inverse) of pass ``pass_index``; None for the first pass (identity)."""
        if pass_index == 0:
            return None
        if pass_index not in self._cache:
            perm = np.random.default_rng([self._seed, pass_index]).permutation(self._n).astype(np.int64)
            inverse = np.empty_like(perm)
            inverse[perm] = np.arange(self._n, dtype=np.int64)
            self._cache[pass_index] = (perm, inverse)
        return self._cache[pass_index]

    def half_mask(self, pass_index: int) -> np.ndarray:
        """Packed indicator of the frame positions in the first half of pass ``pass_index``'s shuffled order."""
        indicator = np.zeros(self._n, dtype=np.uint8)
        indicator[self.get(pass_index)[0][: self._n // 2]] = 1
        return np.packbits(indicator)


def _packed_view(bits: np.ndarray, frame_bits: int, perm: np.ndarray | None) -> np.ndarray:
    """A party's bits in one pass's shuffled order, bit-packed per frame: shape (frames, frame_bits // 8).

    Sub-blocks of a binary search are aligned power-of-two ranges of this order, so their parities are
    popcounts of contiguous bytes — an eighth of the memory traffic of gathering one byte per bit.
    """
    grid = bits.reshape(-1, frame_bits)
    if perm is not None:
        grid = np.take(grid, perm, axis=1)
    return np.packbits(grid, axis=1)


def _range_parities(view: np.ndarray, frame_bits: int, frames: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Parities of the aligned sub-blocks ``[start, start + length)`` (shuffled order of the view's pass) of the given
    frames; ``length`` is a power of two and each start a multiple of it."""
    flat = view.reshape(-1)
    first = frames * frame_bits + starts
    if length < 8:  # inside one byte: mask the bits (big-endian: bit 0 is the most significant)
        offset = first & 7
        mask = ((0xFF >> offset) & (0xFF << (8 - offset - length))).astype(np.uint8)
        return np.bitwise_count(flat[first >> 3] & mask) & 1
    rows = flat.reshape(-1, length // 8)[first // length]
    return np.bitwise_count(np.bitwise_xor.reduce(rows, axis=1)) & 1


def _block_parities(view: np.ndarray, frame_bits: int, k: int) -> np.ndarray:
    """Parities of every block of size k of one pass, shape (frames, frame_bits // k), C-contiguous so that Bob can
    update them in place through a flat view."""
    frames = view.shape[0]
    blocks = frame_bits // k
    if k < 8:
        index = np.arange(frames * blocks, dtype=np.int64)
        return _range_parities(view, frame_bits, index // blocks, (index % blocks) * k, k).reshape(frames, blocks)
    folded = np.bitwise_xor.reduce(view.reshape(frames, blocks, k // 8), axis=2)
    return np.ascontiguousarray(np.bitwise_count(folded) & 1)


def _subblock_parities(views: Callable[[int], np.ndarray], frame_bits: int, passes: np.ndarray, frames: np.ndarray, starts: np.ndarray,
                       lengths: np.ndarray) -> np.ndarray:
    """Parities of sub-blocks named by (pass, frame, start, length), each a power-of-two ``length`` aligned in its
    pass's shuffled order; computed group by group (same pass and length) from the party's views."""
    key = passes * 64 + np.bitwise_count(lengths - 1)  # log2(length) < 64
    if key.min() == key.max():  # the usual case: one pass, one length
        return _range_parities(views(int(passes[0])), frame_bits, frames, starts, int(lengths[0]))
    out = np.empty(passes.size, dtype=np.uint8)
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    for group in np.split(order, bounds):
        if group.size:
            first = group[0]
            out[group] = _range_parities(views(int(passes[first])), frame_bits, frames[group], starts[group], int(lengths[first]))
    return out


class _Views:
    """One party's bits and, built on first use, its packed views in each pass's shuffled order.

    A view costs a shuffle of the whole string; passes with half-frame blocks rarely need one (a search there is
    rare once the early passes have done their work), and their block parities come without it: the parity of a
    shuffled half is a popcount of the identity view masked by that half.
    """

    def __init__(self, bits: np.ndarray, frame_bits: int, sizes: tuple[int, ...], seed: int) -> None:
        self.bits = bits
        self._n = frame_bits
        self._sizes = sizes
        self._shuffles = _Shuffles(seed, frame_bits)
        self._built: dict[int, np.ndarray] = {0: _packed_view(bits, frame_bits, None)}

    def shuffle(self, pass_index: int) -> tuple[np.ndarray, np.ndarray] | None:
        return self._shuffles.get(pass_index)

    def view(self, pass_index: int) -> np.ndarray:
        if pass_index not in self._built:
            self._built[pass_index] = _packed_view(self.bits, self._n, self._shuffles.get(pass_index)[0])
        return self._built[pass_index]

    def block_parities(self, pass_index: int) -> np.ndarray:
        """Parities of every block of the pass, (frames, blocks), C-contiguous."""
        k = self._sizes[pass_index]
        if pass_index == 0 or k != self._n // 2 or pass_index in self._built:
            return _block_parities(self.view(pass_index), self._n, k)
        identity = self._built[0]
        first = np.bitwise_count(np.bitwise_xor.reduce(identity & self._shuffles.half_mask(pass_index), axis=1)) & 1
        whole = np.bitwise_count(np.bitwise_xor.reduce(identity, axis=1)) & 1
        return np.ascontiguousarray(np.stack([first, first ^ whole], axis=1))

    def subblock_parities(self, passes: np.ndarray, frames: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return _subblock_parities(self.view, self._n, passes, frames, starts, lengths)

    def flip(self, frames: np.ndarray, positions: np.ndarray) -> None:
        """Flip bits (frame, position in the original order; distinct) in the bits and every built view."""
        self.bits[frames * self._n + positions] ^= 1
        for j, view in self._built.items():
            shuffle = self._shuffles.get(j)
            local = positions if shuffle is None else shuffle[1][positions]
            np.bitwise_xor.at(view.reshape(-1), (frames * self._n + local) >> 3, (0x80 >> (local & 7)).astype(np.uint8))


class _Alice:
    """Alice: holds only her bits; answers Bob's parity requests and nothing else."""

    def __init__(self, bits: np.ndarray, frame_bits: int, sizes: tuple[int, ...], seed: int) -> None:
        self._views = _Views(bits, frame_bits, sizes, seed)

    def answer(self, request: np.ndarray) -> np.ndarray:
        """Parity bits for one request: ``[P]`` → the block parities of passes 0 … P−1, pass after pass (after the
        first pass all but each frame's last block, which Bob infers from the frame parity);
        ``[passes…, frames…, starts…, lengths…]`` → the parities of those sub-blocks."""
        if request.size == 1:
            shown = [self._views.block_parities(j) if j == 0 else self._views.block_parities(j)[:, :-1]
                     for j in range(int(request[0]))]
            return np.concatenate([parities.ravel() for parities in shown])
        return self._views.subblock_parities(*request.reshape(4, -1))


class _Bob:
    """Bob: holds only his bits; drives the protocol through ``ask`` (request out, Alice's parities back).

    Per pass run so far he keeps Alice's block parities and his own (kept up to date on every flip), and per block a
    record for sub-block reuse: the leaf his last binary search there ended on (−1: none) and the flips into the block
    since. Right after a search every node of the block's parity tree on or
    beside the search path is known and even; if exactly one other flip has landed in the block since, the known node
    beside the path that holds it is the smallest odd sub-block whose parity Alice already disclosed, and the new search
    starts there instead of at the top (Martinez-Mateo et al. 2015, sub-block reuse).
    """

    def __init__(self, bits: np.ndarray, frame_bits: int, sizes: tuple[int, ...], seed: int,
                 ask: Callable[[np.ndarray, int], np.ndarray]) -> None:
        self.views = _Views(bits, frame_bits, sizes, seed)
        self.flipped = 0
        self._n = frame_bits
        self._frames = bits.size // frame_bits
        self._sizes = np.array(sizes, dtype=np.int64)
        self._ask = ask
        # a requested sub-block is named by its pass, its start in the whole string and log2 of its length (< 32)
        self._entry_bits = max(1, math.ceil(math.log2(len(sizes)))) + max(1, math.ceil(math.log2(self._frames * frame_bits))) + 5
        self._alice_parities: list[np.ndarray] = []  # per pass, flat (frame * blocks + block): disclosed or inferred
        self._own_parities: list[np.ndarray] = []
        self._leaf: list[np.ndarray] = []  # per pass and block: position (pass order) of the last search's leaf, or -1
        self._flips_since: list[np.ndarray] = []  # per pass and block: flips into the block since that search
        self._last_flip: list[np.ndarray] = []  # per pass and block: position (pass order) of the latest such flip

    def run(self) -> None:
        """Every pass's block parities in one exchange, then, in every frame, search the odd blocks of its lowest pass
        that has any, until every block of every pass agrees with Alice's parity."""
        passes = len(self._sizes)
        answer = self._ask(np.array([passes], dtype=np.int64), _HEADER_BITS)
        offset = 0
        frame_parity = np.zeros(self._frames, dtype=np.uint8)
        for pass_index, k in enumerate(self._sizes.tolist()):
            blocks = self._n // k
            shown_blocks = blocks if pass_index == 0 else blocks - 1
            shown = answer[offset: offset + self._frames * shown_blocks].reshape(self._frames, shown_blocks).astype(np.uint8)
            offset += self._frames * shown_blocks
            if pass_index == 0:
                alice = shown
                frame_parity = np.bitwise_xor.reduce(alice, axis=1)
            else:
                inferred = frame_parity ^ np.bitwise_xor.reduce(shown, axis=1)
                alice = np.concatenate([shown, inferred[:, None]], axis=1)
            self._alice_parities.append(alice.ravel())
            self._own_parities.append(self.views.block_parities(pass_index).ravel())
            self._leaf.append(np.full(self._frames * blocks, -1, dtype=np.int64))
            self._flips_since.append(np.zeros(self._frames * blocks, dtype=np.int64))
            self._last_flip.append(np.zeros(self._frames * blocks, dtype=np.int64))
        while (odd := self._odd_blocks()) is not None:
            self._correct(*odd)

    def _odd_blocks(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(pass, flat block) of the odd blocks to search now: in each frame, those of the lowest pass that has any
        (disjoint within the frame). The order of operations inside a frame is that of sequential Cascade; frames do
        not wait for each other, which saves round trips."""
        claimed = np.zeros(self._frames, dtype=bool)
        passes, blocks = [], []
        for j, (alice, own) in enumerate(zip(self._alice_parities, self._own_parities)):
            odd = np.flatnonzero(alice != own)
            if odd.size:
                frames = odd // (self._n // int(self._sizes[j]))
                odd = odd[~claimed[frames]]
                claimed[frames] = True
                passes.append(np.full(odd.size, j, dtype=np.int64))
                blocks.append(odd)
        if not passes or not sum(b.size for b in blocks):
            return None
        return np.concatenate(passes), np.concatenate(blocks)

    def _correct(self, passes: np.ndarray, blocks: np.ndarray) -> None:
        """Binary-search the given odd blocks in lock step (one round trip per halving for all of them), each from the
        smallest known odd sub-block; flip the bits found and update every pass's parities and records (the cascade)."""
        k = self._sizes[passes]
        frames = blocks // (self._n // k)
        starts = (blocks % (self._n // k)) * k
        lengths = k.copy()
        for j in np.unique(passes).tolist():  # sub-block reuse where the record allows it
            sel = np.flatnonzero(passes == j)
            leaf, since, flip = self._leaf[j][blocks[sel]], self._flips_since[j][blocks[sel]], self._last_flip[j][blocks[sel]]
            diverge = np.where((leaf >= 0) & (since == 1), leaf ^ flip, 0)
            reuse = diverge > 1  # the known node beside the path holding the flip has ≥ 2 bits
            level = np.frexp(diverge[reuse].astype(np.float64))[1] - 1  # floor(log2): that node has 2^level bits
            lengths[sel[reuse]] = 1 << level
            starts[sel[reuse]] = (flip[reuse] >> level) << level
        while (active := np.flatnonzero(lengths > 1)).size:
            half = lengths[active] // 2
            request = np.concatenate([passes[active], frames[active], starts[active], half])
            alice = self._ask(request, active.size * self._entry_bits)
            own = self.views.subblock_parities(passes[active], frames[active], starts[active], half)
            starts[active] += np.where(alice != own, 0, half)  # left half differs → error there, else in the right
            lengths[active] = half
        positions = starts.copy()  # → frame positions in the original order
        for j in np.unique(passes).tolist():
            shuffle = self.views.shuffle(j)
            if shuffle is not None:
                sel = passes == j
                positions[sel] = shuffle[0][starts[sel]]
        self.views.flip(frames, positions)
        self.flipped += positions.size
        for j in range(len(self._own_parities)):
            shuffle = self.views.shuffle(j)
            local = positions if shuffle is None else shuffle[1][positions]
            block = frames * (self._n // int(self._sizes[j])) + local // int(self._sizes[j])
            np.bitwise_xor.at(self._own_parities[j], block, 1)
            found_here = passes == j
            np.add.at(self._flips_since[j], block[~found_here], 1)
            self._last_flip[j][block[~found_here]] = local[~found_here]
            self._leaf[j][block[found_here]] = local[found_here]
            self._flips_since[j][block[found_here]] = 0


def check_arguments(alice: np.ndarray, bob: np.ndarray, n_bits: int, qber_estimate: float, seed: int) -> None:
    """The arguments every reconciliation method takes (``reconcile`` here and in ``ldpc``), checked alike:
    ValueError naming the one that is wrong."""
    if n_bits < 1:
        raise ValueError("n_bits must be >= 1")
    if not 0.0 <= qber_estimate < 0.5:
        raise ValueError(f"qber_estimate must be in [0, 0.5), got {qber_estimate}")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    need = (n_bits + 7) // 8
    if np.asarray(alice).size < need or np.asarray(bob).size < need:
        raise ValueError(f"keys must hold at least {need} bytes for {n_bits} bits")


def _unpack(packed: np.ndarray, n_bits: int, total: int) -> np.ndarray:
    """Bit-packed (big-endian) key → one uint8 per bit, padded with public zeros to ``total`` bits."""
    bits = np.zeros(total, dtype=np.uint8)
    bits[:n_bits] = np.unpackbits(np.asarray(packed, dtype=np.uint8)[: (n_bits + 7) // 8])[:n_bits]
    return bits


def reconcile(alice: np.ndarray, bob: np.ndarray, n_bits: int, qber_estimate: float, seed: int,
              channel: ClassicalChannel, *, frame_bits: int = 65536) -> CascadeResult:
    """Correct Bob's sifted key to Alice's with Cascade over ``channel``.

    ``alice`` and ``bob`` are ``np.packbits`` (big-endian, zero-padded) keys of ``n_bits`` bits; the key is cut
    into frames of :func:`frame_size` bits (the last padded with public zeros) and every frame reconciled;
    ``qber_estimate`` (0 ≤ p < 0.5, from parameter estimation) sets the block sizes, ``seed`` the public shuffles.
    ``alice`` is read only by the Alice party, ``bob`` only by the Bob party. Raises
    :class:`~qkdlink.postprocessing.channel.ChannelDown` if the channel goes down mid-protocol.
    """
    check_arguments(alice, bob, n_bits, qber_estimate, seed)
    n = frame_size(n_bits, frame_bits)
    frames = -(-n_bits // n)
    sizes = block_sizes(qber_estimate, n)
    alice_party = _Alice(_unpack(alice, n_bits, frames * n), n, sizes, seed)

    def ask(request: np.ndarray, bits: int) -> np.ndarray:
        delivered = channel.send("bob", request, bits=bits)
        return channel.send("alice", alice_party.answer(delivered))

    before = channel.stats()
    bob_party = _Bob(_unpack(bob, n_bits, frames * n), n, sizes, seed, ask)
    bob_party.run()
    after = channel.stats()
    return CascadeResult(
        corrected=np.packbits(bob_party.views.bits[:n_bits]),
        disclosed_bits=after.bits_by_sender["alice"] - before.bits_by_sender["alice"],
        messages=after.messages - before.messages,
        round_trips=after.round_trips - before.round_trips,
        frames=frames,
        flipped_bits=bob_party.flipped,
        emulated_seconds=after.emulated_seconds - before.emulated_seconds,
        frame_key_bits=n,
    )
