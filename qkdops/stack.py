"""The local stack around the fleet: Prometheus and Alertmanager as supervised child processes.

``qkdops up`` runs the links, exporters, control API and pager sink in its own process and these two
servers as children (Debian's ``prometheus`` and ``prometheus-alertmanager``, installed by
``scripts/setup.sh``). Both servers' configurations are rendered here from the fleet config, so the
local stack and the docker-compose variants (``prometheus/prometheus.yml``,
``alertmanager/alertmanager.yml``: the same functions with service names; a test keeps them current)
cannot drift apart.

Alertmanager routing (``alertmanager_config``): alerts are grouped per ``alertname``, ``link`` and
``slo`` (an SLO's burn tiers share one group, so one incident per SLO and link, and the faster tier's
inhibition of the slower keeps it to one alert); ``severity=page`` goes to the pager sink, PagerDuty
(Events v2) and Opsgenie, ``severity=ticket`` to the pager sink and Slack, anything else to the sink
only (a rule without a valid severity is a bug the sink makes visible). The sink comes first with
``continue`` so it sees every notification whatever the external receivers do. Pager keys are files
Alertmanager reads at each notification (``*_file``, Alertmanager ≥ 0.25), never config contents: the
compose config names files under ``/etc/alertmanager/secrets/`` (mounted from the ignored
``alertmanager/secrets/``), the local stack the files named by ``SECRET_FILE_ENV`` and only the
receivers whose variable is set, so an offline machine does not retry failing notifications.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qkdops.config import RuntimeSettings

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "alert_rules"
COMPOSE_PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
COMPOSE_ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"
COMPOSE_INTERVAL_S = 5.0
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's name
INSTALL_HINT = "run `bash scripts/setup.sh` (installs Debian's prometheus and prometheus-alertmanager)"


class StackError(RuntimeError):
    """A server of the stack cannot be started; the message says which and what to do."""


@dataclass(frozen=True)
class Hosts:
    """Addresses Prometheus uses to reach each service (local processes, or compose services)."""

    device: str
    postprocessing: str
    alertmanager: str
    pager_sink: str


def local_hosts(rt: RuntimeSettings) -> Hosts:
    return Hosts(f"{rt.bind}:{rt.device_exporter_port}", f"{rt.bind}:{rt.postprocessing_exporter_port}",
                 f"{rt.bind}:{rt.alertmanager_port}", f"{rt.bind}:{rt.pager_sink_port}")


COMPOSE_HOSTS = Hosts("qkdops:9810", "qkdops:9811", "alertmanager:9093", "qkdops:9820")


def prometheus_config(hosts: Hosts, rule_glob: str, scrape_interval_s: float) -> dict[str, Any]:
    """Scrape both exporters (job names are what rules and dashboards select on), send alerts."""
    interval = f"{scrape_interval_s:g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "external_labels": {"stack": "qkdops"}},
        "rule_files": [rule_glob],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [hosts.alertmanager]}]}]},
        "scrape_configs": [
            {"job_name": "qkd-device", "static_configs": [{"targets": [hosts.device]}]},
            {"job_name": "qkd-postprocessing", "static_configs": [{"targets": [hosts.postprocessing]}]},
        ],
    }


def render_compose_prometheus_config() -> str:
    header = ("# Rendered by qkdops.stack.prometheus_config for docker-compose (service names);\n"
              "# `qkdops up` renders the same with local addresses. Do not edit: a test keeps it current.\n")
    return header + yaml.safe_dump(prometheus_config(COMPOSE_HOSTS, "/etc/prometheus/rules/*.yml", COMPOSE_INTERVAL_S),
                                   sort_keys=False)


# ---- Alertmanager -----------------------------------------------------------------------------------
GROUP_BY = ["alertname", "link", "slo"]
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
        return {name: _duration(getattr(self, name) * factor) for name in ("group_wait", "group_interval", "repeat_interval")}


# Pages: groups are small (one alert, or an SLO's tiers), so a short wait costs no batching; a change
# (a new alert, the resolution) goes out within a minute; an open page is re-sent hourly. Tickets
# batch for a minute, update every 10 minutes and remind daily.
PAGE_TIMING = Timing(10, 60, 3600)
TICKET_TIMING = Timing(60, 600, 24 * 3600)


def _duration(seconds: float) -> str:
    """Whole seconds, at least 1, as Prometheus writes durations (``4h48m``, ``12s``)."""
    left = max(1, round(seconds))
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            out += f"{left // size}{unit}"
            left %= size
    return out


def _inhibit_rules() -> list[dict[str, Any]]:
    """A down link explains its symptoms; a faster SLO burn tier explains the slower ones."""
    tiers = ["1h", "6h", "1d", "3d"]
    return [{"source_matchers": ['alertname="QKDLinkDown"'], "target_matchers": ['class="symptom"'], "equal": ["link"]},
            *({"source_matchers": [f'tier="{fast}"'], "target_matchers": [f'tier=~"{"|".join(tiers[i + 1:])}"'],
               "equal": ["slo", "link"]} for i, fast in enumerate(tiers[:-1]))]


def alertmanager_config(pager_sink: str, secrets: SecretFiles, evaluation_interval_s: float) -> dict[str, Any]:
    """Routing tree, receivers and inhibition (see the module docstring); ``pager_sink`` is host:port."""
    def sink(kind: str) -> dict[str, Any]:
        return {"name": SINK_RECEIVER.format(kind=kind),
                "webhook_configs": [{"url": f"http://{pager_sink}/webhook/{kind}", "send_resolved": True, "max_alerts": 0}]}

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
    return header + yaml.safe_dump(alertmanager_config(COMPOSE_HOSTS.pager_sink, COMPOSE_SECRETS, COMPOSE_INTERVAL_S),
                                   sort_keys=False, width=200)


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


class Stack:
    """Starts, watches and stops Prometheus and Alertmanager for a runtime."""

    def __init__(self, rt: RuntimeSettings) -> None:
        self.rt = rt
        self.children: list[Child] = []
        self.state_dir = rt.state_dir

    def start(self) -> None:
        prometheus = find_binary(("prometheus",))
        alertmanager = find_binary(ALERTMANAGER_BINARIES)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        hosts = local_hosts(self.rt)
        config_path = self.state_dir / "prometheus.yml"
        config = prometheus_config(hosts, str(RULES_DIR / "*.yml"), self.rt.scrape_interval_s)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        am_config_path = self.state_dir / "alertmanager.yml"
        am_config = alertmanager_config(hosts.pager_sink, secret_files_from_env(os.environ), self.rt.scrape_interval_s)
        am_config_path.write_text(yaml.safe_dump(am_config, sort_keys=False, width=200))
        bind = self.rt.bind
        self._spawn("alertmanager", f"http://{bind}:{self.rt.alertmanager_port}", [
            alertmanager, f"--config.file={am_config_path}", f"--storage.path={self.state_dir / 'alertmanager'}",
            f"--web.listen-address={bind}:{self.rt.alertmanager_port}", "--cluster.listen-address=",
            f"--web.external-url=http://{bind}:{self.rt.alertmanager_port}/"])
        self._spawn("prometheus", f"http://{bind}:{self.rt.prometheus_port}", [
            prometheus, f"--config.file={config_path}", f"--storage.tsdb.path={self.state_dir / 'prometheus'}",
            f"--web.listen-address={bind}:{self.rt.prometheus_port}", "--web.enable-lifecycle",
            f"--web.external-url=http://{bind}:{self.rt.prometheus_port}/"])

    def _spawn(self, name: str, url: str, argv: list[str]) -> None:
        log_path = self.state_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.children.append(Child(name, url, process, log_path))

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait for each child's /-/ready, or raise StackError with the tail of its log."""
        import urllib.request

        deadline = time.monotonic() + timeout_s
        for child in self.children:
            while True:
                if child.process.poll() is not None:
                    raise StackError(f"{child.name} exited with status {child.process.returncode}: "
                                     f"{_tail(child.log_path)}")
                try:
                    with urllib.request.urlopen(f"{child.url}/-/ready", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(f"{child.name} not ready at {child.url} after {timeout_s:g} s: {_tail(child.log_path)}")
                time.sleep(0.2)

    def dead(self) -> Child | None:
        """A child that exited on its own, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, grace_s: float = 10.0) -> None:
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def write_up_file(path: Path, endpoints: Mapping[str, str], pids: Mapping[str, int]) -> None:
    """What `qkdops status` reads: where each part of a running `qkdops up` listens."""
    path.write_text(json.dumps({"endpoints": dict(endpoints), "pids": dict(pids)}, indent=2))


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
