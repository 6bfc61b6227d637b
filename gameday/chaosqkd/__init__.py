"""The qkdops extension for Chaos Toolkit: actions (``actions``) and probes (``probes``) that act on
and observe a running stack only through its public interfaces — the control API, the pager sink,
Prometheus and Alertmanager — never through its internals. The one exception is a crash of a monitoring
replica (``actions.kill_monitoring_replica``). No API offers that, because a crash is the point. It
uses the pid that ``qkdops up`` records in ``up.json`` (``up_file``).

Every provider takes Chaos Toolkit's ``configuration``: ``qkdops_config`` names the stack's
``links.yaml`` (its ports, bind address, and state dir holding the control API token and the
credentials of the pager sink, Prometheus and Alertmanager, read with ``qkdops.http_client``); ``gameday_started_at`` (Unix seconds, set
by ``qkdops gameday run``) is when the run began, so pages from before it never count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdops.config import DEFAULT_CONFIG, load_config
from qkdops.control_client import ControlClient, resolve_token
from qkdops.http_client import Auth, StackAuth, http_url
from qkdops.http_client import get_json as _get_json
from qkdops.processes import UP_FILE

HTTP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Endpoints:
    """Where the stack of a ``links.yaml`` answers, the control API token and the other services' credentials."""

    control_api: str
    pager_sink: str
    prometheus: str
    alertmanager: str
    token: str = field(repr=False)
    auth: StackAuth

    def control(self) -> ControlClient:
        return ControlClient(self.control_api, self.token)


def endpoints(configuration: dict[str, Any] | None) -> Endpoints:
    path = (configuration or {}).get("qkdops_config") or DEFAULT_CONFIG
    rt = load_config(path).runtime
    return Endpoints(http_url(rt.bind, rt.control_port), http_url(rt.bind, rt.pager_sink_port),
                     http_url(rt.bind, rt.prometheus_port), http_url(rt.bind, rt.alertmanager_port),
                     resolve_token(path).value, StackAuth(rt.state_dir))


def up_file(configuration: dict[str, Any] | None) -> Path:
    """Where the stack of a ``links.yaml`` records its processes (``qkdops.processes.UP_FILE``)."""
    return load_config((configuration or {}).get("qkdops_config") or DEFAULT_CONFIG).runtime.state_dir / UP_FILE


def started_at(configuration: dict[str, Any] | None) -> float:
    return float((configuration or {}).get("gameday_started_at") or time.time())


def get_json(url: str, auth: Auth | None, **query: Any) -> Any:
    """GET ``url?query`` with ``auth`` (``Endpoints.auth.pager_sink`` …) and decode the JSON."""
    return _get_json(url, auth, HTTP_TIMEOUT_S, **query)
