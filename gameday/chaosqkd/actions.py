"""Chaos Toolkit actions: what a game day does to the stack (faults, calibration actions, exporter
crashes and restarts) through the control API; and the crash of a monitoring replica of a
``qkdops up --ha`` stack, which no API offers (a crash is the point): SIGKILL to the pid ``up.json``
records, after checking that pid is that stack's process."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from chaoslib.exceptions import ActivityFailed

from gameday.chaosqkd import endpoints, up_file
from monitoring.prometheus import PROMETHEUS_REPLICAS
from qkdops.http_client import open_url
from qkdops.processes import command_line, pid_alive

REPLICA_POLL_S = 0.5


def inject_fault(link: str, fault: str, parameters: dict[str, float] | None = None,
                 configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Put ``fault`` in force on ``link`` (``qkdops fault inject``); returns what the API answered
    and the Unix time of the injection (the start of time-to-detect)."""
    answer = endpoints(configuration).control().inject(link, fault, dict(parameters or {}))
    return {**answer, "injected_at": time.time()}


def clear_fault(link: str, fault: str | None = None, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Clear ``fault`` (default: every fault) of ``link`` — the runbook's fix for a fault that is
    an outside event (a cut fibre spliced, stray light removed), and every scenario's rollback."""
    answer = endpoints(configuration).control().clear(link, fault)
    return {**answer, "cleared_at": time.time()}


def calibration_action(link: str, action: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a calibration action (``qkdops action``), as a runbook tells on-call to."""
    return endpoints(configuration).control().act(link, action)


def stop_exporter(name: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Crash exporter ``name`` (``device`` or ``postprocessing``): its HTTP server stops and its port
    refuses scrapes. Returns what the API answered and the Unix time of the stop as ``injected_at``
    (the start of time-to-detect, as for ``inject_fault``)."""
    answer = endpoints(configuration).control().stop_exporter(name)
    return {**answer, "injected_at": time.time()}


def start_exporter(name: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start exporter ``name`` again on its port — the runbook's restart, and the rollback of
    ``stop_exporter`` (a no-op when it is serving)."""
    answer = endpoints(configuration).control().start_exporter(name)
    return {**answer, "started_at": time.time()}


def ha_replica(name: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where monitoring replica ``name`` (``prometheus_b``, ``alertmanager_c``, …) of the running stack is:
    its pid and URL from ``up.json``; ActivityFailed, saying why, when the stack is not running or was
    not started with ``qkdops up --ha`` (then killing a replica would take the stack's only one down)."""
    path = up_file(configuration)
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ActivityFailed(f"the stack is not running ({path}: {getattr(exc, 'strerror', None) or exc})") from None
    pids, endpoints_ = recorded.get("pids", {}), recorded.get("endpoints", {})
    if not pid_alive(pids.get("qkdops", 0)):
        raise ActivityFailed(f"the stack is not running ({path} is left from a process that died)")
    if name not in pids or "prometheus_b" not in pids:
        raise ActivityFailed(f"{path} lists no {name}: crashing a monitoring replica needs the stack started with "
                             "`qkdops up --ha` (two Prometheus replicas, three Alertmanager peers)")
    return {"name": name, "pid": int(pids[name]), "url": endpoints_[name]}


def kill_monitoring_replica(name: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Crash replica ``name`` with SIGKILL (no shutdown, no leave: what an OOM kill does). The pid must
    be the stack's own process (its command line names the state dir), never a recycled pid. Returns
    the pid and the Unix time of the kill as ``injected_at``."""
    replica = ha_replica(name, configuration)
    state_dir = str(up_file(configuration).parent)
    if state_dir not in command_line(replica["pid"]):
        raise ActivityFailed(f"pid {replica['pid']} recorded for {name} is not this stack's process (its command line "
                             f"does not name {state_dir}): not killing it")
    os.kill(replica["pid"], signal.SIGKILL)
    return {"name": name, "pid": replica["pid"], "injected_at": time.time()}


def await_monitoring_replica(name: str, timeout_s: float = 60.0, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Wait (bounded) until ``qkdops up`` has restarted replica ``name`` — the pid in ``up.json`` alive —
    and it answers ``/-/ready``: the supervisor's recovery, and the rollback of ``kill_monitoring_replica``
    (immediate when it runs). Returns the new pid and the Unix time it was seen ready."""
    auth = endpoints(configuration).auth
    deadline = time.time() + timeout_s
    while True:
        replica = ha_replica(name, configuration)
        if pid_alive(replica["pid"]):
            try:
                credentials = auth.prometheus if name in PROMETHEUS_REPLICAS else auth.alertmanager
                with open_url(f"{replica['url']}/-/ready", credentials, timeout_s=2) as response:
                    if response.status == 200:
                        return {"name": name, "pid": replica["pid"], "ready_at": time.time()}
            except OSError:
                pass
        if time.time() >= deadline:
            raise ActivityFailed(f"{name} not restarted and ready within {timeout_s:g} s (see its log in the state dir)")
        time.sleep(REPLICA_POLL_S)

