"""The KMEs' key stores: each block's distilled key held at both ends until an SAE pair takes it.

One SQLite file (WAL, ``synchronous=FULL``, created 0600) holds every site's store. A row of
``pool`` is one end's copy of one block's key, with how many of its bytes are already used; both
ends' rows of a block are written in one transaction, and an ETSI ``enc_keys`` call carves the same
bytes from both in one transaction, leaving the slave end's copy in ``pending`` under the new key
IDs until ``dec_keys``. So the two ends always hold the same bits, and the synchronisation a real
KME pair does over its own channel is one atomic commit here. Because every change is one commit
made before the HTTP answer is written, a crash (kill -9) never loses a stored key nor serves one
twice; the only key a crash can cost is that of a request committed but not yet answered, which no
SAE received and which is never served again.

Key bytes leave this module only as the return values of ``issue`` and ``redeem``; errors name
counts and key IDs, never material.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qkdops.runtime.durable import DurableStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS handed_off (link TEXT NOT NULL, block INTEGER NOT NULL, PRIMARY KEY (link, block));
CREATE TABLE IF NOT EXISTS pool (site TEXT NOT NULL, link TEXT NOT NULL, block INTEGER NOT NULL,
                                 material BLOB NOT NULL, used INTEGER NOT NULL DEFAULT 0,
                                 PRIMARY KEY (site, link, block));
CREATE TABLE IF NOT EXISTS pending (key_id TEXT PRIMARY KEY, site TEXT NOT NULL, link TEXT NOT NULL,
                                    master TEXT NOT NULL, slave TEXT NOT NULL, material BLOB NOT NULL,
                                    issued_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS pending_by_site ON pending (site, link);
CREATE TABLE IF NOT EXISTS served (link TEXT NOT NULL, sae TEXT NOT NULL, call TEXT NOT NULL,
                                   keys INTEGER NOT NULL, PRIMARY KEY (link, sae, call));
"""


class InsufficientKey(RuntimeError):
    """Fewer bytes stored for the pair than the request needs (ETSI 014: 503)."""


class KeyNotFound(LookupError):
    """A requested key ID is not held at this end (ETSI 014: 400)."""


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


