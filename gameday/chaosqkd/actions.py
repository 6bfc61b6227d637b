"""Chaos Toolkit actions: what a game day does to the stack (faults, calibration actions, exporter
crashes and restarts), through the control API only."""

from __future__ import annotations

import time
from typing import Any

from gameday.chaosqkd import endpoints


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
