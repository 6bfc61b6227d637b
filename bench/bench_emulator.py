"""Emulator throughput per protocol (run on demand, not a test).

    .venv/bin/python bench/bench_emulator.py [--links 200] [--blocks 20] [--profile PROTOCOL]

A fleet of ``--links`` links at 1 GHz with 1-s blocks (10^9 pulses each, default drifting devices)
is stepped ``--blocks`` times round-robin. CPU time is time.process_time, so a busy neighbour
inflates wall time, not this. Reported per protocol:

* CPU µs per ``step_block``, and the same for 10^6-pulse blocks (counts are sampled, not pulses, so
  the cost must not depend on the block size or the repetition rate);
* pulses emulated per CPU-second;
* links kept in real time by one core = emulated link-seconds per CPU-second (target ≥ 1000).

Prints a Markdown table for docs/benchmarks.md. ``--profile`` prints the top of a cProfile instead.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from qkdlink.emulator import Link, LinkConfig
from qkdlink.protocols import PROTOCOL_NAMES

RATE_HZ = 1e9


def fleet(protocol: str, links: int, block_pulses: int) -> list[Link]:
    return [Link(LinkConfig(f"{protocol}-{i}", protocol=protocol, block_pulses=block_pulses,
                            repetition_rate_hz=RATE_HZ, seed=i)) for i in range(links)]


def cpu_seconds(links: list[Link], blocks: int) -> float:
    for link in links:  # warm-up: first-call caches, imports
        link.step_block()
    start = time.process_time()
    for _ in range(blocks):
        for link in links:
            link.step_block()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--profile", choices=PROTOCOL_NAMES)
    args = parser.parse_args()
    block_pulses = int(RATE_HZ)  # 1-s blocks
    if args.profile:
        links = fleet(args.profile, args.links, block_pulses)
        profiler = cProfile.Profile()
        profiler.runcall(cpu_seconds, links, args.blocks)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    print(f"{args.links} links × {args.blocks} blocks, 1 GHz, 1-s blocks (10^9 pulses), default devices\n")
    print("| protocol | µs CPU / block | µs CPU / block (10^6 pulses) | pulses / CPU-s | links in real time / core |")
    print("|---|---:|---:|---:|---:|")
    for protocol in PROTOCOL_NAMES:
        steps = args.links * args.blocks
        cpu = cpu_seconds(fleet(protocol, args.links, block_pulses), args.blocks)
        small = cpu_seconds(fleet(protocol, args.links, 10 ** 6), args.blocks)
        emulated_s = steps * block_pulses / RATE_HZ
        print(f"| {protocol} | {cpu / steps * 1e6:.0f} | {small / steps * 1e6:.0f} | "
              f"{steps * block_pulses / cpu:.3g} | {emulated_s / cpu:,.0f} |")


if __name__ == "__main__":
    main()
