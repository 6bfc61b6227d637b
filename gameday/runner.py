"""Run one scenario with Chaos Toolkit's engine against a running stack, and judge it.

The engine runs the hypothesis, the method and the rollbacks (``runtime.rollbacks.strategy:
always``). Chaos Toolkit swallows Ctrl-C/SIGTERM and then skips rollbacks (its conservative
choice, see ``chaoslib.experiment.run_experiment``); a game day must never leave a fault behind, so
``run`` clears every fault of the scenario's link itself in a ``finally`` (and undoes a stack fault,
e.g. restarts a crashed exporter), whatever happened.

Judgement (``Outcome``), from the pager sink — what on-call really received — not from the
probes' own view: time to detect = first delivery of each expected page (or ticket) − the
injection; time to recover = the injection … the end of the method's last activity (the recovery
probe); unexpected = pages that were not expected — for the link, or for the whole stack (no link
label, e.g. QKDExporterDown) — and any alert in ``silent`` that notified, of alerts that started
firing during the run (one firing since before it, e.g. a burn ticket, is not this fault's doing);
and every expected page (or ticket) must be delivered exactly once (``deliveries``): a second firing
notification of it within a run (far shorter than the repeat interval) is a duplicate — what an HA
pair or cluster that failed to deduplicate would send, and what the ``prometheus-crash`` and
``alertmanager-crash`` game days exist to rule out. A stack fault that cannot be injected into this
stack (a replica crash on a stack without ``--ha``) stops the run before anything is injected.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from chaoslib.experiment import run_experiment
from chaoslib.exceptions import ActivityFailed
from chaoslib.run import RunEventHandler

from gameday.chaosqkd import actions, endpoints, get_json, probes
from gameday.scenario import INJECTORS, Scenario

log = logging.getLogger("qkdops.gameday")
SETTINGS = {"runtime": {"rollbacks": {"strategy": "always"}}}
SETTLE_S = 300.0  # how long a run waits for its link to be steady before giving up (nothing injected)


class Interrupted(Exception):
    """The run was interrupted (Ctrl-C, SIGTERM) after it had been cleaned up; holds its outcome."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(f"{outcome.scenario} interrupted")
        self.outcome = outcome


@dataclass
class Outcome:
    scenario: str
    title: str
    link: str
    fault: str
    started_at: float
    injected_at: float | None = None
    method_done_at: float | None = None              # the method's last activity (the recovery probe) ended
    finished_at: float | None = None
    status: str = "not run"                          # completed | failed | interrupted | aborted | not steady | not runnable
    deviated: bool = False
    detect_s: dict[str, float | None] = field(default_factory=dict)   # expected page (or job) → seconds (None: never)
    deliveries: dict[str, int] = field(default_factory=dict)          # expected page (or ticket) → firing notifications
    recover_s: float | None = None
    unexpected: list[str] = field(default_factory=list)
    failed_activities: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)      # {t, what}
    limits: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        on_time = all(v is not None and v <= self.limits["detect_s"] for v in self.detect_s.values())
        recovered = self.recover_s is not None and self.recover_s <= self.limits["recover_s"]
        once = all(n == 1 for n in self.deliveries.values())
        return (self.status == "completed" and not self.deviated and not self.failed_activities and on_time
                and recovered and not self.unexpected and once)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


class _Progress(RunEventHandler):
    """Chaos Toolkit's run events → one progress line each, and the run's timeline."""

    def __init__(self, outcome: Outcome, say: Callable[[str], None]) -> None:
        self.outcome, self.say = outcome, say
        self.interrupted = False

    def _mark(self, what: str) -> None:
        now = time.time()
        self.outcome.timeline.append({"t": now, "what": what})
        self.say(f"  [{now - self.outcome.started_at:6.1f} s] {what}")

    def start_activity(self, activity: Any) -> None:
        self._mark(f"{activity['type']} {activity['name']} …")

    def activity_completed(self, activity: Any, run: Any) -> None:
        status = run.get("status") if isinstance(run, dict) else None
        self._mark(f"{activity['type']} {activity['name']}: {status}")
        if status != "succeeded":
            error = run.get("exception", [""])[-1].strip() if run else ""
            self.outcome.failed_activities.append(f"{activity['name']}: {error}")
            if "InterruptExecution" in error:  # SIGTERM inside an activity: Chaos Toolkit calls it a failure
                self.signal_exit()
        func = activity.get("provider", {}).get("func")
        if status == "succeeded" and func in INJECTORS and self.outcome.injected_at is None:
            self.outcome.injected_at = run["output"]["injected_at"]   # the first: a stack fault `during` a link fault comes second
        if status == "succeeded" and func == "calibration_corrected" and self.outcome.injected_at is not None:
            # an automatic scenario's detection: the calibration job saw the drift and corrected it
            self.outcome.detect_s[f"{run['output']['job_name']} corrected"] = run["output"]["seen_at"] - self.outcome.injected_at

    def method_completed(self, experiment: Any, state: Any = None) -> None:
        self._mark("method completed")
        self.outcome.method_done_at = time.time()

    def start_rollbacks(self, experiment: Any) -> None:
        self._mark("rollbacks")

    def signal_exit(self) -> None:
        """Ctrl-C/SIGTERM reached Chaos Toolkit: end the probe that is waiting now (the rest of the
        method then fails fast, the rollbacks run) and stop the game day after this scenario."""
        self._mark("interrupted")
        self.interrupted = True
        probes.STOP.set()