class KeyPoolStore(DurableStore):
    """The stores of every KME site (see module docstring). ``capacity_bytes`` bounds what one end
    holds for one link (``max_key_count`` × ``key_size_bits`` / 8)."""

    def __init__(self, path: Path, capacity_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(path, 0o600)
        self.capacity_bytes = capacity_bytes
        super().__init__(path, SCHEMA)

    # ---- hand-off (post-processing → both ends) ---------------------------------------------------
    def accept(self, link: str, block: int, material: bytes, sites: Sequence[str], capacity_bytes: int | None = None) -> str:
        """Store a block's key at every end: ``success`` (also when already stored) or ``store_full``
        when an end would exceed its capacity (``capacity_bytes`` overrides it: a store-full fault)."""
        limit = self.capacity_bytes if capacity_bytes is None else capacity_bytes
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM handed_off WHERE link=? AND block=?", (link, block)).fetchone():
                    db.execute("COMMIT")
                    return "success"
                if any(self._level(site, link).held_bytes + len(material) > limit for site in sites):
                    db.execute("COMMIT")
                    return "store_full"
                db.execute("INSERT INTO handed_off (link, block) VALUES (?, ?)", (link, block))
                db.executemany("INSERT INTO pool (site, link, block, material) VALUES (?, ?, ?, ?)",
                               [(site, link, block, material) for site in sites])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return "success"

    # ---- ETSI 014 (KME ← SAE) ------------------------------------------------------------------------
    def issue(self, links: Iterable[str], master_site: str, slave_site: str, master: str, slave: str,
              number: int, size_bytes: int) -> list[tuple[str, bytes]]:
        """``enc_keys``: carve ``number`` keys of ``size_bytes`` from the oldest key of ``links`` at
        both ends; the master's copy is gone, the slave's waits in ``pending``. All or nothing."""
        links = list(links)
        need = number * size_bytes
        marks = ",".join("?" * len(links))
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(f"SELECT link, block, length(material) - used FROM pool WHERE site=? AND link IN ({marks}) "
                                  "AND used < length(material) ORDER BY block, link", (master_site, *links)).fetchall()
                have = sum(r[2] for r in rows)
                if have < need:
                    raise InsufficientKey(f"{number} key(s) of {8 * size_bytes} bits requested, "
                                          f"{have * 8 // (8 * size_bytes)} available")
                streams = {master_site: bytearray(), slave_site: bytearray()}  # each end carves its own copy
                taken = 0
                for link, block, left in rows:
                    take = min(left, need - taken)
                    for site, stream in streams.items():
                        (piece,) = db.execute("SELECT substr(material, used + 1, ?) FROM pool WHERE site=? AND link=? AND block=?",
                                              (take, site, link, block)).fetchone()
                        stream += piece
                        if take == left:
                            db.execute("DELETE FROM pool WHERE site=? AND link=? AND block=?", (site, link, block))
                        else:
                            db.execute("UPDATE pool SET used = used + ? WHERE site=? AND link=? AND block=?", (take, site, link, block))
                    taken += take
                    if taken == need:
                        break
                now, link = time.time(), rows[0][0]
                ids = [str(uuid.uuid4()) for _ in range(number)]
                slave_copy = streams[slave_site]
                db.executemany("INSERT INTO pending (key_id, site, link, master, slave, material, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(key_id, slave_site, link, master, slave, bytes(slave_copy[i * size_bytes:(i + 1) * size_bytes]), now)
                                for i, key_id in enumerate(ids)])
                self._count(link, master, "enc_keys", number)
                master_copy = streams[master_site]
                keys = [(key_id, bytes(master_copy[i * size_bytes:(i + 1) * size_bytes])) for i, key_id in enumerate(ids)]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return keys

    def redeem(self, site: str, master: str, slave: str, key_ids: Sequence[str]) -> list[tuple[str, bytes]]:
        """``dec_keys``: hand the slave the keys issued to it by ``master``, removing them. All or
        nothing: an unknown key ID is KeyNotFound, a key issued to another pair NotAddressee."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                found = {}
                for key_id in key_ids:
                    row = db.execute("SELECT link, master, slave, material FROM pending WHERE key_id=? AND site=?",
                                     (key_id, site)).fetchone()
                    if row is None:
                        raise KeyNotFound(f"key_ID {key_id} is not held for this KME's SAEs (unknown or already delivered)")
                    if (row[1], row[2]) != (master, slave):
                        raise NotAddressee(f"key_ID {key_id} was not issued by {master} to {slave}")
                    found[key_id] = row
                db.executemany("DELETE FROM pending WHERE key_id=?", [(k,) for k in found])
                for link in {row[0] for row in found.values()}:
                    self._count(link, slave, "dec_keys", sum(1 for row in found.values() if row[0] == link))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return [(key_id, row[3]) for key_id, row in found.items()]

    # ---- reading ------------------------------------------------------------------------------------
    def level(self, site: str, link: str) -> StoreLevel:
        with self._lock:
            return self._level(site, link)

    def available_bytes(self, site: str, links: Iterable[str]) -> int:
        with self._lock:
            return sum(self._level(site, link).available_bytes for link in links)

    def served(self) -> dict[tuple[str, str, str], int]:
        """(link, SAE, call) → keys served since the store was created (monotonic across restarts)."""
        with self._lock:
            return {(link, sae, call): n for link, sae, call, n in self._db.execute("SELECT link, sae, call, keys FROM served")}

    def _level(self, site: str, link: str) -> StoreLevel:
        (available,) = self._db.execute("SELECT COALESCE(SUM(length(material) - used), 0) FROM pool WHERE site=? AND link=?",
                                        (site, link)).fetchone()
        (pending,) = self._db.execute("SELECT COALESCE(SUM(length(material)), 0) FROM pending WHERE site=? AND link=?",
                                      (site, link)).fetchone()
        return StoreLevel(int(available), int(pending))

    def _count(self, link: str, sae: str, call: str, keys: int) -> None:
        self._db.execute("INSERT INTO served (link, sae, call, keys) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (link, sae, call) DO UPDATE SET keys = keys + excluded.keys", (link, sae, call, keys))
