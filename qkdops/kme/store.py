"""The KMEs' key stores: each block's distilled key held at both ends until an SAE pair takes it.

One SQLite file (WAL, ``synchronous=FULL``, created 0600) holds every site's store. A row of
``pool`` is one end's own key of one block (what that end's post-processing distilled) — its bytes in ``material`` under the same id, read
at an offset through incremental blob I/O, so carving a key neither loads nor rewrites the block —
with how many of its bytes are already used; ``levels`` keeps each end's totals per link, so the
capacity check and the published levels cost one row, however many blocks are held. Both ends'
rows of a block are written in one transaction, and an ETSI ``enc_keys`` call carves the same
range from both in one transaction — each end serves its own bytes — leaving the slave end's piece
in ``pending`` under the new key IDs until ``dec_keys``. So the two ends hold the same range of
keys they confirmed equal at hand-off, and the synchronisation a real
KME pair does over its own channel is one atomic commit here. A key issued but not fetched by its slave
within ``pending_ttl_s`` expires: every write transaction first deletes such keys (their bytes leave the
files with the commit) and counts them, so an SAE pair that never calls ``dec_keys`` cannot hold the
slave's store forever. A hand-off that finds an end holding its capacity applies the
configured full-store policy (``KeyDelivery.full_store``): the oldest unissued key is discarded at
both ends to make room, or the arriving key is — the surplus of a link whose applications take less
than it makes, counted per link in ``discarded``, never a refusal. Because every change is one commit
made before the HTTP answer is written, a crash (kill -9) never loses a stored key nor serves one
twice; the only key a crash can cost is that of a request committed but not yet answered, which no
SAE received and which is never served again.

Key bytes leave this module only as the return values of ``issue`` and ``redeem``; errors name
counts and key IDs, never material.
"""

from __future__ import annotations

import heapq
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qkdops.config import FULL_STORE_POLICIES, FleetConfig
from qkdops.durable import KEY_STORE_PAGE_SIZE, DurableStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS handed_off (link TEXT NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (link, block));
CREATE TABLE IF NOT EXISTS pool (id INTEGER PRIMARY KEY, site TEXT NOT NULL, link TEXT NOT NULL, block INTEGER NOT NULL,
                                 size INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0, UNIQUE (site, link, block));
