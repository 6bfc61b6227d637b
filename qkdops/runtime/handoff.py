"""Key hand-off: each link's buffered block keys moved to both ends' KME stores, oldest first.

Called from the fleet's stepping thread (``run_due``), so it must never block: a slow KME is an
attempt *in flight* until its answer is due (``delay_s`` of the ``key_handoff_failure`` fault,
cut at ``handoff_timeout_s``), while other links carry on. Per link one attempt at a time, in
block order; a failed attempt (``kme_unavailable``, ``kme_timeout``, ``store_full``) leaves the key
in the buffer and retries after ``RETRY_S``, so nothing is lost while the buffer has room.

Before a block's keys go anywhere, the two ends confirm them (key confirmation: each end's SHA-256
of its own key, compared over the classical channel — the digests reveal nothing usable of a key
they are equal for): keys that differ, which only an error-correction failure that verification
did not catch can produce, are discarded at both ends, never stored at a KME nor served, and
counted (``mismatch(link)``; alert QKDKeyMismatch).

Each attempt is counted by outcome and traced (a ``kme_handoff`` span with the link, block and
outcome, from the attempt's start to its answer); a success also records its latency, from the
moment the key was buffered to the moment both ends' KMEs committed it (keys buffered before a
restart count from the restart). The KME store ignores a block it already holds, so the crash window between its
commit and the buffer's removal only repeats a hand-off.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from opentelemetry.trace import Tracer

from qkdlink.emulator.faults import FaultSpec
from qkdlink.protocols.base import Param
from qkdops.kme.store import KeyPoolStore, StoreUnavailable
from qkdops.runtime.keybuffer import KeyBuffer

RETRY_S = 1.0               # wait after a failed attempt before retrying the same key
MAX_PER_LINK_PER_CALL = 50  # bound one call's work (a backlog drains over successive ticks)
FAULT = "key_handoff_failure"

# The fault's effect is this module's (``HandoffQueue._step`` and ``_commit`` read its parameters),
# so it is defined here, not in the emulator's catalogue: a runtime fault (``qkdops.runtime.faults``).
FAULT_SPEC = FaultSpec(
    FAULT, "The key management entities (KMEs) stop taking the link's key.",
    "Nothing optical changes: blocks succeed and key is distilled, but its hand-off to the two "
    "ends' KME stores fails (qkdops/runtime/handoff.py). A share refused_ratio of hand-off attempts "
    "finds the KME unavailable (default 1: down); each other attempt takes delay_s longer (past the "
    "hand-off timeout it fails as kme_timeout: a slow KME); with store_capacity_ratio < 1 the KMEs "
    "refuse key beyond that share of max_key_count as store_full (0: all of it), as a KME whose "
    "storage is exhausted would (unlike the full-store policy, which discards surplus and refuses "
    "nothing). Key waits in the link's buffer and is handed off, none lost, once the fault is "
    "cleared — unless the buffer fills first.",
    (Param("refused_ratio", 1.0, "ratio", "share of hand-off attempts that find the KME unavailable", 0.0, 1.0),
     Param("delay_s", 0.0, "s", "extra latency of each hand-off attempt", 0.0, 600.0),
     Param("store_capacity_ratio", 1.0, "ratio", "usable share of the KME stores' capacity", 0.0, 1.0)),
    None)


@dataclass
class _InFlight:
    index: int
    materials: Mapping[str, bytes]  # site → that end's key
    started_at: float
    done_at: float
    timed_out: bool


@dataclass
class _LinkQueue:
    link: str
    sites: tuple[str, str]
    retry_at: float = 0.0
    in_flight: _InFlight | None = None


Outcome = Callable[[str, str, float | None], None]  # (link, outcome, latency) → record it


class HandoffQueue:
    """Moves buffered keys of ``links`` (link → (alice site, bob site)) into ``store``.

    ``fault(link)`` gives the parameters of the link's active ``key_handoff_failure`` or None;
    ``record(link, outcome, latency_s)`` is called once per attempt; ``mismatch(link)`` once per
    block whose two keys failed the key confirmation (discarded).
    """

    def __init__(self, buffer: KeyBuffer, store: KeyPoolStore, links: Mapping[str, tuple[str, str]],
                 fault: Callable[[str], Mapping[str, float] | None], record: Outcome, timeout_s: float,
                 tracer: Tracer, clock: Callable[[], float], rng: random.Random | None = None,
                 mismatch: Callable[[str], None] = lambda link: None) -> None:
        self.buffer, self.store, self.tracer, self.clock = buffer, store, tracer, clock
        self.fault, self.record, self.timeout_s, self.mismatch = fault, record, timeout_s, mismatch
        self._queues = {link: _LinkQueue(link, sites) for link, sites in links.items()}
        self._buffered_at: dict[tuple[str, int], float] = {}
        self._rng = rng or random.Random()

    def buffered(self, link: str, index: int, now: float) -> None:
        """Post-processing buffered block ``index``'s key at ``now`` (the latency's start)."""
        self._buffered_at[(link, index)] = now

    def run_due(self, now: float) -> None:
        for queue in self._queues.values():
            for _ in range(MAX_PER_LINK_PER_CALL):
                if not self._step(queue, now):
                    break

    def _step(self, q: _LinkQueue, now: float) -> bool:
        """Advance ``q`` by one attempt; False when it has to wait (or has nothing to do)."""
        if q.in_flight is not None:
            if now < q.in_flight.done_at:
                return False
            flight, q.in_flight = q.in_flight, None
            if flight.timed_out:
                return self._failed(q, flight.index, "kme_timeout", flight.started_at, now)
            return self._commit(q, flight.index, flight.materials, flight.started_at, now)
        if now < q.retry_at:
            return False
        entry = self.buffer.oldest(q.link)
        if entry is None:
            return False
        index, alice, bob = entry
        if hashlib.sha256(alice).digest() != hashlib.sha256(bob).digest():
            self.buffer.remove(q.link, index)
            self._buffered_at.pop((q.link, index), None)
            self._trace(q, index, "key_mismatch", now, now)
            self.mismatch(q.link)
            return True
        materials = dict(zip(q.sites, (alice, bob)))
        fault = self.fault(q.link)
        if fault is not None:
            if self._rng.random() < fault["refused_ratio"]:
                return self._failed(q, index, "kme_unavailable", now, now)
            if fault["delay_s"] > 0:
                timed_out = fault["delay_s"] >= self.timeout_s
                q.in_flight = _InFlight(index, materials, now, now + min(fault["delay_s"], self.timeout_s), timed_out)
                return False
        return self._commit(q, index, materials, now, now)

    def _commit(self, q: _LinkQueue, index: int, materials: Mapping[str, bytes], started_at: float, now: float) -> bool:
        fault = self.fault(q.link)
        capacity = None
        if fault is not None and fault["store_capacity_ratio"] < 1.0:
            capacity = int(self.store.capacity_bytes * fault["store_capacity_ratio"])
        try:
            outcome = self.store.accept(q.link, index, materials, capacity)
        except StoreUnavailable:   # could not commit (disk full?): rolled back, the key stays buffered and is retried
            outcome = "kme_unavailable"
        if outcome != "success":
            return self._failed(q, index, outcome, started_at, now)
        self.buffer.remove(q.link, index)
        committed = max(now, self.clock())  # the commit itself takes milliseconds for a large block
        buffered_at = self._buffered_at.pop((q.link, index), committed)
        self._trace(q, index, outcome, started_at, committed)
        self.record(q.link, "success", committed - buffered_at)
        return True

    def _failed(self, q: _LinkQueue, index: int, outcome: str, started_at: float, now: float) -> bool:
        q.retry_at = now + RETRY_S
        self._trace(q, index, outcome, started_at, now)
        self.record(q.link, outcome, None)
        return False

    def _trace(self, q: _LinkQueue, index: int, outcome: str, started_at: float, now: float) -> None:
        attributes = {"qkd.link": q.link, "qkd.block": index, "qkd.handoff_outcome": outcome}
        span = self.tracer.start_span("kme_handoff", attributes=attributes, start_time=int(started_at * 1e9))
        span.end(end_time=int(max(now, started_at) * 1e9))
