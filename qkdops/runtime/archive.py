"""Durable, append-only archive of blocks and their post-processing results (SQLite, WAL).

A block is committed (fsync'd, ``synchronous=FULL``) before post-processing starts, so a crash
loses at most the frames of the block being built, never an archived block. ``(link, idx)`` is the
primary key: a block cannot be archived twice, and a result is recorded at most once per block, so
a restart re-processes exactly the blocks whose results are missing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from qkdops.runtime.blocks import Block
from qkdops.durable import DurableStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (link TEXT NOT NULL, idx INTEGER NOT NULL, body TEXT NOT NULL,
                                   PRIMARY KEY (link, idx));
CREATE TABLE IF NOT EXISTS results (link TEXT NOT NULL, idx INTEGER NOT NULL, body TEXT NOT NULL,
                                    PRIMARY KEY (link, idx));
"""


class ArchiveError(RuntimeError):
    """The archive refused a write that would lose or duplicate data."""


class BlockArchive(DurableStore):
    """Thread-safe; one connection, serialised by a lock (writes are a few per second)."""

    def __init__(self, path: Path, durable: bool = True) -> None:
        super().__init__(path, SCHEMA, private=True, durable=durable)  # block seeds rebuild the emulated keys: 0600

    def append(self, block: Block) -> None:
        """Commit ``block``; the same block again is a no-op, a different one with its index an error."""
        body = block.to_json()
        with self._lock:
            try:
                self._db.execute("INSERT INTO blocks (link, idx, body) VALUES (?, ?, ?)", (block.link, block.index, body))
            except sqlite3.IntegrityError:
                (existing,) = self._db.execute("SELECT body FROM blocks WHERE link=? AND idx=?",
                                               (block.link, block.index)).fetchone()
                if existing != body:
                    raise ArchiveError(f"block {block.index} of link {block.link} is archived with other contents") from None

    def record_result(self, link: str, index: int, body: str) -> bool:
        """Store a block's result once; False if it was already recorded (the first one stands)."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO results (link, idx, body) VALUES (?, ?, ?)", (link, index, body))
            return cur.rowcount == 1

    def next_index(self, link: str) -> int:
        with self._lock:
            (last,) = self._db.execute("SELECT MAX(idx) FROM blocks WHERE link=?", (link,)).fetchone()
        return 0 if last is None else last + 1

    def blocks(self, link: str | None = None, first: int = 0, last: int | None = None) -> Iterator[Block]:
        """Archived blocks in (link, index) order."""
        query = "SELECT body FROM blocks WHERE idx >= ?" + (" AND idx <= ?" if last is not None else "")
        args: list[object] = [first] + ([last] if last is not None else [])
        if link is not None:
            query += " AND link = ?"
            args.append(link)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY link, idx", args).fetchall()
        return (Block.from_json(body) for (body,) in rows)

    def result(self, link: str, index: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM results WHERE link=? AND idx=?", (link, index)).fetchone()
        return None if row is None else row[0]

    def unprocessed(self, link: str) -> list[Block]:
        """Archived blocks of ``link`` without a result (a crash hit between archive and result)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT b.body FROM blocks b LEFT JOIN results r ON r.link = b.link AND r.idx = b.idx "
                "WHERE b.link = ? AND r.idx IS NULL ORDER BY b.idx", (link,)).fetchall()
        return [Block.from_json(body) for (body,) in rows]

    def count(self, link: str) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM blocks WHERE link=?", (link,)).fetchone()
        return n