def run(scenario: Scenario, config_path: Path, say: Callable[[str], None] = print) -> Outcome:
    """Run ``scenario`` against the stack of ``config_path``; bounded by the scenario's limits."""
    started = time.time()
    outcome = Outcome(scenario.name, scenario.title, scenario.link, scenario.fault, started,
                      limits=asdict(scenario.limits))
    experiment = copy.deepcopy(scenario.experiment)
    experiment["configuration"] = {**experiment.get("configuration", {}), "qkdops_config": str(config_path),
                                   "gameday_started_at": started}
    configuration = experiment["configuration"]
    say(f"{scenario.name}: {scenario.title}")
    if (stack := scenario.stack_fault) is not None and stack.check is not None:
        try:
            getattr(actions, stack.check)(scenario.parameters[stack.parameter], configuration=configuration)
        except ActivityFailed as exc:
            outcome.status, outcome.finished_at = "not runnable", time.time()
            outcome.failed_activities.append(f"{scenario.fault} on this stack: {exc}")
            say(f"  => FAILED before injecting anything: {exc}")
            return outcome
    say(f"  waiting (≤ {SETTLE_S:g} s) for {scenario.link} to produce key with no page open …")
    try:
        probes.recovered(scenario.link, SETTLE_S, configuration)  # e.g. after the previous scenario's burn alerts
    except ActivityFailed as exc:
        outcome.status, outcome.finished_at = "not steady", time.time()
        outcome.failed_activities.append(f"steady state before the run: {exc}")
        say(f"  => FAILED before injecting anything: {exc}")
        return outcome
    probes.STOP.clear()
    outcome.started_at = started = time.time()
    configuration["gameday_started_at"] = started
    progress = _Progress(outcome, say)
    try:
        journal = run_experiment(experiment, settings=copy.deepcopy(SETTINGS), event_handlers=[progress])
        outcome.status = "interrupted" if progress.interrupted else str(journal.get("status"))
        outcome.deviated = bool(journal.get("deviated"))
    except BaseException:
        outcome.status = "interrupted"
        raise
    finally:
        _undo(scenario, configuration, say)
        outcome.finished_at = time.time()
    if outcome.status == "interrupted":  # Chaos Toolkit swallowed the Ctrl-C: the game day stops here
        say("  => INTERRUPTED: the link's faults are cleared")
        raise Interrupted(outcome)
    _judge(scenario, outcome, configuration)
    say(f"  => {'PASSED' if outcome.passed else 'FAILED'}: detect {outcome.detect_s}, delivered {outcome.deliveries} "
        f"(each exactly once), recover {'-' if outcome.recover_s is None else f'{outcome.recover_s:.1f} s'}, "
        f"unexpected {outcome.unexpected or 'none'}")
    return outcome


def _undo(scenario: Scenario, configuration: dict[str, Any], say: Callable[[str], None]) -> None:
    """Clear the link's faults and undo a stack fault; say what an operator must do if it fails."""
    try:
        endpoints(configuration).control().clear(scenario.link)
    except Exception as exc:  # noqa: BLE001 (reported: an operator must clear it by hand)
        say(f"  !! could not clear the faults of {scenario.link}: {exc} — run `qkdops fault clear {scenario.link}`")
    if (stack := scenario.stack_fault) is not None:
        name = scenario.parameters[stack.parameter]
        try:
            getattr(actions, stack.undo)(name, configuration=configuration)
        except Exception as exc:  # noqa: BLE001 (reported, as above)
            say(f"  !! could not undo {scenario.fault} ({stack.undo} {name}): {exc} — restart `qkdops up`")


def _judge(scenario: Scenario, outcome: Outcome, configuration: dict[str, Any]) -> None:
    where = endpoints(configuration)
    notes = get_json(f"{where.pager_sink}/api/v1/notifications", where.auth.pager_sink,
                     since=f"{outcome.started_at:.3f}", limit=1000)["notifications"]
    injected = outcome.injected_at
    for kind, alert in scenario.expected:
        times = [_unix(n["received_at"]) for n in notes if n["kind"] == kind and _has(n, alert, "firing")]
        outcome.detect_s[alert] = None if not times or injected is None else min(times) - injected
        outcome.deliveries[alert] = len(times)
    for note in notes:
        for a in note.get("alerts", []):
            name, link = a["labels"].get("alertname", ""), a["labels"].get("link")
            if link not in (None, scenario.link):
                continue  # another link's business
            if a.get("status") != "firing" or _unix(a["startsAt"]) < outcome.started_at:
                continue  # a resolution, or an alert firing since before the run (a young stack's burn ticket)
            paged_unexpectedly = note["kind"] == "page" and name not in scenario.pages
            if (paged_unexpectedly or name in scenario.silent) and name not in outcome.unexpected:
                outcome.unexpected.append(name)
    if injected is not None and outcome.method_done_at is not None and not outcome.failed_activities:
        outcome.recover_s = outcome.method_done_at - injected


def _unix(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def _has(note: dict[str, Any], alertname: str, status: str) -> bool:
    return any(a["labels"].get("alertname") == alertname and a.get("status") == status for a in note.get("alerts", []))
