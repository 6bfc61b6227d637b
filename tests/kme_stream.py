"""Two SAEs streaming keys through the KMEs of a running stack, and the bookkeeping that proves no
key was lost or served twice across a kill -9 (of the KMEs' process, or of a worker of a sharded fleet)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from qkdops.kme.client import EtsiClient, EtsiClientError, client_context
from qkdops.kme.pki import Pki

KEYS_PER_REQUEST = 8
KEY_BYTES = 32


class Stream:
    """sae-a takes keys for sae-b (enc_keys), sae-b redeems them (dec_keys), until stopped. Every
    answer received is recorded; a call the kill cut off is retried once the KME is back. If the
    cut-off call had committed, its keys were delivered into the void: an enc_keys retry gets new
    keys, a dec_keys retry is told the keys were already delivered (``lost_in_flight``)."""

    def __init__(self, pki: Pki, ports: dict[str, int]) -> None:
        self.pki, self.ports = pki, ports
        self.issued: list[tuple[str, bytes]] = []     # every key of every enc_keys answer received
        self.redeemed: list[tuple[str, bytes]] = []   # every key of every dec_keys answer received
        self.lost_in_flight: list[str] = []           # redeemed by a dec_keys whose answer the kill cut off
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._unredeemed: list[str] = []
        self._dec_cut_off = False

    def client(self, sae: str, site: str) -> EtsiClient:
        return EtsiClient(f"https://127.0.0.1:{self.ports[site]}", client_context(self.pki.ca_cert, *self.pki.sae(sae)), timeout_s=5)

    @property
    def settled(self) -> bool:
        return not self._unredeemed

    def _run(self) -> None:
        master, slave = self.client("sae-a", "a"), self.client("sae-b", "b")
        while not self.stop.is_set():
            try:
                if not self._unredeemed:
                    keys = master.enc_keys("sae-b", KEYS_PER_REQUEST)
                    self.issued += keys
                    self._unredeemed = [k for k, _ in keys]
                self.redeemed += slave.dec_keys("sae-a", self._unredeemed)
                self._unredeemed = []
            except EtsiClientError as exc:
                if exc.status == 400 and self._dec_cut_off and "already delivered" in exc.message:
                    self.lost_in_flight += self._unredeemed
                    self._unredeemed = []
                elif exc.status != 503:  # 503: the store ran dry for a moment; anything else is a bug
                    raise
                time.sleep(0.05)
            except OSError:
                self.failures += 1
                self._dec_cut_off = bool(self._unredeemed)
                master.close()
                slave.close()
                time.sleep(0.1)
        master.close()
        slave.close()


def assert_no_key_lost_or_served_twice(stream: Stream, state: Path, link: str = "e2e-fast") -> None:
    """Every key issued once, redeemed once and bit for bit; every byte ``link`` (the one link
    between sites a and b) distilled in the run served (to a master), still stored or still buffered."""
    issued, redeemed = dict(stream.issued), dict(stream.redeemed)
    assert len(issued) == len(stream.issued)                   # no key_ID issued twice
    assert len(redeemed) == len(stream.redeemed)               # none redeemed twice
    assert len(set(issued.values())) == len(issued)            # no key bytes under two key_IDs
    assert all(issued[k] == v for k, v in redeemed.items())    # the slave got the master's key, bit for bit
    assert set(issued) == set(redeemed) | set(stream.lost_in_flight)

    # Conservation over the whole run: every byte of distilled key was served (to a master), is still
    # stored or still buffered. The only key no SAE holds is that of the one call the kill cut off
    # after its commit: an enc_keys (its keys still pending at b) or a dec_keys (lost_in_flight).
    with sqlite3.connect(state / "blocks.sqlite") as blocks:
        distilled = sum(json.loads(body)["secret_key_bits"] for (body,) in blocks.execute("SELECT body FROM results WHERE link=?", (link,))) // 8
    with sqlite3.connect(state / "kme.sqlite") as kme:
        (available,) = kme.execute("SELECT COALESCE(SUM(size - used), 0) FROM pool WHERE site='a'").fetchone()
        (material,) = kme.execute("SELECT COALESCE(SUM(length(data)), 0) FROM material JOIN pool USING (id) WHERE site='a'").fetchone()
        (totals,) = kme.execute("SELECT available FROM levels WHERE site='a'").fetchone()
        assert totals == available  # the running totals survived the kill in step with the rows
        (pending,) = kme.execute("SELECT COUNT(*) FROM pending WHERE link=?", (link,)).fetchone()
        (served,) = kme.execute("SELECT keys FROM served WHERE sae='sae-a' AND call='enc_keys'").fetchone()
    with sqlite3.connect(state / "keys.sqlite") as buffer:
        (buffered,) = buffer.execute("SELECT COALESCE(SUM(bits), 0) / 8 FROM block_keys WHERE link=?", (link,)).fetchone()
    enc_cut_off = served - len(issued)
    assert pending == enc_cut_off and enc_cut_off in (0, KEYS_PER_REQUEST)
    assert len(stream.lost_in_flight) in (0, KEYS_PER_REQUEST) and not (enc_cut_off and stream.lost_in_flight)
    assert distilled == served * KEY_BYTES + available + buffered
    assert material >= available  # the unused bytes are really there
