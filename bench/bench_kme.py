"""Key delivery cost: ETSI GS QKD 014 over HTTPS with mutual TLS, key hand-off, key-store scaling
(run on demand, not a test).

    .venv/bin/python bench/bench_kme.py [--seconds 3] [--numbers 1,16,128] [--size 256] [--threads 1,4]
        [--frames 600] [--pools 10x2048,1000x2048,10000x2048,10x1048576] [--only etsi,skip,handoff,scaling] [--json PATH]

Everything binds 127.0.0.1 (ports chosen by the OS) and lives in a temporary directory; every
measurement is bounded in time and in count. Wall-clock times (time.perf_counter): the costs here
are TLS, sockets and SQLite commits with ``synchronous=FULL`` (an fsync each), which CPU time
would hide; the server's CPU time is reported beside them.

1. ETSI throughput. The small three-link fleet of the tests (sites a, b) with both KMEs listing
   several SAEs (sae-a1… at a, sae-b1… at b) and a development PKI; per cell a fresh store,
   pre-filled by calling ``fleet.key_pool.accept`` directly with ``os.urandom`` blocks of the
   metro BB84 link's block-key size (``--prefill-block-bytes``, 1 MiB; no frames are run), just
   enough for the cell's count bound. Each of ``threads`` SAE pairs (one thread, two
   ``EtsiClient``s, keep-alive connections opened before the clock starts) loops: the master
   ``enc_keys`` at a's KME, the slave ``dec_keys`` the returned key_IDs at b's KME, and the two
   answers must hold identical bytes per key_ID (and no key_ID or key may repeat within a cell).
   The clients run in a separate process (as SAEs would), so they do not share the servers' GIL.
1b. SKIP throughput (draft-cisco-skip-02, TLS 1.3 with an external PSK, TLS_AES_256_GCM_SHA384, our
   ``SkipClient`` on tlslite-ng): the same rig with both sites' SKIP key providers on the same
   stores; each pair's thread loops: SKIP new key (``GET /key?remoteSystemID=``) at a's provider,
   key by ID at b's — one key per call, as the API has it — with the same identity checks.
2. Hand-off. (a) ``KeyPoolStore.accept`` + ``KeyBuffer.remove`` per block, for MDI/TF-sized and
   metro-BB84-sized block keys, into a fresh store (the pool grows by one block per hand-off).
   (b) The shipped fleet (links.yaml, state in the temporary directory) stepped ``--frames``
   frames with ``Fleet.run_frames``: the links' ``handoff_seconds`` histograms, and beside them
   buffered → both ends' stores committed as timed here, by wrapping ``HandoffQueue.buffered`` and
   ``KeyPoolStore.accept`` on this benchmark's own instances (``handoff_seconds`` ends at the
   commit; in ``run_frames`` a key also waits for the rest of its frame's links to step).
3. Store scaling. A fresh fleet whose pool holds N blocks per end, then ``issue`` (1 key, 256
   bits; its slave copy redeemed untimed after each call), ``level`` (what every ETSI call's
   store refresh and ``status`` run per site and link), ``accept`` of one more block, and a short
   ETSI run over HTTPS (1 SAE pair, 1 key per request). The pool is filled through ``accept``.

Prints Markdown tables for docs/benchmarks.md; ``--json PATH`` also writes every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import write_fleet_config  # noqa: E402  (the tests' small fleet: bb84-a, mdi-a, tf-a between sites a and b)

from qkdops.config import FleetConfig, load_config  # noqa: E402
from qkdops.kme.client import EtsiClient, SkipClient, client_context  # noqa: E402
from qkdops.kme.pki import Pki, init_pki, read_psk  # noqa: E402
from qkdops.kme.server import serve_kmes, shutdown_kmes  # noqa: E402
from qkdops.kme.store import KeyPoolStore  # noqa: E402
from qkdops.runtime.fleet import Fleet  # noqa: E402
from qkdops.runtime.keybuffer import KeyBuffer  # noqa: E402

HOST = "127.0.0.1"
SITES = ("a", "b")


def both_ends(material: bytes) -> dict[str, bytes]:
    """The same key at both ends: what post-processing hands off once the key confirmation passed."""
    return dict.fromkeys(SITES, material)
LINKS = ("bb84-a", "mdi-a", "tf-a")
MIB = 1 << 20


# ---- helpers ------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}" if seconds == seconds else "–"


def kme_config(directory: Path, saes_per_site: int) -> FleetConfig:
    """The tests' small fleet, both KMEs on port 0 (the OS picks) with ``saes_per_site`` SAEs each."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_fleet_config(directory)
    saes = {site: ", ".join(f"sae-{site}{i + 1}" for i in range(saes_per_site)) for site in SITES}
    with path.open("a") as out:
        out.write("key_delivery:\n  kmes:\n" + "".join(f"    - {{site: {s}, port: 0, saes: [{saes[s]}]}}\n" for s in SITES))
    config = load_config(path)
    return dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, bind=HOST))


