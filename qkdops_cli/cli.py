"""The ``qkdops`` command: one entry point, one module per subcommand.

Exit codes: 0 success, 2 bad input (unknown parameter, malformed value) with a one-line error that
names the offending option or parameter, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from qkdops_cli import emulate_cmd, fault_cmd, keyrate_cmd, replay_cmd, status_cmd, up_cmd
from qkdops_cli import slo_cmd
from qkdops_cli import dashboards_cmd
from qkdops_cli import calibration_cmd
from qkdops_cli import keys_cmd
from qkdops_cli import gameday_cmd
from qkdops_cli import credentials_cmd
from qkdops_cli import generate_cmd
from qkdops_cli import worker_cmd
from qkdops_cli import history_cmd
from qkdops_cli import kme_probe_cmd
from qkdops.runtime.memory import retain_freed_memory


class UsageError(Exception):
    """Bad command-line input; the message names the option or parameter."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qkdops", description="Operations stack for emulated QKD links.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keyrate_cmd.register(sub)
    emulate_cmd.register(sub)
    fault_cmd.register(sub)
    replay_cmd.register(sub)
    up_cmd.register(sub)
    status_cmd.register(sub)
    slo_cmd.register(sub)
    dashboards_cmd.register(sub)
    calibration_cmd.register(sub)
    keys_cmd.register(sub)
    gameday_cmd.register(sub)
    credentials_cmd.register(sub)
    generate_cmd.register(sub)
    worker_cmd.register(sub)
    history_cmd.register(sub)
    kme_probe_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    retain_freed_memory()   # first, before any thread: see qkdops/runtime/memory.py
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, UsageError) as exc:  # ParameterError is a ValueError
        print(f"qkdops {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
