"""``qkdops scheduler`` (the calibration service) and ``qkdops calibrate`` (one job, now).

Contract::

    qkdops scheduler [--config links.yaml] [--jobs calibration_jobs/jobs.yaml] [--api URL] [--prometheus URL]
    qkdops calibrate JOB --link LINK [--config …] [--jobs …] [--api URL] [--prometheus URL] [--json]

``scheduler`` runs in the foreground until SIGINT/SIGTERM (exit 0) — with ``--exit-with-parent``
also when the process that started it exits — serving its metrics and
``/healthz`` on ``runtime.bind``:``runtime.calibration_exporter_port``; exit 2 on a bad config, 1 if
another scheduler holds ``<state_dir>/calibration.lock`` or the control API never answers.
``calibrate`` runs JOB (phase_relock, intensity_retune, polarization_realign, detector_regate,
decoy_estimation) on LINK once, ignoring the job's back-off (a human asked), records it like a
scheduled run and prints what it saw, decided, did and verified; exit 0 when the link ends healthy
or corrected, 1 when the run failed or errored (or the job is running elsewhere), 2 on bad input.

Signals come from Prometheus (``--prometheus``, else ``signals.prometheus_url``, else the config's
bind and Prometheus port) with the control API's link status as fallback; actions go through the
control API (``--api`` and the token as for ``qkdops fault``). Prometheus wants basic auth: the
password is read from the file env ``QKDOPS_PROMETHEUS_PASSWORD_FILE`` names (``qkdops up`` sets it
for the scheduler it starts; compose points it at a secret), else ``<state_dir>/prometheus-password``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration_jobs.config import DEFAULT_JOBS_FILE, JOB_NAMES, JobsConfig, load_jobs_config
from calibration_jobs.metrics import CalibrationCollector
from calibration_jobs.runner import JobRunner, RunBusy, RunReport
from qkdops.processes import run_until_stopped, stop_on_signals
from calibration_jobs.service import CalibrationService, SchedulerLocked
from calibration_jobs.signals import PrometheusQuery, SignalReader
from calibration_jobs.store import CalibrationStore
from exporters import server as exporter_server
from qkdops.config import DEFAULT_CONFIG, FleetConfig, load_config
from qkdops.control_client import ApiResponseError, ApiUnreachable, ControlClient, resolve_token, resolve_url
from qkdops.http_client import StackAuth, http_url

STORE_FILE = "calibration.sqlite"
API_WAIT_S = 60.0  # the scheduler starts beside the runtime: give the control API this long to answer
log = logging.getLogger("qkdops.calibration")


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=str(DEFAULT_CONFIG), help="fleet config (default: links.yaml)")
    common.add_argument("--jobs", metavar="FILE", default=str(DEFAULT_JOBS_FILE),
                        help="calibration jobs config (default: calibration_jobs/jobs.yaml)")
    common.add_argument("--api", metavar="URL", help="control API base URL (default: $QKDOPS_API_URL, else from the config)")
    common.add_argument("--prometheus", metavar="URL", help="Prometheus base URL (default: jobs config, else from the config)")

    scheduler = sub.add_parser("scheduler", parents=[common], help="run the calibration scheduler (foreground)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scheduler.add_argument("--exit-with-parent", action="store_true",
                           help="stop when the process that started this one exits (how `qkdops up` runs it)")
    scheduler.set_defaults(handler=_scheduler)

    calibrate = sub.add_parser("calibrate", parents=[common], help="run one calibration job on one link now",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    calibrate.add_argument("job", choices=JOB_NAMES, metavar="JOB", help=f"one of {', '.join(JOB_NAMES)}")
    calibrate.add_argument("--link", required=True, metavar="LINK")
    calibrate.add_argument("--json", action="store_true", help="print the run report as JSON")
    calibrate.set_defaults(handler=_calibrate)


@dataclass
class Wiring:
    """Everything a run needs, built from the two config files and the URL options."""

    fleet: FleetConfig
    jobs: JobsConfig
    api: ControlClient
    prometheus: PrometheusQuery | None
    store: CalibrationStore
    collector: CalibrationCollector
    runner: JobRunner


def wire(args: argparse.Namespace) -> Wiring:
    fleet = load_config(args.config)
    jobs = load_jobs_config(args.jobs)
    rt = fleet.runtime
    api = ControlClient(resolve_url(args.api, args.config), resolve_token(args.config).value)
    prometheus = None
    if jobs.signals.source == "prometheus":
        url = args.prometheus or jobs.signals.prometheus_url or http_url(rt.bind, rt.prometheus_port)
        # basic auth from <state_dir>/prometheus-password, or the file $QKDOPS_PROMETHEUS_PASSWORD_FILE names
        prometheus = PrometheusQuery(url, jobs.signals.timeout_s, StackAuth(rt.state_dir).prometheus)
    store = CalibrationStore(Path(rt.state_dir) / STORE_FILE)
    collector = CalibrationCollector(store)
    reader = SignalReader(api, prometheus, jobs.signals.max_age_s)
    runner = JobRunner(jobs, api, reader, store, observe_duration=collector.observe_duration)
    return Wiring(fleet, jobs, api, prometheus, store, collector, runner)


def _calibrate(args: argparse.Namespace) -> int:
    w = wire(args)
    try:
        links = {entry["link"]: entry["protocol"] for entry in w.api.links()}
        if args.link not in links:
            raise ValueError(f"--link: unknown link '{args.link}' (links: {', '.join(links)})")
        if args.job not in w.jobs.jobs:
            raise ValueError(f"{args.job}: not configured in {w.jobs.source}")
        report = w.runner.run(args.job, args.link, links[args.link], trigger="manual", manual=True)
    except (ApiUnreachable, ApiResponseError, RunBusy) as exc:
        print(f"qkdops calibrate: {exc}", file=sys.stderr)
        return 1
    finally:
        w.store.close()
    print(json.dumps(report.as_json(), indent=2, sort_keys=True) if args.json else render(report))
    return 0 if report.outcome in ("healthy", "corrected") else 1


def render(report: RunReport) -> str:
    """The run as an on-call engineer reads it: saw → decided → did → verified → outcome."""
    lines = [f"{report.job} on {report.link} ({report.protocol}), run {report.run_id}"]
    if report.signals:
        s = report.signals
        lines.append(f"  saw ({s['source']}):")
        for key in ("phase_locked", "phase_actuator_usage", "phase_error_rad", "polarization_angle_rad", "visibility",
                    "block_qber", "qber_threshold", "dark_count_rate_hz", "dark_count_rate_nominal_hz", "live_time_ratio",
                    "detection_rate_hz"):
            if s.get(key) is not None:
                lines.append(f"    {key:<28} {_number(s[key])}")
        for key in ("intensity_commanded", "intensity_measured"):
            if s.get(key):
                lines.append(f"    {key:<28} " + ", ".join(f"{k}={_number(v)}" for k, v in sorted(s[key].items())))
    for note in report.notes:
        lines.append(f"  note: {note}")
    if report.decision:
        lines.append(f"  decided: {report.decision}")
    if report.action:
        a = report.action
        lines.append(f"  did: {a['name']} → {'ok' if a['ok'] else 'refused'} ({a['message']})")
        for key in sorted(set(a["before"]) | set(a["after"])):
            lines.append(f"    {key:<28} {_number(a['before'].get(key))} → {_number(a['after'].get(key))}")
    if report.verification:
        lines.append(f"  verified: {'ok' if report.verification['ok'] else 'NOT fixed'} — {report.verification['reason']}")
    if report.published and "recommendation" in report.published:
        rec = report.published["recommendation"]
        lines.append(f"  observed channel loss {rec['observed_loss_db']:.2f} dB; recommended "
                     + ", ".join(f"{k}={_number(v)}" for k, v in rec["parameters"].items())
                     + (f" (key rate x{rec['gain_ratio']:.3f})" if rec.get("gain_ratio") is not None else ""))
    lines.append(f"  outcome: {report.outcome} — {report.reason} ({report.duration_s:.2f} s)")
    return "\n".join(lines)


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _scheduler(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # APScheduler logs two INFO lines per run ("Running job", "executed successfully"): the runner's
    # own line says more, so only the executor's warnings (a missed run, a job error) stay
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    w = wire(args)
    rt = w.fleet.runtime
    links = _wait_for_links(w.api)
    if links is None:
        print(f"qkdops scheduler: the control API at {w.api.url} did not answer within {API_WAIT_S:.0f} s", file=sys.stderr)
        return 1
    service = CalibrationService(w.jobs, w.runner, w.store, Path(rt.state_dir), lambda: links)
    try:
        ids = service.start()
    except SchedulerLocked as exc:
        print(f"qkdops scheduler: {exc}", file=sys.stderr)
        return 1
    w.collector.expect(service.scheduled())
    server = exporter_server.serve(w.collector, rt.bind, rt.calibration_exporter_port, name="calibration")
    log.info("calibration scheduler: %d job(s) on %d link(s); metrics on http://%s:%d/metrics; signals from %s",
             len(ids), len(links), rt.bind, server.server_port, w.prometheus.url if w.prometheus else "link status")
    try:
        if (parent := run_until_stopped(stop_on_signals(), args.exit_with_parent)) is not None:
            log.warning("calibration scheduler: the process that started it (pid %d) is gone; stopping", parent)
    finally:
        log.info("calibration scheduler: stopping (waiting for running jobs)")
        service.stop(wait=True)
        server.stop()
        w.store.close()
    return 0


def _wait_for_links(api: ControlClient) -> list[dict[str, str]] | None:
    deadline = time.monotonic() + API_WAIT_S
    while True:
        try:
            return api.links()
        except ApiUnreachable:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)
