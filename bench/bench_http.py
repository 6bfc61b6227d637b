"""Every qkdops port under a crowd and under slow clients (issue 15; run on demand, not a test).

    .venv/bin/python bench/bench_http.py [--clients 500] [--requests 2] [--slow 200] [--hold 14]
        [--ports control,sink,device,postprocessing,kme] [--json PATH]

Starts ``qkdops up --no-prometheus`` as a real process (the tests' ``kme_profile``: one link, a KME
per site, every port free and on 127.0.0.1), waits for it, then drives it from this process with
asyncio clients (aiohttp's client for whole requests, raw sockets for the slow ones):

1. Crowd. Per port, ``--clients`` clients connect at once, each on its own connection, and send
   ``--requests`` requests on it (keep-alive): the control API ``GET /api/v1/links`` (token),
   the pager sink ``GET /api/v1/notifications?limit=1`` (token), both exporters ``GET /metrics``, site a's
   KME ``GET /api/v1/keys/sae-b/status`` over mutual TLS (SAE sae-a's certificate). Counted: refused
   or reset connections, time-outs (15 s a request), answers other than 200; latency of each request
   (the first includes connect and, for the KME, the TLS handshake): p50, p99, max.
2. Slow clients. Per port, ``--slow`` connections each send half a request line and then one byte
   every 2 s, held for ``--hold`` s (past the 10-s deadline), while one normal client sends a request
   every 0.2 s on fresh connections: its latency p50 / p99 / max and errors; how many slow connections
   the server had closed by the end; the threads and resident memory of the ``qkdops up`` process
   (``/proc/PID/status``) before, at the peak, and after.

The clients share the machine's cores with the server, so latencies include their CPU time too.
Prints Markdown tables for docs/security.md; ``--json PATH`` also writes every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from stack_helpers import RunningStack, kme_profile  # noqa: E402  (the tests' `qkdops up` runner)

from control_api.server import load_token  # noqa: E402
from qkdops.http_client import StackAuth  # noqa: E402
from qkdops.kme.client import client_context  # noqa: E402
from qkdops.kme.pki import Pki  # noqa: E402

REQUEST_TIMEOUT_S = 15.0
SLOW_BYTE_EVERY_S = 2.0
PORTS = ("control", "sink", "device", "postprocessing", "kme")


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    ssl: ssl.SSLContext | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        rest = self.url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = rest.rpartition(":")
        return host, int(port)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3) if lat else (lambda q: float("nan"))
        return {"answered_200": len(lat), "errors": dict(self.errors), "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                "max_ms": lat[-1] * 1e3 if lat else float("nan"),
                "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan")}


def targets(stack: RunningStack) -> dict[str, Target]:
    state = stack.state_dir
    token = load_token(state, create=False).value
    pki = Pki(state / "pki")
    cert, key = pki.sae("sae-a")
    kmes = yaml.safe_load(stack.config_path.read_text())["key_delivery"]["kmes"]
    kme_port = next(k["port"] for k in kmes if k["site"] == "a")
    base = "http://127.0.0.1"
    p = stack.ports
    return {
        "control": Target("control API", f"{base}:{p['control_port']}/api/v1/links", {"Authorization": f"Bearer {token}"}),
        "sink": Target("pager sink", f"{base}:{p['pager_sink_port']}/api/v1/notifications?limit=1",
                       {"Authorization": StackAuth(state).pager_sink.header}),
        "device": Target("device exporter", f"{base}:{p['device_exporter_port']}/metrics"),
        "postprocessing": Target("post-processing exporter", f"{base}:{p['postprocessing_exporter_port']}/metrics"),
        "kme": Target("KME a (mTLS)", f"https://127.0.0.1:{kme_port}/api/v1/keys/sae-b/status", {},
                      client_context(pki.ca_cert, cert, key)),
    }


async def _client(target: Target, requests: int, tally: Tally, start: asyncio.Event) -> None:
    connector = aiohttp.TCPConnector(limit=1, ssl=target.ssl if target.ssl is not None else False, force_close=False)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=target.headers) as session:
        await start.wait()
        for _ in range(requests):
            began = time.perf_counter()
            try:
                async with session.get(target.url) as response:
                    await response.read()
                    if response.status != 200:
                        tally.error(f"status {response.status}")
                        continue
            except TimeoutError:
                tally.error("timeout")
                continue
            except aiohttp.ClientConnectorError:
                tally.error("refused")
                continue
            except (aiohttp.ClientError, OSError) as exc:
                tally.error(type(exc).__name__)
                continue
            tally.latencies.append(time.perf_counter() - began)


async def crowd(target: Target, clients: int, requests: int) -> dict[str, Any]:
    tally, start = Tally(), asyncio.Event()
    tasks = [asyncio.create_task(_client(target, requests, tally, start)) for _ in range(clients)]
    await asyncio.sleep(0.5)   # every session built; connections open on the first request
    began = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return {**tally.summary(), "wall_s": time.perf_counter() - began}


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Threads", "VmRSS"):
            fields[name] = int(value.split()[0])
    return {"threads": fields["Threads"], "rss_mib": fields["VmRSS"] // 1024}


async def _slow(target: Target, hold_s: float, closed: list[float], began: float) -> None:
    host, port = target.host_port
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=target.ssl)
    except OSError:
        closed.append(-1.0)
        return
    line = f"GET {target.url.split(str(port), 1)[1]} HTTP/1.1\r\nHost: {host}\r\n".encode()
    try:
        writer.write(line[:8])
        await writer.drain()
        deadline = time.perf_counter() + hold_s
        for byte in line[8:]:
            if time.perf_counter() >= deadline:
                break
            try:
                data = await asyncio.wait_for(reader.read(1), SLOW_BYTE_EVERY_S)
            except TimeoutError:
                data = None
            if data == b"" or (data and reader.at_eof()):
                closed.append(time.perf_counter() - began)   # the server ended the connection
                return
            writer.write(bytes([byte]))
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        closed.append(time.perf_counter() - began)
        return
    finally:
        writer.close()


async def slow_clients(target: Target, slow: int, hold_s: float, pid: int) -> dict[str, Any]:
    before = proc_status(pid)
    closed: list[float] = []
    began = time.perf_counter()
    held = [asyncio.create_task(_slow(target, hold_s, closed, began)) for _ in range(slow)]
    await asyncio.sleep(1.0)
    normal, peak = Tally(), dict(before)
    while time.perf_counter() - began < hold_s:
        await _client(target, 1, normal, _set_event())
        status = proc_status(pid)
        peak = {k: max(peak[k], status[k]) for k in peak}
        await asyncio.sleep(0.2)
    await asyncio.gather(*held)
    await asyncio.sleep(0.5)
    return {"normal_client": normal.summary(), "slow_closed_by_server": sum(1 for c in closed if c >= 0),
            "slow_refused": sum(1 for c in closed if c < 0),
            "slow_closed_after_s": (min(c for c in closed if c >= 0), max(closed)) if any(c >= 0 for c in closed) else None,
            "process_before": before, "process_peak": peak, "process_after": proc_status(pid)}


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--hold", type=float, default=14.0)
    parser.add_argument("--ports", default=",".join(PORTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    chosen = [p.strip() for p in args.ports.split(",") if p.strip()]
    if unknown := set(chosen) - set(PORTS):
        parser.error(f"--ports: unknown {sorted(unknown)} (choose from {', '.join(PORTS)})")
    results: dict[str, Any] = {"clients": args.clients, "requests": args.requests, "slow_clients": args.slow, "hold_s": args.hold}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        stack = RunningStack(kme_profile(Path(tmp), {"a": ["sae-a"], "b": ["sae-b"]}), "--no-prometheus")
        try:
            stack.wait_up()
            chosen_targets = {k: v for k, v in targets(stack).items() if k in chosen}
            results["process_idle"] = proc_status(stack.process.pid)
            results["crowd"] = {}
            for key, target in chosen_targets.items():
                results["crowd"][key] = asyncio.run(crowd(target, args.clients, args.requests))
                results["crowd"][key]["process_after"] = proc_status(stack.process.pid)
            results["slow"] = {k: asyncio.run(slow_clients(t, args.slow, args.hold, stack.process.pid))
                               for k, t in chosen_targets.items()}
        finally:
            stack.stop()
    _print(results, {k: v.name for k, v in chosen_targets.items()})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _print(results: dict[str, Any], names: dict[str, str]) -> None:
    print(f"\n{results['clients']} clients at once, {results['requests']} requests each (keep-alive); "
          f"`qkdops up` idle: {results['process_idle']['threads']} threads, {results['process_idle']['rss_mib']} MiB\n")
    print("| port | answered 200 | errors | p50 ms | p99 ms | max ms | wall s | threads, RSS MiB after |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for key, r in results["crowd"].items():
        print(f"| {names[key]} | {r['answered_200']} | {r['errors'] or 0} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['max_ms']:.1f} | {r['wall_s']:.2f} | {r['process_after']['threads']}, {r['process_after']['rss_mib']} |")
    print(f"\n{results['slow_clients']} slow clients held {results['hold_s']:g} s per port, one normal client every 0.2 s\n")
    print("| port | normal: answered | errors | p50 ms | p99 ms | max ms | slow closed by server (after s) | "
          "threads before / peak / after | RSS MiB before / peak / after |")
    print("|---|---:|---|---:|---:|---:|---|---|---|")
    for key, r in results["slow"].items():
        n, b, p, a = r["normal_client"], r["process_before"], r["process_peak"], r["process_after"]
        after = r["slow_closed_after_s"]
        print(f"| {names[key]} | {n['answered_200']} | {n['errors'] or 0} | {n['p50_ms']:.1f} | {n['p99_ms']:.1f} | "
              f"{n['max_ms']:.1f} | {r['slow_closed_by_server']} ({after[0]:.1f}–{after[1]:.1f}) | "
              f"{b['threads']} / {p['threads']} / {a['threads']} | {b['rss_mib']} / {p['rss_mib']} / {a['rss_mib']} |"
              if after else f"| {names[key]} | {n['answered_200']} | {n['errors'] or 0} | {n['p50_ms']:.1f} | "
              f"{n['p99_ms']:.1f} | {n['max_ms']:.1f} | 0 | {b['threads']} / {p['threads']} / {a['threads']} | "
              f"{b['rss_mib']} / {p['rss_mib']} / {a['rss_mib']} |")

if __name__ == "__main__":
    raise SystemExit(main())
