"""Local key store: the distilled key of each block, held until an application takes it.

Durable (SQLite, ``synchronous=FULL``) and idempotent per (link, block): re-processing a block
after a crash cannot store its key twice. Bounded per link (``capacity_bits``): a full store refuses
the hand-off (outcome ``store_full``) rather than dropping older keys. The file is created 0600 and
key bytes never leave this module except through ``take`` (the delivery API of a later issue).
"""

from __future__ import annotations

import os
from pathlib import Path

from qkdops.runtime.durable import DurableStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (link TEXT NOT NULL, idx INTEGER NOT NULL, bits INTEGER NOT NULL,
                                 material BLOB NOT NULL, PRIMARY KEY (link, idx));
"""


class KeyStore(DurableStore):
    def __init__(self, path: Path, capacity_bits: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        self.capacity_bits = capacity_bits
        super().__init__(path, SCHEMA)

    def deposit(self, link: str, index: int, material: bytes) -> str:
        """Store a block's key: ``success`` (also when already stored) or ``store_full``."""
        bits = 8 * len(material)
        with self._lock:
            if self._db.execute("SELECT 1 FROM keys WHERE link=? AND idx=?", (link, index)).fetchone():
                return "success"
            if self._level(link) + bits > self.capacity_bits:
                return "store_full"
            self._db.execute("INSERT INTO keys (link, idx, bits, material) VALUES (?, ?, ?, ?)",
                             (link, index, bits, material))
        return "success"

    def level_bits(self, link: str) -> int:
        with self._lock:
            return self._level(link)

    def _level(self, link: str) -> int:
        (total,) = self._db.execute("SELECT COALESCE(SUM(bits), 0) FROM keys WHERE link=?", (link,)).fetchone()
        return int(total)

    def take(self, link: str, max_bits: int) -> list[tuple[int, bytes]]:
        """Remove and return whole block keys, oldest first, up to ``max_bits`` in total."""
        out: list[tuple[int, bytes]] = []
        with self._lock:
            rows = self._db.execute("SELECT idx, bits, material FROM keys WHERE link=? ORDER BY idx", (link,)).fetchall()
            total = 0
            for idx, bits, material in rows:
                if total + bits > max_bits:
                    break
                total += bits
                out.append((idx, material))
            self._db.executemany("DELETE FROM keys WHERE link=? AND idx=?", [(link, idx) for idx, _ in out])
        return out
