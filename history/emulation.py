"""The fleet on an emulated clock: days of operation in minutes, rendered as the exporters' samples.

The same ``Fleet`` the live runtime steps — emulator, block builder, finite-key post-processing,
link state — runs here on an emulated clock, as fast as the CPU allows, with four differences,
each because the past cannot be replayed into the present, or for speed:

* the ``model`` post-processing engine (every block's finite-key analysis, the leak from the
  efficiency the bits engine measured), since reconciling a month of bits takes a month of CPU;
* no key delivery by default: each distilled key counts as handed off at once and is dropped
  (``Fleet(deliver_keys=False)``) — a month-old key would be of no use to anyone. With
  ``deliver_keys`` (``qkdops history --deliver-keys``) every key goes the live way instead — key
  confirmation, the hand-off buffer, both ends' KME stores with their capacity and full-store
  policy — into scratch stores no KME serves (no application draws on the past), so the stores'
  levels, hand-offs and surplus discards are in the history too; the stores are deleted with the
  run's scratch (emulated key material never stays on disk). It costs the key's bytes: ~20 ms of
  SQLite per 1-MB block (metro-bb84: 8,640 a day);
* one emulator frame per ``frame_s`` (the shortest block length of the fleet, at most the sample
  step; device readings are per frame): the live runtime's one-second frames would make most
  of the cost;
* scratch state: the run's block archive and calibration store skip SQLite's sync on commit
  (``durable=False``) — a crash loses the run anyway; syncing cost 28 % of a 100-link run's time
  with its state on disk, ~4 % on the tmpfs ``qkdops history`` puts it on where there is one.

The calibration jobs are the real ``JobRunner`` with the real checks and store, reading each link's
status (as the scheduler does when Prometheus has no fresh samples) and acting through the fleet;
their waits (verification after an action) advance the emulated clock. Each (job, link) runs on its
trigger — interval or cron, from jobs.yaml — at frame resolution (a job due within a frame runs at
its end: nothing changes in between), as often as live, because a sustained drift outruns a slower
loop (a 0.02 rad/s polarization drift checked every 30 s instead of 5 s aborts every block); the
decoy estimation, which only publishes, runs at most half-hourly (``MIN_PERIOD_S``). While one run
waits (a verification over the next frames), the other links' due jobs run, as the scheduler's
threads would. The incident plan's faults are injected and cleared at their times, at step resolution.

At every sample step the exporters' expositions (device, post-processing, calibration) are rendered
exactly as a scrape would get them and handed to a sink with the step's timestamp, with the
labels the local Prometheus's scrape gives them (``job``, ``instance``) and each target's ``up``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import threading
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
    a ``qkdops.control_client.CalibrationApi``, with the same JSON shapes as the control API."""

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


class _Interrupted(BaseException):
    """Raised in a job run parked at the end of a history (close): unwinds it like a stopped scheduler."""


class _LinkWorker:
    """The thread one link's job runs execute on, one run at a time, in lock step with the emulation:
    it runs only while the emulation waits for it (``resume``), and a run's sleep parks it until the
    emulation resumes it at the frame that ends the sleep. Runs on different links thus overlap in
    emulated time, as on the scheduler's threads, and the emulation stays deterministic (one thread
    runs at a time). All shared state is touched by one thread at a time, handed over by the events."""

    def __init__(self, link: str) -> None:
        self.link = link
        self.scheduled: _Scheduled | None = None   # the run in progress, and when it fired
        self.fired = 0.0
        self.ended: tuple[_Scheduled, float] | None = None   # the run that just ended, to reschedule
        self.wake_at = math.inf
        self.error: BaseException | None = None
        self.closing = False
        self._task: Callable[[], None] | None = None
        self._go, self._parked = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"qkdops-history-{link}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self.scheduled is not None

    def start(self, scheduled: _Scheduled, fired: float, task: Callable[[], None]) -> None:
        self.scheduled, self.fired, self._task = scheduled, fired, task
        self.resume()

    def resume(self) -> None:
        """(Emulation thread) let the run go on until it sleeps again or ends."""
        self._parked.clear()
        self._go.set()
        self._parked.wait()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def park(self, until: float) -> None:
        """(Run's thread) hand control back until the emulation's clock reaches ``until``."""
        self.wake_at = until
        self._parked.set()
        self._go.wait()
        self._go.clear()
        if self.closing:
            raise _Interrupted

    def close(self) -> None:
        """Unwind a parked run and end the thread."""
        self.closing = True
        self._task = None
        self.resume()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            if self.closing:
                self._parked.set()
                return
            task, self._task = self._task, None
            try:
                if task is not None:
                    task()
            except _Interrupted:
                pass
            except BaseException as exc:   # re-raised on the emulation thread, which names the run
                self.error = exc
            if self.scheduled is not None:
                self.ended = (self.scheduled, self.fired)
            self.wake_at = math.inf
            self.scheduled = None
            self._parked.set()
            if self.closing:
                return


