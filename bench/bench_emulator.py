"""Emulator throughput per protocol (run on demand, not a test).

    .venv/bin/python bench/bench_emulator.py [--links 200] [--frames 20] [--profile PROTOCOL]

A fleet of ``--links`` links at 1 GHz with 1-s frames (10^9 pulses each, default drifting devices)
is stepped ``--frames`` times round-robin. CPU time is time.process_time, so a busy neighbour
inflates wall time, not this. Reported per protocol:

* CPU µs per ``step_frame``, and the same for 10^6-pulse frames (counts are sampled, not pulses, so
  the cost must not depend on the frame size or the repetition rate);
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


def fleet(protocol: str, links: int, frame_pulses: int) -> list[Link]:
    return [Link(LinkConfig(f"{protocol}-{i}", protocol=protocol, frame_pulses=frame_pulses,
                            repetition_rate_hz=RATE_HZ, seed=i)) for i in range(links)]


def cpu_seconds(links: list[Link], frames: int) -> float:
    for link in links:  # warm-up: first-call caches, imports
        link.step_frame()
    start = time.process_time()
    for _ in range(frames):
        for link in links:
            link.step_frame()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--links", type=int, default=200)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--profile", choices=PROTOCOL_NAMES)
    args = parser.parse_args()
    frame_pulses = int(RATE_HZ)  # 1-s frames
    if args.profile:
        links = fleet(args.profile, args.links, frame_pulses)
        profiler = cProfile.Profile()
        profiler.runcall(cpu_seconds, links, args.frames)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    print(f"{args.links} links × {args.frames} frames, 1 GHz, 1-s frames (10^9 pulses), default devices\n")
    print("| protocol | µs CPU / frame | µs CPU / frame (10^6 pulses) | pulses / CPU-s | links in real time / core |")
    print("|---|---:|---:|---:|---:|")
    for protocol in PROTOCOL_NAMES:
        steps = args.links * args.frames
        cpu = cpu_seconds(fleet(protocol, args.links, frame_pulses), args.frames)
        small = cpu_seconds(fleet(protocol, args.links, 10 ** 6), args.frames)
        emulated_s = steps * frame_pulses / RATE_HZ
        print(f"| {protocol} | {cpu / steps * 1e6:.0f} | {small / steps * 1e6:.0f} | "
              f"{steps * frame_pulses / cpu:.3g} | {emulated_s / cpu:,.0f} |")


if __name__ == "__main__":
    main()
