"""Alertmanager's configuration: routing tree, receivers and inhibition, for the local stack and for
docker-compose (``alertmanager/alertmanager.yml``, the same function with service names; a test keeps
it current).

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

Group timers come from the monitoring config (``monitoring.yaml`` ``alertmanager``) and scale with the
evaluation interval, so a 1-s test profile pages in seconds, not minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from monitoring.config import REFERENCE_INTERVAL_S, MonitoringConfig
from monitoring.prometheus import COMPOSE_HOSTS, COMPOSE_SECRET_FILES, REPO

COMPOSE_ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"


class SecretFileError(ValueError):
    """A pager key file the environment names is missing, unreadable or empty."""


# The peers of the HA cluster (`qkdops up --ha`), by their names in up.json; the first is the single one.
ALERTMANAGER_PEERS = ("alertmanager", "alertmanager_b", "alertmanager_c")
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
    """The key files the environment names; a named file that is missing or empty is a SecretFileError.

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
                raise SecretFileError(f"{variable} names {path}, which is empty")
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretFileError(f"{variable} names {path}, which cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        found[field_name] = str(path)
    return SecretFiles(**found)


PEER_TIMEOUT_S = 15.0  # Alertmanager's default --cluster.peer-timeout (what compose's peers run with)


def peer_timeout_s(monitoring: MonitoringConfig, evaluation_interval_s: float, peers: int = len(ALERTMANAGER_PEERS)) -> float:
    """``--cluster.peer-timeout`` for an HA cluster of ``peers``: how long each peer waits after the one
    before it to send a due notification.

    A peer takes the group's alerts when the group is flushed, waits its turn, and only then reads the
    notification log. So the last peer's wait, (peers − 1) × this, must end well before the group's next
    flush (``group_interval``) can change what was sent. Otherwise a resolution that the first peer sends
    meanwhile makes the last peer send the old firing page again (seen on the 1-s test profile, with
    the default 15 s and a 12-s group interval: the page arrived twice). The result is Alertmanager's
    default, lowered to half the shortest group interval over (peers − 1): 15 s on the 5-s demo
    profile, 3 s on the 1-s test profile."""
    shortest = min(t.group_interval for t in monitoring.timing.values()) * evaluation_interval_s / REFERENCE_INTERVAL_S
    return min(PEER_TIMEOUT_S, shortest / (2 * (peers - 1)))


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


def alertmanager_config(monitoring: MonitoringConfig, pager_sink: str, secrets: SecretFiles, evaluation_interval_s: float, *,
                        sink_token_file: str) -> dict[str, Any]:
    """Routing tree, receivers and inhibition (see the module docstring), group timers from ``monitoring``
    scaled to ``evaluation_interval_s``; ``pager_sink`` is host:port, ``sink_token_file`` the file holding
    its bearer token (read by Alertmanager at each notification)."""
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

    page, ticket = monitoring.timing["page"], monitoring.timing["ticket"]
    return {
        "route": {
            "receiver": SINK_RECEIVER.format(kind="unrouted"), "group_by": GROUP_BY,
            **ticket.scaled(evaluation_interval_s),
            "routes": [
                {"matchers": ['severity="page"'], **page.scaled(evaluation_interval_s), "routes": fan_out("page", pagers)},
                {"matchers": ['severity="ticket"'], **ticket.scaled(evaluation_interval_s), "routes": fan_out("ticket", chats)},
            ],
        },
        "inhibit_rules": _inhibit_rules(),
        "receivers": [sink("page"), sink("ticket"), sink("unrouted"), *pagers, *chats],
    }


def render_compose_alertmanager_config(monitoring: MonitoringConfig) -> str:
    header = ("# Rendered by monitoring.alertmanager.alertmanager_config for docker-compose: the pager sink at the qkdops\n"
              "# service, every external receiver with its key file under /etc/alertmanager/secrets/ (see\n"
              "# alertmanager/secrets/README.md). `qkdops up` renders the same with local addresses and only the\n"
              "# receivers whose key files are configured. Do not edit: a test keeps it current.\n")
    return header + yaml.safe_dump(alertmanager_config(monitoring, COMPOSE_HOSTS.pager_sink, COMPOSE_SECRETS, monitoring.scrape_interval_s,
                                                       sink_token_file=COMPOSE_SECRET_FILES["pager-sink-token"]),
                                   sort_keys=False, width=200)
