"""One run of one job on one link: read → decide → act → verify → record, with bounded retries.

Outcomes (``qkd_calibration_runs_total{outcome}``):

* ``healthy``   — signals in tolerance; nothing done (a failure streak ends here);
* ``corrected`` — the job acted through the control API and the fresh read-outs confirm the fix;
* ``failed``    — it acted and the action was refused or did not fix the signal (reason says which);
* ``error``     — it could not read signals or reach the API (an exception; never kills the scheduler);
* ``held``      — out of tolerance but backing off after failures: no action.

After a failed or errored run the job waits ``retry.backoff_s`` × 2^(n−1) (capped) before acting
again; after ``retry.max_attempts`` in a row it stops acting on that link until its signals are
back in tolerance or a human runs it (``qkdops calibrate``, ``manual=True``). A fibre cut therefore
costs at most ``max_attempts`` useless actions, each recorded with its reason. Runs of one link are
serialised in-process, and every run holds its (job, link) lease in the store across processes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from calibration_jobs.checks import CHECKS, STALE_BLOCKS_UNTIL, Check, Decision
from calibration_jobs.config import JobsConfig, JobSettings
from calibration_jobs.decoy import estimate_window, recommend
from calibration_jobs.signals import STATUS, LinkSignals, SignalReader, SignalsUnavailable, averaged, from_status
from calibration_jobs.store import CalibrationStore, JobState, RunBusy
from qkdops.control_client import ApiResponseError, ApiUnreachable, CalibrationApi

log = logging.getLogger("qkdops.calibration")
OUTCOMES = ("healthy", "corrected", "failed", "error", "held")
POLL_S = 0.05           # while waiting for a frame / block measured after the action
SAMPLED_FRAMES = 3      # monitor readings are judged on the mean of this many frames
VERIFY_PERIODS = 2.5    # verification waits at most this many blocks (frames) (+ VERIFY_SLACK_S)
VERIFY_SLACK_S = 5.0
DECOY_JOB = "decoy_estimation"
FAILED_ACTIONS = "failed_actions"  # memory key: ineffective actions in the current failure streak


@dataclass
class RunReport:
    """What a run saw, decided and did; printed by ``qkdops calibrate`` and kept in the ledger."""

    job: str
    link: str
    protocol: str
    trigger: str
    started_at: float
    outcome: str = "error"
    reason: str = ""
    signals: dict[str, Any] | None = None
    decision: str | None = None
    action: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    published: dict[str, Any] | None = None
    duration_s: float = 0.0
    run_id: int | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class JobRunner:
    """Runs jobs against links through a control client and signal reader, recording to a store."""

    def __init__(self, config: JobsConfig, api: CalibrationApi, signals: SignalReader, store: CalibrationStore,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 observe_duration: Callable[[str, str, str, float], None] | None = None) -> None:
        self.config, self.api, self.signals, self.store = config, api, signals, store
        self.clock, self.sleep = clock, sleep
        self.observe_duration = observe_duration
        self._link_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _link_lock(self, link: str) -> threading.Lock:
        with self._locks_guard:
            return self._link_locks.setdefault(link, threading.Lock())

    def run(self, job: str, link: str, protocol: str, trigger: str = "schedule", manual: bool = False) -> RunReport:
        """One run; never raises for the link's or the API's trouble (that is outcome ``error``).

        RunBusy if the same job is running on the link elsewhere (nothing is recorded then).
        """
        settings = self.config.jobs[job]
        report = RunReport(job, link, protocol, trigger, self.clock())
        with self._link_lock(link), self.store.lease(job, link, trigger) as run_id:
            report.run_id = run_id
            state = self.store.state(job, link, protocol)
            counts: dict[tuple[str, str], float] = {}
            try:
                if job == DECOY_JOB:
                    self._estimate(settings, state, report)
                else:
                    self._calibrate(CHECKS[job], settings, state, report, counts, manual)
            except (SignalsUnavailable, ApiUnreachable, ApiResponseError, OSError, ValueError, KeyError) as exc:
                report.outcome, report.reason = "error", f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug in a job: record it, keep the scheduler alive
                log.exception("calibration job %s on %s failed unexpectedly", job, link)
                report.outcome, report.reason = "error", f"unexpected {type(exc).__name__}: {exc}"
            report.duration_s = self.clock() - report.started_at
            self._settle(settings, state, report)
            counts[("runs", report.outcome)] = counts.get(("runs", report.outcome), 0.0) + 1.0
            self.store.finish(run_id, state, report.outcome, report.reason, report.as_json(), counts)
        if self.observe_duration is not None:
            self.observe_duration(job, link, protocol, report.duration_s)
        # A healthy run (every few seconds per job and link) is DEBUG: at INFO it was most of the
        # scheduler's log — ~55 MB a day on the shipped fleet — and the ledger keeps every run anyway.
        level = {"failed": logging.WARNING, "error": logging.WARNING, "healthy": logging.DEBUG}.get(report.outcome, logging.INFO)
        log.log(level, "%s on %s: %s — %s", job, link, report.outcome, report.reason)
        return report

    # ---- the four device calibrations -----------------------------------------------------------
    def _calibrate(self, check: Check, settings: JobSettings, state: JobState, report: RunReport,
                   counts: dict[tuple[str, str], float], manual: bool) -> None:
        if report.protocol not in check.protocols:
            report.outcome, report.reason = "healthy", f"not applicable to {report.protocol} links"
            return
        before = self.signals.read(report.link, report.protocol, not_before=state.last_action_at)
        report.signals, report.notes = before.describe(), list(before.notes)
        decision = check.assess(before, settings, state.memory)
        if decision.act and decision.verify_on == "frame" and before.source == STATUS:
            # One noisy monitor reading is not evidence: confirm on the mean of the next frames
            # (Prometheus readings are already averaged over the window).
            now_status = self.api.status(report.link)
            before = averaged([before, *self._frame_readings(report.link, int(now_status["frames"]) + 1, SAMPLED_FRAMES - 1,
                                                             float(now_status["frame_seconds"]), self.clock())])
            report.signals = before.describe()
            decision = check.assess(before, settings, state.memory)
        report.decision = ("act: " if decision.act else "no action: ") + decision.reason
        if not decision.act:
            report.outcome, report.reason = "healthy", decision.reason
            return
        now = self.clock()
        if not manual and (state.exhausted or now < state.held_until):
            report.outcome = "held"
            report.reason = (f"{decision.reason}; holding off after {state.failures} failed run(s): "
                             + ("waiting for the signals to return to tolerance" if state.exhausted
                                else f"next attempt after {time.strftime('%H:%M:%S', time.localtime(state.held_until))}"))
            return
        status_before = self.api.status(report.link)
        result = self.api.act(report.link, check.action)
        state.last_action_at = self.clock()
        # Blocks ending before the block in progress has ended were measured (partly) before the action.
        last = status_before.get("last_block") or {}
        if last.get("end_timestamp") is not None:
            state.memory[STALE_BLOCKS_UNTIL] = float(last["end_timestamp"]) + float(status_before["block_seconds"])
        counts[("actions", check.action)] = 1.0
        report.action = {"name": check.action, "ok": result["ok"], "message": result["message"],
                         "before": result["before"], "after": result["after"]}
        if not result["ok"]:
            report.outcome, report.reason = "failed", f"{decision.reason}; {check.action} refused: {result['message']}"
            return
        after = self._verification_signals(report.link, decision, status_before, state.last_action_at)
        verdict = check.verify(before, after, decision, settings, state.memory)
        report.verification = {"ok": verdict.ok, "reason": verdict.reason, "signals": after.describe()}
        report.outcome = "corrected" if verdict.ok else "failed"
        report.reason = f"{decision.reason} → {check.action}: {verdict.reason}"

    def _verification_signals(self, link: str, decision: Decision, status_before: Mapping[str, Any],
                              acted_at: float) -> LinkSignals:
        """Read-outs of the link after the action: at once for device state; for a monitor reading,
        the mean over the first ``SAMPLED_FRAMES`` frames measured entirely after it (actions run
        between frames); for a block statistic, after the first such block. ValueError if that
        takes too long."""
        if decision.verify_on == "now":
            return self.signals.status(link)
        if decision.verify_on == "frame":
            return averaged(self._frame_readings(link, int(status_before["frames"]) + 1, SAMPLED_FRAMES,
                                                 float(status_before["frame_seconds"]), acted_at))
        first_clean = int(status_before["next_block"]) + 1
        deadline = acted_at + VERIFY_PERIODS * float(status_before["block_seconds"]) + VERIFY_SLACK_S
        while True:
            status = self.api.status(link)
            if ((status.get("last_block") or {}).get("index") or -1) >= first_clean:
                return self.signals.status(link)
            if self.clock() >= deadline:
                raise ValueError(f"no block measured after the action within {deadline - acted_at:.0f} s: cannot verify")
            self.sleep(POLL_S)

    def _frame_readings(self, link: str, first_frame: int, count: int, frame_seconds: float, since: float) -> list[LinkSignals]:
        """The link's read-outs as each of frames ``first_frame`` … ``first_frame + count − 1`` ends."""
        deadline = since + VERIFY_PERIODS * count * frame_seconds + VERIFY_SLACK_S
        readings: list[LinkSignals] = []
        wanted = first_frame
        while len(readings) < count:
            status = self.api.status(link)
            if status["frames"] >= wanted:
                readings.append(from_status(status, self.clock()))
                wanted = status["frames"] + 1
                continue
            if self.clock() >= deadline:
                raise ValueError(f"only {len(readings)} of {count} frames measured within {deadline - since:.0f} s: cannot verify")
            self.sleep(POLL_S)
        return readings

    # ---- decoy estimation -----------------------------------------------------------------------
    def _estimate(self, settings: JobSettings, state: JobState, report: RunReport) -> None:
        window = self.api.blocks(report.link, int(settings.options["window_blocks"]))
        if not window["blocks"]:
            report.outcome, report.reason = "healthy", "no archived blocks yet"
            return
        w = estimate_window(window)
        e = w.estimate
        published: dict[str, Any] = {
            "y1_lower": e.y1_lower, "e1_upper": e.e1_upper, "qber": e.qber, "epsilon_sec": w.epsilon_sec,
            "key_rate_bytes_per_second": w.key_rate_bytes_per_second, "state": w.state, "window_blocks": w.blocks,
            "first_block": w.first_block, "last_block": w.last_block, "pulses": w.pulses, "timestamp": self.clock()}
        report.decision = (f"window of {w.blocks} blocks ({w.first_block}–{w.last_block}, {w.pulses:.3g} pulses): "
                           + (f"would abort ({w.state})" if e.aborted else
                              f"{e.secret_key_bits:.4g} bits, {w.key_rate_bytes_per_second:.4g} B/s"))
        if settings.options.get("recommend"):
            status = self.api.status(report.link)
            block_pulses = float(status["block_seconds"]) * float(window["repetition_rate_hz"])
            rec = recommend(window, block_pulses)
            published["recommendation"] = {"observed_loss_db": rec.observed_loss_db, "parameters": dict(rec.parameters),
                                           "gain_ratio": rec.gain_ratio, "notes": list(rec.notes)}
        state.published = published
        report.published = published
        report.outcome = "healthy"
        report.reason = report.decision

    # ---- bookkeeping ----------------------------------------------------------------------------
    def _settle(self, settings: JobSettings, state: JobState, report: RunReport) -> None:
        """Update the failure streak, back-off and last success from the run's outcome."""
        now = self.clock()
        if report.outcome in ("healthy", "corrected"):
            state.failures, state.held_until, state.exhausted = 0, 0.0, False
            state.memory.pop(FAILED_ACTIONS, None)
            state.last_success_at = now
        elif report.outcome in ("failed", "error"):
            # Both back off; only runs that acted count towards giving up (an unreachable API or
            # Prometheus before acting says nothing about whether the action would help).
            state.failures += 1
            state.held_until = now + settings.retry.backoff(state.failures)
            if report.action is not None:  # acted, and it did not work (or could not be verified)
                state.memory[FAILED_ACTIONS] = state.memory.get(FAILED_ACTIONS, 0.0) + 1.0
            state.exhausted = state.memory.get(FAILED_ACTIONS, 0.0) >= settings.retry.max_attempts
            if state.exhausted and report.action is not None:
                report.reason += (f" (attempt {int(state.memory[FAILED_ACTIONS])} of {settings.retry.max_attempts}: "
                                  "holding off until the signals recover)")
        state.last_outcome, state.last_reason = report.outcome, report.reason


def applicable_links(settings: JobSettings, links: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(link, protocol) pairs the job runs on: its configured links (or all) of the protocols it serves."""
    protocols = CHECKS[settings.name].protocols if settings.name in CHECKS else None
    return [(entry["link"], entry["protocol"]) for entry in links
            if (settings.links is None or entry["link"] in settings.links)
            and (protocols is None or entry["protocol"] in protocols)]


__all__ = ["JobRunner", "RunBusy", "RunReport", "OUTCOMES", "applicable_links"]
