"""Error correction cost: our Cascade and blind LDPC beside TNO's Cascade and Winnow (run on demand, not a test).

    .venv/bin/python bench/bench_ec.py [--sizes 1e6,1e7] [--qbers 0.01,0.02,0.05] [--fer-frames 2048]
        [--fer-qber 0.02] [--tno-bits 20000] [--latency 0.001] [--methods cascade,ldpc] [--seed 1] [--smoke] [--json PATH]

1. Throughput. Random keys of n bits, Bob's copy with i.i.d. errors at the QBER (the estimate handed
   to ``reconcile`` is the true QBER); one call of each method's ``reconcile`` (``--methods``). Mbit/s is
   n over the process CPU time of the call (all threads: Cascade runs on one, the LDPC decoder on two),
   so it is per core; wall time beside it. For LDPC, blind rounds and discarded frames are shown. f is
   ``disclosed_bits / (n·h(e))`` with e the realised error fraction; round trips, messages and the
   emulated time on the wire at ``--latency`` per leg.
2. Frame failure rate (Cascade). ``--fer-frames`` frames of 2^16 bits at ``--fer-qber``, reconciled in
   calls of 256 frames; a frame fails when its corrected bits still differ from Alice's anywhere.
3. Side by side with TNO's Cascade and Winnow (PyPI ``tno-quantum-communication-qkd-key-rate``, the
   ``bench`` extra; skipped with a message when absent): pure-Python list-of-bits implementations, so
   ``--tno-bits`` is small. Their Cascade runs its documented example set-up (8 passes, sampling
   fraction 0.34), Winnow the schedule ``Schedule.schedule_from_error_rate``. f counts the key each
   costs, ``n − (output bits − exposed bits)`` (Winnow discards bits instead of only disclosing
   parities; for both Cascades this is the disclosed parities). Ours runs on the same bits.

Prints Markdown tables for docs/benchmarks.md; ``--json PATH`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qkdlink.physics.entropy import binary_entropy  # noqa: E402
from qkdlink.postprocessing.efficiency import RECONCILE  # noqa: E402
from qkdlink.postprocessing.cascade import failed_frames  # noqa: E402
from qkdlink.postprocessing.channel import ClassicalChannel  # noqa: E402

LABELS = {"cascade": "qkdops Cascade", "ldpc": "qkdops LDPC"}
METHODS = {method: (LABELS[method], run) for method, run in RECONCILE.items()}

FER_FRAME_BITS = 1 << 16
FER_FRAMES_PER_CALL = 256


def key_pair(n: int, qber: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Alice's random bits and Bob's copy with i.i.d. errors at ``qber`` (unpacked), and the number of errors."""
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    errors = (rng.random(n) < qber).astype(np.uint8)
    return alice, alice ^ errors, int(errors.sum())


def efficiency(disclosed: int, n: int, errors: int) -> float:
    """f = leak / (n·h(e)) at the realised error fraction (nan without errors: the Shannon limit is 0)."""
    limit = n * binary_entropy(errors / n)
    return disclosed / limit if limit > 0 else float("nan")


def run_ours(alice: np.ndarray, bob: np.ndarray, errors: int, qber: float, seed: int, latency: float,
             method: str = "cascade") -> dict[str, Any]:
    """One ``reconcile`` call of ``method``, timed; its numbers as a row."""
    n = alice.size
    channel = ClassicalChannel(latency)
    packed_alice, packed_bob = np.packbits(alice), np.packbits(bob)
    impl, run = METHODS[method]
    cpu, wall = time.process_time(), time.perf_counter()
    result = run(packed_alice, packed_bob, n, qber, seed, channel)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    reference = getattr(result, "alice", packed_alice)  # LDPC: discarded frames are public zeros at both ends
    return {
        "impl": impl, "n": n, "qber": qber, "errors": errors, "cpu_s": cpu, "wall_s": wall, "mbit_per_s": n / max(cpu, 1e-9) / 1e6,
        "f": efficiency(result.disclosed_bits, n, errors), "disclosed_bits": result.disclosed_bits,
        "round_trips": result.round_trips, "messages": result.messages, "emulated_s": result.emulated_seconds,
        "frames": result.frames, "failed_frames": failed_frames(reference, result.corrected, n, result.frame_key_bits),
        "rounds": getattr(result, "rounds", 0), "discarded": getattr(result, "dropped_frames", 0),
    }


