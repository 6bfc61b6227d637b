"""``qkdops keyrate``: predicted key rate, bounds and the PLOB bound for a protocol and distance.

Contract (other tools parse it):
``qkdops keyrate --protocol {bb84-decoy,mdi,tf} --distance-km D [--preset NAME] [--set NAME=VALUE ...]
[--analysis {asymptotic-ideal,asymptotic,finite}] [--pulses N] --json`` prints one JSON object, or a
JSON list when D is a sweep START:STOP:STEP. ``--show-params`` lists the parameters, ``--plot FILE.png``
draws key rate against distance with the PLOB bound.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence

from qkdlink.keyrate import KeyRatePoint, optimise, predict
from qkdlink.protocols import PROTOCOL_NAMES, get_protocol
from qkdlink.protocols.base import ANALYSES, ASYMPTOTIC, ParameterError, Protocol
from qkdops.config import finite_float

MAX_SWEEP_POINTS = 10_000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keyrate", help="predicted key rate and bounds vs distance",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", required=True, choices=PROTOCOL_NAMES)
    p.add_argument("--distance-km", dest="distance", metavar="D",
                   help="distance in km, or a sweep START:STOP:STEP (MDI/TF: total Alice–Bob distance)")
    p.add_argument("--preset", help="named parameter set reproducing a paper (see --show-params)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override one parameter (repeatable)")
    p.add_argument("--analysis", choices=ANALYSES, default=ASYMPTOTIC)
    p.add_argument("--pulses", type=finite_float, default=None, help="pulses sent (finite analysis), default 1e12")
    p.add_argument("--optimize", metavar="NAME[,NAME...]",
                   help="maximise the key rate over these parameters at each distance (e.g. mu,nu,p_mu)")
    p.add_argument("--json", action="store_true", help="print JSON (one object, or a list for a sweep)")
    p.add_argument("--show-params", action="store_true", help="list every parameter with unit and default")
    p.add_argument("--plot", metavar="FILE.png", help="draw key rate vs distance with the PLOB bound")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    protocol = get_protocol(args.protocol)
    if args.show_params:
        print(_params_table(protocol, args.preset, as_json=args.json))
        return 0
    if args.distance is None:
        raise ParameterError("--distance-km is required (or use --show-params)")
    distances, is_sweep = parse_distance(args.distance)
    overrides = parse_overrides(args.overrides)
    names = [n.strip() for n in args.optimize.split(",") if n.strip()] if args.optimize else []
    for n in names:
        protocol.parameter(n)
    points = []
    for d in distances:
        params = protocol.resolve({**overrides, "distance_km": d}, args.preset, where="--set")
        if names:
            params = optimise(protocol, params, names, args.analysis, args.pulses)
        points.append(predict(protocol, params, args.analysis, args.pulses, args.preset or ""))
    if args.plot:
        _plot(points, args.plot)
    if args.json:
        payload = [pt.as_json() for pt in points] if is_sweep else points[0].as_json()
        print(json.dumps(payload, indent=None if is_sweep else 2))
    else:
        print(_table(points))
    return 0


def parse_distance(text: str) -> tuple[list[float], bool]:
    """``D`` or ``START:STOP:STEP`` (STOP included when on the grid) → distances and whether a sweep."""
    parts = text.split(":")
    try:
        numbers = [float(x) for x in parts]
    except ValueError:
        raise ParameterError(f"--distance-km must be a number or START:STOP:STEP, got '{text}'") from None
    if len(numbers) == 1:
        return numbers, False
    if len(numbers) != 3:
        raise ParameterError(f"--distance-km sweep must be START:STOP:STEP, got '{text}'")
    start, stop, step = numbers
    if step <= 0 or stop < start:
        raise ParameterError(f"--distance-km sweep needs STEP > 0 and STOP >= START, got '{text}'")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > MAX_SWEEP_POINTS:
        raise ParameterError(f"--distance-km sweep has {count} points, more than {MAX_SWEEP_POINTS}")
    return [round(start + i * step, 9) for i in range(count)], True


def parse_overrides(items: Sequence[str]) -> dict[str, float]:
    """``NAME=VALUE`` strings → mapping; the value must be a number."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"--set expects NAME=VALUE, got '{item}'")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ParameterError(f"--set {name.strip()}: value must be a number, got '{value}'") from None
    return out


def _params_table(protocol: Protocol, preset: str | None, as_json: bool) -> str:
    resolved = protocol.resolve({}, preset)
    rows = [{"name": p.name, "unit": p.unit, "default": p.default, "value": resolved[p.name],
             "minimum": p.minimum, "maximum": p.maximum, "description": p.description}
            for p in protocol.parameters]
    if as_json:
        return json.dumps({"protocol": protocol.name, "preset": preset or protocol.default_preset,
                           "presets": sorted(protocol.presets), "parameters": rows}, indent=2)
    lines = [f"protocol {protocol.name}, preset {preset or protocol.default_preset} "
             f"(presets: {', '.join(sorted(protocol.presets))})",
             f"{'name':<26} {'value':>12} {'default':>12}  {'unit':<14} description"]
    lines += [f"{r['name']:<26} {r['value']:>12.6g} {r['default']:>12.6g}  {r['unit']:<14} {r['description']}"
              for r in rows]
    return "\n".join(lines)


def _table(points: Sequence[KeyRatePoint]) -> str:
    head = f"{'km':>7} {'eta_fibre':>10} {'PLOB':>10} {'gain':>10} {'QBER':>7} {'R bits/pulse':>12} {'Y1_L':>10} {'e1_U':>7}  abort"
    rows = [head]
    for p in points:
        rows.append(f"{p.distance_km:>7.1f} {p.channel_transmittance:>10.3e} {p.plob_bound_bits_per_pulse:>10.3e} "
                    f"{p.gain:>10.3e} {p.qber:>7.4f} {p.key_rate_bits_per_pulse:>12.4e} "
                    f"{_fmt(p.y1_lower, '.3e'):>10} {_fmt(p.e1_upper, '.4f'):>7}  {p.abort_reason or ''}")
    return "\n".join(rows)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _plot(points: Sequence[KeyRatePoint], path: str) -> None:
    """Key rate (log scale) vs distance with the PLOB repeaterless bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = [p.distance_km for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    rates = [p.key_rate_bits_per_pulse if p.key_rate_bits_per_pulse > 0 else float("nan") for p in points]
    ax.semilogy(d, rates, label=f"{points[0].protocol} ({points[0].analysis}, preset {points[0].preset})")
    ax.semilogy(d, [p.plob_bound_bits_per_pulse for p in points], "k--", label="PLOB bound −log2(1−η)")
    ax.set_xlabel("distance between Alice and Bob (km)")
    ax.set_ylabel("secret key rate (bits per pulse)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
