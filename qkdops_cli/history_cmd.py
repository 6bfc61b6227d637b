"""``qkdops history --days D [--fleet links.yaml] [--incidents PLAN]``: weeks of emulated operation, backfilled.

Emulates the fleet's last D days faster than real time — drift, the calibration jobs acting, the
incidents of a plan (``history/incidents.yaml`` by default; format in ``history/plan.py``) — and loads
the samples every exporter and every recording rule would have produced into the local Prometheus's
data directory (``<state_dir>/prometheus``, and ``prometheus_b`` of an HA pair when it exists), with
progress bars on stderr. The history ends now, or where a running Prometheus's own data begins (it
picks the blocks up within a minute). ``qkdops up --history D`` runs this on a first start.

What is emulated and what is not: ``history/emulation.py`` (model post-processing engine, keys not
delivered unless ``--deliver-keys``, one emulator frame per block). The history's block archive stays in
``<state_dir>/history/blocks.sqlite``. Exit 0 done, 1 a step failed (named), 2 bad input.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from calibration_jobs.config import DEFAULT_JOBS_FILE, load_jobs_config
from history.backfill import DEFAULT_STEP_S, MAX_DAYS, BackfillResult, backfill
from history.plan import DEFAULT_PLAN, PlanError, load_plan
from history.tsdb import HistoryError, HistoryInputError
from monitoring.config import DEFAULT_PATH as DEFAULT_MONITORING
from monitoring.config import load_monitoring_config
from monitoring.prometheus import PROMETHEUS_REPLICAS
from qkdops.config import DEFAULT_CONFIG, ConfigError, FleetConfig, finite_float, load_config
from qkdops.durations import is_duration, seconds
from qkdops.http_client import PrometheusClient, PrometheusQueryError, PrometheusUnreachable, StackAuth, http_url
from qkdops.yaml_fields import FieldError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("history", help="emulate the fleet's last D days and backfill them into the local Prometheus",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=finite_float, required=True, help=f"how many days (at most {MAX_DAYS:g})")
    add_options(p)
    p.set_defaults(handler=run)


def add_options(p: argparse.ArgumentParser, fleet_option: bool = True) -> None:
    """The options ``history`` and ``up --history`` share (``up`` has its own ``--config``)."""
    if fleet_option:
        p.add_argument("--fleet", type=Path, default=DEFAULT_CONFIG, metavar="FILE", help="fleet config (default: links.yaml)")
    p.add_argument("--incidents", type=Path, default=DEFAULT_PLAN, metavar="PLAN",
                   help="incident plan (default: history/incidents.yaml)")
    p.add_argument("--history-step", default=f"{DEFAULT_STEP_S:g}s", metavar="DURATION",
                   help=f"sample (and rule evaluation) step of the history (default {DEFAULT_STEP_S:g}s; at most 30s "
                        "keeps two samples in the rules' 1-minute windows)")
    p.add_argument("--jobs", type=Path, default=DEFAULT_JOBS_FILE, metavar="FILE", help="calibration jobs (default: jobs.yaml)")
    p.add_argument("--deliver-keys", action="store_true",
                   help="hand every distilled key off to scratch KME stores as live (capacity, full-store policy): "
                        "the stores' levels and surplus discards are in the history too; costs ~20 ms per MB of key")
    if fleet_option:
        p.add_argument("--monitoring", type=Path, default=DEFAULT_MONITORING, metavar="FILE",
                       help="monitoring config: job names, SLO and rule values (default: monitoring.yaml)")


def run(args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so the run's scratch (tmpfs) and work dirs are removed
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        config = load_config(args.fleet)
    except (ConfigError, OSError) as exc:
        print(f"qkdops history: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_history(config, args, live_end(config))
    except HistoryInputError as exc:
        print(f"qkdops history: {exc}", file=sys.stderr)
        return 2
    except (HistoryError, OSError) as exc:
        print(f"qkdops history: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def run_history(config: FleetConfig, args: argparse.Namespace, end: float, extend_to: bool = False) -> BackfillResult:
    """Load the inputs ``args`` name and backfill ``args.days`` days ending at ``end``."""
    if not is_duration(args.history_step) or not 1 <= float(seconds(args.history_step)) <= 30:
        raise HistoryInputError(f"--history-step: expected a duration from 1s to 30s, got {args.history_step!r}")
    try:
        plan = load_plan(args.incidents, [link.id for link in config.links])
        jobs = load_jobs_config(args.jobs)
        monitoring = load_monitoring_config(args.monitoring)
    except (PlanError, FieldError, OSError, ValueError) as exc:
        raise HistoryInputError(str(exc)) from None
    state = config.runtime.state_dir
    data_dirs = [state / name for name in PROMETHEUS_REPLICAS if name == "prometheus" or (state / name).is_dir()]
    return backfill(config, monitoring, jobs, plan, args.days, end, data_dirs, float(seconds(args.history_step)),
                    extend_to=extend_to, progress=True, deliver_keys=args.deliver_keys)


def has_blocks(config: FleetConfig) -> bool:
    """Whether the local Prometheus's data dir holds any TSDB block (a first start holds none)."""
    data = config.runtime.state_dir / "prometheus"
    return data.is_dir() and any((p / "meta.json").is_file() for p in data.iterdir())


def live_end(config: FleetConfig) -> float:
    """Now — or where the local Prometheus's live data begins, when it runs and holds some (the
    history must not overlap what it scraped)."""
    rt = config.runtime
    try:
        client = PrometheusClient(http_url(rt.bind, rt.prometheus_port), StackAuth(rt.state_dir).prometheus, timeout_s=5.0)
        head = client.get("/api/v1/status/tsdb").get("headStats", {})
    except (PrometheusUnreachable, PrometheusQueryError, OSError, ValueError):   # not running, never started
        return time.time()
    min_time = head.get("minTime")
    if isinstance(min_time, int | float) and 0 < min_time < 2**62 and head.get("numSeries", 0):
        return min(time.time(), min_time / 1000.0)
    return time.time()
