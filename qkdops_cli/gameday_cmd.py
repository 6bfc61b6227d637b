"""``qkdops gameday plan|run``: game-day scenarios (``gameday/scenarios``) against a running stack.

Contract::

    qkdops gameday plan <scenario|all> [<scenario> …]
    qkdops gameday run <scenario|all> [<scenario> …] [--config links.yaml] [--report DIR]

``plan`` prints what a run would do — the steady state it checks, each action and probe with its
arguments and time limit, the rollbacks, the pages expected and the alerts that must stay silent —
and touches nothing. ``run`` runs each scenario with Chaos Toolkit's engine against the stack of
``--config`` (``qkdops up`` or compose), printing progress, always clearing the link's faults at
the end (even on Ctrl-C), and writes ``report.md``, ``report.json`` and a timeline PNG per
scenario to ``--report`` (default ``<state_dir>/gameday/<UTC time>``). Exit 0 when every scenario
passed, 1 when one failed, 2 on bad input (unknown scenario, invalid scenario file), 130 when
interrupted (Ctrl-C or SIGTERM: the running scenario's faults are cleared and the report is written).
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from pathlib import Path

from qkdops.config import DEFAULT_CONFIG, load_config
from qkdops.credentials import CredentialError
from qkdops.http_client import Auth, StackAuth, http_url


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gameday", help="game days: break the running stack on purpose, prove detection and recovery",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="gameday_command", required=True, metavar="{plan,run}")
    plan = verbs.add_parser("plan", help="print what a run would do, touching nothing")
    plan.add_argument("scenario", metavar="SCENARIO", nargs="+", help="scenario names (file stems in gameday/scenarios) or all")
    plan.set_defaults(handler=_plan)
    run = verbs.add_parser("run", help="run scenarios against a running stack and write a report")
    run.add_argument("scenario", metavar="SCENARIO", nargs="+", help="scenario names (file stems in gameday/scenarios) or all")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the running stack's links.yaml")
    run.add_argument("--report", type=Path, help="report directory (default <state_dir>/gameday/<UTC time>)")
    run.set_defaults(handler=_run)


def _plan(args: argparse.Namespace) -> int:
    from gameday.scenario import load_all, plan

    print("\n\n".join(plan(s) for name in args.scenario for s in load_all(name)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from gameday import report, runner
    from gameday.scenario import load_all

    scenarios = [s for name in args.scenario for s in load_all(name)]
    config = load_config(args.config)
    logging.getLogger("chaostoolkit").setLevel(logging.WARNING)  # our progress lines say what it would
    directory = args.report or config.runtime.state_dir / "gameday" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    outcomes = []
    _interrupt_on_sigint_and_sigterm()
    try:
        for scenario in scenarios:
            outcomes.append(runner.run(scenario, args.config.resolve(), lambda line: print(line, flush=True)))
    except runner.Interrupted as stop:
        outcomes.append(stop.outcome)
        print("game day interrupted: the remaining scenarios were not run", flush=True)
        return 130
    except KeyboardInterrupt:  # between scenarios: no fault of ours is active
        print("game day interrupted between scenarios: the remaining scenarios were not run", flush=True)
        return 130
    finally:
        if outcomes:
            try:
                auth: Auth | None = StackAuth(config.runtime.state_dir).prometheus
            except CredentialError:   # the report is written all the same; its timelines say why they are empty
                auth = None
            path = report.write(outcomes, directory, http_url(config.runtime.bind, config.runtime.prometheus_port), auth)
            print(f"report: {path}", flush=True)
    return 0 if all(o.passed for o in outcomes) else 1


def _interrupt_on_sigint_and_sigterm() -> None:
    """Ctrl-C and SIGTERM interrupt the run (faults cleared, report written) however it was started:
    a shell's background job inherits SIGINT ignored, and SIGTERM would otherwise kill the process
    between scenarios without a report. Chaos Toolkit swaps in its own SIGTERM handler while a
    scenario runs (the runner notices that interruption too) and restores this one after."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
