"""SQLite opened for durability: what the archive, the key buffer and the KME store need.

WAL journal with ``synchronous=FULL``: a committed transaction survives a crash or power loss, and
readers (``qkdops replay``, ``qkdops status``) never block the writer. Autocommit mode
(``isolation_level=None``): each statement is its own transaction unless a caller opens one.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path


SETUP_RETRY_S = 15.0   # how long opening waits out another process setting up the same file
# Page size of a new key store file (SQLite's default is 4 KiB). The key buffer and the KME store hold
# each block's key as a blob of up to ~1 MB (metro-bb84): in 4-KiB pages that is ~250 overflow pages,
# each written to the WAL, checkpointed and zeroed by secure_delete when spent; 16-KiB pages made a
# block's hand-off (buffer deposit, KME store accept with a discard, buffer remove) 35 % cheaper
# (17.5 → 11.3 ms on tmpfs, measured). The other stores keep 4 KiB: their commits are small and
# frequent, and each writes whole pages to the WAL. A file keeps the page size it was created with.
KEY_STORE_PAGE_SIZE = 16384


def open_durable(path: Path, schema: str, durable: bool = True, page_size: int | None = None) -> sqlite3.Connection:
    """Connection usable from any thread (callers serialise access with their own lock).

    ``durable`` False: a scratch file (a history run's state, which a crash throws away anyway):
    ``synchronous=OFF``, commits not synced to disk — syncing every block and job run was 28 % of a
    100-link history's wall time with its state on disk, ~4 % on tmpfs (docs/benchmarks.md).

    The workers of a sharded fleet open the same new files at the same moment. Switching a new file
    to WAL needs an exclusive lock, and SQLite answers "database is locked" at once — without its busy
    wait — to a connection that meets another doing the same; so the setup is retried (bounded by
    ``SETUP_RETRY_S``) until the first one has finished. Once a file is in WAL mode it stays so.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + SETUP_RETRY_S
    while True:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            if page_size is not None:
                db.execute(f"PRAGMA page_size={page_size}")   # takes effect only on a new, empty file (before WAL)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
            db.executescript(schema)
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class DurableStore:
    """Base of the runtime's SQLite stores: one durable connection shared by threads under a lock
    (writes are a few per second at most, so serialising them costs nothing). ``private``: the file
    holds key material, so it is created 0600 before SQLite opens it (never readable by others,
    not even for a moment), and key bytes must not outlive their removal anywhere in its files:
    ``secure_delete`` zeroes deleted rows and freed pages, and ``_scrub`` (after a commit that
    removed key material) checkpoints the WAL into the database and truncates it to zero bytes —
    otherwise the WAL keeps the page images that carried the key until SQLite reuses them."""

    def __init__(self, path: Path, schema: str, private: bool = False, durable: bool = True, page_size: int | None = None) -> None:
        if private:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(path, 0o600)
        self.path = path
        self._lock = threading.Lock()
        self._db = open_durable(path, schema, durable, page_size)
        if private:
            self._db.execute("PRAGMA secure_delete=ON")

    def _scrub(self) -> None:
        """Under the lock, after a commit that removed key material: WAL → database, WAL emptied. A
        reader in another process holding an old snapshot makes it a partial checkpoint; the next
        scrub finishes the job."""
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()