def throughput(sizes: list[int], qbers: list[float], seed: int, latency: float, methods: list[str]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        for qber in qbers:
            alice, bob, errors = key_pair(n, qber, rng)
            rows += [run_ours(alice, bob, errors, qber, seed, latency, method) for method in methods]
    return rows


def frame_failure(frames: int, qber: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 1)
    failed = done = disclosed = errors_total = 0
    cpu = 0.0
    call = 0
    while done < frames:
        count = min(FER_FRAMES_PER_CALL, frames - done)
        alice, bob, errors = key_pair(count * FER_FRAME_BITS, qber, rng)
        row = run_ours(alice, bob, errors, qber, seed + call, 0.0)
        failed += row["failed_frames"]
        disclosed += row["disclosed_bits"]
        errors_total += errors
        cpu += row["cpu_s"]
        done += count
        call += 1
    n = frames * FER_FRAME_BITS
    return {"frames": frames, "qber": qber, "failed_frames": failed, "fer": failed / frames,
            "f": efficiency(disclosed, n, errors_total), "mbit_per_s": n / max(cpu, 1e-9) / 1e6}


def tno_classes() -> dict[str, Any] | None:
    """TNO's correctors, or None when the ``bench`` extra is not installed."""
    try:
        from tno.quantum.communication.qkd_key_rate.classical import Message, ParityStrategy, Permutations, Schedule
        from tno.quantum.communication.qkd_key_rate.classical.cascade import CascadeCorrector, CascadeReceiver, CascadeSender
        from tno.quantum.communication.qkd_key_rate.classical.winnow import WinnowCorrector, WinnowReceiver, WinnowSender
    except ImportError:
        return None
    return dict(Message=Message, ParityStrategy=ParityStrategy, Permutations=Permutations, Schedule=Schedule,
                CascadeCorrector=CascadeCorrector, CascadeReceiver=CascadeReceiver, CascadeSender=CascadeSender,
                WinnowCorrector=WinnowCorrector, WinnowReceiver=WinnowReceiver, WinnowSender=WinnowSender)


def run_tno(tno: dict[str, Any], kind: str, alice: np.ndarray, bob: np.ndarray, errors: int, qber: float) -> dict[str, Any]:
    """One TNO Cascade or Winnow run on the same bits as ours."""
    n = alice.size
    message_a, message_b = tno["Message"](alice.tolist()), tno["Message"](bob.tolist())
    cpu, wall = time.process_time(), time.perf_counter()
    if kind == "cascade":
        passes = 8
        permutations = tno["Permutations"].random_permutation(number_of_passes=passes, message_size=n)
        strategy = tno["ParityStrategy"](error_rate=qber, sampling_fraction=0.34, number_of_passes=passes)
        corrector = tno["CascadeCorrector"](alice=tno["CascadeSender"](message=message_a, permutations=permutations),
                                            bob=tno["CascadeReceiver"](message=message_b, permutations=permutations,
                                                                       parity_strategy=strategy))
    else:
        schedule = tno["Schedule"].schedule_from_error_rate(error_rate=qber)
        permutations = tno["Permutations"].random_permutation(number_of_passes=int(np.sum(schedule.schedule)), message_size=n)
        corrector = tno["WinnowCorrector"](alice=tno["WinnowSender"](message=message_a, permutations=permutations, schedule=schedule),
                                           bob=tno["WinnowReceiver"](message=message_b, permutations=permutations, schedule=schedule))
    out = corrector.correct_errors()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"impl": f"TNO {kind}", "n": n, "qber": qber, "cpu_s": cpu, "wall_s": wall, "mbit_per_s": n / max(cpu, 1e-9) / 1e6,
            # Winnow discards bits to cover its parities: the key it costs is n - (output - exposed), not just exposed
            "f": efficiency(n - out.output_length + out.number_of_exposed_bits, n, errors), "disclosed_bits": out.number_of_exposed_bits,
            "output_bits": out.output_length, "round_trips": out.number_of_communication_rounds,
            "correct": out.output_alice == out.output_bob}


