"""Hand-off of distilled key to both ends' KME stores, and the key_handoff_failure fault's three modes."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from kme_harness import kme_config

from qkdlink.emulator import FAULTS as EMULATOR_FAULTS
from qkdlink.emulator import FaultError
from qkdops.kme.etsi import KMEService
from qkdops.kme.store import InsufficientKey, KeyNotFound, KeyPoolStore, NotAddressee, StoreUnavailable
from qkdops.runtime.faults import FAULTS, RUNTIME_FAULTS
from qkdops.runtime.fleet import Fleet


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _fleet(tmp_path: Path, extra: str = "") -> tuple[Fleet, Clock]:
    clock = Clock()
    return Fleet(kme_config(tmp_path, extra), clock=clock), clock


def _bb84(fleet: Fleet):
    return {s.link: s for s in fleet.snapshots()}["bb84-a"]


def _step(fleet: Fleet, clock: Clock, frames: int, seconds_per_frame: float = 1.0) -> None:
    for _ in range(frames):
        clock.now += seconds_per_frame
        fleet.run_frames(1)


def test_unavailable_kme_keeps_key_buffered_and_retries_until_it_is_back(tmp_path: Path):
    fleet, clock = _fleet(tmp_path)
    try:
        fleet.inject("bb84-a", "key_handoff_failure", {})        # refused_ratio 1: the KMEs are down
        _step(fleet, clock, 6)                                   # 3 blocks of key distilled meanwhile
        snap = _bb84(fleet)
        assert snap.handoffs_total["success"] == 0 and snap.handoffs_total["kme_unavailable"] >= 3
        assert snap.handoff_backlog_bits == snap.secret_key_bits_total > 0
        assert fleet.key_pool.level("a", "bb84-a").held_bytes == 0
        fleet.clear("bb84-a", "key_handoff_failure")
        _step(fleet, clock, 1)
        snap = _bb84(fleet)
        assert snap.handoffs_total["success"] == 3 and snap.handoff_backlog_bits == 0   # none lost
        for site in ("a", "b"):
            assert 8 * fleet.key_pool.level(site, "bb84-a").held_bytes == snap.secret_key_bits_total
        # latency counts from buffering: the oldest key waited through the outage
        assert snap.handoff_seconds.count == 3 and snap.handoff_seconds.sum >= 5.0 + 3.0 + 1.0
    finally:
        fleet.stop()


@pytest.mark.slow  # waits out real hand-off timeouts
def test_slow_kme_delays_hand_off_and_past_the_timeout_fails_it(tmp_path: Path):
    clock, spans = Clock(), InMemorySpanExporter()
    fleet = Fleet(kme_config(tmp_path, "  handoff_timeout_s: 3\n"), clock=clock, span_exporter=spans)
    try:
        fleet.inject("bb84-a", "key_handoff_failure", {"refused_ratio": 0, "delay_s": 2})
        _step(fleet, clock, 2)                      # block 0 buffered; its attempt is in flight for 2 s
        assert _bb84(fleet).handoffs_total["success"] == 0
        _step(fleet, clock, 2)
        snap = _bb84(fleet)
        assert snap.handoffs_total["success"] >= 1
        assert snap.handoff_seconds.buckets[5][1] == 0     # nothing within 0.3 s: every one took ≥ 2 s
        fleet.inject("bb84-a", "key_handoff_failure", {"refused_ratio": 0, "delay_s": 10})
        _step(fleet, clock, 10)   # each attempt times out after 3 s, then waits RETRY_S: two in 10 s
        snap = _bb84(fleet)
        assert snap.handoffs_total["kme_timeout"] >= 2 and snap.handoff_backlog_bits > 0
        fleet.clear("bb84-a", "key_handoff_failure")
        _step(fleet, clock, 6)    # the attempt in flight still times out; the retry after it succeeds
        snap = _bb84(fleet)
        assert snap.handoff_backlog_bits == 0
        assert 8 * fleet.key_pool.level("b", "bb84-a").held_bytes == snap.secret_key_bits_total
    finally:
        fleet.stop()
    # each attempt is a span from its start to its answer: a timed-out one lasts the timeout
    attempts = [s for s in spans.get_finished_spans() if s.name == "kme_handoff" and s.attributes["qkd.link"] == "bb84-a"]
    timeouts = [s for s in attempts if s.attributes["qkd.handoff_outcome"] == "kme_timeout"]
    assert len(timeouts) == snap.handoffs_total["kme_timeout"] and all(s.end_time - s.start_time == 3e9 for s in timeouts)
    assert sum(s.attributes["qkd.handoff_outcome"] == "success" for s in attempts) == snap.handoffs_total["success"]


def test_full_store_refuses_then_takes_key_once_consumers_drain_it(tmp_path: Path):
    fleet, clock = _fleet(tmp_path)
    try:
        _step(fleet, clock, 2)
        fleet.inject("bb84-a", "key_handoff_failure", {"refused_ratio": 0, "store_capacity_ratio": 0})
        _step(fleet, clock, 4)
        snap = _bb84(fleet)
        assert snap.handoffs_total["store_full"] >= 2 and snap.handoffs_total["success"] == 1
        assert snap.handoff_backlog_bits > 0
        fleet.clear("bb84-a")
        _step(fleet, clock, 2)
        assert _bb84(fleet).handoff_backlog_bits == 0
    finally:
        fleet.stop()


def test_full_buffer_discards_new_key_and_counts_it(tmp_path: Path):
    fleet, clock = _fleet(tmp_path)
    try:
        fleet.buffer.capacity_bits = 1  # nothing fits: every new block's key is refused by the buffer
        fleet.inject("bb84-a", "key_handoff_failure", {})
        _step(fleet, clock, 4)
        snap = _bb84(fleet)
        assert snap.handoffs_total["buffer_full"] == 2 and snap.handoff_backlog_bits == 0
    finally:
        fleet.stop()


def test_key_handoff_failure_is_a_runtime_fault_the_fleet_lists_with_the_emulators(tmp_path: Path):
    assert tuple(RUNTIME_FAULTS) == ("key_handoff_failure",) and "key_handoff_failure" not in EMULATOR_FAULTS
    assert tuple(FAULTS) == (*EMULATOR_FAULTS, *RUNTIME_FAULTS)
    assert [(p.name, p.default, p.unit, p.minimum, p.maximum) for p in FAULTS["key_handoff_failure"].parameters] == [
        ("refused_ratio", 1.0, "ratio", 0.0, 1.0), ("delay_s", 0.0, "s", 0.0, 600.0),
        ("store_capacity_ratio", 1.0, "ratio", 0.0, 1.0)]
    fleet, clock = _fleet(tmp_path)
    try:
        fleet.inject("bb84-a", "loss_step", {})
        answer = fleet.inject("bb84-a", "key_handoff_failure", {"delay_s": 2})
        assert answer["parameters"] == {"refused_ratio": 1.0, "delay_s": 2.0, "store_capacity_ratio": 1.0}
        assert [f["name"] for f in answer["active_faults"]] == ["loss_step", "key_handoff_failure"]
        assert [f.name for f in fleet.runtime("bb84-a").link.active_faults()] == ["loss_step"]  # the emulator's own only
        _step(fleet, clock, 2)                                   # one block
        assert _bb84(fleet).active_faults == ("loss_step", "key_handoff_failure")
        assert list(fleet.archive.blocks("bb84-a"))[-1].faults == ("key_handoff_failure", "loss_step")
        with pytest.raises(FaultError, match="unknown fault 'gremlins'.*key_handoff_failure"):
            fleet.clear("bb84-a", "gremlins")
        assert fleet.clear("bb84-a") == ["loss_step", "key_handoff_failure"]
        assert fleet.status("bb84-a")["active_faults"] == []
    finally:
        fleet.stop()


def test_handoff_failure_parameters_are_checked(tmp_path: Path):
    fleet, _ = _fleet(tmp_path)
    try:
        with pytest.raises(ValueError, match="refused_ratio' must be <= 1.0"):
            fleet.inject("bb84-a", "key_handoff_failure", {"refused_ratio": 2})
        with pytest.raises(ValueError, match="has no parameter 'mode'"):
            fleet.inject("bb84-a", "key_handoff_failure", {"mode": 1})
    finally:
        fleet.stop()


# ---- the store itself --------------------------------------------------------------------------------

def test_store_is_private_idempotent_and_bounded_per_end(tmp_path: Path):
    store = KeyPoolStore(tmp_path / "kme.sqlite", capacity_bytes=100)
    assert stat.S_IMODE(os.stat(tmp_path / "kme.sqlite").st_mode) == 0o600
    assert store.accept("l", 0, dict.fromkeys(("a", "b"), b"\x01" * 60)) == "success"
    assert store.accept("l", 0, dict.fromkeys(("a", "b"), b"\x01" * 60)) == "success"   # a repeated hand-off: stored once
    assert store.level("a", "l").held_bytes == store.level("b", "l").held_bytes == 60
    # a KME refusing key (the key_handoff_failure fault's capacity) is the only store_full; the block waits
    assert store.accept("l", 1, dict.fromkeys(("a", "b"), b"\x02" * 60), capacity_bytes=100) == "store_full"
    assert store.tallies("l")["discarded"] == 0
    store.close()


def test_a_full_store_discards_its_oldest_unissued_key_at_both_ends_and_counts_it(tmp_path: Path):
    store = KeyPoolStore(tmp_path / "kme.sqlite", capacity_bytes=100)
    store.accept("l", 0, dict.fromkeys(("a", "b"), bytes(range(60))))
    store.accept("l", 1, dict.fromkeys(("a", "b"), bytes(range(100, 160))))   # 20 over: the oldest 20 go
    assert store.level("a", "l").held_bytes == store.level("b", "l").held_bytes == 100
    assert store.tallies("l")["discarded"] == 20
    keys = store.issue(["l"], "a", "b", "sae-a", "sae-b", number=1, size_bytes=40)
    assert keys[0][1] == bytes(range(20, 60))                       # both ends lost the same range
    assert store.redeem("b", "sae-a", "sae-b", [keys[0][0]]) == keys
    store.accept("l", 2, dict.fromkeys(("a", "b"), bytes(range(200, 250))))   # 10 over, inside block 1
    assert store.tallies("l")["discarded"] == 30 and store.level("a", "l").available_bytes == 100
    assert [k for _, k in store.issue(["l"], "a", "b", "sae-a", "sae-b", number=1, size_bytes=50)] == [bytes(range(110, 160))]
    assert store.accept("l", 2, dict.fromkeys(("a", "b"), bytes(50))) == "success"   # a retry: settled once
    assert store.tallies("l")["discarded"] == 30
    store.close()


def test_discard_newest_drops_the_arriving_key_and_issued_keys_are_never_shed(tmp_path: Path):
    store = KeyPoolStore(tmp_path / "kme.sqlite", capacity_bytes=100, full_store="discard_newest")
    store.accept("l", 0, dict.fromkeys(("a", "b"), bytes(range(80))))
    assert store.accept("l", 1, dict.fromkeys(("a", "b"), bytes(30))) == "success"
    assert store.tallies("l")["discarded"] == 30 and store.level("a", "l").held_bytes == 80
    oldest = KeyPoolStore(tmp_path / "kme2.sqlite", capacity_bytes=100)
    oldest.accept("l", 0, dict.fromkeys(("a", "b"), bytes(range(80))))
    issued = oldest.issue(["l"], "a", "b", "sae-a", "sae-b", number=1, size_bytes=80)   # pending at b: not unissued
    assert oldest.accept("l", 1, dict.fromkeys(("a", "b"), bytes(30))) == "success"
    assert oldest.tallies("l")["discarded"] == 30 and oldest.level("a", "l").held_bytes == 0
    assert oldest.redeem("b", "sae-a", "sae-b", [issued[0][0]]) == issued        # the issued key is intact
    with pytest.raises(ValueError, match="full_store"):
        KeyPoolStore(tmp_path / "kme3.sqlite", capacity_bytes=100, full_store="refuse")
    store.close()
    oldest.close()


def test_store_issues_each_byte_once_and_only_to_its_addressee(tmp_path: Path):
    store = KeyPoolStore(tmp_path / "kme.sqlite", capacity_bytes=10 ** 6)
    store.accept("l", 0, dict.fromkeys(("a", "b"), bytes(range(10))))
    store.accept("l", 1, dict.fromkeys(("a", "b"), bytes(range(10, 20))))
    keys = store.issue(["l"], "a", "b", "sae-a", "sae-b", number=3, size_bytes=4)   # spans the two blocks
    assert [k for _, k in keys] == [bytes(range(0, 4)), bytes(range(4, 8)), bytes(range(8, 12))]
    assert store.level("a", "l").available_bytes == 8 and store.level("b", "l").pending_bytes == 12
    assert store.tallies("l")["issued"] == 12
    with pytest.raises(InsufficientKey, match="2 available"):
        store.issue(["l"], "a", "b", "sae-a", "sae-b", number=3, size_bytes=4)
    ids = [k for k, _ in keys]
    with pytest.raises(NotAddressee):
        store.redeem("b", "sae-a", "sae-mallory", ids[:1])
    with pytest.raises(KeyNotFound):
        store.redeem("a", "sae-a", "sae-b", ids[:1])              # held at b, not at a
    with pytest.raises(KeyNotFound):
        store.redeem("b", "sae-a", "sae-b", [ids[0], "00000000-0000-4000-8000-000000000000"])
    assert store.redeem("b", "sae-a", "sae-b", ids) == keys         # the refusals took nothing
    assert store.level("b", "l").held_bytes == 8
    assert store.served("l") == {("sae-a", "enc_keys"): 3, ("sae-b", "dec_keys"): 3}
    store.close()


def test_keys_issued_but_never_fetched_expire_and_are_counted(tmp_path: Path):
    store = KeyPoolStore(tmp_path / "kme.sqlite", capacity_bytes=10 ** 6, pending_ttl_s=0.2)
    store.accept("l", 0, dict.fromkeys(("a", "b"), bytes(range(1, 41))))
    kept = store.issue(["l"], "a", "b", "sae-a", "sae-b", number=2, size_bytes=4)
    assert store.expire() == 0 and store.level("b", "l").pending_bytes == 8
    time.sleep(0.3)
    fresh = store.issue(["l"], "a", "b", "sae-a", "sae-b", number=1, size_bytes=4)   # this write expires the first two
    assert store.expired("l") == 2 and store.level("b", "l").pending_bytes == 4
    with pytest.raises(KeyNotFound):
        store.redeem("b", "sae-a", "sae-b", [kept[0][0]])                             # gone: never served
    assert store.redeem("b", "sae-a", "sae-b", [fresh[0][0]]) == fresh
    assert store.served("l") == {("sae-a", "enc_keys"): 3, ("sae-b", "dec_keys"): 1}  # expiry is not a call
    store.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("kme.sqlite"))
    assert all(key not in blob for _, key in kept)                                    # nor on disk


class _FailingCommit:
    """A connection whose next COMMIT fails as a full disk would (SQLite may leave the transaction open)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db, self.fail = db, True

    def execute(self, sql: str, *args):
        if sql == "COMMIT" and self.fail:
            self.fail = False
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._db, name)