CREATE TABLE IF NOT EXISTS material (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending (key_id TEXT PRIMARY KEY, site TEXT NOT NULL, link TEXT NOT NULL,
                                    master TEXT NOT NULL, slave TEXT NOT NULL, size INTEGER NOT NULL,
                                    material BLOB NOT NULL, issued_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS pending_age ON pending (issued_at);
CREATE TABLE IF NOT EXISTS levels (site TEXT NOT NULL, link TEXT NOT NULL, available INTEGER NOT NULL DEFAULT 0,
                                   pending INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (site, link));
CREATE TABLE IF NOT EXISTS served (link TEXT NOT NULL, sae TEXT NOT NULL, call TEXT NOT NULL,
                                   keys INTEGER NOT NULL, PRIMARY KEY (link, sae, call));
CREATE TABLE IF NOT EXISTS tallies (link TEXT NOT NULL, kind TEXT NOT NULL, bytes INTEGER NOT NULL,
                                    PRIMARY KEY (link, kind));
"""


class InsufficientKey(RuntimeError):
    """Fewer bytes stored for the pair than the request needs (ETSI 014: 503)."""


class KeyNotFound(LookupError):
    """A requested key ID is not held at this end (ETSI 014: 400)."""


class StoreUnavailable(RuntimeError):
    """The store could not commit (disk full, I/O error): the transaction was rolled back, nothing changed."""


class NotAddressee(PermissionError):
    """A requested key was issued to another SAE pair (ETSI 014: 401)."""


@dataclass(frozen=True)
class StoreLevel:
    """What one end holds for one link: bytes not yet issued, and bytes issued awaiting ``dec_keys``."""

    available_bytes: int
    pending_bytes: int

    @property
    def held_bytes(self) -> int:
        return self.available_bytes + self.pending_bytes


EXPIRED = "expired"   # the ``served`` row kind that counts expired keys (per link and slave SAE)
ACCEPTED, DISCARDED, ISSUED = TALLIES = ("accepted", "discarded", "issued")   # the byte tallies (KeyPoolStore.tallies)


class KeyPoolStore(DurableStore):
    """The stores of every KME site (see module docstring). ``capacity_bytes`` bounds what one end
    holds for one link (``max_key_count`` × ``key_size_bits`` / 8); ``pending_ttl_s`` is how long an
    issued key waits for its slave's ``dec_keys``; ``full_store`` the policy for surplus key
    (``discard_oldest`` or ``discard_newest``, see ``KeyDelivery``)."""

    def __init__(self, path: Path, capacity_bytes: int, pending_ttl_s: float = 3600.0, full_store: str = "discard_oldest",
                 durable: bool = True) -> None:
        if full_store not in FULL_STORE_POLICIES:
            raise ValueError(f"full_store: expected one of {', '.join(FULL_STORE_POLICIES)}, got {full_store!r}")
        self.capacity_bytes = capacity_bytes
        self.pending_ttl_s = pending_ttl_s
        self.full_store = full_store
        self._expired_now = 0   # pending keys the current transaction expired
        super().__init__(path, SCHEMA, private=True, durable=durable, page_size=KEY_STORE_PAGE_SIZE)

    # ---- hand-off (post-processing → both ends) ---------------------------------------------------
    def accept(self, link: str, block: int, materials: Mapping[str, bytes], capacity_bytes: int | None = None) -> str:
        """Store a block's key at every end — ``materials`` maps each end's site to that end's own
        key (its post-processing's output; equal at both ends because the key confirmation at
        hand-off checked it): ``success`` (also when already stored, and when an end was full and
        the full-store policy discarded surplus key: the oldest, or this block's) or ``store_full``
        when ``capacity_bytes`` is given (a KME refusing key: the ``key_handoff_failure`` fault's
        ``store_capacity_ratio``) and an end would exceed it. Either way the block is settled in one
        transaction, so a retried hand-off never stores or discards it twice."""
        sizes = {len(m) for m in materials.values()}
        if len(sizes) != 1:
            raise ValueError(f"block {block} of link {link}: the ends' keys differ in length ({sorted(sizes)} bytes)")
        (size,) = sizes
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM handed_off WHERE link=? AND block=?", (link, block)).fetchone():
                return "success"
            levels = [self._level(site, link) for site in materials]
            if capacity_bytes is not None and any(level.held_bytes + size > capacity_bytes for level in levels):
                return "store_full"
            db.execute("INSERT INTO handed_off (link, block) VALUES (?, ?)", (link, block))
            self._tally(ACCEPTED, link, size)
            over = max(level.held_bytes for level in levels) + size - self.capacity_bytes
            if over > 0:   # both ends hold the same unissued range: what one can shed, both can
                if self.full_store == "discard_newest" or over > min(level.available_bytes for level in levels):
                    self._tally(DISCARDED, link, size)
                    return "success"
                self._shed(link, tuple(materials), over)
            for site, material in materials.items():
                row = db.execute("INSERT INTO pool (site, link, block, size) VALUES (?, ?, ?, ?)", (site, link, block, size))
                db.execute("INSERT INTO material (id, data) VALUES (?, ?)", (row.lastrowid, material))
                self._add_level(site, link, available=size)
        return "success"

    def _shed(self, link: str, sites: Sequence[str], nbytes: int) -> None:
        """Discard the oldest ``nbytes`` of unissued key of ``link`` at every end (the same range: the
        ends' unissued key is carved in step), counted."""
        pieces, planned = [], 0
        cursor = self._db.execute("SELECT block, size - used FROM pool WHERE site=? AND link=? ORDER BY block", (sites[0], link))
        for block, left in cursor:
            pieces.append((block, min(left, nbytes - planned)))
            planned += pieces[-1][1]
            if planned == nbytes:
                break
        cursor.close()   # no read statement may stay open while the carve writes the blobs
        for block, take in pieces:
            for site in sites:
                self._carve(site, link, block, take, read=False)
        self._tally(DISCARDED, link, nbytes)

    # ---- ETSI 014 (KME ← SAE) ------------------------------------------------------------------------
    def issue(self, links: Iterable[str], master_site: str, slave_site: str, master: str, slave: str,
              number: int, size_bytes: int, call: str = "enc_keys") -> list[tuple[str, bytes]]:
        """``enc_keys`` (or SKIP's new key, ``call`` counting it): carve ``number`` keys of ``size_bytes``
        from the oldest key of ``links`` at both ends; the master's copy is gone, the slave's waits in
        ``pending``. All or nothing."""
        links = list(links)
        need = number * size_bytes
        with self._transaction() as db:
            have = sum(self._level(master_site, link).available_bytes for link in links)
            if have < need:
                raise InsufficientKey(f"{number} key(s) of {8 * size_bytes} bits requested, {have // size_bytes} available")
            streams = {master_site: bytearray(), slave_site: bytearray()}  # each end carves its own copy
            sources: list[tuple[int, str]] = []                            # (stream offset, link) of each piece
            pieces, planned = [], 0  # read the oldest rows that cover the request, then carve them
            per_link = [db.execute("SELECT block, link, size - used FROM pool WHERE site=? AND link=? ORDER BY block",
                                   (master_site, link)) for link in links]   # each walks the (site, link, block) index
            for block, link, left in heapq.merge(*per_link):
                pieces.append((link, block, min(left, need - planned)))
                planned += pieces[-1][2]
                if planned == need:
                    break
            for cursor in per_link:   # no read statement may stay open while the carve writes the blobs
                cursor.close()
            for link, block, take in pieces:
                sources.append((len(streams[master_site]), link))
                for site, stream in streams.items():
                    stream += self._carve(site, link, block, take)
            now = time.time()
            ids = [str(uuid.uuid4()) for _ in range(number)]
            key_links = [next(link for start, link in reversed(sources) if start <= i * size_bytes) for i in range(number)]
            slave_copy, master_copy = streams[slave_site], streams[master_site]
            db.executemany("INSERT INTO pending (key_id, site, link, master, slave, size, material, issued_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(key_id, slave_site, key_links[i], master, slave, size_bytes,
                             bytes(slave_copy[i * size_bytes:(i + 1) * size_bytes]), now) for i, key_id in enumerate(ids)])
            for link in set(key_links):
                n = key_links.count(link)
                self._add_level(slave_site, link, pending=n * size_bytes)
                self._count(link, master, call, n)
                self._tally(ISSUED, link, n * size_bytes)
            return [(key_id, bytes(master_copy[i * size_bytes:(i + 1) * size_bytes])) for i, key_id in enumerate(ids)]

    def redeem(self, site: str, master: str, slave: str, key_ids: Sequence[str], call: str = "dec_keys") -> list[tuple[str, bytes]]:
        """``dec_keys`` (or SKIP's key by ID, ``call`` counting it): hand the slave the keys issued to it
        by ``master``, whichever API issued them, removing them. All or nothing: an unknown key ID is
        KeyNotFound, a key issued to another pair NotAddressee."""
        with self._transaction() as db:
            found = {}
            for key_id in key_ids:
                row = db.execute("SELECT link, master, slave, size, material FROM pending WHERE key_id=? AND site=?",
                                 (key_id, site)).fetchone()
                if row is None:
                    raise KeyNotFound(f"key_ID {key_id} is not held for this KME's SAEs (unknown or already delivered)")
                if (row[1], row[2]) != (master, slave):
                    raise NotAddressee(f"key_ID {key_id} was not issued by {master} to {slave}")
                found[key_id] = row
            db.executemany("DELETE FROM pending WHERE key_id=?", [(k,) for k in found])
            for link in {row[0] for row in found.values()}:
                mine = [row for row in found.values() if row[0] == link]
                self._add_level(site, link, pending=-sum(row[3] for row in mine))
                self._count(link, slave, call, len(mine))
        return [(key_id, bytes(row[4])) for key_id, row in found.items()]

    # ---- reading ------------------------------------------------------------------------------------
    def level(self, site: str, link: str) -> StoreLevel:
        with self._lock:
            return self._level(site, link)

    def available_bytes(self, site: str, links: Iterable[str]) -> int:
        with self._lock:
            return sum(self._level(site, link).available_bytes for link in links)

    def served(self, link: str) -> dict[tuple[str, str], int]:
        """(SAE, call) → keys of ``link`` served since the store was created (monotonic across restarts)."""
        with self._lock:
            return {(sae, call): n for sae, call, n in self._db.execute(
                "SELECT sae, call, keys FROM served WHERE link=? AND call != ?", (link, EXPIRED))}

    def expired(self, link: str) -> int:
        """Keys of ``link`` issued but never fetched within ``pending_ttl_s``, since the store was created."""
        with self._lock:
            row = self._db.execute("SELECT SUM(keys) FROM served WHERE link=? AND call=?", (link, EXPIRED)).fetchone()
            return int(row[0] or 0)

    def tallies(self, link: str) -> dict[str, int]:
        """Bytes of ``link``'s key per end since the store was created, by kind (each present, 0 before
        the first): ``accepted`` at hand-off, ``discarded`` as surplus by the full-store policy,
        ``issued`` to applications (``enc_keys``, SKIP's new key)."""
        with self._lock:
            found = dict(self._db.execute("SELECT kind, bytes FROM tallies WHERE link=?", (link,)).fetchall())
        return {kind: int(found.get(kind, 0)) for kind in TALLIES}

    def expire(self) -> int:
        """Delete the pending keys older than ``pending_ttl_s`` now (every write does it first); how many."""
        with self._transaction():
            return self._expired_now

    def _expire(self, db: sqlite3.Connection) -> int:
        cutoff = time.time() - self.pending_ttl_s
        rows = db.execute("SELECT site, link, slave, size FROM pending WHERE issued_at < ?", (cutoff,)).fetchall()
        if not rows:
            return 0
        db.execute("DELETE FROM pending WHERE issued_at < ?", (cutoff,))
        totals: dict[tuple[str, str], int] = {}
        counts: dict[tuple[str, str], int] = {}
        for site, link, slave, size in rows:
            totals[site, link] = totals.get((site, link), 0) + size
            counts[link, slave] = counts.get((link, slave), 0) + 1
        for (site, link), size in totals.items():
            self._add_level(site, link, pending=-size)
        for (link, slave), n in counts.items():
            self._count(link, slave, EXPIRED, n)
        return len(rows)

    # ---- internals ------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed on return, rolled back on any exception. A database
        error (a failed statement or a failed COMMIT: disk full, I/O error) rolls back — SQLite may leave the
        transaction open after a failed COMMIT, and the next BEGIN would then fail for every caller — and
        raises StoreUnavailable: the caller answers 503 or retries, nothing is lost or served twice."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._expired_now = self._expire(self._db)
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"the key store could not commit ({type(exc).__name__}: {exc}); nothing was changed") from None
            self._scrub()   # issued, redeemed and spent key bytes leave the files too (DurableStore)

    def _carve(self, site: str, link: str, block: int, take: int, read: bool = True) -> bytes:
        """The next ``take`` unused bytes of one end's copy of a block (``read`` False: discarded unread),
        marked used: overwritten with zeros in the blob, or — when they are the block's last — the row
        deleted, which ``secure_delete`` zeroes. A carved key is held only where it was issued to."""
        row_id, size, used = self._db.execute("SELECT id, size, used FROM pool WHERE site=? AND link=? AND block=?",
                                              (site, link, block)).fetchone()
        spent = used + take == size
        piece = b""
        if read or not spent:
            with self._db.blobopen("material", "data", row_id, readonly=False) as blob:
                if read:
                    blob.seek(used)
                    piece = blob.read(take)
                if not spent:
                    blob.seek(used)
                    blob.write(bytes(take))
        if spent:
            self._db.execute("DELETE FROM pool WHERE id=?", (row_id,))
            self._db.execute("DELETE FROM material WHERE id=?", (row_id,))
        else:
            self._db.execute("UPDATE pool SET used = used + ? WHERE id=?", (take, row_id))
        self._add_level(site, link, available=-take)
        return piece

    def _level(self, site: str, link: str) -> StoreLevel:
        row = self._db.execute("SELECT available, pending FROM levels WHERE site=? AND link=?", (site, link)).fetchone()
        return StoreLevel(*row) if row else StoreLevel(0, 0)

    def _add_level(self, site: str, link: str, available: int = 0, pending: int = 0) -> None:
        self._db.execute("INSERT INTO levels (site, link, available, pending) VALUES (?, ?, ?, ?) ON CONFLICT (site, link) "
                         "DO UPDATE SET available = available + excluded.available, pending = pending + excluded.pending",
                         (site, link, available, pending))

    def _tally(self, kind: str, link: str, nbytes: int) -> None:
        self._db.execute("INSERT INTO tallies (link, kind, bytes) VALUES (?, ?, ?) "
                         "ON CONFLICT (link, kind) DO UPDATE SET bytes = bytes + excluded.bytes", (link, kind, nbytes))

    def _count(self, link: str, sae: str, call: str, keys: int) -> None:
        self._db.execute("INSERT INTO served (link, sae, call, keys) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (link, sae, call) DO UPDATE SET keys = keys + excluded.keys", (link, sae, call, keys))


def open_key_pool(config: FleetConfig, durable: bool = True) -> KeyPoolStore:
    """The state dir's KME store with the configured capacity, pending-key lifetime and full-store
    policy: one file the fleet hands keys into and the KMEs serve from, whether they share a process
    or not (``durable`` False: a history run's scratch store)."""
    delivery = config.key_delivery
    return KeyPoolStore(config.runtime.state_dir / "kme.sqlite", delivery.max_key_count * delivery.key_size_bits // 8,
                        delivery.pending_key_ttl_s, delivery.full_store, durable)
