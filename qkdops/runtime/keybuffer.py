"""The link side's key buffer: each block's distilled key, held until both ends' KMEs have taken it.

Post-processing deposits here (fast, local, never blocked by a KME); the hand-off
(``handoff.py``) moves keys on to the KME stores, oldest first, and removes a key only after the
KMEs committed it. Durable (SQLite, ``synchronous=FULL``) and idempotent per (link, block):
re-processing a block after a crash cannot buffer its key twice, and a crash between the KMEs'
commit and the removal here only makes the hand-off repeat, which the KME store ignores. Bounded
per link (``capacity_bits``): a full buffer refuses a new key (outcome ``buffer_full``) rather
than drop older ones. The file is created 0600; key bytes leave only through ``oldest``.
"""

from __future__ import annotations

from pathlib import Path

from qkdops.runtime.durable import DurableStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (link TEXT NOT NULL, idx INTEGER NOT NULL, bits INTEGER NOT NULL,
                                 material BLOB NOT NULL, PRIMARY KEY (link, idx));
"""


class KeyBuffer(DurableStore):
    def __init__(self, path: Path, capacity_bits: int) -> None:
        self.capacity_bits = capacity_bits
        super().__init__(path, SCHEMA, private=True)

    def deposit(self, link: str, index: int, material: bytes) -> str:
        """Buffer a block's key: ``success`` (also when already buffered) or ``buffer_full``."""
        bits = 8 * len(material)
        with self._lock:
            if self._db.execute("SELECT 1 FROM keys WHERE link=? AND idx=?", (link, index)).fetchone():
                return "success"
            if self._level(link) + bits > self.capacity_bits:
                return "buffer_full"
            self._db.execute("INSERT INTO keys (link, idx, bits, material) VALUES (?, ?, ?, ?)",
                             (link, index, bits, material))
        return "success"

    def oldest(self, link: str) -> tuple[int, bytes] | None:
        """The oldest buffered block key of ``link`` (block index, key), or None."""
        with self._lock:
            row = self._db.execute("SELECT idx, material FROM keys WHERE link=? ORDER BY idx LIMIT 1", (link,)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def remove(self, link: str, index: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM keys WHERE link=? AND idx=?", (link, index))

    def level_bits(self, link: str) -> int:
        with self._lock:
            return self._level(link)

    def _level(self, link: str) -> int:
        (total,) = self._db.execute("SELECT COALESCE(SUM(bits), 0) FROM keys WHERE link=?", (link,)).fetchone()
        return int(total)
