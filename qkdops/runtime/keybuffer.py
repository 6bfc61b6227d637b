"""The link side's key buffer: each block's distilled keys, held until both ends' KMEs have taken them.

One row per block holds both ends' keys — Alice's and Bob's, each the output of that end's own
privacy amplification — so the key confirmation at hand-off can compare them before either is
stored at a KME.

Post-processing deposits here (fast, local, never blocked by a KME); the hand-off
(``handoff.py``) moves keys on to the KME stores, oldest first, and removes a key only after the
KMEs committed it. Durable (SQLite, ``synchronous=FULL``) and idempotent per (link, block):
re-processing a block after a crash cannot buffer its key twice, and a crash between the KMEs'
commit and the removal here only makes the hand-off repeat, which the KME store ignores. Bounded
per link (``capacity_bits``): a full buffer refuses a new key (outcome ``buffer_full``) rather
than drop older ones. The file is created 0600; key bytes leave only through ``oldest``. A
buffer written by a version that kept one key per block is migrated on open (both ends get it).
"""

from __future__ import annotations

from pathlib import Path

from qkdops.durable import KEY_STORE_PAGE_SIZE, DurableStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS block_keys (link TEXT NOT NULL, idx INTEGER NOT NULL, bits INTEGER NOT NULL,
                                       alice BLOB NOT NULL, bob BLOB NOT NULL, PRIMARY KEY (link, idx));
"""


class KeyBuffer(DurableStore):
    def __init__(self, path: Path, capacity_bits: int, durable: bool = True) -> None:
        self.capacity_bits = capacity_bits
        super().__init__(path, SCHEMA, private=True, durable=durable, page_size=KEY_STORE_PAGE_SIZE)
        with self._lock:
            if self._db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='keys'").fetchone():
                self._db.executescript("BEGIN IMMEDIATE; INSERT OR IGNORE INTO block_keys SELECT link, idx, bits, material, material "
                                       "FROM keys; DROP TABLE keys; COMMIT;")

    def deposit(self, link: str, index: int, alice: bytes, bob: bytes) -> str:
        """Buffer a block's keys (each end's own): ``success`` (also when already buffered) or ``buffer_full``."""
        if len(alice) != len(bob):
            raise ValueError(f"block {index} of link {link}: the ends' keys differ in length ({len(alice)} vs {len(bob)} bytes)")
        bits = 8 * len(alice)
        with self._lock:
            if self._db.execute("SELECT 1 FROM block_keys WHERE link=? AND idx=?", (link, index)).fetchone():
                return "success"
            if self._level(link) + bits > self.capacity_bits:
                return "buffer_full"
            self._db.execute("INSERT INTO block_keys (link, idx, bits, alice, bob) VALUES (?, ?, ?, ?, ?)",
                             (link, index, bits, alice, bob))
        return "success"

    def oldest(self, link: str) -> tuple[int, bytes, bytes] | None:
        """The oldest buffered block of ``link``: (block index, Alice's key, Bob's key), or None."""
        with self._lock:
            row = self._db.execute("SELECT idx, alice, bob FROM block_keys WHERE link=? ORDER BY idx LIMIT 1", (link,)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]), bytes(row[2]))

    def remove(self, link: str, index: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM block_keys WHERE link=? AND idx=?", (link, index))
            self._scrub()

    def level_bits(self, link: str) -> int:
        with self._lock:
            return self._level(link)

    def _level(self, link: str) -> int:
        (total,) = self._db.execute("SELECT COALESCE(SUM(bits), 0) FROM block_keys WHERE link=?", (link,)).fetchone()
        return int(total)
