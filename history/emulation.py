"""The fleet on an emulated clock: days of operation in minutes, rendered as the exporters' samples.

The same ``Fleet`` the live runtime steps — emulator, block builder, finite-key post-processing,
link state — runs here on an emulated clock, as fast as the CPU allows, with three differences,
each because the past cannot be replayed into the present:

* the ``model`` post-processing engine (every block's finite-key analysis, the leak from the
  efficiency the bits engine measured), since reconciling a month of bits takes a month of CPU;
* no key delivery: each distilled key counts as handed off at once and is dropped
  (``Fleet(deliver_keys=False)``) — a month-old key would be of no use to anyone;
* one emulator frame per ``frame_s`` (the shortest block length of the fleet, at most the sample
  step; device readings are per frame): the live runtime's one-second frames would make most
  of the cost.

The calibration jobs are the real ``JobRunner`` with the real checks and store, reading each link's
status (as the scheduler does when Prometheus has no fresh samples) and acting through the fleet;
their waits (verification after an action) advance the emulated clock. Each (job, link) runs on its
trigger — interval or cron, from jobs.yaml — but at most once per sample step (the decoy estimation,
which only publishes, at most half-hourly: ``MIN_PERIOD_S``); while one run waits
(a verification over the next frames), the other links' due jobs run, as the scheduler's threads
would. The incident plan's faults are injected and cleared at their times, at step resolution.

At every sample step the exporters' expositions (device, post-processing, calibration) are rendered
exactly as a scrape would get them and handed to a sink with the step's timestamp, with the
labels the local Prometheus's scrape gives them (``job``, ``instance``) and each target's ``up``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from calibration_jobs.config import JobsConfig, JobSettings
from calibration_jobs.metrics import CalibrationCollector
from calibration_jobs.runner import JobRunner, applicable_links
from calibration_jobs.service import build_trigger
from calibration_jobs.signals import SignalReader
from calibration_jobs.store import CalibrationStore
from exporters.device import DeviceCollector
from exporters.postprocessing import PostProcessingCollector
from history.plan import Occurrence, Plan
from qkdops.config import FleetConfig
from qkdops.runtime.fleet import Fleet

# The decoy estimation acts on nothing (it publishes the window's estimate and the recommended
# settings) and its optimiser costs ~55 ms a run — at its 5-minute cron, 40 % of a history's time
# (measured, shipped fleet). Half-hourly keeps its gauges on every dashboard at a month's zoom.
MIN_PERIOD_S = {"decoy_estimation": 1800.0}
ScrapeSink = Callable[[float, str, str, bytes], None]   # (timestamp, job, instance, exposition text 0.0.4)


@dataclass(frozen=True)
class Target:
    """One scrape target as the local Prometheus sees it: job name and instance address."""

    job: str
    instance: str


@dataclass(frozen=True)
class Targets:
    device: Target
    postprocessing: Target
    calibration: Target


def history_config(config: FleetConfig, state_dir: Path, step_s: float) -> FleetConfig:
    """``config`` as a history run uses it: model engine, frames of the shortest block (at most the
    step), tracing off, its own state directory."""
    frame_s = min(step_s, min(link.block_seconds for link in config.links))
    frame_s = max(frame_s, config.runtime.frame_seconds)
    links = tuple(dataclasses.replace(link, postprocessing=dataclasses.replace(link.postprocessing, engine="model"))
                  for link in config.links)
    runtime = dataclasses.replace(config.runtime, state_dir=state_dir, frame_seconds=frame_s, tracing="none")
    return dataclasses.replace(config, links=links, runtime=runtime)


class FleetControl:
    """The control API's answers for the calibration jobs, from the fleet in this process (no HTTP):
    the subset of ``ControlClient`` a ``JobRunner`` calls, with the same JSON shapes."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def links(self) -> list[dict[str, str]]:
        return [{"link": link, "protocol": protocol} for link, protocol in self.fleet.link_ids()]

    def status(self, link: str) -> dict[str, Any]:
        return self.fleet.status(link)

    def act(self, link: str, action: str) -> dict[str, Any]:
        r = self.fleet.act(link, action)
        return {"link": link, "action": r.action, "ok": r.ok, "message": r.message, "before": dict(r.before), "after": dict(r.after)}

    def blocks(self, link: str, last: int) -> dict[str, Any]:
        return self.fleet.recent_blocks(link, last)


@dataclass
class _Scheduled:
    job: JobSettings
    link: str
    protocol: str
    next_at: float


