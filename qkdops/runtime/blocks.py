"""Post-processing blocks: many emulator frames summed into the block that post-processing eats.

The emulator steps in short frames (``runtime.frame_seconds``) so device telemetry is fresh every
second; finite-key post-processing needs far more pulses (an MDI block is tens of seconds at
1 GHz). ``BlockBuilder`` sums frames until the link's ``block_pulses`` are reached. A ``Block`` is
what the archive stores: counts, never key material, and enough to replay it — including the seed
from which both ends' sifted strings and every random choice of their post-processing (Cascade's
permutations, the verification and privacy-amplification hash seeds) are drawn. The seed is drawn
from the operating system's CSPRNG per block, never from the link's configured seed (which is
public), and the archive file is private (0600): together with the counts it rebuilds the block's
emulated key, which is what makes ``qkdops replay`` able to check every key's fingerprint.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from qkdlink.emulator import FrameRecord
from qkdlink.protocols.base import BlockCounts, ClassCounts


@dataclass(frozen=True)
class Block:
    """One post-processing block of one link (timestamps are Unix seconds)."""

    link: str
    protocol: str
    index: int
    start_timestamp: float
    end_timestamp: float
    pulses: int
    counts: Mapping[tuple[str, str], tuple[int, int, int]]  # (intensity, basis) → (sent, detected, errors)
    detected_total: int
    classical_channel_up: bool
    faults: tuple[str, ...]
    y1_true: float
    e1_true: float
    seed: int = 0                      # the block's post-processing seed (sifted strings, hash seeds)
    classical_latency_s: float = 0.0   # mean one-way latency of the classical channel in the block
    # faults that act on post-processing (reconciliation_fault) → their parameters, as in force
    postprocessing_faults: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def block_counts(self) -> BlockCounts:
        return BlockCounts(float(self.pulses), {k: ClassCounts(*map(float, v)) for k, v in self.counts.items()})

    def to_json(self) -> str:
        body = {**self.__dict__, "counts": [[i, b, *v] for (i, b), v in sorted(self.counts.items())],
                "faults": list(self.faults), "postprocessing_faults": {k: dict(v) for k, v in self.postprocessing_faults.items()}}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Block:
        body = json.loads(text)
        body["counts"] = {(i, b): (s, d, e) for i, b, s, d, e in body["counts"]}
        body["faults"] = tuple(body["faults"])
        return cls(**body)


class BlockBuilder:
    """Sums frames of one link into blocks of ``frames_per_block`` frames."""

    def __init__(self, link: str, protocol: str, frames_per_block: int, next_index: int,
                 seed_source: Callable[[], int] = lambda: secrets.randbits(63)) -> None:
        if frames_per_block < 1:
            raise ValueError("frames_per_block must be >= 1")
        self.link, self.protocol, self.frames_per_block = link, protocol, frames_per_block
        self.next_index = next_index
        self.seed_source = seed_source
        self._reset()

    def _reset(self) -> None:
        self._frames = 0
        self._start: float | None = None
        self._pulses = self._detected = 0
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._channel_up = True
        self._faults: set[str] = set()
        self._y1 = self._e1 = 0.0
        self._latency_sum, self._latency_frames = 0.0, 0
        self._pp_faults: dict[str, Mapping[str, float]] = {}

    def add(self, frame: FrameRecord, start_timestamp: float, end_timestamp: float, pulses: int,
            postprocessing_faults: Mapping[str, Mapping[str, float]] | None = None,
            faults: Iterable[str] | None = None) -> Block | None:
        """Add a frame; return the finished block when this frame completes one.

        ``postprocessing_faults``: faults in force during the frame that act on post-processing,
        with their parameters (the block keeps the last ones seen). ``faults``: the names of all
        faults in force during the frame (default: the emulator's, ``frame.active_faults``; the
        runtime adds its own)."""
        if self._start is None:
            self._start = start_timestamp
        self._frames += 1
        self._pulses += pulses
        self._detected += frame.detected_total
        for key, c in frame.counts.classes.items():
            acc = self._counts.setdefault(key, [0, 0, 0])
            acc[0] += int(c.sent)
            acc[1] += int(c.detected)
            acc[2] += int(c.errors)
        self._channel_up &= frame.telemetry.classical_channel_up
        if frame.telemetry.classical_latency_s is not None:
            self._latency_sum += frame.telemetry.classical_latency_s
            self._latency_frames += 1
        self._pp_faults.update({name: dict(p) for name, p in (postprocessing_faults or {}).items()})
        self._faults.update(frame.active_faults if faults is None else faults)
        self._y1 += frame.truth.yield_ * pulses   # pulse-weighted means of the truth
        self._e1 += frame.truth.phase_error_rate * pulses
        if self._frames < self.frames_per_block:
            return None
        block = Block(self.link, self.protocol, self.next_index, self._start, end_timestamp, self._pulses,
                      {k: (v[0], v[1], v[2]) for k, v in self._counts.items()}, self._detected,
                      self._channel_up, tuple(sorted(self._faults)), self._y1 / self._pulses, self._e1 / self._pulses,
                      self.seed_source(), self._latency_sum / self._latency_frames if self._latency_frames else 0.0,
                      self._pp_faults)
        self.next_index += 1
        self._reset()
        return block
