"""The local stack around the fleet: Prometheus and Alertmanager as supervised child processes.

``qkdops up`` runs the links, exporters, control API and pager sink in its own process and these two
servers as children (Debian's ``prometheus`` and ``prometheus-alertmanager``, installed by
``scripts/setup.sh``). Both servers' configurations are rendered here from the fleet config, so the
local stack and the docker-compose variants (``prometheus/prometheus.yml``,
``alertmanager/alertmanager.yml``: the same functions with service names; a test keeps them current)
cannot drift apart.

Alertmanager routing (``alertmanager_config``): alerts are grouped per ``alertname``, ``link``,
``site`` (the KMEs' alerts are per site) and ``slo`` (an SLO's burn tiers share one group, so one incident per SLO and link, and the faster tier's
inhibition of the slower keeps it to one alert); ``severity=page`` goes to the pager sink, PagerDuty
(Events v2) and Opsgenie, ``severity=ticket`` to the pager sink and Slack, anything else to the sink
only (a rule without a valid severity is a bug the sink makes visible). The sink comes first with
``continue`` so it sees every notification whatever the external receivers do. Pager keys are files
Alertmanager reads at each notification (``*_file``, Alertmanager ≥ 0.25), never config contents: the
compose config names files under ``/etc/alertmanager/secrets/`` (mounted from the ignored
``alertmanager/secrets/``), the local stack the files named by ``SECRET_FILE_ENV`` and only the
receivers whose variable is set, so an offline machine does not retry failing notifications.

The calibration scheduler (``qkdops scheduler``, package ``calibration_jobs``) is a third child, started
by ``qkdops up`` once the control API, Prometheus and the fleet are up, with its ``--api`` and
``--prometheus`` addresses passed explicitly (its token it resolves as the CLI does: the environment
``qkdops up`` passes on, else ``<state_dir>/api-token``). Prometheus scrapes it as job
``qkd-calibration`` (compose: ``calibration:9812``); ``qkdops up --no-calibration`` leaves both the
child and the scrape job out, so Prometheus shows no target rather than a crashed one (the ticket
``QKDCalibrationSchedulerDown`` still opens after 5 m through its ``absent()`` clause, which is true:
nothing calibrates; silence it for a game day).
Shutdown stops it first — SIGTERM, ``SCHEDULER_STOP_GRACE_S``, then SIGKILL — so no calibration action
is in flight while Prometheus, the control API and the fleet go away.

Authentication (``qkdops.credentials``, docs/security.md): ``start`` creates what is missing in the
state dir — the pager sink token and the Prometheus and Alertmanager passwords (0600) — and writes
``prometheus-web.yml`` / ``alertmanager-web.yml`` (bcrypt, user ``qkdops``), which both servers get as
``--web.config.file``, so every endpoint, ``/-/ready`` included, wants basic auth; the readiness checks
log in. Prometheus sends alerts with ``basic_auth.password_file`` (Alertmanager's password file) and
Alertmanager its webhooks to the pager sink with ``http_config.authorization.credentials_file`` (the
token file). The scheduler is started with ``QKDOPS_*_FILE`` naming these files
(``credentials.client_environment``). Compose: the same rendering with ``/run/secrets/`` paths
(``COMPOSE_SECRET_FILES``).

Supervision differs by what a child is for. Prometheus and Alertmanager are *essential*: without them
nothing is measured or paged, so when one dies ``qkdops up`` stops with status 1 and the operator sees
it at once. The scheduler is not essential to key production: the links keep producing key without it
(drift accumulates over tens of minutes, and the calibration metrics and alerts make that visible).
Stopping key production because a helper died would turn a calibration outage into a key outage, so a
scheduler that dies *after* start-up is restarted with exponential backoff (1 s, 2 s, … capped at
``RESTART_BACKOFF_MAX_S``; the backoff resets once it has run ``RESTART_RESET_AFTER_S``), each exit
logged at ERROR with the tail of its log, and ``up.json`` updated with the new pid; while it is down
its Prometheus target is down and ``qkdops status`` says so. A scheduler that cannot start at all
(bad ``calibration_jobs/jobs.yaml``, exit 2; another scheduler holding ``<state_dir>/calibration.lock``,
exit 1) fails ``qkdops up`` at start-up instead, like a taken port: an operator is watching then, and a
stack that silently runs without calibration is worse than a clear error (``--no-calibration`` is the
explicit way to run without it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import yaml

from qkdops import credentials
from qkdops.config import RuntimeSettings, parse_config, read_yaml
from qkdops.durations import format_seconds
from qkdops.http_client import Auth, StackAuth, http_url, open_url
from qkdops.processes import command_line, pid_alive

log = logging.getLogger("qkdops.stack")

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "alert_rules"
COMPOSE_PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
COMPOSE_ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"
COMPOSE_INTERVAL_S = 5.0
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's name
INSTALL_HINT = "run `bash scripts/setup.sh` (installs Debian's prometheus and prometheus-alertmanager)"
CALIBRATION_JOB = "qkd-calibration"
SCHEDULER = "calibration_scheduler"  # its name in up.json, `qkdops up`'s listing and `qkdops status`
SCHEDULER_READY_TIMEOUT_S = 30.0
SCHEDULER_STOP_GRACE_S = 10.0
RESTART_BACKOFF_MAX_S = 60.0
RESTART_RESET_AFTER_S = 60.0
# docker-compose: the fleet config inside the image, derived at build time (``write_container_config``).
CONTAINER_CONFIG = "/etc/qkdops/links.yaml"
CONTAINER_BIND = "0.0.0.0"


class StackError(RuntimeError):
    """A server of the stack cannot be started; the message says which and what to do."""


@dataclass(frozen=True)
class Hosts:
    """Addresses Prometheus uses to reach each service (local processes, or compose services)."""

    device: str
    postprocessing: str
    alertmanager: str
    pager_sink: str
    calibration: str | None = None  # the calibration scheduler's metrics; None: not run (no scrape job)


def local_hosts(rt: RuntimeSettings, calibration_bind: str | None = None) -> Hosts:
    """Local addresses; ``calibration_bind``: where the scheduler listens (None: it is not run)."""
    return Hosts(f"{rt.bind}:{rt.device_exporter_port}", f"{rt.bind}:{rt.postprocessing_exporter_port}",
                 f"{rt.bind}:{rt.alertmanager_port}", f"{rt.bind}:{rt.pager_sink_port}",
                 None if calibration_bind is None else f"{calibration_bind}:{rt.calibration_exporter_port}")


COMPOSE_HOSTS = Hosts("qkdops:9810", "qkdops:9811", "alertmanager:9093", "qkdops:9820", "calibration:9812")
# docker-compose's `secrets:` (files written by `qkdops credentials --compose-dir compose-secrets`), as the
# containers see them.
COMPOSE_SECRET_FILES = {name: f"/run/secrets/{name}" for name in (
    credentials.PAGER_SINK_TOKEN.file_name, credentials.PROMETHEUS_PASSWORD.file_name, credentials.ALERTMANAGER_PASSWORD.file_name,
    credentials.PROMETHEUS_WEB_CONFIG, credentials.ALERTMANAGER_WEB_CONFIG)}


def prometheus_config(hosts: Hosts, rule_glob: str, scrape_interval_s: float, *, alertmanager_password_file: str) -> dict[str, Any]:
    """Scrape both exporters and the calibration scheduler (job names are what rules and dashboards
    select on), send alerts to Alertmanager with basic auth (its password read from
    ``alertmanager_password_file`` at each reload)."""
    interval = f"{scrape_interval_s:g}s"
    jobs = [("qkd-device", hosts.device), ("qkd-postprocessing", hosts.postprocessing)]
    if hosts.calibration is not None:
        jobs.append((CALIBRATION_JOB, hosts.calibration))
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "external_labels": {"stack": "qkdops"}},
        "rule_files": [rule_glob],
        "alerting": {"alertmanagers": [{"basic_auth": {"username": credentials.USER, "password_file": alertmanager_password_file},
                                        "static_configs": [{"targets": [hosts.alertmanager]}]}]},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in jobs],
    }


def render_compose_prometheus_config() -> str:
    header = ("# Rendered by qkdops.stack.prometheus_config for docker-compose (service names);\n"
              "# `qkdops up` renders the same with local addresses. Do not edit: a test keeps it current.\n")
    return header + yaml.safe_dump(prometheus_config(COMPOSE_HOSTS, "/etc/prometheus/rules/*.yml", COMPOSE_INTERVAL_S,
                                                     alertmanager_password_file=COMPOSE_SECRET_FILES["alertmanager-password"]),
                                   sort_keys=False)


# ---- Alertmanager -----------------------------------------------------------------------------------
GROUP_BY = ["alertname", "link", "site", "slo"]  # site: KME alerts (per site, no link)
SINK_RECEIVER = "pager-sink-{kind}"  # one per pager_sink.KINDS endpoint


@dataclass(frozen=True)
class SecretFiles:
    """Paths of the files Alertmanager reads pager keys from; None: that receiver is not configured."""

    pagerduty_routing_key: str | None = None
    opsgenie_api_key: str | None = None
    slack_webhook_url: str | None = None


SECRET_FILE_ENV = {"pagerduty_routing_key": "QKDOPS_PAGERDUTY_ROUTING_KEY_FILE",
                   "opsgenie_api_key": "QKDOPS_OPSGENIE_API_KEY_FILE",
                   "slack_webhook_url": "QKDOPS_SLACK_WEBHOOK_URL_FILE"}
COMPOSE_SECRETS = SecretFiles("/etc/alertmanager/secrets/pagerduty-routing-key", "/etc/alertmanager/secrets/opsgenie-api-key",
                              "/etc/alertmanager/secrets/slack-webhook-url")


def secret_files_from_env(environ: Mapping[str, str]) -> SecretFiles:
    """The key files the environment names; a named file that is missing or empty is a StackError.

    Failing here, not at the first page, is the point: a typo in a path would otherwise leave pages
    going to the local sink only.
    """
    found: dict[str, str] = {}
    for field_name, variable in SECRET_FILE_ENV.items():
        if not (named := environ.get(variable, "").strip()):
            continue
        path = Path(named).expanduser().resolve()
        try:
            if not path.read_text(encoding="utf-8").strip():
                raise StackError(f"{variable} names {path}, which is empty")
        except (OSError, UnicodeDecodeError) as exc:
            raise StackError(f"{variable} names {path}, which cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        found[field_name] = str(path)
    return SecretFiles(**found)


@dataclass(frozen=True)
class Timing:
    """Alertmanager's group timers at the default 5-s evaluation interval, in seconds."""

    group_wait: float
    group_interval: float
    repeat_interval: float

    def scaled(self, evaluation_interval_s: float) -> dict[str, str]:
        """In proportion to the evaluation interval: a 1-s test profile pages in seconds, not minutes."""
        factor = evaluation_interval_s / COMPOSE_INTERVAL_S
        return {name: format_seconds(getattr(self, name) * factor) for name in ("group_wait", "group_interval", "repeat_interval")}


