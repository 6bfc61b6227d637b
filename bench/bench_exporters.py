"""Exporter cost at fleet scale (run on demand, not a test).

    .venv/bin/python bench/bench_exporters.py [--links 100,1000] [--repeats 7] [--profile N]

A fleet of N links, a third of each protocol, each with its own ``LinkState`` fed the way the
runtime feeds it (a few frames of real telemetry and counts of an emulated link of its protocol, a
post-processed block, a hand-off), is rendered by both exporters as a scrape would: every link
snapshotted under its lock, the families built from the catalogue, the exposition generated.
Reported per exporter, the median over ``--repeats`` renders of CPU time (time.process_time): the
text format 0.0.4 the exporters serve (``Families`` writes it directly) and its gzip compression at
the server's level (Prometheus scrapes with gzip); then samples and the payload in bytes, raw and
gzip-compressed, and the CPU per link per scrape.

Prints a Markdown table for docs/benchmarks.md. ``--profile N`` prints the top of a cProfile of
N-link renders instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import pstats
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from exporters import DeviceCollector, PostProcessingCollector
from exporters.server import GZIP_LEVEL
from qkdlink.emulator import FrameRecord, Link, LinkConfig
from qkdlink.protocols import PROTOCOL_NAMES
from qkdops.runtime.pipeline import BlockResult
from qkdops.runtime.state import STAGES, LinkSnapshot, LinkState

SITES = {"alice": "site-a", "bob": "site-b"}
FRAMES = 3
T = TypeVar("T")


def templates() -> dict[str, list[FrameRecord]]:
    """A few frames of each protocol's emulated link, shared by every link of that protocol."""
    out = {}
    for protocol in PROTOCOL_NAMES:
        link = Link(LinkConfig(f"template-{protocol}", protocol=protocol, frame_pulses=10 ** 9))
        out[protocol] = [link.step_frame() for _ in range(FRAMES)]
    return out


def fleet(links: int, frames: dict[str, list[FrameRecord]]) -> list[LinkState]:
    rng = np.random.default_rng(0)
    states = []
    for i in range(links):
        protocol = PROTOCOL_NAMES[i % len(PROTOCOL_NAMES)]
        records = frames[protocol]
        intensities = sorted({k for k, _ in records[0].counts.classes})
        sites = SITES if protocol == "bb84-decoy" else {**SITES, "charlie": "relay"}
        state = LinkState(f"{protocol}-{i:04d}", protocol, sites, intensities, ("Z", "X"), handoff_buffer_capacity_bits=1e9,
                          key_store_capacity_keys=1e8)
        for r in records:
            per_intensity = {k: sum(c.sent for (ki, _), c in r.counts.classes.items() if ki == k) for k in intensities}
            state.record_frame(r.telemetry, r.active_faults, r.counts.pulses, r.detected_total, per_intensity,
                               per_intensity, rng.normal(0.0, r.telemetry.timing_jitter_s, 32), 0)
        result = BlockResult(state.link, 0, "none", {"Z": 1e6, "X": 1e5}, {"Z": 3e4, "X": 3e3}, 0.03, 0.01, 0.05, 100_000, 2.2e5,
                             0.03, "bits", 1_000_000, 30_000, 900, 300, 16, 0, 1.1)
        state.record_block(result, 1.7e9, {s: 1e-3 for s in STAGES}, {s: 1e-3 for s in STAGES[:-1]}, 0.05)
        state.record_handoff("success", 1e-3, 1e5)
        state.record_calibration("relock_phase", True)
        states.append(state)
    return states


def measure(source: T, render: Callable[[T], bytes], repeats: int) -> tuple[float, bytes]:
    """(median CPU seconds of ``render(source)``, its last output)."""
    output = render(source)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.process_time()
        output = render(source)
        times.append(time.process_time() - started)
    return statistics.median(times), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", default="100,1000", help="comma-separated fleet sizes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", type=int, metavar="N", help="profile N-link renders instead")
    args = parser.parse_args()
    frames = templates()
    collectors = {"device": DeviceCollector, "post-processing": PostProcessingCollector}
    if args.profile:
        states = fleet(args.profile, frames)
        exporters = [c(lambda: [s.snapshot() for s in states]) for c in collectors.values()]
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [e.render() for e in exporters for _ in range(args.repeats)])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
        return
    print(f"Median of {args.repeats} renders; CPU = time.process_time; fleet a third of each protocol; "
          "snapshotting the link states included\n")
    print(f"| links | exporter | samples | CPU ms render (text 0.0.4) | CPU ms gzip (level {GZIP_LEVEL}) | CPU ms scrape "
          "| bytes | bytes gzip | µs CPU / link / scrape |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for links in (int(n) for n in args.links.split(",")):
        states = fleet(links, frames)

        def snapshots() -> list[LinkSnapshot]:
            return [s.snapshot() for s in states]

        for label, collector in collectors.items():
            exporter = collector(snapshots)
            text_s, payload = measure(exporter, lambda e: e.render(), args.repeats)
            gzip_s, compressed = measure(payload, lambda data: gzip.compress(data, compresslevel=GZIP_LEVEL), args.repeats)
            samples = sum(1 for line in payload.splitlines() if not line.startswith(b"#"))
            print(f"| {links} | {label} | {samples} | {text_s * 1e3:.1f} | {gzip_s * 1e3:.1f} | {(text_s + gzip_s) * 1e3:.1f} "
                  f"| {len(payload)} | {len(compressed)} | {(text_s + gzip_s) / links * 1e6:.0f} |")


if __name__ == "__main__":
    main()