class HistoryRun:
    """Emulate ``config``'s fleet from ``start`` to ``end`` (Unix seconds) and hand every sample step's
    scrapes to ``sink``. ``state_dir`` keeps the run's block archive and calibration store."""

    def __init__(self, config: FleetConfig, jobs: JobsConfig, plan: Plan, start: float, end: float, step_s: float,
                 state_dir: Path, targets: Targets, sink: ScrapeSink, seed: int = 0) -> None:
        if not (end > start and step_s > 0):
            raise ValueError(f"history: expected start < end and a positive step, got {start}, {end}, {step_s}")
        self.start, self.end, self.step_s = start, end, step_s
        self.now = start
        self.next_sample = start
        self.sink, self.targets = sink, targets
        state_dir.mkdir(parents=True, exist_ok=True)
        self.config = history_config(config, state_dir, step_s)
        self.fleet = Fleet(self.config, clock=lambda: self.now, deliver_keys=False)
        self.store = CalibrationStore(state_dir / "calibration.sqlite", clock=lambda: self.now)
        self.calibration = CalibrationCollector(self.store)
        control = FleetControl(self.fleet)
        signals = SignalReader(control, None, jobs.signals.max_age_s, clock=lambda: self.now)  # type: ignore[arg-type]
        self.runner = JobRunner(jobs, control, signals, self.store, clock=lambda: self.now,  # type: ignore[arg-type]
                                sleep=self._sleep, observe_duration=self.calibration.observe_duration)
        self._rng = random.Random(seed)
        links = control.links()
        self.scheduled = [_Scheduled(settings, link, protocol, 0.0)
                          for settings in jobs.jobs.values() if settings.enabled
                          for link, protocol in applicable_links(settings, links)]
        for s in self.scheduled:
            s.next_at = self._next_fire(s.job, start)
        self.calibration.expect((s.job.name, s.link, s.protocol) for s in self.scheduled)
        self.device = DeviceCollector(self.fleet.snapshots)
        self.postprocessing = PostProcessingCollector(self.fleet.snapshots)
        self.pending: list[Occurrence] = plan.occurrences(self.fleet.link_ids(), start, end)
        self.active: list[Occurrence] = []
        self.incidents_started = 0
        self._busy: set[str] = set()
        # a month of job runs would log thousands of routine lines; the store keeps every run
        self._job_log = logging.getLogger("qkdops.calibration")
        self._job_log_level = self._job_log.level
        self._job_log.setLevel(logging.ERROR)
        self._progress: Callable[[float], None] | None = None

    # ---- the clock --------------------------------------------------------------------------------
    def run(self, progress: Callable[[float], None] | None = None) -> None:
        """Emulate to the end; ``progress(emulated seconds done)`` after every step."""
        self._progress = progress
        while self.next_sample <= self.end:
            self._advance(self.next_sample)

    def extend(self, end: float) -> None:
        """Emulate on to ``end`` at the next ``run`` (no new incidents: the plan was laid over the first span)."""
        self.end = max(self.end, end)

    def close(self) -> None:
        self.fleet.stop()
        self.store.close()
        self._job_log.setLevel(self._job_log_level)

    def _sleep(self, seconds: float) -> None:
        """A job's wait: the emulated world moves on (and is sampled, and other links' jobs run) meanwhile.
        Nothing changes between two frames, so a poll's short wait moves on to the next frame."""
        next_frame = min(r.started_at + (r.frames + 1) * r.frame_seconds for r in self.fleet.links.values())
        self._advance(max(self.now + max(seconds, 0.0), next_frame))

    def _advance(self, to: float) -> None:
        """Step the fleet to ``to``; at every step boundary on the way: sample, then start and clear
        incidents and run the jobs that are due (on links whose own job is not the one waiting)."""
        while self.next_sample <= to and self.next_sample <= self.end:
            self._step_to(self.next_sample)
            self._sample(self.next_sample)
            self.next_sample += self.step_s
            self._incidents()
            self._jobs()
            if self._progress is not None:
                self._progress(min(self.now, self.end) - self.start)
        self._step_to(to)   # a job waiting at the end moves on past it: only samples stop at the end

    def _step_to(self, t: float) -> None:
        if t > self.now:
            self.now = t
        while any(runtime.frames_due(self.now) > 0 for runtime in self.fleet.links.values()):
            self.fleet.tick()

    # ---- what happens ------------------------------------------------------------------------------
    def _incidents(self) -> None:
        for occurrence in [o for o in self.active if o.end <= self.now]:
            self.fleet.clear(occurrence.link, occurrence.fault)
            self.active.remove(occurrence)
        while self.pending and self.pending[0].start <= self.now:
            occurrence = self.pending.pop(0)
            if occurrence.end > self.now:
                self.fleet.inject(occurrence.link, occurrence.fault, occurrence.parameters)
                self.active.append(occurrence)
                self.incidents_started += 1

    def _jobs(self) -> None:
        """Run the due (job, link)s. A run's waits advance the clock and run other links' due jobs
        (nested), as the scheduler's threads would; one link's runs stay one at a time, as in
        ``JobRunner``."""
        for s in self.scheduled:
            if s.next_at <= self.now and s.link not in self._busy:
                fired = self.now
                s.next_at = math.inf   # not again from inside its own run
                self._busy.add(s.link)
                try:
                    self.runner.run(s.job.name, s.link, s.protocol)
                finally:
                    self._busy.discard(s.link)
                # at most once per step, whatever the trigger (and the decoy estimation less often)
                s.next_at = max(self._next_fire(s.job, fired), fired + max(self.step_s, MIN_PERIOD_S.get(s.job.name, 0.0)))

    def _next_fire(self, job: JobSettings, after: float) -> float:
        t = job.trigger
        jitter = self._rng.uniform(0.0, t.jitter_s) if t.jitter_s else 0.0
        if t.interval_s is not None:
            return after + t.interval_s + jitter
        fire = build_trigger(dataclasses.replace(job, trigger=dataclasses.replace(t, jitter_s=0.0))).get_next_fire_time(
            None, datetime.fromtimestamp(after + 1e-3, UTC))
        return math.inf if fire is None else fire.timestamp() + jitter

    # ---- samples -----------------------------------------------------------------------------------
    def _sample(self, t: float) -> None:
        for target, exposition in ((self.targets.device, self.device), (self.targets.postprocessing, self.postprocessing),
                                   (self.targets.calibration, self.calibration)):
            self.sink(t, target.job, target.instance, exposition.render())
