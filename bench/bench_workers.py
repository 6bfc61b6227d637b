"""A sharded fleet at scale: `qkdops up --workers W` with L links on this machine (run on demand, not a test).

    .venv/bin/python bench/bench_workers.py [--links 100,1000] [--workers 4] [--scrapes 40] [--settle 40] [--idle 10]

For each fleet size a real stack is started (Prometheus, Alertmanager, the supervisor and W worker
processes; no scheduler) on a fleet of L links cloned from the shipped three (metro BB84, MDI relay,
long-haul TF, cyclically, each with its own seed) on the model engine — bits would not keep up at
this scale on two cores — between 20 sites (a KME each). Once every target is up and the recording
rules cover every link, it measures:

* per worker: CPU of one scrape of its device and of its post-processing exporter — ``--scrapes``
  back-to-back gzip scrapes, as Prometheus sends them, minus the worker's own CPU rate over an equal
  window without them (/proc/<pid>/stat) — payload size, and resident memory (VmRSS);
* per process (workers, supervisor, Prometheus): the share of a core it used over the ``--settle``
  window — where the machine's two cores go;
* the supervisor's and Prometheus's resident memory, Prometheus's scrape duration per target and its
  rule groups' evaluation time (all groups, and the slowest).

Prints Markdown tables for docs/benchmarks.md. Every wait is bounded; the stack is stopped whatever
happens.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from qkdops.config import DEFAULT_CONFIG
from qkdops.http_client import StackAuth, open_url

ROOT = Path(__file__).resolve().parent.parent
SITES = 20
TICKS = os.sysconf("SC_CLK_TCK")


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def free_run(n: int) -> int:
    """A base with ``n`` consecutive free ports (the workers' ports)."""
    for _ in range(200):
        base = random.randrange(20000, 40000)
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


def fleet_config(directory: Path, links: int, workers: int, scrape_interval_s: float) -> Path:
    shipped = yaml.safe_load(DEFAULT_CONFIG.read_text())
    templates = shipped["links"]
    sites = [f"s{i:02d}" for i in range(SITES)]
    out = []
    for i in range(links):
        link = {**templates[i % len(templates)], "id": f"l{i:04d}", "seed": 1000 + i, "postprocessing": {"engine": "model"}}
        a, b = sites[(2 * i) % SITES], sites[(2 * i + 1) % SITES]
        link["sites"] = {**link["sites"], "alice": a, "bob": b}
        out.append(link)
    control, device, pp, prom, am, sink, calibration, vm, *kmes = free_ports(8 + SITES)
    raw = {"runtime": {"state_dir": str(directory / "state"), "control_port": control, "device_exporter_port": device,
                       "postprocessing_exporter_port": pp, "prometheus_port": prom, "alertmanager_port": am,
                       "pager_sink_port": sink, "calibration_exporter_port": calibration, "victoria_metrics_port": vm,
                       "worker_port_base": free_run(3 * workers), "scrape_interval_s": scrape_interval_s},
           "links": out,
           "key_delivery": {"kmes": [{"site": s, "port": p, "saes": [f"sae-{s}"]} for s, p in zip(sites, kmes)]}}
    path = directory / "links.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS   # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(1.0)
    raise RuntimeError(f"timed out after {timeout_s:g} s waiting for {what} (last error: {last})")


def scrape(url: str) -> int:
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return len(response.read())


def run(links: int, workers: int, scrapes: int, settle_s: float, scrape_interval_s: float, idle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        directory = Path(tmp)
        config = fleet_config(directory, links, workers, scrape_interval_s)
        rt = yaml.safe_load(config.read_text())["runtime"]
        state = Path(rt["state_dir"])
        log = open(directory / "up.log", "wb")
        started = time.monotonic()
        up = subprocess.Popen([sys.executable, "-m", "qkdops_cli.cli", "up", "--config", str(config), "--workers", str(workers),
                               "--no-calibration"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def up_file() -> dict[str, Any] | None:
                path = state / "up.json"
                return json.loads(path.read_text()) if path.exists() else None

            if up.poll() is not None:
                raise RuntimeError("qkdops up exited")
            recorded = wait_for(up_file, 600, "qkdops up to start every worker")
            ready_s = time.monotonic() - started
            auth = StackAuth(state, environ={})
            prometheus = f"http://127.0.0.1:{rt['prometheus_port']}"

            def query(q: str) -> list[dict[str, Any]]:
                data = urllib.parse.urlencode({"query": q}).encode()
                with open_url(f"{prometheus}/api/v1/query", auth.prometheus, data=data) as response:
                    return json.loads(response.read())["data"]["result"]

            targets = 2 * workers + 1
            wait_for(lambda: len(query('up{job=~"qkd-device|qkd-postprocessing"} == 1')) == targets, 300, "every target up")
            wait_for(lambda: len(query("qkd_link:last_block_timestamp_seconds:max10m")) == links, 300,
                     "the recording rules over every link")
            pids = {name: pid for name, pid in recorded["pids"].items() if name != "alertmanager"}
            before, t0 = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
            time.sleep(settle_s)
            core_share = {name: (cpu_seconds(pid) - before[name]) / (time.monotonic() - t0) for name, pid in pids.items()}
            base = rt["worker_port_base"]
            rows = []
            for w in range(workers):
                pid = recorded["pids"][f"worker-{w}"]
                row: dict[str, Any] = {"worker": f"worker-{w}", "links": len(range(w, links, workers)), "rss_mib": rss_mib(pid),
                                       "core_share": core_share[f"worker-{w}"]}
                for kind, port in (("device", base + 3 * w + 1), ("postprocessing", base + 3 * w + 2)):
                    url = f"http://127.0.0.1:{port}/metrics"
                    t0, c0 = time.monotonic(), cpu_seconds(pid)
                    time.sleep(idle_s)   # its own rate meanwhile (stepping, Prometheus's scrapes): subtracted
                    idle_rate = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
                    t1, c1 = time.monotonic(), cpu_seconds(pid)
                    size = sum(scrape(url) for _ in range(scrapes)) // scrapes
                    spent, elapsed = cpu_seconds(pid) - c1, time.monotonic() - t1
                    row[f"{kind}_cpu_ms"] = max(0.0, spent - idle_rate * elapsed) / scrapes * 1e3
                    row[f"{kind}_gzip_kib"] = size / 1024
                rows.append(row)
            durations = {(r["metric"]["job"], r["metric"].get("worker", "supervisor")): float(r["value"][1])
                         for r in query('scrape_duration_seconds{job=~"qkd-device|qkd-postprocessing"}')}
            samples = {(r["metric"]["job"], r["metric"].get("worker", "supervisor")): float(r["value"][1])
                       for r in query('scrape_samples_scraped{job=~"qkd-device|qkd-postprocessing"}')}
            with open_url(f"{prometheus}/api/v1/rules", auth.prometheus) as response:
                groups = json.loads(response.read())["data"]["groups"]
            slowest = max(groups, key=lambda g: float(g["evaluationTime"]))
            return {"links": links, "workers": workers, "ready_s": ready_s, "rows": rows,
                    "supervisor_rss_mib": rss_mib(recorded["pids"]["qkdops"]),
                    "prometheus_rss_mib": rss_mib(recorded["pids"]["prometheus"]),
                    "scrape_s_max": max(durations.values()), "samples": sum(samples.values()),
                    "rule_group_s_max": float(slowest["evaluationTime"]), "rule_group_slowest": slowest["name"],
                    "rules_s_total": sum(float(g["evaluationTime"]) for g in groups),
                    "supervisor_core_share": core_share["qkdops"], "prometheus_core_share": core_share["prometheus"],
                    "targets_up": targets}
        finally:
            if up.poll() is None:
                up.send_signal(signal.SIGINT)
                try:
                    up.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(up.pid, signal.SIGKILL)
                    up.wait(timeout=30)
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", default="100,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--scrapes", type=int, default=40, help="back-to-back scrapes per exporter measured")
    parser.add_argument("--settle", type=float, default=40.0, help="seconds to run after every link is in the rules")
    parser.add_argument("--scrape-interval", type=float, default=5.0)
    parser.add_argument("--idle", type=float, default=10.0,
                        help="seconds a worker's own CPU rate is read before its measured scrapes (subtracted from theirs)")
    args = parser.parse_args()
    results = [run(int(n), args.workers, args.scrapes, args.settle, args.scrape_interval, args.idle) for n in args.links.split(",")]
    print("| links | workers | targets up | start → all workers ready (s) | samples per scrape round | max scrape duration (s) "
          "| rule evaluation, all groups (s) | slowest group (s) | supervisor: cores, RSS (MiB) | Prometheus: cores, RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['links']} | {r['workers']} | {r['targets_up']} | {r['ready_s']:.1f} | {r['samples']:.0f} | {r['scrape_s_max']:.3f} "
              f"| {r['rules_s_total']:.2f} | {r['rule_group_slowest']} {r['rule_group_s_max']:.2f} "
              f"| {r['supervisor_core_share']:.2f}, {r['supervisor_rss_mib']:.0f} "
              f"| {r['prometheus_core_share']:.2f}, {r['prometheus_rss_mib']:.0f} |")
    print()
    print("| links | worker | its links | cores (stepping, post-processing, scrapes) | device scrape CPU (ms) | device gzip (KiB) "
          "| post-processing scrape CPU (ms) | post-processing gzip (KiB) | worker RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for w in r["rows"]:
            print(f"| {r['links']} | {w['worker']} | {w['links']} | {w['core_share']:.2f} | {w['device_cpu_ms']:.1f} | {w['device_gzip_kib']:.0f} "
                  f"| {w['postprocessing_cpu_ms']:.1f} | {w['postprocessing_gzip_kib']:.0f} | {w['rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
