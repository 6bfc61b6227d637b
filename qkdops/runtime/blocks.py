"""Post-processing blocks: many emulator frames summed into the block that post-processing eats.

The emulator steps in short frames (``runtime.frame_seconds``) so device telemetry is fresh every
second; finite-key post-processing needs far more pulses (an MDI block is tens of seconds at
1 GHz). ``BlockBuilder`` sums frames until the link's ``block_pulses`` are reached. A ``Block`` is
what the archive stores: counts only — never key material — and enough to replay it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from qkdlink.emulator import BlockRecord
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

    def block_counts(self) -> BlockCounts:
        return BlockCounts(float(self.pulses), {k: ClassCounts(*map(float, v)) for k, v in self.counts.items()})

    def to_json(self) -> str:
        body = {**self.__dict__, "counts": [[i, b, *v] for (i, b), v in sorted(self.counts.items())],
                "faults": list(self.faults)}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Block:
        body = json.loads(text)
        body["counts"] = {(i, b): (s, d, e) for i, b, s, d, e in body["counts"]}
        body["faults"] = tuple(body["faults"])
        return cls(**body)


class BlockBuilder:
    """Sums frames of one link into blocks of ``frames_per_block`` frames."""

    def __init__(self, link: str, protocol: str, frames_per_block: int, next_index: int) -> None:
        if frames_per_block < 1:
            raise ValueError("frames_per_block must be >= 1")
        self.link, self.protocol, self.frames_per_block = link, protocol, frames_per_block
        self.next_index = next_index
        self._reset()

    def _reset(self) -> None:
        self._frames = 0
        self._start: float | None = None
        self._pulses = self._detected = 0
        self._counts: dict[tuple[str, str], list[int]] = {}
        self._channel_up = True
        self._faults: set[str] = set()
        self._y1 = self._e1 = 0.0

    def add(self, frame: BlockRecord, start_timestamp: float, end_timestamp: float, pulses: int) -> Block | None:
        """Add a frame; return the finished block when this frame completes one."""
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
        self._faults.update(frame.active_faults)
        self._y1 += frame.truth.yield_ * pulses   # pulse-weighted means of the truth
        self._e1 += frame.truth.phase_error_rate * pulses
        if self._frames < self.frames_per_block:
            return None
        block = Block(self.link, self.protocol, self.next_index, self._start, end_timestamp, self._pulses,
                      {k: (v[0], v[1], v[2]) for k, v in self._counts.items()}, self._detected,
                      self._channel_up, tuple(sorted(self._faults)), self._y1 / self._pulses, self._e1 / self._pulses)
        self.next_index += 1
        self._reset()
        return block
