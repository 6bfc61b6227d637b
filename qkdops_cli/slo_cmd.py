"""``qkdops slo generate [--check]``: turn the SLO specs in ``slo/`` into ``alert_rules/qkd-slos.yml``.

The specs are Sloth ``prometheus/v1`` documents or files of OpenSLO v1 documents (``slo/README.md``);
every ``*.yaml``/``*.yml`` file of the spec directory is read, in name order. ``--check`` writes nothing and exits 1 when the rule
file is not what the specs generate, so CI (and a test) catch a spec edited without regenerating.

Exit codes: 0 written (or current), 1 ``--check`` found the file stale or missing, 2 a spec is
malformed: one line per problem, each naming the file and the field path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monitoring import slo
from monitoring.config import DEFAULT_PATH as DEFAULT_MONITORING
from monitoring.config import load_monitoring_config
from monitoring.rules import RULES_DIR, SLO_RULES, SPEC_DIR
from qkdops_cli.generate_cmd import sync

OUTPUT = RULES_DIR / SLO_RULES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slo", help="SLO specs → multiwindow multi-burn-rate Prometheus rules",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="slo_command", required=True, metavar="{generate}")
    gen = verbs.add_parser("generate", help="write the rule file from the specs (or --check it is current)")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if the rule file is not current")
    gen.add_argument("--specs", type=Path, default=SPEC_DIR, metavar="DIR", help="spec directory (default: slo/)")
    gen.add_argument("--output", type=Path, default=OUTPUT, metavar="FILE",
                     help="rule file (default: alert_rules/qkd-slos.yml)")
    gen.add_argument("--monitoring", type=Path, default=DEFAULT_MONITORING, metavar="FILE",
                     help="monitoring config whose values the specs' [[ name ]] placeholders take (default: monitoring.yaml)")
    gen.set_defaults(handler=run)


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


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
