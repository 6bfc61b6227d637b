"""The scheduler's durable state: per-(job, link) state, the run ledger, counters and run leases.

One SQLite file (``<state_dir>/calibration.sqlite``, WAL + synchronous=FULL like the block archive)
shared by the scheduler and ``qkdops calibrate``, so that:

* a job's failure streak, back-off, learned references and last success survive restarts;
* counters (runs by outcome, actions, misfires) are monotonic across restarts, so Prometheus sees
  one counter, and a manual run counts like a scheduled one;
* a run holds a *lease* on its (job, link) while it runs: a second run of the same job on the same
  link — from a restarted scheduler, a second scheduler or ``qkdops calibrate`` — is refused while
  the holder's process lives. A lease whose process is gone (kill -9) is broken and its run is
  recorded as interrupted, so nothing is lost and nothing runs twice at once.

The ledger holds run reports (signals, decision, action, verdict: numbers and words, never key
material) and keeps the newest ``LEDGER_PER_JOB`` runs per (job, link).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdops.durable import DurableStore
from qkdops.processes import pid_alive

LEDGER_PER_JOB = 200
LEASE_TTL_S = 900.0  # a lease older than this is broken even if its process looks alive (pid reuse)
SCHEMA = """
CREATE TABLE IF NOT EXISTS job_state (
    job TEXT NOT NULL, link TEXT NOT NULL, protocol TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0, held_until REAL NOT NULL DEFAULT 0, exhausted INTEGER NOT NULL DEFAULT 0,
    last_action_at REAL, last_success_at REAL, last_outcome TEXT, last_reason TEXT,
    memory TEXT NOT NULL DEFAULT '{}', published TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job, link));
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, link TEXT NOT NULL, trigger TEXT NOT NULL,
    owner TEXT NOT NULL, started_at REAL NOT NULL, finished_at REAL, outcome TEXT, reason TEXT, report TEXT);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job, link, id);
CREATE TABLE IF NOT EXISTS counters (
    metric TEXT NOT NULL, job TEXT NOT NULL, link TEXT NOT NULL, protocol TEXT NOT NULL, key TEXT NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (metric, job, link, key));
CREATE TABLE IF NOT EXISTS leases (
    job TEXT NOT NULL, link TEXT NOT NULL, owner TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL,
    acquired_at REAL NOT NULL, run_id INTEGER NOT NULL, PRIMARY KEY (job, link));
