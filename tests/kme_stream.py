"""Two SAEs streaming keys through the KMEs of a running stack — over ETSI 014 or SKIP — and the
bookkeeping that proves no key was lost or served twice across a kill -9 (of the KMEs' process, or of
a worker of a sharded fleet)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from qkdops.kme.client import EtsiClient, EtsiClientError, SkipClient, client_context
from qkdops.kme.pki import Pki, read_psk

KEYS_PER_REQUEST = {"etsi014": 8, "skip": 1}   # enc_keys asks for 8; SKIP's new key is one key per call
ISSUE_CALL = {"etsi014": "enc_keys", "skip": "key"}   # the call that takes key from the store (the served row)
KEY_BYTES = 32


class Stream:
    """sae-a takes keys for sae-b (ETSI 014 enc_keys, or SKIP's new key), sae-b redeems them (dec_keys,
    or SKIP's key by ID), until stopped. Every answer received is recorded; a call the kill cut off is
    retried once the KME is back. If the cut-off call had committed, its keys were delivered into the
    void: a take retried gets new keys, a redeem retried is told the keys were already delivered
    (``lost_in_flight``). ``ports``: site → the port of ``api``'s listener there."""

    def __init__(self, pki: Pki, ports: dict[str, int], api: str = "etsi014") -> None:
        self.pki, self.ports, self.api = pki, ports, api
        self.per_request = KEYS_PER_REQUEST[api]
        self.issued: list[tuple[str, bytes]] = []     # every key of every enc_keys answer received
        self.redeemed: list[tuple[str, bytes]] = []   # every key of every dec_keys answer received
        self.lost_in_flight: list[str] = []           # redeemed by a dec_keys whose answer the kill cut off
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self._unredeemed: list[str] = []
        self._dec_cut_off = False

    def client(self, sae: str, site: str) -> EtsiClient | SkipClient:
        url = f"https://127.0.0.1:{self.ports[site]}"
        if self.api == "skip":
            return SkipClient(url, sae, read_psk(self.pki.skip_psk(sae)), timeout_s=5)
        return EtsiClient(url, client_context(self.pki.ca_cert, *self.pki.sae(sae)), timeout_s=5)

    def _take(self, master: EtsiClient | SkipClient) -> list[tuple[str, bytes]]:
        if isinstance(master, SkipClient):
            return [master.new_key("sae-b")]
        return master.enc_keys("sae-b", self.per_request)

    def _redeem(self, slave: EtsiClient | SkipClient, key_ids: list[str]) -> list[tuple[str, bytes]]:
        if isinstance(slave, SkipClient):
            return [slave.key_by_id(key_id, "sae-a") for key_id in key_ids]
        return slave.dec_keys("sae-a", key_ids)

    @property
    def settled(self) -> bool:
        return not self._unredeemed

    def _run(self) -> None:
        master, slave = self.client("sae-a", "a"), self.client("sae-b", "b")
        while not self.stop.is_set():
            try:
                if not self._unredeemed:
                    keys = self._take(master)
                    self.issued += keys
                    self._unredeemed = [k for k, _ in keys]
                self.redeemed += self._redeem(slave, self._unredeemed)
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
    # stored, still buffered or discarded as surplus by the full-store policy. The only key no SAE holds
    # is that of the one call the kill cut off after its commit: a take (its keys still pending at b)
    # or a redeem (lost_in_flight).
    with sqlite3.connect(state / "blocks.sqlite") as blocks:
        distilled = sum(json.loads(body)["secret_key_bits"] for (body,) in blocks.execute("SELECT body FROM results WHERE link=?", (link,))) // 8
    with sqlite3.connect(state / "kme.sqlite") as kme:
        (available,) = kme.execute("SELECT COALESCE(SUM(size - used), 0) FROM pool WHERE site='a'").fetchone()
        (material,) = kme.execute("SELECT COALESCE(SUM(length(data)), 0) FROM material JOIN pool USING (id) WHERE site='a'").fetchone()
        (totals,) = kme.execute("SELECT available FROM levels WHERE site='a'").fetchone()
        assert totals == available  # the running totals survived the kill in step with the rows
        (pending,) = kme.execute("SELECT COUNT(*) FROM pending WHERE link=?", (link,)).fetchone()
        (served,) = kme.execute("SELECT keys FROM served WHERE sae='sae-a' AND call=?", (ISSUE_CALL[stream.api],)).fetchone()
        (discarded,) = kme.execute("SELECT COALESCE(SUM(bytes), 0) FROM tallies WHERE link=? AND kind='discarded'",
                                   (link,)).fetchone()
    with sqlite3.connect(state / "keys.sqlite") as buffer:
        (buffered,) = buffer.execute("SELECT COALESCE(SUM(bits), 0) / 8 FROM block_keys WHERE link=?", (link,)).fetchone()
    enc_cut_off = served - len(issued)
    assert pending == enc_cut_off and enc_cut_off in (0, stream.per_request)
    assert len(stream.lost_in_flight) in (0, stream.per_request) and not (enc_cut_off and stream.lost_in_flight)
    assert distilled == served * KEY_BYTES + available + buffered + discarded
    assert material >= available  # the unused bytes are really there
