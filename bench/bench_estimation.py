"""Estimation latency per block, per protocol and analysis mode (run on demand, not a test).

    .venv/bin/python bench/bench_estimation.py [--repeat N]

Feeds each protocol's expected counts for a 1e10-pulse block at a mid distance to ``estimate`` and
reports CPU time per call (time.process_time, so a busy neighbour inflates wall time, not this).
Prints a Markdown table for docs/benchmarks.md. Target: <= 1 ms per asymptotic estimate.
"""

from __future__ import annotations

import argparse
import time

from qkdlink.protocols import PROTOCOL_NAMES, get_protocol
from qkdlink.protocols.base import ANALYSES, BlockCounts

DISTANCE_KM = {"bb84-decoy": 50.0, "mdi": 80.0, "tf": 300.0}


def cpu_seconds_per_call(fn, repeat: int) -> float:
    fn()  # warm caches and imports
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    print("| protocol | analysis | estimate µs (CPU) | pulse_classes µs (CPU) |")
    print("|---|---|---:|---:|")
    for name in PROTOCOL_NAMES:
        protocol = get_protocol(name)
        params = protocol.resolve({"distance_km": DISTANCE_KM[name]})
        classes_s = cpu_seconds_per_call(lambda: protocol.pulse_classes(params), args.repeat)
        counts = BlockCounts.expected(protocol.pulse_classes(params), 1e10)
        for analysis in ANALYSES:
            est_s = cpu_seconds_per_call(lambda: protocol.estimate(counts, params, analysis), args.repeat)
            print(f"| {name} | {analysis} | {est_s * 1e6:.1f} | {classes_s * 1e6:.1f} |")


if __name__ == "__main__":
    main()
