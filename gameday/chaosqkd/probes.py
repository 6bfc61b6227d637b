"""Chaos Toolkit probes: what a game day observes — the link's status (control API), pages
delivered (pager sink), alerts open (Alertmanager) and calibration runs (Prometheus).

Waiting probes poll until their condition holds or their ``timeout_s`` passes, then raise
``ActivityFailed`` (the scenario fails; its rollbacks still run): every wait is bounded. ``STOP``
(set when the run is interrupted) ends a wait at its next poll, so Ctrl-C does not sit out a
probe's timeout in Chaos Toolkit's worker thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from chaoslib.exceptions import ActivityFailed

from gameday.chaosqkd import endpoints, get_json, started_at
from qkdops.http_client import PrometheusClient

POLL_S = 1.0
STOP = threading.Event()


def link_producing_key(link: str, configuration: dict[str, Any] | None = None) -> bool:
    """No fault in force, the last block produced key, and it ended within three block lengths."""
    status = endpoints(configuration).control().status(link)
    last = status.get("last_block") or {}
    fresh = last.get("end_timestamp") is not None and time.time() - last["end_timestamp"] <= 3 * status["block_seconds"] + 5
    return not status["active_faults"] and last.get("reason") == "none" and fresh


def open_pages(link: str, configuration: dict[str, Any] | None = None) -> list[str]:
    """Alert names paging for ``link`` now (active in Alertmanager, neither silenced nor inhibited),
    and stack-wide pages without a link label (QKDExporterDown): they blind the link's alerts."""
    found: set[str] = set()
    where = endpoints(configuration)
    for link_matcher in (f'link="{link}"', 'link=""'):
        alerts = get_json(f"{where.alertmanager}/api/v2/alerts", where.auth.alertmanager, active="true", silenced="false",
                          inhibited="false", filter=[link_matcher, 'severity="page"'])
        found.update(a["labels"]["alertname"] for a in alerts)
    return sorted(found)


def no_open_pages(link: str, configuration: dict[str, Any] | None = None) -> bool:
    return not open_pages(link, configuration)


def page_delivered(alertname: str, timeout_s: float, link: str | None = None,
                   configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wait for the pager sink to receive a firing page ``alertname`` (for ``link``; none for an
    alert without a link label, e.g. QKDExporterDown) since the run began."""
    return _delivered("page", alertname, timeout_s, link, configuration)


def ticket_delivered(alertname: str, timeout_s: float, link: str | None = None,
                     configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """As ``page_delivered``, for a ticket."""
    return _delivered("ticket", alertname, timeout_s, link, configuration)


def _delivered(kind: str, alertname: str, timeout_s: float, link: str | None,
               configuration: dict[str, Any] | None) -> dict[str, Any]:
    sink, auth = endpoints(configuration).pager_sink, endpoints(configuration).auth.pager_sink
    since = started_at(configuration)
    where = {"link": link} if link is not None else {}

    def delivered() -> dict[str, Any] | None:
        found = get_json(f"{sink}/api/v1/notifications", auth, kind=kind, alertname=alertname, status="firing",
                         since=f"{since:.3f}", **where)["notifications"]
        return {"alertname": alertname, "received_at": found[0]["received_at"]} if found else None

    return _wait(delivered, timeout_s, f"{kind} {alertname}{f' for {link}' if link else ''} at the pager sink")


def recovered(link: str, timeout_s: float, configuration: dict[str, Any] | None = None) -> float:
    """Wait until the link produces key again and nothing pages for it; returns the seconds waited."""
    begun = time.time()
    _wait(lambda: link_producing_key(link, configuration) and no_open_pages(link, configuration), timeout_s,
          f"{link} to produce key again with no page open")
    return time.time() - begun


def calibration_corrected(link: str, job_name: str, timeout_s: float, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wait until Prometheus shows a ``corrected`` run of calibration job ``job_name`` on ``link``
    since the run began (the automatic recovery a drift scenario expects)."""
    prometheus, auth = endpoints(configuration).prometheus, endpoints(configuration).auth.prometheus
    since = started_at(configuration)

    def corrected() -> dict[str, Any] | None:
        window = max(1, int(time.time() - since) + 1)
        query = f'increase(qkd_calibration_runs_total{{link="{link}", job_name="{job_name}", outcome="corrected"}}[{window}s]) > 0'
        result = PrometheusClient(prometheus, auth).query(query)["result"]
        return {"job_name": job_name, "seen_at": time.time()} if result else None

    return _wait(corrected, timeout_s, f"a corrected {job_name} run on {link}")


def _wait(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.time() + timeout_s
    last_error = ""
    while not STOP.is_set():
        try:
            if result := check():
                return result
        except OSError as exc:  # the stack briefly unreachable is worth waiting through
            last_error = f" (last error: {exc})"
        if time.time() >= deadline:
            raise ActivityFailed(f"no {what} within {timeout_s:g} s{last_error}")
        STOP.wait(POLL_S)
    raise ActivityFailed(f"interrupted while waiting for {what}")