class KmeRig:
    """A fresh fleet (own state directory, nothing stepped) with both sites' KMEs listening."""

    def __init__(self, config: FleetConfig, state_dir: Path, pki: Pki, skip: bool = False) -> None:
        self.fleet = Fleet(dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, state_dir=state_dir)))
        self.servers = serve_kmes(self.fleet, pki, skip=skip)   # ETSI 014 KMEs, or SKIP key providers
        self.ports = {site: server.port for site, server in self.servers.items()}
        self.next_block = 0

    def accept(self, link: str, block_bytes: int, blocks: int) -> None:
        for _ in range(blocks):
            outcome = self.fleet.key_pool.accept(link, self.next_block, both_ends(os.urandom(block_bytes)))
            if outcome != "success":
                raise RuntimeError(f"pre-fill: accept → {outcome}")
            self.next_block += 1

    def close(self) -> None:
        shutdown_kmes(self.servers.values())
        self.fleet.stop()


# ---- 1. ETSI over HTTPS (client side: runs in the client process) -----------------------------------------
def client_cell(job: dict[str, Any]) -> dict[str, Any]:
    """``job['pairs']`` SAE-pair threads, each enc_keys at a then dec_keys at b (``job['api']``
    skip: SKIP's new key at a, then key by ID at b), until ``job['seconds']`` or ``job['max_pairs']``
    per thread. Latencies in seconds."""
    pki = Pki(Path(job["pki"]))
    number, size, pairs, skip = job["number"], job["size"], job["pairs"], job.get("api") == "skip"
    barrier = threading.Barrier(pairs + 1)
    out: list[dict[str, Any]] = [{} for _ in range(pairs)]

    def run(i: int) -> None:
        master, slave = f"sae-a{i + 1}", f"sae-b{i + 1}"
        a: EtsiClient | SkipClient
        b: EtsiClient | SkipClient
        if skip:
            a = SkipClient(f"https://{HOST}:{job['ports']['a']}", master, read_psk(pki.skip_psk(master)))
            b = SkipClient(f"https://{HOST}:{job['ports']['b']}", slave, read_psk(pki.skip_psk(slave)))
            a.capabilities()
            b.capabilities()  # both handshakes done before the clock starts
        else:
            a = EtsiClient(f"https://{HOST}:{job['ports']['a']}", client_context(pki.ca_cert, *pki.sae(master)))
            b = EtsiClient(f"https://{HOST}:{job['ports']['b']}", client_context(pki.ca_cert, *pki.sae(slave)))
            a.status(slave)
            b.status(master)
        enc: list[float] = []
        dec: list[float] = []
        ids: list[str] = []
        material: list[bytes] = []
        mismatched = 0
        barrier.wait()
        deadline = time.perf_counter() + job["seconds"]
        try:
            while len(enc) < job["max_pairs"] and time.perf_counter() < deadline:
                t0 = time.perf_counter()
                if isinstance(a, SkipClient) and isinstance(b, SkipClient):
                    issued = [a.new_key(slave, size)]
                    t1 = time.perf_counter()
                    got = [b.key_by_id(issued[0][0], master)]
                else:
                    assert isinstance(a, EtsiClient) and isinstance(b, EtsiClient)
                    issued = a.enc_keys(slave, number, size)
                    t1 = time.perf_counter()
                    got = b.dec_keys(master, [k for k, _ in issued])
                t2 = time.perf_counter()
                enc.append(t1 - t0)
                dec.append(t2 - t1)
                if len(issued) != number or dict(issued) != dict(got) or any(len(k) != size // 8 for _, k in issued):
                    mismatched += 1
                ids += [k for k, _ in issued]
                material += [k for _, k in issued]
        finally:
            a.close()
            b.close()
            out[i] = {"enc": enc, "dec": dec, "ids": ids, "material": material, "mismatched": mismatched,
                      "ended": time.perf_counter()}

    threads = [threading.Thread(target=run, args=(i,)) for i in range(pairs)]
    for t in threads:
        t.start()
    barrier.wait()
    started, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu
    ended = max(o["ended"] for o in out)
    ids = [k for o in out for k in o["ids"]]
    material = [k for o in out for k in o["material"]]
    return {"wall_s": ended - started, "client_cpu_s": cpu, "enc": [x for o in out for x in o["enc"]], "dec": [x for o in out for x in o["dec"]],
            "keys": len(ids), "mismatched": sum(o["mismatched"] for o in out),
            "repeated": (len(ids) - len(set(ids))) + (len(material) - len(set(material)))}


def etsi_cell(pool: ProcessPoolExecutor, rig: KmeRig, pki: Pki, number: int, size: int, pairs: int, seconds: float,
              max_pairs: int, api: str = "etsi014") -> dict[str, Any]:
    """One cell of part 1 (``api`` skip: part 1b; its calls are key and key_by_id, one key each)."""
    job = {"pki": str(pki.root), "ports": rig.ports, "number": number, "size": size, "pairs": pairs,
           "seconds": seconds, "max_pairs": max_pairs, "api": api}
    calls = ("key", "key_by_id") if api == "skip" else ("enc_keys", "dec_keys")
    cpu = time.process_time()
    r = pool.submit(client_cell, job).result()
    server_cpu = time.process_time() - cpu
    if r["mismatched"] or r["repeated"]:
        raise SystemExit(f"{api} check failed (number {number}, {pairs} pair(s)): {r['mismatched']} take/redeem answer(s) "
                         f"differed, {r['repeated']} key ID(s) or key(s) repeated")
    stats = rig.fleet.kme_stats.snapshot().request_seconds
    server_mean = {role: (h.sum / h.count if h.count else float("nan"))
                   for role, site, call in (("enc_keys", "a", calls[0]), ("dec_keys", "b", calls[1]))
                   for h in [stats.get((site, api, call))] if h}
    requests = len(r["enc"]) + len(r["dec"])
    return {"number": number, "size_bits": size, "pairs": pairs, "enc_dec_pairs": len(r["enc"]), "keys": r["keys"],
            "wall_s": r["wall_s"], "keys_per_s": r["keys"] / r["wall_s"], "requests_per_s": requests / r["wall_s"],
            "enc_p50_s": pct(r["enc"], 50), "enc_p99_s": pct(r["enc"], 99),
            "dec_p50_s": pct(r["dec"], 50), "dec_p99_s": pct(r["dec"], 99),
            "server_enc_mean_s": server_mean.get("enc_keys", float("nan")),
            "server_dec_mean_s": server_mean.get("dec_keys", float("nan")),
            "server_cpu_s": server_cpu, "server_cpu_per_request_s": server_cpu / max(requests, 1),
            "client_cpu_per_request_s": r["client_cpu_s"] / max(requests, 1)}


def bench_etsi(args: argparse.Namespace, tmp: Path, pki: Pki, config: FleetConfig, pool: ProcessPoolExecutor) -> list[dict[str, Any]]:
    rows = []
    print(f"\n## ETSI GS QKD 014 over HTTPS mTLS (enc_keys at a + dec_keys at b per pair; ≤ {args.seconds:g} s "
          f"or ≤ {args.max_pairs} pairs per thread; store pre-filled by KeyPoolStore.accept with os.urandom "
          f"blocks of {args.prefill_block_bytes} B)\n")
    print("| keys / request | key bits | SAE pairs | enc+dec pairs | keys / s | requests / s | enc p50 ms | enc p99 ms "
          "| dec p50 ms | dec p99 ms | server enc / dec mean ms | CPU ms / request server / clients |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (number, pairs) in enumerate((n, p) for n in args.numbers for p in args.threads):
        rig = KmeRig(config, tmp / f"etsi-{i}" / "state", pki)
        try:
            need = pairs * args.max_pairs * number * args.size // 8
            rig.accept("bb84-a", args.prefill_block_bytes, -(-need // args.prefill_block_bytes))
            row = etsi_cell(pool, rig, pki, number, args.size, pairs, args.seconds, args.max_pairs)
        finally:
            rig.close()
        row["prefill_blocks"] = rig.next_block
        rows.append(row)
        print(f"| {number} | {args.size} | {pairs} | {row['enc_dec_pairs']} | {row['keys_per_s']:,.0f} "
              f"| {row['requests_per_s']:,.0f} | {ms(row['enc_p50_s'])} | {ms(row['enc_p99_s'])} | {ms(row['dec_p50_s'])} "
              f"| {ms(row['dec_p99_s'])} | {ms(row['server_enc_mean_s'])} / {ms(row['server_dec_mean_s'])} "
              f"| {row['server_cpu_per_request_s'] * 1e3:.2f} / {row['client_cpu_per_request_s'] * 1e3:.2f} |", flush=True)
    return rows


def bench_skip(args: argparse.Namespace, tmp: Path, pki: Pki, config: FleetConfig, pool: ProcessPoolExecutor) -> list[dict[str, Any]]:
    rows = []
    print(f"\n## SKIP over TLS 1.3 with an external PSK (new key at a + key by ID at b per pair, one key each; "
          f"≤ {args.seconds:g} s or ≤ {args.max_pairs} pairs per thread; same pre-fill)\n")
    print("| key bits | SAE pairs | key pairs | keys / s | requests / s | key p50 ms | key p99 ms | key_by_id p50 ms "
          "| key_by_id p99 ms | server key / key_by_id mean ms | CPU ms / request server / clients |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, pairs in enumerate(args.threads):
        rig = KmeRig(config, tmp / f"skip-{i}" / "state", pki, skip=True)
        try:
            need = pairs * args.max_pairs * args.size // 8
            rig.accept("bb84-a", args.prefill_block_bytes, -(-need // args.prefill_block_bytes))
            row = etsi_cell(pool, rig, pki, 1, args.size, pairs, args.seconds, args.max_pairs, api="skip")
        finally:
            rig.close()
        rows.append(row)
        print(f"| {args.size} | {pairs} | {row['enc_dec_pairs']} | {row['keys_per_s']:,.0f} | {row['requests_per_s']:,.0f} "
              f"| {ms(row['enc_p50_s'])} | {ms(row['enc_p99_s'])} | {ms(row['dec_p50_s'])} | {ms(row['dec_p99_s'])} "
              f"| {ms(row['server_enc_mean_s'])} / {ms(row['server_dec_mean_s'])} "
              f"| {row['server_cpu_per_request_s'] * 1e3:.2f} / {row['client_cpu_per_request_s'] * 1e3:.2f} |", flush=True)
    return rows


# ---- 2. hand-off ------------------------------------------------------------------------------------------
def bench_handoff(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"per_block": [], "fleet": []}
    print(f"\n## Hand-off: KeyPoolStore.accept (both ends) + KeyBuffer.remove per block (fresh store; ≤ "
          f"{args.handoff_blocks} blocks, ≤ {args.handoff_mib} MiB, ≤ {args.handoff_seconds:g} s per size)\n")
    print("| block key bytes | blocks | accept+remove p50 ms | p99 ms | accept p50 ms | remove p50 ms | CPU ms / block |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.handoff_sizes:
        directory = tmp / f"handoff-{size}"
        buffer = KeyBuffer(directory / "keys.sqlite", 1 << 50)
        store = KeyPoolStore(directory / "kme.sqlite", 1 << 50)
        total, accept_s, remove_s, cpu = [], [], [], 0.0
        deadline = time.perf_counter() + args.handoff_seconds
        blocks = max(2, min(args.handoff_blocks, args.handoff_mib * MIB // size))
        try:
            for index in range(blocks):
                if time.perf_counter() > deadline:
                    break
                material = os.urandom(size)
                buffer.deposit("link", index, material, material)
                c0, t0 = time.process_time(), time.perf_counter()
                outcome = store.accept("link", index, both_ends(material))
                t1 = time.perf_counter()
                buffer.remove("link", index)
                t2 = time.perf_counter()
                cpu += time.process_time() - c0
                if outcome != "success":
                    raise RuntimeError(f"hand-off bench: accept → {outcome}")
                total.append(t2 - t0)
                accept_s.append(t1 - t0)
                remove_s.append(t2 - t1)
        finally:
            buffer.close()
            store.close()
        row = {"block_bytes": size, "blocks": len(total), "p50_s": pct(total, 50), "p99_s": pct(total, 99),
               "accept_p50_s": pct(accept_s, 50), "remove_p50_s": pct(remove_s, 50), "cpu_per_block_s": cpu / len(total)}
        out["per_block"].append(row)
        print(f"| {size:,} | {len(total)} | {ms(row['p50_s'])} | {ms(row['p99_s'])} | {ms(row['accept_p50_s'])} "
              f"| {ms(row['remove_p50_s'])} | {row['cpu_per_block_s'] * 1e3:.2f} |", flush=True)

    config = load_config(ROOT / "links.yaml")
    config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, state_dir=tmp / "fleet" / "state"))
    fleet = Fleet(config)
    buffered_at: dict[tuple[str, int], float] = {}
    committed: dict[str, list[float]] = {}
    buffered, accept = fleet.handoff.buffered, fleet.key_pool.accept

    def timed_buffered(link: str, index: int, now: float) -> None:
        buffered_at[(link, index)] = time.time()
        buffered(link, index, now)

    def timed_accept(link: str, block: int, *rest: Any) -> str:
        outcome = accept(link, block, *rest)
        if outcome == "success" and (link, block) in buffered_at:
            committed.setdefault(link, []).append(time.time() - buffered_at.pop((link, block)))
        return outcome

    fleet.handoff.buffered = timed_buffered  # type: ignore[method-assign]
    fleet.key_pool.accept = timed_accept  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        results = fleet.run_frames(args.frames)
        wall = time.perf_counter() - started
        snapshots = {s.link: s for s in fleet.snapshots()}
    finally:
        fleet.stop()
    bounds = [b for b, _ in next(iter(snapshots.values())).handoff_seconds.buckets]
    shown = [b for b in bounds if b <= 0.1] + [float("inf")]
    print(f"\n## In-fleet hand-off latency: links.yaml, {args.frames} frames of Fleet.run_frames ({wall:.1f} s wall), "
          "handoff_seconds of each link's snapshot (cumulative counts per bucket)\n")
    print("| link | blocks handed off | mean key bytes / block | mean ms | "
          + " | ".join(f"≤ {b * 1e3:g} ms" if b != float("inf") else "+Inf" for b in shown)
          + " | buffered → committed p50 / p99 ms (timed around accept) |")
    print("|---|---:|---:|---:|" + "---:|" * len(shown) + "---:|")
    for link, snap in snapshots.items():
        h = snap.handoff_seconds
        keyed = [r.secret_key_bits / 8 for r in results if r.link == link and r.secret_key_bits]
        cumulative = dict(h.buckets)
        row = {"link": link, "handoffs": h.count, "outcomes": dict(snap.handoffs_total),
               "mean_key_bytes": float(np.mean(keyed)) if keyed else 0.0, "mean_s": h.sum / h.count if h.count else float("nan"),
               "buckets": [[b, n] for b, n in h.buckets], "committed_p50_s": pct(committed.get(link, []), 50),
               "committed_p99_s": pct(committed.get(link, []), 99)}
        out["fleet"].append(row)
        print(f"| {link} | {h.count} | {row['mean_key_bytes']:,.0f} | {ms(row['mean_s'])} | "
              + " | ".join(str(cumulative[b]) for b in shown)
              + f" | {ms(row['committed_p50_s'])} / {ms(row['committed_p99_s'])} |")
    out["fleet_wall_s"] = wall
    return out


# ---- 3. store scaling -----------------------------------------------------------------------------------
def fill(store: KeyPoolStore, link: str, blocks: int, block_bytes: int) -> None:
    """``blocks`` hand-offs of ``block_bytes`` each, through ``accept`` (one commit per block)."""
    for i in range(blocks):
        store.accept(link, i, both_ends(os.urandom(block_bytes)))


def timed(fn: Callable[[], Any], calls: int, seconds: float, after: Callable[[Any], None] = lambda _: None) -> dict[str, float]:
    wall, cpu = [], 0.0
    deadline = time.perf_counter() + seconds
    for _ in range(calls):
        if wall and time.perf_counter() > deadline:
            break
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        wall.append(time.perf_counter() - t0)
        cpu += time.process_time() - c0
        after(result)
    return {"calls": len(wall), "p50_s": pct(wall, 50), "p99_s": pct(wall, 99), "mean_s": float(np.mean(wall)),
            "cpu_mean_s": cpu / len(wall)}


def bench_scaling(args: argparse.Namespace, tmp: Path, pki: Pki, config: FleetConfig, pool: ProcessPoolExecutor) -> list[dict[str, Any]]:
    rows = []
    print(f"\n## Store scaling: pool of N blocks per end on link mdi-a (filled through accept); ≤ {args.scaling_calls} calls "
          f"or ≤ {args.scaling_seconds:g} s per measure; ETSI: 1 SAE pair, 1 key of {args.size} bits per request, "
          f"≤ {args.scaling_seconds:g} s\n")
    print("| blocks / end | block bytes | issue p50 / mean ms | issue CPU ms | level p50 ms | level CPU ms "
          "| accept p50 / mean ms | accept CPU ms | ETSI pairs / s | ETSI enc p50 ms | ETSI dec p50 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, block_bytes in args.pools:
        rig = KmeRig(config, tmp / f"scaling-{n}x{block_bytes}" / "state", pki)
        try:
            store = rig.fleet.key_pool
            fill(store, "mdi-a", n, block_bytes)
            rig.next_block = n
            issue = timed(lambda: store.issue(LINKS, "a", "b", "sae-a1", "sae-b1", 1, args.size // 8),
                          args.scaling_calls, args.scaling_seconds,
                          lambda keys: store.redeem("b", "sae-a1", "sae-b1", [k for k, _ in keys]))
            level = timed(lambda: store.level("a", "mdi-a"), args.scaling_calls, args.scaling_seconds)

            def accept_one() -> str:
                rig.next_block += 1
                return store.accept("mdi-a", rig.next_block, both_ends(os.urandom(block_bytes)))

            accept = timed(accept_one, max(1, args.scaling_calls // 5), args.scaling_seconds)
            etsi = etsi_cell(pool, rig, pki, 1, args.size, 1, args.scaling_seconds, args.scaling_calls * 5)
        finally:
            rig.close()
        row = {"blocks": n, "block_bytes": block_bytes, "issue": issue, "level": level, "accept": accept, "etsi": etsi}
        rows.append(row)
        print(f"| {n:,} | {block_bytes:,} | {ms(issue['p50_s'])} / {ms(issue['mean_s'])} | {ms(issue['cpu_mean_s'])} "
              f"| {ms(level['p50_s'])} | {ms(level['cpu_mean_s'])} | {ms(accept['p50_s'])} / {ms(accept['mean_s'])} "
              f"| {ms(accept['cpu_mean_s'])} "
              f"| {etsi['enc_dec_pairs'] / etsi['wall_s']:,.1f} | {ms(etsi['enc_p50_s'])} | {ms(etsi['dec_p50_s'])} |", flush=True)
    return rows


# ---- main -------------------------------------------------------------------------------------------------
def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def pools(text: str) -> list[tuple[int, int]]:
    return [(int(n), int(b)) for n, b in (item.split("x") for item in text.split(",") if item)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="etsi,skip,handoff,scaling", help="comma-separated parts to run")
    parser.add_argument("--seconds", type=float, default=3.0, help="ETSI: time bound per cell")
    parser.add_argument("--max-pairs", type=int, default=2000, help="ETSI: enc+dec pairs bound per thread and cell")
    parser.add_argument("--numbers", type=ints, default=[1, 16, 128], help="ETSI: keys per request")
    parser.add_argument("--size", type=int, default=256, help="key size in bits")
    parser.add_argument("--threads", type=ints, default=[1, 4], help="ETSI: concurrent SAE pairs")
    parser.add_argument("--prefill-block-bytes", type=int, default=MIB, help="ETSI: bytes per pre-filled block")
    parser.add_argument("--handoff-sizes", type=ints, default=[2048, 512 * 1024, MIB], help="hand-off: block key bytes")
    parser.add_argument("--handoff-blocks", type=int, default=200, help="hand-off: blocks per size")
    parser.add_argument("--handoff-mib", type=int, default=48, help="hand-off: MiB bound per size")
    parser.add_argument("--handoff-seconds", type=float, default=10.0, help="hand-off: time bound per size")
    parser.add_argument("--frames", type=int, default=600, help="in-fleet hand-off: frames of links.yaml to step")
    parser.add_argument("--pools", type=pools, default=pools("10x2048,1000x2048,10000x2048,10x1048576"),
                        help="scaling: NxBYTES pools (N blocks of BYTES per end)")
    parser.add_argument("--scaling-calls", type=int, default=50, help="scaling: calls bound per measure")
    parser.add_argument("--scaling-seconds", type=float, default=3.0, help="scaling: time bound per measure")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every number as JSON")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    report: dict[str, Any] = {"python": sys.version.split()[0], "args": {k: str(v) for k, v in vars(args).items()}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-kme-") as name, \
            ProcessPoolExecutor(1, mp_context=get_context("spawn")) as clients:
        tmp = Path(name)
        config = kme_config(tmp / "config", max(args.threads))
        pki = Pki(tmp / "pki")
        init_pki(pki, config.key_delivery)
        clients.submit(int).result()  # start the client process before any clock runs
        if "etsi" in parts:
            report["etsi"] = bench_etsi(args, tmp, pki, config, clients)
        if "skip" in parts:
            report["skip"] = bench_skip(args, tmp, pki, config, clients)
        if "handoff" in parts:
            report["handoff"] = bench_handoff(args, tmp)
        if "scaling" in parts:
            report["scaling"] = bench_scaling(args, tmp, pki, config, clients)
    report["total_wall_s"] = time.perf_counter() - started
    print(f"\nTotal {report['total_wall_s']:.0f} s wall")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