# Pages: groups are small (one alert, or an SLO's tiers), so a short wait costs no batching; a change
# (a new alert, the resolution) goes out within a minute; an open page is re-sent hourly. Tickets
# batch for a minute, update every 10 minutes and remind daily.
PAGE_TIMING = Timing(10, 60, 3600)
TICKET_TIMING = Timing(60, 600, 24 * 3600)


# Causes that stop a link's key outright and page within seconds: once one fires, QKDLinkDown (three
# aborted blocks later) says nothing new, and neither do the link's symptoms.
OUTAGE_CAUSES = ("QKDFiberCut", "QKDDetectorSaturated", "QKDClockDesync", "QKDClassicalChannelDown", "QKDVerificationFailing")


def _inhibit_rules() -> list[dict[str, Any]]:
    """A known outage cause explains QKDLinkDown and the link's symptoms; a down link explains its
    symptoms; a cut explains high loss; a faster SLO burn tier explains the slower ones."""
    tiers = ["1h", "6h", "1d", "3d"]
    causes = f'alertname=~"{"|".join(OUTAGE_CAUSES)}"'
    return [{"source_matchers": [causes], "target_matchers": ['alertname="QKDLinkDown"'], "equal": ["link"]},
            {"source_matchers": [causes], "target_matchers": ['class="symptom"'], "equal": ["link"]},
            {"source_matchers": ['alertname="QKDFiberCut"'], "target_matchers": ['alertname="QKDChannelLossHigh"'], "equal": ["link"]},
            {"source_matchers": ['alertname="QKDLinkDown"'], "target_matchers": ['class="symptom"'], "equal": ["link"]},
            *({"source_matchers": [f'tier="{fast}"'], "target_matchers": [f'tier=~"{"|".join(tiers[i + 1:])}"'],
               "equal": ["slo", "link"]} for i, fast in enumerate(tiers[:-1]))]


