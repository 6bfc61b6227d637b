"""The qkdops extension for Chaos Toolkit: actions (``actions``) and probes (``probes``) that act on
and observe a running stack only through its public interfaces — the control API, the pager sink,
Prometheus and Alertmanager — never through its internals.

Every provider takes Chaos Toolkit's ``configuration``: ``qkdops_config`` names the stack's
``links.yaml`` (its ports, bind address and token file); ``gameday_started_at`` (Unix seconds, set
by ``qkdops gameday run``) is when the run began, so pages from before it never count.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from qkdops.config import DEFAULT_CONFIG, load_config
from qkdops.control_client import ControlClient, resolve_token
from qkdops.stack import http_url

HTTP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Endpoints:
    """Where the stack of a ``links.yaml`` answers, and the control API token to use."""

    control_api: str
    pager_sink: str
    prometheus: str
    alertmanager: str
    token: str

    def control(self) -> ControlClient:
        return ControlClient(self.control_api, self.token)


def endpoints(configuration: dict[str, Any] | None) -> Endpoints:
    path = (configuration or {}).get("qkdops_config") or DEFAULT_CONFIG
    rt = load_config(path).runtime
    return Endpoints(http_url(rt.bind, rt.control_port), http_url(rt.bind, rt.pager_sink_port),
                     http_url(rt.bind, rt.prometheus_port), http_url(rt.bind, rt.alertmanager_port),
                     resolve_token(path).value)


def started_at(configuration: dict[str, Any] | None) -> float:
    return float((configuration or {}).get("gameday_started_at") or time.time())


def get_json(url: str, **query: Any) -> Any:
    full = f"{url}?{urllib.parse.urlencode(query, doseq=True)}" if query else url
    with urllib.request.urlopen(full, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())