"""


@dataclass
class JobState:
    """One job on one link: failure streak and back-off, learned references, published values."""

    job: str
    link: str
    protocol: str
    failures: int = 0
    held_until: float = 0.0
    exhausted: bool = False
    last_action_at: float | None = None
    last_success_at: float | None = None
    last_outcome: str | None = None
    last_reason: str | None = None
    memory: dict[str, float] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)


class RunBusy(Exception):
    """The (job, link) is being run by another live process or thread; the message says which."""


class CalibrationStore(DurableStore):
    def __init__(self, path: Path, clock: Any = time.time, durable: bool = True) -> None:
        super().__init__(path, SCHEMA, durable=durable)
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.break_dead_leases()

    def break_dead_leases(self) -> int:
        """Record the runs of lease holders whose process is gone (kill -9) as interrupted, now.

        Opening the store does this, so a restarted scheduler's ledger shows the killed run at once
        rather than when that job next falls due (which a back-off can put minutes away).
        Returns how many leases were broken.
        """
        now = self.clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dead = [(job, link, owner, run_id) for job, link, owner, pid, host, acquired_at, run_id
                        in self._db.execute("SELECT job, link, owner, pid, host, acquired_at, run_id FROM leases")
                        if not _held(pid, host, acquired_at, now)]
                for job, link, owner, run_id in dead:
                    self._record_interrupted(run_id, owner, now)
                    self._db.execute("DELETE FROM leases WHERE job=? AND link=? AND run_id=?", (job, link, run_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(dead)

    def _record_interrupted(self, run_id: int, owner: str, now: float) -> None:
        self._db.execute("UPDATE runs SET finished_at=?, outcome='interrupted', reason=? WHERE id=? AND finished_at IS NULL",
                         (now, f"its process ({owner}) stopped mid-run", run_id))

    # ---- job state ------------------------------------------------------------------------------
    _STATE = ("failures, held_until, exhausted, last_action_at, last_success_at, last_outcome, last_reason, memory, "
              "published FROM job_state")

    def state(self, job: str, link: str, protocol: str) -> JobState:
        with self._lock:
            row = self._db.execute(f"SELECT {self._STATE} WHERE job=? AND link=?", (job, link)).fetchone()
        return JobState(job, link, protocol) if row is None else _job_state(job, link, protocol, row)

    def states(self) -> list[JobState]:
        """Every (job, link)'s state in one query (a scrape reads them all)."""
        with self._lock:
            rows = self._db.execute(f"SELECT job, link, protocol, {self._STATE} ORDER BY link, job").fetchall()
        return [_job_state(*row[:3], row[3:]) for row in rows]

    # ---- runs -----------------------------------------------------------------------------------
    @contextmanager
    def lease(self, job: str, link: str, trigger: str) -> Iterator[int]:
        """Hold the (job, link) lease for one run; yields the run id. RunBusy if a live holder has it."""
        now = self.clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                held = self._db.execute("SELECT owner, pid, host, acquired_at, run_id FROM leases WHERE job=? AND link=?",
                                        (job, link)).fetchone()
                if held is not None:
                    owner, pid, host, acquired_at, run_id = held
                    if _held(pid, host, acquired_at, now):
                        raise RunBusy(f"{job} on {link} is already running (run {run_id}, {owner}, since "
                                      f"{time.strftime('%H:%M:%S', time.localtime(acquired_at))})")
                    self._record_interrupted(run_id, owner, now)
                run_id = self._db.execute("INSERT INTO runs (job, link, trigger, owner, started_at) VALUES (?,?,?,?,?)",
                                          (job, link, trigger, self.owner, now)).lastrowid
                self._db.execute("INSERT OR REPLACE INTO leases VALUES (?,?,?,?,?,?,?)",
                                 (job, link, self.owner, os.getpid(), socket.gethostname(), now, run_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        try:
            yield run_id
        finally:
            with self._lock:
                self._db.execute("DELETE FROM leases WHERE job=? AND link=? AND run_id=?", (job, link, run_id))

    def finish(self, run_id: int, state: JobState, outcome: str, reason: str, report: Mapping[str, Any],
               counts: Mapping[tuple[str, str], float]) -> None:
        """Record a run's end, the job's new state and counter increments in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE runs SET finished_at=?, outcome=?, reason=?, report=? WHERE id=?",
                                 (self.clock(), outcome, reason, json.dumps(report, sort_keys=True), run_id))
                self._db.execute(
                    "INSERT OR REPLACE INTO job_state VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (state.job, state.link, state.protocol, state.failures, state.held_until, int(state.exhausted),
                     state.last_action_at, state.last_success_at, state.last_outcome, state.last_reason,
                     json.dumps(state.memory), json.dumps(state.published)))
                for (metric, key), value in counts.items():
                    self._add(metric, state.job, state.link, state.protocol, key, value)
                self._db.execute("DELETE FROM runs WHERE job=? AND link=? AND id <= "
                                 "(SELECT id FROM runs WHERE job=? AND link=? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                                 (state.job, state.link, state.job, state.link, LEDGER_PER_JOB))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def count(self, metric: str, job: str, link: str, protocol: str, key: str = "", value: float = 1.0) -> None:
        with self._lock:
            self._add(metric, job, link, protocol, key, value)

    def _add(self, metric: str, job: str, link: str, protocol: str, key: str, value: float) -> None:
        self._db.execute("INSERT INTO counters VALUES (?,?,?,?,?,?) ON CONFLICT (metric, job, link, key) "
                         "DO UPDATE SET value = value + excluded.value, protocol = excluded.protocol",
                         (metric, job, link, protocol, key, value))

    def counters(self) -> list[tuple[str, str, str, str, str, float]]:
        """(metric, job, link, protocol, key, value) rows."""
        with self._lock:
            return self._db.execute("SELECT metric, job, link, protocol, key, value FROM counters "
                                    "ORDER BY metric, link, job, key").fetchall()

    def runs(self, job: str | None = None, link: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """Newest runs first (interrupted and running ones included)."""
        query, args = "SELECT id, job, link, trigger, owner, started_at, finished_at, outcome, reason, report FROM runs", []
        where = [c for c, v in (("job=?", job), ("link=?", link)) if v is not None]
        args = [v for v in (job, link) if v is not None]
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        keys = ("id", "job", "link", "trigger", "owner", "started_at", "finished_at", "outcome", "reason", "report")
        return [{**dict(zip(keys, r)), "report": json.loads(r[9]) if r[9] else None} for r in rows]


def _held(pid: int, host: str, acquired_at: float, now: float) -> bool:
    """Whether a lease still binds: its holder's process runs (one on another host is assumed to)
    and it is younger than LEASE_TTL_S (older ones are broken: pid reuse, a lost host)."""
    return (host != socket.gethostname() or pid_alive(pid)) and now - acquired_at < LEASE_TTL_S


def _job_state(job: str, link: str, protocol: str, row: Sequence[Any]) -> JobState:
    """A ``job_state`` row (``CalibrationStore._STATE``'s columns) as a JobState."""
    return JobState(job, link, protocol, row[0], row[1], bool(row[2]), row[3], row[4], row[5], row[6],
                    json.loads(row[7]), json.loads(row[8]))
