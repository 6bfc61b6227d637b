"""Post-processing of the shipped fleet on real bits: does it keep real time, and how late is each block?

    .venv/bin/python bench/bench_postprocessing.py [--config links.yaml] [--seconds 60] [--engine bits|model]
        [--error-correction cascade|ldpc] [--links a,b] [--smoke]

Runs the fleet of ``--config`` (default: the shipped links.yaml, every link on the ``bits`` engine)
for ``--seconds`` of emulated time, stepping frames as fast as the CPU allows (``Fleet.run_frames``:
emulator, archive, post-processing and hand-off in this one thread), and reports per link:

* blocks and their outcome, sifted key-string bits per block, measured EC efficiency f, round trips;
* CPU per block by stage (thread CPU of sifting, estimation, EC, verification, PA) and in total;
* per-block latency = the stages' wall time plus the EC protocol's time on the classical channel's
  wire (round trips × the link's latency), p50 and p99 — the M8 real-time figure (target < 1 s);
* the real-time factor: post-processing CPU per second of emulated link time, against the 2 cores.

``--error-correction`` sets every link's reconciliation (default: each link's own), ``--links`` keeps only
the named links. Prints Markdown tables for docs/benchmarks.md. ``--smoke``: one short MDI-free run, measures nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qkdops.config import EC_METHODS, load_config  # noqa: E402
from qkdops.runtime.fleet import Fleet  # noqa: E402
from qkdops.runtime.pipeline import BlockResult  # noqa: E402
from qkdops.runtime.state import CPU_STAGES  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "links.yaml")
    parser.add_argument("--seconds", type=float, default=60.0, help="emulated seconds of the fleet to run")
    parser.add_argument("--engine", choices=("bits", "model"), default="bits")
    parser.add_argument("--error-correction", choices=EC_METHODS, default=None, help="every link's reconciliation")
    parser.add_argument("--links", default=None, help="only these links (comma-separated ids)")
    parser.add_argument("--smoke", action="store_true", help="a few emulated seconds: checks the benchmark runs")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.links:
        wanted = set(args.links.split(","))
        unknown = sorted(wanted - {s.id for s in config.links})
        if unknown:
            parser.error(f"--links: no link {', '.join(unknown)} in {args.config}")
        config = dataclasses.replace(config, links=tuple(s for s in config.links if s.id in wanted))
    if args.smoke:
        config = dataclasses.replace(config, links=tuple(dataclasses.replace(s, block_pulses=int(s.repetition_rate_hz * 1))
                                                         for s in config.links if s.protocol == "bb84-decoy"))
        args.seconds = 2.0
    with tempfile.TemporaryDirectory() as tmp:
        config = dataclasses.replace(
            config, runtime=dataclasses.replace(config.runtime, state_dir=Path(tmp) / "state"),
            links=tuple(dataclasses.replace(s, postprocessing=dataclasses.replace(
                s.postprocessing, engine=args.engine, error_correction=args.error_correction or s.postprocessing.error_correction))
                for s in config.links))
        fleet = Fleet(config)
        latency: dict[str, list[float]] = defaultdict(list)
        cpu_total: dict[str, list[float]] = defaultdict(list)
        results: dict[str, list[BlockResult]] = defaultdict(list)
        for runtime in fleet.links.values():
            original = runtime.processor.process

            def timed(block, previous, deposit=None, channel_up=lambda: True, original=original, link=runtime.spec.id):
                processed, outcome = original(block, previous, deposit, channel_up)
                latency[link].append(sum(processed.stage_seconds.values()))
                cpu_total[link].append(sum(processed.cpu_seconds.values()))
                results[link].append(processed.result)
                return processed, outcome
            runtime.processor.process = timed  # type: ignore[method-assign]
        frames = max(1, round(args.seconds / config.runtime.frame_seconds))
        wall = time.perf_counter()
        cpu = time.process_time()
        try:
            fleet.run_frames(frames)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            snapshots = {s.link: s for s in fleet.snapshots()}
        finally:
            fleet.stop()
    print(f"# {args.engine} engine, {frames} frames of {config.runtime.frame_seconds:g} s: {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"for {args.seconds:g} s of emulated fleet time (real-time factor {cpu / args.seconds:.2f} CPU-s per s, 2 cores here)\n")
    print("| link | blocks (key) | key-string bits/block | f | round trips/block | wire s/block | "
          + " | ".join(f"{s} CPU s" for s in CPU_STAGES) + " | CPU s/block | latency p50 / p99 s |")
    print("|---|---|---|---|---|---|" + "---|" * len(CPU_STAGES) + "---|---|")
    for link, rows in results.items():
        if not rows:
            continue
        snap = snapshots[link]
        key = sum(r.reason == "none" for r in rows)
        f = [r.ec_efficiency for r in rows if r.ec_efficiency is not None]
        per_stage = " | ".join(f"{snap.cpu_seconds_total.get(s, 0.0) / len(rows):.3f}" for s in CPU_STAGES)
        print(f"| {link} | {len(rows)} ({key}) | {statistics.mean(r.key_string_bits for r in rows):,.0f} | "
              f"{statistics.mean(f) if f else float('nan'):.3f} | {statistics.mean(r.ec_round_trips for r in rows):,.0f} | "
              f"{statistics.mean(r.channel_seconds for r in rows):.2f} | {per_stage} | {statistics.mean(cpu_total[link]):.3f} | "
              f"{percentile(latency[link], 0.5):.2f} / {percentile(latency[link], 0.99):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