def alertmanager_config(pager_sink: str, secrets: SecretFiles, evaluation_interval_s: float, *, sink_token_file: str) -> dict[str, Any]:
    """Routing tree, receivers and inhibition (see the module docstring); ``pager_sink`` is host:port,
    ``sink_token_file`` the file holding its bearer token (read by Alertmanager at each notification)."""
    def sink(kind: str) -> dict[str, Any]:
        return {"name": SINK_RECEIVER.format(kind=kind),
                "webhook_configs": [{"url": f"http://{pager_sink}/webhook/{kind}", "send_resolved": True, "max_alerts": 0,
                                     "http_config": {"authorization": {"type": "Bearer", "credentials_file": sink_token_file}}}]}

    pagers: list[dict[str, Any]] = []
    if secrets.pagerduty_routing_key:
        pagers.append({"name": "pagerduty", "pagerduty_configs": [{
            "routing_key_file": secrets.pagerduty_routing_key, "send_resolved": True, "severity": "critical",
            "links": [{"href": "{{ .CommonAnnotations.runbook_url }}", "text": "Runbook"}]}]})
    if secrets.opsgenie_api_key:
        pagers.append({"name": "opsgenie", "opsgenie_configs": [{
            "api_key_file": secrets.opsgenie_api_key, "send_resolved": True, "priority": "P1"}]})
    chats: list[dict[str, Any]] = []
    if secrets.slack_webhook_url:
        chats.append({"name": "slack-tickets", "slack_configs": [{
            "api_url_file": secrets.slack_webhook_url, "send_resolved": True,
            "text": "{{ range .Alerts }}{{ .Annotations.description }} <{{ .Annotations.runbook_url }}|Runbook> {{ end }}"}]})

    def fan_out(kind: str, external: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = [SINK_RECEIVER.format(kind=kind), *(r["name"] for r in external)]
        return [{"receiver": name, **({"continue": True} if i < len(names) - 1 else {})} for i, name in enumerate(names)]

    return {
        "route": {
            "receiver": SINK_RECEIVER.format(kind="unrouted"), "group_by": GROUP_BY,
            **TICKET_TIMING.scaled(evaluation_interval_s),
            "routes": [
                {"matchers": ['severity="page"'], **PAGE_TIMING.scaled(evaluation_interval_s), "routes": fan_out("page", pagers)},
                {"matchers": ['severity="ticket"'], **TICKET_TIMING.scaled(evaluation_interval_s), "routes": fan_out("ticket", chats)},
            ],
        },
        "inhibit_rules": _inhibit_rules(),
        "receivers": [sink("page"), sink("ticket"), sink("unrouted"), *pagers, *chats],
    }


def render_compose_alertmanager_config() -> str:
    header = ("# Rendered by qkdops.stack.alertmanager_config for docker-compose: the pager sink at the qkdops\n"
              "# service, every external receiver with its key file under /etc/alertmanager/secrets/ (see\n"
              "# alertmanager/secrets/README.md). `qkdops up` renders the same with local addresses and only the\n"
              "# receivers whose key files are configured. Do not edit: a test keeps it current.\n")
    return header + yaml.safe_dump(alertmanager_config(COMPOSE_HOSTS.pager_sink, COMPOSE_SECRETS, COMPOSE_INTERVAL_S,
                                                       sink_token_file=COMPOSE_SECRET_FILES["pager-sink-token"]),
                                   sort_keys=False, width=200)


def container_config(source: Path) -> str:
    """The fleet config for the containers of docker-compose: ``source`` with ``runtime.bind`` 0.0.0.0
    and an absolute ``state_dir``.

    Every service of the qkdops image must listen where the compose network reaches it, and the
    scheduler has no ``--bind`` (it serves at its config's ``runtime.bind``); the Dockerfile writes this
    once at build time from the ``links.yaml`` it copies, so the fleet cannot drift from it. Validated
    like any config (a ConfigError names the field).
    """
    raw = read_yaml(source)
    if not isinstance(raw, dict):
        parse_config(raw, source)   # raises the ConfigError that names the file
    runtime = dict(raw.get("runtime") or {})
    state_dir = Path(runtime.get("state_dir", RuntimeSettings.state_dir))
    runtime.update(bind=CONTAINER_BIND, state_dir=str(state_dir if state_dir.is_absolute() else source.resolve().parent / state_dir))
    raw = {**raw, "runtime": runtime}
    parse_config(raw, source)
    header = (f"# Derived from {source} by qkdops.stack.container_config at image build: runtime.bind\n"
              f"# {CONTAINER_BIND} (reachable from the compose network; ports are published on 127.0.0.1 only) and\n"
              "# an absolute state_dir. Edit links.yaml and rebuild, not this file.\n")
    return header + yaml.safe_dump(raw, sort_keys=False)


def write_container_config(source: str | Path, target: str | Path) -> None:
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(container_config(Path(source)), encoding="utf-8")


def scheduler_argv(config_path: Path, rt: RuntimeSettings) -> list[str]:
    """``qkdops scheduler`` for this runtime: addresses explicit, so it never guesses them; it exits
    with ``qkdops up`` even when that is killed with SIGKILL (no orphan holding the state lock)."""
    return [sys.executable, "-m", "qkdops.cli", "scheduler", "--config", str(config_path),
            "--api", http_url(rt.bind, rt.control_port), "--prometheus", http_url(rt.bind, rt.prometheus_port),
            "--exit-with-parent"]


def find_binary(names: tuple[str, ...]) -> str:
    for name in names:
        if (path := shutil.which(name)) is not None:
            return path
    raise StackError(f"{' or '.join(names)} not found on PATH: {INSTALL_HINT}")


@dataclass
class Child:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str] = field(default_factory=list)
    ready_url: str = ""
    auth: Auth | None = None  # what its readiness check presents (Prometheus and Alertmanager: basic auth)
    essential: bool = True  # its death stops the stack; otherwise it is restarted (module docstring)
    env: dict[str, str] | None = None
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    failures: int = 0  # consecutive short-lived runs: the backoff exponent
    restart_at: float | None = None  # when a dead non-essential child is due to be restarted


