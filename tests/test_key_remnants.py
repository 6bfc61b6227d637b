"""After a key leaves a store — handed on by the key buffer, issued by enc_keys, redeemed by dec_keys —
none of its bytes is left in any file of the store (database, WAL, shared memory); keys still held
are (which is what shows the scan finds keys at all)."""

from __future__ import annotations

import os
from pathlib import Path

from qkdops.kme.store import KeyPoolStore
from qkdops.runtime.keybuffer import KeyBuffer


def _files_holding(directory: Path, secret: bytes) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file() and secret in p.read_bytes())


def test_the_key_buffer_keeps_no_bytes_of_a_removed_key(tmp_path: Path) -> None:
    buffer = KeyBuffer(tmp_path / "keys.sqlite", 10**9)
    try:
        gone, kept = os.urandom(4096), os.urandom(4096)
        buffer.deposit("l", 1, gone, gone)
        buffer.deposit("l", 2, kept, kept)
        assert _files_holding(tmp_path, gone[:32])                      # written: WAL or database
        buffer.remove("l", 1)
        assert _files_holding(tmp_path, gone[:32]) == [] and _files_holding(tmp_path, gone[-32:]) == []
        assert _files_holding(tmp_path, kept[:32]) == ["keys.sqlite"]  # still held, checkpointed in
    finally:
        buffer.close()


def test_the_kme_store_keeps_no_bytes_of_issued_or_redeemed_keys(tmp_path: Path) -> None:
    store = KeyPoolStore(tmp_path / "kme.sqlite", 10**9)
    try:
        block = os.urandom(8192)                                          # one block's key, both ends
        assert store.accept("l", 7, {"a": block, "b": block}) == "success"
        issued = store.issue(["l"], "a", "b", "sae-a", "sae-b", 4, 32)   # enc_keys: master a, slave b
        assert b"".join(k for _, k in issued) == block[:128]
        for _, key in issued:                                             # the master end's copy is gone,
            assert _files_holding(tmp_path, key) == ["kme.sqlite"]       # the slave's waits in pending
        redeemed = store.redeem("b", "sae-a", "sae-b", [key_id for key_id, _ in issued])   # dec_keys
        assert [k for _, k in redeemed] == [k for _, k in issued]
        for _, key in issued:
            assert _files_holding(tmp_path, key) == []
        assert _files_holding(tmp_path, block[128:160]) == ["kme.sqlite"]   # not yet issued: held
        rest = store.issue(["l"], "a", "b", "sae-a", "sae-b", 1, len(block) - 128)   # spends the block
        store.redeem("b", "sae-a", "sae-b", [rest[0][0]])
        assert all(_files_holding(tmp_path, block[i:i + 32]) == [] for i in range(0, len(block), 32))
    finally:
        store.close()
