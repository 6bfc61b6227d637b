"""``qkdops slo generate [--check]``: turn the SLO specs in ``slo/`` into ``alert_rules/qkd-slos.yml``;
``qkdops slo report [--window 30d] [--json] [--prometheus URL]``: each SLO's numbers from Prometheus.

The specs are Sloth ``prometheus/v1`` documents or files of OpenSLO v1 documents (``slo/README.md``);
every ``*.yaml``/``*.yml`` file of the spec directory is read, in name order. ``--check`` writes nothing and exits 1 when the rule
file is not what the specs generate, so CI (and a test) catch a spec edited without regenerating.

Exit codes: 0 written (or current), 1 ``--check`` found the file stale or missing, 2 a spec is
malformed: one line per problem, each naming the file and the field path.

``report`` prints, per SLO and link, what Pyrra's list view shows: objective, availability over the
window (default: each SLO's period), error budget left, burn rate over the last hour, events,
coverage (how much of the window Prometheus has data for) and the firing burn alerts
(``monitoring.slo_report`` says how each is computed). Prometheus: ``--prometheus``, else the
config's bind and Prometheus port, with the basic auth ``qkdops up`` generated in the config's state
dir (``<state_dir>/prometheus-password``, or the file env ``QKDOPS_PROMETHEUS_PASSWORD_FILE``
names). Exit 0 with the report ("no data" rows included), 1 when Prometheus is unreachable or
answers an error, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from monitoring import slo, slo_report
from monitoring.config import DEFAULT_PATH as DEFAULT_MONITORING
from monitoring.config import load_monitoring_config
from monitoring.rules import RULES_DIR, SLO_RULES, SPEC_DIR
from qkdops.config import DEFAULT_CONFIG, finite_float, load_config
from qkdops.durations import is_duration, seconds as duration_seconds
from qkdops.http_client import PrometheusClient, PrometheusQueryError, PrometheusUnreachable, StackAuth, http_url
from qkdops_cli.generate_cmd import sync

OUTPUT = RULES_DIR / SLO_RULES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slo", help="SLO specs → multiwindow multi-burn-rate Prometheus rules",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="slo_command", required=True, metavar="{generate,report}")
    gen = verbs.add_parser("generate", help="write the rule file from the specs (or --check it is current)")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if the rule file is not current")
    gen.add_argument("--specs", type=Path, default=SPEC_DIR, metavar="DIR", help="spec directory (default: slo/)")
    gen.add_argument("--output", type=Path, default=OUTPUT, metavar="FILE",
                     help="rule file (default: alert_rules/qkd-slos.yml)")
    gen.add_argument("--monitoring", type=Path, default=DEFAULT_MONITORING, metavar="FILE",
                     help="monitoring config whose values the specs' [[ name ]] placeholders take (default: monitoring.yaml)")
    gen.set_defaults(handler=run)
    rep = verbs.add_parser("report", help="objective, availability, budget left, burn now and firing alerts per SLO "
                                          "and link, from Prometheus")
    rep.add_argument("--window", metavar="DURATION", help="availability window, e.g. 7d (default: each SLO's period)")
    rep.add_argument("--json", action="store_true", help="print one JSON object")
    rep.add_argument("--prometheus", metavar="URL", help="Prometheus base URL (default: from the config)")
    rep.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="FILE",
                     help="fleet config: Prometheus's address and the state dir holding its password (default: links.yaml)")
    rep.add_argument("--timeout", type=finite_float, default=30.0, help="seconds per query (default 30)")
    rep.add_argument("--specs", type=Path, default=SPEC_DIR, metavar="DIR", help="spec directory (default: slo/)")
    rep.add_argument("--monitoring", type=Path, default=DEFAULT_MONITORING, metavar="FILE",
                     help="monitoring config whose values the specs' [[ name ]] placeholders take (default: monitoring.yaml)")
    rep.set_defaults(handler=report)


def run(args: argparse.Namespace) -> int:
    text, slos = slo.generate(args.specs, load_monitoring_config(args.monitoring).values())
    shown = _shown(args.output)
    changed = sync({args.output: text}, args.check, "qkdops slo generate", _shown)
    if args.check:
        if changed:
            return 1
        print(f"{shown} is current ({len(slos)} SLOs)")
        return 0
    alerts = sum(1 for line in text.splitlines() if line.startswith("  - alert: "))
    print(f"wrote {shown}: {len(slos)} SLOs, {alerts} alert rules")
    return 0


def report(args: argparse.Namespace) -> int:
    if args.window is not None and (not is_duration(args.window) or duration_seconds(args.window) <= 0):
        raise ValueError(f"--window: expected a Prometheus duration such as 30d or 6h, got {args.window!r}")
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout}")
    _, slos = slo.generate(args.specs, load_monitoring_config(args.monitoring).values())
    runtime = load_config(args.config).runtime
    url = args.prometheus or http_url(runtime.bind, runtime.prometheus_port)
    client = PrometheusClient(url, StackAuth(runtime.state_dir).prometheus, args.timeout)  # CredentialError names the file
    try:
        result = slo_report.build_report(client, slos, time.time(), args.window)
    except (PrometheusUnreachable, PrometheusQueryError) as exc:
        print(f"qkdops slo report: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_json(), indent=2) if args.json else slo_report.table(result), end="\n" if args.json else "")
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