class Stack:
    """Starts, watches and stops Prometheus, Alertmanager and the calibration scheduler for a runtime.

    ``scheduler_config``: the config file the scheduler is started with (None: no scheduler, no
    ``qkd-calibration`` scrape job); ``scheduler_bind``: the ``runtime.bind`` of that file, where it
    listens (``qkdops up --bind`` overrides only its own servers' address).
    """

    def __init__(self, rt: RuntimeSettings, scheduler_config: Path | None = None, scheduler_bind: str | None = None) -> None:
        self.rt = rt
        self.children: list[Child] = []
        self.state_dir = rt.state_dir
        self.scheduler_config = scheduler_config
        self.scheduler_bind = (scheduler_bind or rt.bind) if scheduler_config is not None else None

    @property
    def scheduler_url(self) -> str | None:
        """The scheduler's metrics endpoint, as printed and recorded in up.json."""
        if self.scheduler_bind is None:
            return None
        return f"http://{self.scheduler_bind}:{self.rt.calibration_exporter_port}/metrics"

    def start(self) -> None:
        prometheus = find_binary(("prometheus",))
        alertmanager = find_binary(ALERTMANAGER_BINARIES)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        creds = credentials.prepare_server_credentials(self.state_dir)
        auth = StackAuth(self.state_dir)
        hosts = local_hosts(self.rt, self.scheduler_bind)
        config_path = self.state_dir / "prometheus.yml"
        config = prometheus_config(hosts, str(RULES_DIR / "*.yml"), self.rt.scrape_interval_s,
                                   alertmanager_password_file=str(creds.alertmanager_password_file))
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        am_config_path = self.state_dir / "alertmanager.yml"
        am_config = alertmanager_config(hosts.pager_sink, secret_files_from_env(os.environ), self.rt.scrape_interval_s,
                                        sink_token_file=str(creds.pager_sink_token_file))
        am_config_path.write_text(yaml.safe_dump(am_config, sort_keys=False, width=200))
        bind = self.rt.bind
        self._spawn("alertmanager", f"http://{bind}:{self.rt.alertmanager_port}", [
            alertmanager, f"--config.file={am_config_path}", f"--storage.path={self.state_dir / 'alertmanager'}",
            f"--web.listen-address={bind}:{self.rt.alertmanager_port}", "--cluster.listen-address=",
            f"--web.config.file={creds.alertmanager_web_config}",   # basic auth on every endpoint
            f"--web.external-url=http://{bind}:{self.rt.alertmanager_port}/"], auth=auth.alertmanager)
        self._spawn("prometheus", f"http://{bind}:{self.rt.prometheus_port}", [
            prometheus, f"--config.file={config_path}", f"--storage.tsdb.path={self.state_dir / 'prometheus'}",
            f"--web.listen-address={bind}:{self.rt.prometheus_port}",   # no lifecycle API: /-/quit would let anyone stop it
            f"--web.config.file={creds.prometheus_web_config}",   # basic auth on every endpoint
            f"--web.external-url=http://{bind}:{self.rt.prometheus_port}/"], auth=auth.prometheus)

    def start_scheduler(self, argv: list[str] | None = None, timeout_s: float = SCHEDULER_READY_TIMEOUT_S) -> None:
        """Start the calibration scheduler and wait for its ``/healthz``; StackError if it cannot start.

        ``argv`` defaults to ``scheduler_argv`` (tests pass a stand-in).
        """
        if self.scheduler_config is None or (url := self.scheduler_url) is None:
            raise StackError("no scheduler configured for this stack")
        argv = argv or scheduler_argv(self.scheduler_config, self.rt)
        # Unbuffered: the tail of its log, quoted when it fails, is then what it last said.
        # and the credential files this stack uses, whatever the state dir of its --config says
        env = {**os.environ, **credentials.client_environment(self.state_dir), "PYTHONUNBUFFERED": "1"}
        child = self._spawn(SCHEDULER, url, argv, ready_url=urljoin(url, "/healthz"), essential=False, env=env)
        try:
            self._wait(child, time.monotonic() + timeout_s, timeout_s)
        except StackError as exc:
            hint = {1: f" (another scheduler holding {self.state_dir / 'calibration.lock'}, or the control API not answering?)",
                    2: " (a bad configuration: the log names the file and field)"}.get(child.process.returncode or 0, "")
            raise StackError(f"{exc}{hint}; `qkdops up --no-calibration` runs the stack without it") from None

    def _spawn(self, name: str, url: str, argv: list[str], ready_url: str = "", essential: bool = True,
               env: dict[str, str] | None = None, auth: Auth | None = None) -> Child:
        child = Child(name, url, self._popen(name, argv, env), self.state_dir / f"{name}.log", argv,
                      ready_url or f"{url}/-/ready", auth, essential, env)
        self.children.append(child)
        return child

    def _popen(self, name: str, argv: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        with open(self.state_dir / f"{name}.log", "ab") as log_file:
            return subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait for each child's readiness endpoint, or raise StackError with the tail of its log."""
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            self._wait(child, deadline, timeout_s)

    def _wait(self, child: Child, deadline: float, timeout_s: float) -> None:
        while True:
            if child.process.poll() is not None:
                raise StackError(f"{child.name} exited with status {child.process.returncode}: {_tail(child.log_path)}")
            try:
                with open_url(child.ready_url, child.auth, timeout_s=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{child.name} not ready at {child.ready_url} after {timeout_s:g} s: {_tail(child.log_path)}")
            time.sleep(0.2)

    def dead(self) -> Child | None:
        """An essential child that exited on its own, if any (the stack must stop)."""
        return next((c for c in self.children if c.essential and c.process.poll() is not None), None)

    def tend(self, now: float | None = None) -> bool:
        """Restart non-essential children that exited, with backoff; True when one was restarted (new pid)."""
        now = time.monotonic() if now is None else now
        restarted = False
        for child in self.children:
            if child.essential or child.process.poll() is None:
                continue
            if child.restart_at is None:
                if now - child.started_at >= RESTART_RESET_AFTER_S:
                    child.failures = 0
                delay = min(RESTART_BACKOFF_MAX_S, 2.0 ** child.failures)
                child.failures += 1
                child.restart_at = now + delay
                log.error("%s exited with status %s; restarting it in %g s (the stack keeps running; log %s): %s",
                          child.name, child.process.returncode, delay, child.log_path, _tail(child.log_path))
            elif now >= child.restart_at:
                child.process = self._popen(child.name, child.argv, child.env)
                child.started_at, child.restart_at = now, None
                child.restarts += 1
                log.warning("%s restarted (pid %d, restart %d)", child.name, child.process.pid, child.restarts)
                restarted = True
        return restarted

    def stop(self, grace_s: float = 10.0) -> None:
        """The scheduler first (nothing acts while the rest goes away), then Prometheus and Alertmanager."""
        self._terminate([c for c in self.children if not c.essential], SCHEDULER_STOP_GRACE_S)
        self._terminate([c for c in self.children if c.essential], grace_s)

    @staticmethod
    def _terminate(children: list[Child], grace_s: float) -> None:
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %g s of SIGTERM; killing it", child.name, grace_s)
                child.process.kill()
                child.process.wait()


def write_up_file(path: Path, endpoints: Mapping[str, str], pids: Mapping[str, int],
                  disabled: Mapping[str, str] | None = None) -> None:
    """What `qkdops status` reads: where each part of a running `qkdops up` listens, and which parts
    were left out on purpose (name → the option that did it). Replaced atomically: it is rewritten
    when a child restarts while `qkdops status` may be reading it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"endpoints": dict(endpoints), "pids": dict(pids), "disabled": dict(disabled or {})}, indent=2))
    os.replace(tmp, path)


def stop_orphans(up_file: Path, state_dir: Path, grace_s: float = 10.0) -> None:
    """Stop what a killed (kill -9) `qkdops up` left running, as its ``up_file`` recorded it.

    Prometheus and Alertmanager run in sessions of their own, so that Ctrl-C reaches only `up`,
    which stops them in order; when `up` itself is killed they stay, holding their ports and the
    state directory, and the next `up` could not start. A child is stopped only if `up` is gone and
    the child's command line names ``state_dir`` (a recycled pid belongs to someone else). The
    scheduler stops by itself when `up` is gone.
    """
    try:
        pids = json.loads(up_file.read_text())["pids"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if pid_alive(pids.get("qkdops", 0)):
        return  # a live `up` owns them (its ports tell the new one so)
    for name, pid in pids.items():
        if name != "qkdops" and pid_alive(pid) and str(state_dir) in command_line(pid):
            log.warning("stopping %s (pid %d), left running by a `qkdops up` that was killed", name, pid)
            with contextlib.suppress(ProcessLookupError):  # it may end on its own meanwhile
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + grace_s
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
