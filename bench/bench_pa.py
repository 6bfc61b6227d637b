"""Toeplitz hashing cost: privacy amplification (FFT kernel) and verification tags (bit-packed kernel)
(run on demand, not a test).

    .venv/bin/python bench/bench_pa.py [--sizes 1e6,1e7] [--big] [--metro] [--ratio 0.6] [--repeat 3] [--no-retain] [--smoke]

CPU time (``time.process_time``) per ``toeplitz_hash`` call on random bits and a random seed, the
best of ``--repeat`` calls; Mbit/s counts *input* bits per CPU-second on one core (the FFTs run
with ``workers=1``). Peak memory is the traced NumPy/Python allocation peak of one call
(``tracemalloc``, measured in a separate untimed call, since tracing slows the call). ``--big``
adds 10⁸ input bits (≈ 15–40 s and ≈ 3 GB); ``--metro`` adds metro-bb84's block shape (44.3 Mbit →
7.7 Mbit). Like the runtime, the process keeps freed memory for reuse (``qkdops.runtime.memory``);
``--no-retain`` measures glibc's default, where every call's big buffers are mmapped and faulted
in again (system CPU, counted by ``process_time``). Tags: ``--tag-bits`` bits to ``--tag-out`` bits.
``--smoke`` runs tiny sizes once (for the tests).
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qkdlink.postprocessing.toeplitz import random_seed, toeplitz_hash  # noqa: E402
from qkdops.runtime.memory import retain_freed_memory  # noqa: E402

MIB = 1 << 20


def measure(n_in: int, n_out: int, repeat: int, rng: np.random.Generator) -> tuple[float, float]:
    """(best CPU seconds of ``repeat`` calls, traced peak MiB of one more call)."""
    bits = np.packbits(rng.integers(0, 2, n_in, dtype=np.uint8))
    seed = random_seed(rng, n_in, n_out)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        toeplitz_hash(bits, n_in, n_out, seed)
        best = min(best, time.process_time() - start)
    tracemalloc.start()
    toeplitz_hash(bits, n_in, n_out, seed)
    peak = tracemalloc.get_traced_memory()[1] / MIB
    tracemalloc.stop()
    return best, peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="input bits for privacy amplification, comma-separated")
    parser.add_argument("--big", action="store_true", help="also 1e8 input bits (slow, ≈ 3 GB)")
    parser.add_argument("--metro", action="store_true", help="also metro-bb84's block: 44,309,447 → 7,700,000 bits")
    parser.add_argument("--no-retain", action="store_true", help="glibc's default allocator settings (memory returned after each call)")
    parser.add_argument("--ratio", type=float, default=0.6, help="n_out / n_in for privacy amplification")
    parser.add_argument("--tag-bits", type=float, default=1.3e7, help="input bits of the verification tag")
    parser.add_argument("--tag-out", default="50,128", help="tag lengths, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one call each (tests)")
    args = parser.parse_args(argv)
    sizes = [int(float(v)) for v in args.sizes.split(",")] + ([10**8] if args.big else [])
    tag_bits, repeat = int(args.tag_bits), args.repeat
    if args.smoke:
        sizes, tag_bits, repeat = [5000, 20000], 30000, 1
    rng = np.random.default_rng(1)
    if not args.no_retain:
        retain_freed_memory()
    cases = [(n_in, int(args.ratio * n_in)) for n_in in sizes] + ([(44_309_447, 7_700_000)] if args.metro else [])

    print("| n_in | n_out | CPU s | Mbit/s input / core | peak MiB |")
    print("|---:|---:|---:|---:|---:|")
    for n_in, n_out in cases:
        seconds, peak = measure(n_in, n_out, repeat, rng)
        print(f"| {n_in:.0e} | {n_out:.1e} | {seconds:.3f} | {n_in / seconds / 1e6:.1f} | {peak:,.0f} |", flush=True)

    print("\n| tag: n_in | n_out | CPU ms | peak MiB |")
    print("|---:|---:|---:|---:|")
    for n_out in (int(v) for v in args.tag_out.split(",")):
        seconds, peak = measure(tag_bits, n_out, repeat, rng)
        print(f"| {tag_bits:.1e} | {n_out} | {seconds * 1e3:.1f} | {peak:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
