"""``qkdops generate [--check] [--only NAME,...] [--monitoring FILE]``: every generated file of the
repository from its one source and the one monitoring config (``monitoring.yaml``), by one command —
the alert and recording rules (``alert_rules/*.yml`` from ``alert_rules/templates/``), the SLO rules
(``alert_rules/qkd-slos.yml`` from ``slo/``), the Grafana dashboards (``dashboards/*.json`` from
``dashboards/generate.py``) and the docker-compose configs of Prometheus and Alertmanager
(``prometheus/prometheus.yml`` and ``prometheus-b.yml``, the HA pair, ``alertmanager/alertmanager.yml`` from ``monitoring.prometheus`` and
``monitoring.alertmanager``, the same functions ``qkdops up`` renders its local configs with) and the
Kubernetes manifests (``deploy/kubernetes/``: PrometheusRules of those rules, the sharded fleet's
workloads, the PodMonitor and ServiceMonitors, the Prometheus and Alertmanager resources).

``--check`` writes nothing and exits 1 naming every file that is missing or stale (with the first
lines of its diff), so CI and a reviewer see generated files drift from their sources. The per-kind
command ``qkdops slo generate`` does the same for the SLO rules alone (``--specs``, ``--output``).
Exit codes: 0 written or current, 1 stale (``--check``), 2 a source is malformed (the monitoring
config, a template, an SLO spec), naming the file and field or line.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from dashboards import generate as dashboards
from monitoring import kubernetes, slo
from monitoring.alertmanager import COMPOSE_ALERTMANAGER_CONFIG, render_compose_alertmanager_config
from monitoring.config import DEFAULT_PATH as DEFAULT_MONITORING
from monitoring.config import MonitoringConfig, TemplateError, load_monitoring_config
from monitoring.prometheus import COMPOSE_PROMETHEUS_CONFIGS, render_compose_prometheus_config
from monitoring.rules import RULES_DIR, SLO_RULES, render_rule_files
from qkdops.config import ConfigError


def _rules(config: MonitoringConfig, slo_rules: bool) -> dict[Path, str]:
    return {RULES_DIR / name: text for name, text in render_rule_files(config).items() if (name == SLO_RULES) == slo_rules}


def _dashboards(config: MonitoringConfig) -> dict[Path, str]:
    return {dashboards.DIRECTORY / name: text for name, text in dashboards.render(config).items()}


ARTIFACTS: Mapping[str, Callable[[MonitoringConfig], dict[Path, str]]] = {
    "alert-rules": lambda config: _rules(config, slo_rules=False),
    "slo-rules": lambda config: _rules(config, slo_rules=True),
    "dashboards": _dashboards,
    "compose-prometheus": lambda config: {path: render_compose_prometheus_config(config, replica)
                                          for replica, path in COMPOSE_PROMETHEUS_CONFIGS.items()},
    "compose-alertmanager": lambda config: {COMPOSE_ALERTMANAGER_CONFIG: render_compose_alertmanager_config(config)},
    "kubernetes": kubernetes.render,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write every generated file from its source (or --check they are current)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each missing or stale file")
    p.add_argument("--only", metavar="NAME[,NAME...]", help=f"only these ({', '.join(ARTIFACTS)})")
    p.add_argument("--monitoring", type=Path, default=DEFAULT_MONITORING, metavar="FILE",
                   help="the monitoring config every file is rendered with (default: monitoring.yaml)")
    p.set_defaults(handler=run)


def sync(files: Mapping[Path, str], check: bool, command: str, shown: Callable[[Path], str] = str) -> list[Path]:
    """Write every file whose text differs from ``files`` and return them; with ``check`` write
    nothing, name each stale or missing one on stderr (with the first lines of its diff, so a reviewer
    sees where it drifted) and return those. ``shown``: how a path is named in messages."""
    changed = []
    for path, text in files.items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        changed.append(path)
        if check:
            print(f"{command}: {shown(path)} is {'missing' if current is None else 'stale'}: run `{command}`", file=sys.stderr)
            if current is not None:
                diff = difflib.unified_diff(current.splitlines(), text.splitlines(), shown(path), "generated", lineterm="", n=1)
                sys.stderr.writelines(line + "\n" for line in list(diff)[:20])
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return changed


def run(args: argparse.Namespace) -> int:
    names = list(ARTIFACTS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        if unknown := [n for n in names if n not in ARTIFACTS]:
            print(f"qkdops generate: --only: unknown {', '.join(unknown)} (choose from {', '.join(ARTIFACTS)})", file=sys.stderr)
            return 2
    try:
        config = load_monitoring_config(args.monitoring)
        files = {path: text for name in names for path, text in ARTIFACTS[name](config).items()}
    except (slo.SpecError, TemplateError, ConfigError) as exc:
        print(f"qkdops generate: {exc}", file=sys.stderr)
        return 2
    changed = sync(files, args.check, "qkdops generate")
    stale = len(changed) if args.check else 0
    for path in changed if not args.check else ():
        print(f"wrote {path}")
    if stale:
        return 1
    print(f"{len(files)} generated file(s) {'current' if args.check else 'up to date'} ({', '.join(names)})")
    return 0
