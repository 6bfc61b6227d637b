"""``qkdops emulate``: run one emulated link block by block and show what post-processing sees.

Each block is sampled by ``qkdlink.emulator.Link`` and estimated with the protocol's finite-key
analysis on the *nominal* parameters (what Alice and Bob believe), so drift and faults show up as
they would on hardware: QBER up, bounds loosening, aborts. The true single-photon yield is printed
beside its lower bound — something only an emulator can show.

``--inject FAULT[:NAME=VALUE,...]@START[-END]`` injects a fault at block START (and clears it at
block END); ``--realtime`` paces blocks at their emulated duration (block_pulses / repetition rate).

Here each block is one emulator frame (``Link.step_frame``) of ``--block-pulses`` pulses, estimated
on its own; the running fleet instead sums frames into post-processing blocks (qkdops.runtime.blocks).
The output keeps the names ``block``/``blocks``: they are this command's contract.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from qkdlink.emulator import FAULTS, FaultError, FrameRecord, Link, LinkConfig
from qkdlink.protocols import PROTOCOL_NAMES
from qkdlink.settings import MAX_FRAME_PULSES
from qkdlink.protocols.base import FINITE, KeyEstimate, ParameterError
from qkdops_cli.keyrate_cmd import parse_overrides
from qkdops.config import finite_float
from qkdops.runtime.faults import RUNTIME_FAULTS


@dataclass(frozen=True)
class FaultWindow:
    """A fault to inject at block ``start`` and clear at block ``end`` (None: never cleared)."""

    name: str
    parameters: dict[str, float]
    start: int
    end: int | None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("emulate", help="run an emulated link and estimate each block",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=PROTOCOL_NAMES, default="bb84-decoy")
    p.add_argument("--distance-km", dest="distance", type=finite_float, default=25.0)
    p.add_argument("--preset", help="protocol parameter preset (see qkdops keyrate --show-params)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--block-pulses", type=finite_float, default=1e10, help="pulses per block (default 1e10)")
    p.add_argument("--repetition-rate-hz", type=finite_float, default=1e9)
    p.add_argument("--blocks", type=int, default=10, help="blocks to run; 0 = until interrupted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inject", action="append", default=[], metavar="FAULT[:NAME=VALUE,...]@START[-END]",
                   help=f"fault window (faults: {', '.join(FAULTS)})")
    p.add_argument("--realtime", action="store_true", help="pace blocks at their emulated duration")
    p.add_argument("--json", action="store_true", help="one JSON object per block (JSON Lines)")
    p.set_defaults(handler=run)


def parse_fault_window(text: str) -> FaultWindow:
    """``FAULT[:NAME=VALUE,...]@START[-END]`` → FaultWindow, with the fault and parameters validated."""
    head, sep, when = text.partition("@")
    if not sep:
        raise ParameterError(f"--inject expects FAULT[:NAME=VALUE,...]@START[-END], got '{text}'")
    name, _, params_text = head.partition(":")
    if name in RUNTIME_FAULTS:
        raise ParameterError(f"--inject: '{name}' is a fault of the operations runtime, which `qkdops emulate` does "
                             "not run (inject it on a running fleet: qkdops fault inject LINK FAULT)")
    if name not in FAULTS:
        raise ParameterError(f"--inject: unknown fault '{name}' (known: {', '.join(FAULTS)})")
    parameters = parse_overrides([kv for kv in params_text.split(",") if kv]) if params_text else {}
    try:
        FAULTS[name].validate(parameters)
        start_text, _, end_text = when.partition("-")
        start, end = int(start_text), (int(end_text) if end_text else None)
    except FaultError as exc:
        raise ParameterError(f"--inject: {exc}") from None
    except ValueError:
        raise ParameterError(f"--inject {name}: START and END must be block numbers, got '@{when}'") from None
    if start < 0 or (end is not None and end <= start):
        raise ParameterError(f"--inject {name}: need 0 <= START < END, got '@{when}'")
    return FaultWindow(name, parameters, start, end)


def run(args: argparse.Namespace) -> int:
    if args.blocks < 0:
        raise ParameterError(f"--blocks must be >= 0, got {args.blocks}")
    windows = [parse_fault_window(w) for w in args.inject]
    overrides = {**parse_overrides(args.overrides), "distance_km": args.distance}
    if args.block_pulses != int(args.block_pulses) or not 1 <= args.block_pulses <= MAX_FRAME_PULSES:
        raise ParameterError(f"--block-pulses must be a whole number in [1, 2^62], got {args.block_pulses}")
    link = Link(LinkConfig(link_id=f"{args.protocol}-{args.distance:g}km", protocol=args.protocol,
                           preset=args.preset, overrides=overrides, frame_pulses=int(args.block_pulses),
                           repetition_rate_hz=args.repetition_rate_hz, seed=args.seed))
    stop = _install_stop_handlers()
    if not args.json:
        print(_header(link))
    total_key = 0.0
    index = 0
    while not stop() and (args.blocks == 0 or index < args.blocks):
        started = time.monotonic()
        for w in windows:
            if w.start == index:
                link.inject(w.name, **w.parameters)
            if w.end == index:
                link.clear(w.name)
        record = link.step_frame()
        estimate = link.protocol.estimate(record.counts, record.nominal, FINITE)
        total_key += estimate.secret_key_bits or 0.0
        print(json.dumps(_summary(record, estimate)) if args.json else _line(record, estimate), flush=True)
        index += 1
        if args.realtime:
            _sleep_until(started + link.config.frame_seconds, stop)
    if not args.json:
        print(f"# {index} blocks, {total_key:.0f} secret key bits, "
              f"{total_key / max(index * link.config.frame_seconds, 1e-300):.1f} bit/s", file=sys.stderr)
    return 0


def _sleep_until(deadline: float, stop: Callable[[], bool]) -> None:
    """Sleep in short slices so Ctrl-C ends a real-time run within a fraction of a second."""
    while not stop() and (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.1))


def _install_stop_handlers() -> Callable[[], bool]:
    """Ctrl-C / SIGTERM end the loop after the current block instead of killing it mid-print."""
    stopping = {"flag": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: stopping["flag"]


def _summary(record: FrameRecord, estimate: KeyEstimate) -> dict[str, object]:
    """Per-block numbers only: counts, rates, bounds and truth — never key material."""
    return {
        "link": record.link_id, "protocol": record.protocol, "block": record.index,
        "start_s": record.start_s, "end_s": record.end_s, "detected": record.detected_total,
        "qber": estimate.qber, "y1_lower": estimate.y1_lower, "y1_true": record.truth.yield_,
        "e1_upper": estimate.e1_upper, "e1_true": record.truth.phase_error_rate,
        "secret_key_bits": estimate.secret_key_bits or 0.0, "abort_reason": estimate.abort_reason,
        "faults": list(record.active_faults),
    }


def _header(link: Link) -> str:
    cfg = link.config
    return (f"# link {cfg.link_id}: {cfg.protocol}, {cfg.frame_pulses:.3g} pulses per block "
            f"({cfg.frame_seconds:g} s at {cfg.repetition_rate_hz:.3g} Hz), finite-key estimation\n"
            f"{'block':>5} {'t_s':>8} {'detected':>11} {'QBER':>7} {'Y1_L':>10} {'Y1_true':>10} "
            f"{'e1_U':>7} {'e1_true':>7} {'key_bits':>11}  abort / faults")


def _line(record: FrameRecord, est: KeyEstimate) -> str:
    y1 = "-" if est.y1_lower is None else f"{est.y1_lower:.3e}"
    e1 = "-" if est.e1_upper is None else f"{est.e1_upper:.4f}"
    notes = " ".join(filter(None, [est.abort_reason, ",".join(record.active_faults)]))
    return (f"{record.index:>5} {record.end_s:>8.1f} {record.detected_total:>11d} {est.qber:>7.4f} {y1:>10} "
            f"{record.truth.yield_:>10.3e} {e1:>7} {record.truth.phase_error_rate:>7.4f} "
            f"{est.secret_key_bits or 0:>11.0f}  {notes}")
