"""How a game-day run is judged from what the pager sink received (a real sink, webhooks posted as
Alertmanager sends them): expected pages and tickets give the time to detect; pages of the link or
of the whole stack that were not expected, and any notification of an alert that must stay silent,
are unexpected — when they started firing during the run; another link's pages are none of the run's business."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gameday import runner
from gameday.chaosqkd import Endpoints
from gameday.scenario import load_all
from qkdops.config import DEFAULT_CONFIG
from qkdops.http_client import StackAuth
from qkdops.processes import UP_FILE
from test_pager_sink import TOKEN, Sink, notification


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sink]:
    s = Sink(tmp_path / "state")
    token_file = tmp_path / "state" / "pager-sink-token"   # where the runner's StackAuth reads it
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    monkeypatch.setattr(runner, "endpoints", lambda configuration: Endpoints("", s.url, "", "", "", StackAuth(tmp_path / "state", {})))
    yield s
    s.stop()


def _deliver(sink: Sink, kind: str, alertname: str, link: str | None, status: str = "firing",
             started_ago_s: float = 0.0) -> None:
    body = notification(alertname, link or "", status=status, severity=kind, receiver=f"pager-sink-{kind}")
    starts_at = datetime.fromtimestamp(time.time() - started_ago_s, UTC).isoformat(timespec="milliseconds")
    for alert in body["alerts"]:
        alert["startsAt"] = starts_at.replace("+00:00", "Z")
    if link is None:  # a stack-wide alert (QKDExporterDown): job and instance, no link label
        for labels in (body["commonLabels"], body["groupLabels"], *(a["labels"] for a in body["alerts"])):
            labels.pop("link", None)
            labels.update(job="qkd-device", instance="127.0.0.1:9810")
    status_code, answer = sink.post(kind, body)
    assert status_code == 200, answer


def _judged(name: str, deliveries: list[tuple[Any, ...]], sink: Sink) -> runner.Outcome:
    (scenario,) = load_all(name)
    started = time.time() - 0.5
    outcome = runner.Outcome(scenario.name, scenario.title, scenario.link, scenario.fault, started,
                             injected_at=started + 0.25, method_done_at=time.time() + 5,
                             limits={"detect_s": scenario.limits.detect_s, "recover_s": scenario.limits.recover_s,
                                     "run_s": scenario.limits.run_s}, status="completed")
    for delivery in deliveries:
        _deliver(sink, *delivery)
    runner._judge(scenario, outcome, {})
    return outcome


def test_the_expected_page_times_detection_and_other_links_do_not_count(sink: Sink) -> None:
    outcome = _judged("fiber-cut", [("page", "QKDPhaseLockLost", "relay-mdi"), ("page", "QKDFiberCut", "metro-bb84")], sink)
    assert 0 < outcome.detect_s["QKDFiberCut"] < 5
    assert outcome.unexpected == [] and outcome.passed


def test_unexpected_pages_of_the_link_or_the_stack_and_silent_alerts_fail_the_run(sink: Sink) -> None:
    outcome = _judged("fiber-cut", [("page", "QKDFiberCut", "metro-bb84"), ("page", "QKDExporterDown", None),
                                    ("ticket", "QKDQBERHigh", "metro-bb84"), ("ticket", "QKDVisibilityLow", "metro-bb84")], sink)
    # QKDQBERHigh must stay silent (inhibited); QKDVisibilityLow is a ticket nobody promised silence for
    assert outcome.unexpected == ["QKDExporterDown", "QKDQBERHigh"] and not outcome.passed


def test_alerts_firing_since_before_the_run_are_not_its_doing(sink: Sink) -> None:
    outcome = _judged("fiber-cut", [("page", "QKDFiberCut", "metro-bb84"),
                                    ("ticket", "QKDQBERBudgetBurn", "metro-bb84", "firing", 1800.0),  # a repeat
                                    ("ticket", "QKDBlockSuccessBudgetBurn", "metro-bb84", "resolved", 1800.0)], sink)
    assert outcome.unexpected == [] and outcome.passed
    again = _judged("fiber-cut", [("page", "QKDFiberCut", "metro-bb84"), ("ticket", "QKDQBERBudgetBurn", "metro-bb84")], sink)
    assert again.unexpected == ["QKDQBERBudgetBurn"]  # started during the run: it must stay silent


def test_a_missing_page_is_never_detected(sink: Sink) -> None:
    outcome = _judged("fiber-cut", [("page", "QKDFiberCut", "metro-bb84", "resolved")], sink)
    assert outcome.detect_s == {"QKDFiberCut": None} and not outcome.passed


def test_an_expected_ticket_is_detected(sink: Sink) -> None:
    loss = _judged("loss-step", [("ticket", "QKDChannelLossHigh", "metro-bb84")], sink)
    assert loss.detect_s["QKDChannelLossHigh"] is not None and loss.passed


def test_a_stack_wide_page_is_detected(sink: Sink) -> None:
    crash = _judged("exporter-crash", [("page", "QKDExporterDown", None)], sink)
    assert crash.detect_s["QKDExporterDown"] is not None and crash.unexpected == [] and crash.passed


def test_an_expected_page_delivered_once_is_counted(sink: Sink) -> None:
    once = _judged("prometheus-crash", [("page", "QKDFiberCut", "metro-bb84")], sink)
    assert once.deliveries == {"QKDFiberCut": 1} and once.passed


def test_an_expected_page_delivered_twice_is_a_duplicate_and_fails_the_run(sink: Sink) -> None:
    """What an HA pair or cluster that failed to deduplicate sends: the same page from two peers."""
    twice = _judged("alertmanager-crash", [("page", "QKDFiberCut", "metro-bb84"), ("page", "QKDFiberCut", "metro-bb84", "firing", 0.2)],
                    sink)
    assert twice.deliveries == {"QKDFiberCut": 2} and twice.detect_s["QKDFiberCut"] is not None and not twice.passed


def test_a_replica_crash_on_a_stack_without_ha_is_refused_before_anything_is_injected(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["runtime"]["state_dir"] = str(tmp_path / "state")
    config = tmp_path / "links.yaml"
    config.write_text(yaml.safe_dump(raw))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / UP_FILE).write_text(json.dumps({"pids": {"qkdops": os.getpid(), "prometheus": os.getpid(),
                                                                     "alertmanager": os.getpid()}, "endpoints": {}}))
    said: list[str] = []
    outcome = runner.run(load_all("alertmanager-crash")[0], config, said.append)
    assert outcome.status == "not runnable" and not outcome.passed and outcome.injected_at is None
    assert "qkdops up --ha" in outcome.failed_activities[0] and any("FAILED before injecting anything" in line for line in said)