def test_a_failed_commit_rolls_back_changes_nothing_and_the_store_keeps_working(tmp_path: Path):
    store = KeyPoolStore(tmp_path / "kme.sqlite", capacity_bytes=10 ** 6)
    store.accept("l", 0, dict.fromkeys(("a", "b"), bytes(range(1, 41))))
    store._db = _FailingCommit(store._db)  # type: ignore[assignment]
    with pytest.raises(StoreUnavailable, match="disk is full.*nothing was changed"):
        store.issue(["l"], "a", "b", "sae-a", "sae-b", number=2, size_bytes=4)
    assert store.level("a", "l").available_bytes == 40 and store.level("b", "l").pending_bytes == 0
    keys = store.issue(["l"], "a", "b", "sae-a", "sae-b", number=2, size_bytes=4)    # no transaction left open
    assert [k for _, k in keys] == [bytes(range(1, 5)), bytes(range(5, 9))]         # the same bytes: none lost
    store.close()


def test_a_store_that_cannot_commit_answers_503_with_an_error_object(tmp_path: Path):
    config = kme_config(tmp_path)
    store = KeyPoolStore(tmp_path / "kme.sqlite", capacity_bytes=10 ** 6)
    store.accept("bb84-a", 0, dict.fromkeys(("a", "b"), bytes(64)))
    service = KMEService("a", config.key_delivery, config.links, store)
    store._db = _FailingCommit(store._db)  # type: ignore[assignment]
    answer = service.handle("POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": 1}', "sae-a")
    assert answer.status == 503 and "could not commit" in answer.body["message"]
    assert service.handle("POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": 1}', "sae-a").status == 200
    store.close()
