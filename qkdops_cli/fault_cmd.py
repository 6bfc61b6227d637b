"""``qkdops fault`` and ``qkdops action``: drive a running fleet through its control API.

Contract (game days, runbooks and tests depend on these forms)::

    qkdops fault inject LINK FAULT [--set NAME=VALUE ...]
    qkdops fault clear LINK [FAULT]
    qkdops fault list
    qkdops action LINK ACTION        (relock_phase, retune_intensities, realign_polarization, regate_detectors)

Each takes ``--json`` (print the API's JSON answer), ``--api URL`` (else env ``QKDOPS_API_URL``,
else the config's bind and control port) and ``--config FILE`` (the fleet config whose port and
``<state_dir>/api-token`` to use; default ``links.yaml``). The token comes from env
``QKDOPS_API_TOKEN``, the file env ``QKDOPS_API_TOKEN_FILE`` names, or that token file.

``fault list`` asks the API (the running fleet's catalogue) and falls back to this installation's
catalogue when the API is not reachable, saying which it printed.

Exit codes: 0 done; 2 the request was wrong (unknown link, fault or action, bad parameter, bad or
missing token: the API's message names the field); 1 the API is not reachable or failed (5xx), or a
calibration action ran and failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from control_api.server import TokenError
from qkdops.control_client import ApiResponseError, ApiUnreachable, ControlClient, resolve_token, resolve_url
from qkdops_cli.keyrate_cmd import parse_overrides
from qkdops.runtime.faults import fault_catalogue
from qkdops.runtime.state import CALIBRATION_ACTIONS


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", metavar="URL", help="control API base URL (default: $QKDOPS_API_URL, else from the config)")
    common.add_argument("--config", metavar="FILE", help="fleet config giving the API port and token file (default: links.yaml)")
    common.add_argument("--json", action="store_true", help="print the API's answer as JSON")

    fault = sub.add_parser("fault", help="inject, clear and list faults on a running fleet",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = fault.add_subparsers(dest="fault_command", required=True, metavar="{inject,clear,list}")
    inject = verbs.add_parser("inject", parents=[common], help="put a fault in force on a link")
    inject.add_argument("link", metavar="LINK")
    inject.add_argument("fault", metavar="FAULT", help="a fault of `qkdops fault list`")
    inject.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="fault parameter (repeatable); others take their defaults")
    inject.set_defaults(handler=_guarded(_inject), verb="fault inject")
    clear = verbs.add_parser("clear", parents=[common], help="clear one fault, or every fault, of a link")
    clear.add_argument("link", metavar="LINK")
    clear.add_argument("fault", metavar="FAULT", nargs="?", help="the fault to clear (default: all)")
    clear.set_defaults(handler=_guarded(_clear), verb="fault clear")
    listing = verbs.add_parser("list", parents=[common], help="the fault catalogue: parameters and the action that fixes each")
    listing.set_defaults(handler=_guarded(_list), verb="fault list")

    action = sub.add_parser("action", parents=[common], help="run a calibration action on a link",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action.add_argument("link", metavar="LINK")
    action.add_argument("action", metavar="ACTION", help=f"one of {', '.join(CALIBRATION_ACTIONS)}")
    action.set_defaults(handler=_guarded(_act), verb="action")


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the API's refusals into exit 2 and its absence or failure into exit 1, with its message."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ApiResponseError as exc:
            print(f"qkdops {args.verb}: error: {exc}", file=sys.stderr)
            return exc.exit_code
        except ApiUnreachable as exc:
            print(f"qkdops {args.verb}: error: {exc}", file=sys.stderr)
            return 1
    return run


def _client(args: argparse.Namespace) -> ControlClient:
    return ControlClient(resolve_url(args.api, args.config), resolve_token(args.config).value)


def _inject(args: argparse.Namespace) -> int:
    parameters = parse_overrides(args.overrides)
    answer = _client(args).inject(args.link, args.fault, parameters)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in answer["parameters"].items()) or "no parameters"
        active = ", ".join(f["name"] for f in answer["active_faults"])
        print(f"{answer['link']}: fault {answer['fault']} injected ({values}); active faults: {active}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    answer = _client(args).clear(args.link, args.fault)
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer["cleared"]:
        print(f"{answer['link']}: cleared {', '.join(answer['cleared'])}")
    elif args.fault:
        print(f"{answer['link']}: fault {args.fault} was not active")
    else:
        print(f"{answer['link']}: no fault was active")
    return 0


def _act(args: argparse.Namespace) -> int:
    """Exit 1 when the action ran but failed (e.g. phase beyond the hold range): a runbook step must notice."""
    answer = _client(args).act(args.link, args.action)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"{answer['link']}: {answer['action']} {'ok' if answer['ok'] else 'FAILED'}: {answer['message']}")
        for name in sorted(set(answer["before"]) | set(answer["after"])):
            print(f"  {name}: {_fmt(answer['before'].get(name))} -> {_fmt(answer['after'].get(name))}")
    return 0 if answer["ok"] else 1


def _list(args: argparse.Namespace) -> int:
    url = resolve_url(args.api, args.config)
    try:
        faults: list[dict[str, Any]] = ControlClient(url, resolve_token(args.config).value).faults()
        source, note = "api", f"fault catalogue from the control API at {url}"
    except (ApiUnreachable, TokenError) as exc:
        faults = fault_catalogue()
        source, note = "local", f"fault catalogue of this installation ({exc})"
    if args.json:
        print(json.dumps({"source": source, "api": url, "note": note, "faults": faults}, indent=2))
        return 0
    lines = [note, ""]
    for f in faults:
        fixed = f"fixed by: {f['fixed_by']}" if f["fixed_by"] else "fixed by: no calibration action (clear the fault)"
        lines.append(f"{f['name']}: {f['description']}  [{fixed}]")
        for p in f["parameters"]:
            default = f"{_fmt(p['default'])} {p['unit']}"
            lines.append(f"    {p['name']:<22} default {default:<20} range [{_fmt(p['minimum'])}, {_fmt(p['maximum'])}] "
                         f"{p['unit']}  {p['description']}")
        if not f["parameters"]:
            lines.append("    (no parameters)")
    print("\n".join(lines))
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