class HistoryRun:
    """Emulate ``config``'s fleet from ``start`` to ``end`` (Unix seconds) and hand every sample step's
    scrapes to ``sink``. ``state_dir`` keeps the run's block archive and calibration store."""

    def __init__(self, config: FleetConfig, jobs: JobsConfig, plan: Plan, start: float, end: float, step_s: float,
                 state_dir: Path, targets: Targets, sink: ScrapeSink, seed: int = 0, deliver_keys: bool = False) -> None:
        if not (end > start and step_s > 0):
            raise ValueError(f"history: expected start < end and a positive step, got {start}, {end}, {step_s}")
        self.start, self.end, self.step_s = start, end, step_s
        self.now = start
        self.next_sample = start
        self.sink, self.targets = sink, targets
        state_dir.mkdir(parents=True, exist_ok=True)
        self.config = history_config(config, state_dir, step_s)
        self.fleet = Fleet(self.config, clock=lambda: self.now, deliver_keys=deliver_keys, durable=False)
        self.store = CalibrationStore(state_dir / "calibration.sqlite", clock=lambda: self.now, durable=False)
        self.calibration = CalibrationCollector(self.store)
        control = FleetControl(self.fleet)
        signals = SignalReader(control, None, jobs.signals.max_age_s, clock=lambda: self.now)
        self.runner = JobRunner(jobs, control, signals, self.store, clock=lambda: self.now,
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
        self._workers = {entry["link"]: _LinkWorker(entry["link"]) for entry in links}
        self._running: _LinkWorker | None = None   # the worker whose run holds control now
        # a month of job runs and their actions would log tens of thousands of routine lines (a day of
        # the shipped fleet: 2,200 actions); the calibration store and the archive keep every one
        self._quiet = {name: logging.getLogger(name) for name in ("qkdops.calibration", "qkdops.fleet")}
        self._levels = {name: logger.level for name, logger in self._quiet.items()}
        for logger in self._quiet.values():
            logger.setLevel(logging.ERROR)
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
        for worker in self._workers.values():   # runs still waiting at the end are interrupted
            self._running = worker
            worker.close()
        self.fleet.stop()
        self.store.close()
        for name, logger in self._quiet.items():
            logger.setLevel(self._levels[name])

    def _sleep(self, seconds: float) -> None:
        """A job's wait (on its link's worker thread): the emulated world moves on — sampled, other
        links' jobs running — until it ends. Nothing changes between two frames, so a poll's short
        wait ends at the next frame."""
        worker = self._running
        assert worker is not None, "a job slept outside a history run"
        worker.park(max(self.now + max(seconds, 0.0), self._next_frame()))

    def _next_frame(self) -> float:
        return min(r.started_at + (r.frames + 1) * r.frame_seconds for r in self.fleet.links.values())

    def _advance(self, to: float) -> None:
        """Step the fleet to ``to`` frame by frame. At every frame boundary on the way: the job runs whose
        wait has ended go on, then the due jobs start (a job due within a frame runs at its end, since
        nothing changes in between). At every sample step, first: sample, then start and clear incidents."""
        while True:
            sample_at = self.next_sample if self.next_sample <= self.end else math.inf
            if (boundary := min(self._next_frame(), sample_at)) > to:
                break
            self._step_to(boundary)
            if boundary == sample_at:
                self._sample(sample_at)
                self.next_sample += self.step_s
                self._incidents()
                if self._progress is not None:
                    self._progress(min(self.now, self.end) - self.start)
            self._jobs()
        self._step_to(to)

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
        """Let the waiting runs whose wait has ended go on, then start the due (job, link)s on their
        links' workers; one link's runs stay one at a time, as in ``JobRunner``."""
        for worker in self._workers.values():
            if worker.busy and worker.wake_at <= self.now:
                self._hand_over(worker, worker.resume)
        for s in self.scheduled:
            worker = self._workers[s.link]
            if s.next_at <= self.now and not worker.busy:
                s.next_at = math.inf   # rescheduled when the run ends
                run = functools.partial(self.runner.run, s.job.name, s.link, s.protocol)
                self._hand_over(worker, functools.partial(worker.start, s, self.now, run))

    def _hand_over(self, worker: _LinkWorker, go: Callable[[], None]) -> None:
        """Run ``go`` (a start or resume of ``worker``) until its run sleeps or ends; reschedule it if it ended."""
        self._running = worker
        try:
            go()
        finally:
            self._running = None
        if (ended := worker.ended) is not None:
            worker.ended = None
            s, fired = ended
            # on its trigger, at frame resolution (the decoy estimation less often)
            s.next_at = max(self._next_fire(s.job, fired), fired + MIN_PERIOD_S.get(s.job.name, 0.0))

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