def side_by_side(n: int, qbers: list[float], seed: int, methods: list[str]) -> list[dict[str, Any]] | None:
    tno = tno_classes()
    rng = np.random.default_rng(seed + 2)
    rows = []
    for qber in qbers:
        alice, bob, errors = key_pair(n, qber, rng)
        for method in methods:
            ours = run_ours(alice, bob, errors, qber, seed, 0.0, method)
            rows.append({**ours, "output_bits": n, "correct": ours["failed_frames"] == 0})
        if tno is not None:
            np.random.seed(seed)  # TNO's permutations draw from numpy's global generator
            rows += [run_tno(tno, kind, alice, bob, errors, qber) for kind in ("cascade", "winnow")]
    return rows if tno is not None else None


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, Callable[[Any], str]]]) -> str:
    head = "| " + " | ".join(title for title, _, _ in columns) + " |"
    rule = "|" + "|".join("---:" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(row[key]) for _, key, fmt in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def count(value: Any) -> str:
    return f"{int(value):,}"


def fixed(digits: int) -> Callable[[Any], str]:
    return lambda value: f"{float(value):.{digits}f}"


def parse_floats(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="key lengths in bits, comma-separated")
    parser.add_argument("--qbers", default="0.01,0.02,0.05")
    parser.add_argument("--fer-frames", type=int, default=2048)
    parser.add_argument("--fer-qber", type=float, default=0.02)
    parser.add_argument("--tno-bits", type=int, default=20000)
    parser.add_argument("--latency", type=float, default=0.001, help="one-way latency of the classical channel, seconds")
    parser.add_argument("--methods", default="cascade,ldpc", help="our EC methods to run, comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the benchmark runs, measures nothing")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    qbers = parse_floats(args.qbers)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    fer_frames, tno_bits = args.fer_frames, args.tno_bits
    if args.smoke:
        sizes, qbers, fer_frames, tno_bits = [5000], [0.02], 2, 600

    results: dict[str, Any] = {"throughput": throughput(sizes, qbers, args.seed, args.latency, methods)}
    print(f"## Throughput (one core; latency {args.latency * 1e3:g} ms per leg for the emulated time)\n")
    print(table(results["throughput"], [
        ("implementation", "impl", str), ("n bits", "n", count), ("QBER", "qber", fixed(3)), ("CPU s", "cpu_s", fixed(3)),
        ("wall s", "wall_s", fixed(3)),
        ("Mbit/s", "mbit_per_s", fixed(1)), ("f", "f", fixed(3)), ("disclosed", "disclosed_bits", count),
        ("round trips", "round_trips", count), ("emulated s", "emulated_s", fixed(2)), ("frames", "frames", count),
        ("failed frames", "failed_frames", count), ("blind rounds", "rounds", count), ("discarded", "discarded", count)]))

    results["fer"] = frame_failure(fer_frames, args.fer_qber, args.seed)
    print(f"\n## Frame failure rate (frames of {FER_FRAME_BITS} bits)\n")
    print(table([results["fer"]], [("frames", "frames", count), ("QBER", "qber", fixed(3)), ("failed", "failed_frames", count),
                                   ("FER", "fer", fixed(5)), ("f", "f", fixed(3)), ("Mbit/s", "mbit_per_s", fixed(1))]))

    results["side_by_side"] = side_by_side(tno_bits, qbers, args.seed, methods)
    print(f"\n## Side by side, n = {tno_bits:,} bits\n")
    if results["side_by_side"] is None:
        print("TNO's package is not installed (pip install -e .[bench]); side-by-side comparison skipped.")
    else:
        print(table(results["side_by_side"], [
            ("implementation", "impl", str), ("QBER", "qber", fixed(3)), ("CPU s", "cpu_s", fixed(3)),
            ("Mbit/s", "mbit_per_s", fixed(3)), ("f", "f", fixed(3)), ("disclosed", "disclosed_bits", count),
            ("output bits", "output_bits", count), ("round trips", "round_trips", count), ("corrected", "correct", str)]))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
