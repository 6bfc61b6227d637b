"""The emulated authenticated classical channel between Alice and Bob.

Error correction is an interactive protocol: Bob asks, Alice answers with parities. Two things about
the wire matter to operations, and this channel models both:

* latency — every time the direction of traffic reverses, the next message waits one one-way
  latency before the other party can act on it, so a protocol with many round trips takes time even
  when the CPU work is small (``emulated_seconds``; messages sent back to back in one direction
  pipeline and cost one latency together);
* outages — before each message ``is_up()`` is asked; when it answers False the message is not
  delivered and :class:`ChannelDown` stops the protocol, as a cut fibre or a dead authentication
  service would.

It also counts what crossed: messages, bits per sender, legs and round trips. Only what was handed to
:meth:`ClassicalChannel.send` reaches the other party (arrays are copied), so a party cannot see the
other's private state through shared memory.

Definitions: a *leg* is a maximal run of consecutive messages from one sender (the first message
opens the first leg); ``emulated_seconds = legs × one_way_latency_s``; ``round_trips = legs // 2`` —
each completed request/answer exchange closes one round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

PARTIES = ("alice", "bob")


class ChannelDown(RuntimeError):
    """The classical channel is down: no further message can be delivered."""


@dataclass(frozen=True)
class ChannelStats:
    """Snapshot of the channel's counters (immutable, so callers can diff two snapshots)."""

    messages: int
    legs: int
    round_trips: int
    bits_by_sender: dict[str, int] = field(default_factory=dict)
    emulated_seconds: float = 0.0


def payload_bits(payload: np.ndarray | bytes) -> int:
    """Size of a payload in bits when the sender does not state it: one bit per array element (an array of parity
    bits), eight per byte of a bytes object."""
    if isinstance(payload, np.ndarray):
        return int(payload.size)
    if isinstance(payload, bytes | bytearray):
        return 8 * len(payload)
    raise TypeError(f"unsupported payload type {type(payload).__name__}; send an ndarray or bytes")


class ClassicalChannel:
    """An authenticated classical channel with latency and an optional outage predicate.

    ``one_way_latency_s`` is the propagation plus processing delay of one message; ``is_up`` is called
    before every message (None: always up).
    """

    def __init__(self, one_way_latency_s: float = 0.0, is_up: Callable[[], bool] | None = None) -> None:
        if one_way_latency_s < 0:
            raise ValueError("one_way_latency_s must be >= 0")
        self.one_way_latency_s = float(one_way_latency_s)
        self._is_up = is_up
        self._messages = 0
        self._legs = 0
        self._last_sender: str | None = None
        self._bits = dict.fromkeys(PARTIES, 0)

    def send(self, sender: str, payload: np.ndarray | bytes, *, bits: int | None = None) -> np.ndarray | bytes:
        """Carry one message from ``sender`` to the other party and return what the receiver gets.

        ``bits`` states the message size when the payload's natural size is not it (e.g. an array of
        indices); by default one bit per array element or eight per byte.
        """
        if sender not in PARTIES:
            raise ValueError(f"sender must be one of {PARTIES}, got {sender!r}")
        if self._is_up is not None and not self._is_up():
            raise ChannelDown(f"classical channel down after {self._messages} messages")
        size = payload_bits(payload) if bits is None else int(bits)
        if size < 0:
            raise ValueError("bits must be >= 0")
        if sender != self._last_sender:
            self._legs += 1
            self._last_sender = sender
        self._messages += 1
        self._bits[sender] += size
        return payload.copy() if isinstance(payload, np.ndarray) else bytes(payload)

    def stats(self) -> ChannelStats:
        """The counters so far."""
        return ChannelStats(
            messages=self._messages,
            legs=self._legs,
            round_trips=self._legs // 2,
            bits_by_sender=dict(self._bits),
            emulated_seconds=self._legs * self.one_way_latency_s,
        )
