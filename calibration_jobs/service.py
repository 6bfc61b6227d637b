"""The scheduler service: APScheduler running every (job, link) on its trigger, with durable schedules.

One APScheduler job per (calibration job, link), id ``<job>@<link>``, in a SQLAlchemy job store
(``<state_dir>/calibration-schedule.sqlite``): next run times survive a restart, so a scheduler that
was down misses runs visibly — APScheduler reports each run later than ``misfire_grace_s`` as missed
and ``qkd_calibration_misfires_total`` counts it; with ``coalesce`` the backlog collapses into one
run — rather than silently starting the clock again. On start the stored jobs are reconciled with
``jobs.yaml`` and the fleet's links: unchanged jobs keep their next run time, changed ones are
rescheduled, removed ones dropped.

No duplicate concurrent runs: ``max_instances`` (1) per job inside the process, one run at a time per
link (``JobRunner``), a store lease per (job, link) across processes, and an exclusive lock file
(``<state_dir>/calibration.lock``) so that only one scheduler serves a state directory. A run that
raises is recorded as ``error`` by the runner; APScheduler's own error event is logged, never fatal.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent, JobSubmissionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from calibration_jobs.config import JobsConfig, JobSettings
from calibration_jobs.runner import JobRunner, RunBusy, applicable_links
from calibration_jobs.store import CalibrationStore

log = logging.getLogger("qkdops.calibration")
SCHEDULE_FILE = "calibration-schedule.sqlite"
LOCK_FILE = "calibration.lock"
RUN_FUNCTION = "calibration_jobs.service:scheduled_run"  # textual reference: stored jobs outlive the process

_ACTIVE: CalibrationService | None = None  # the service whose runner stored jobs call (one per process)


class SchedulerLocked(RuntimeError):
    """Another scheduler holds the state directory's lock."""


def scheduled_run(job: str, link: str, protocol: str) -> None:
    """What each stored APScheduler job calls (module-level so the job store can reference it)."""
    service = _ACTIVE
    if service is None:
        raise RuntimeError("no calibration service is running in this process")
    try:
        service.runner.run(job, link, protocol)
    except RunBusy as exc:
        log.info("skipped: %s", exc)


def job_id(job: str, link: str) -> str:
    return f"{job}@{link}"


def build_trigger(settings: JobSettings) -> BaseTrigger:
    t = settings.trigger
    jitter = t.jitter_s or None
    if t.cron is not None:
        return CronTrigger.from_crontab(t.cron, timezone="UTC") if jitter is None else \
            _cron_with_jitter(t.cron, jitter)
    assert t.interval_s is not None
    return IntervalTrigger(seconds=t.interval_s, jitter=jitter, timezone="UTC")


def _cron_with_jitter(expression: str, jitter: float) -> CronTrigger:
    minute, hour, day, month, day_of_week = expression.split()
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=day_of_week, jitter=jitter, timezone="UTC")


class CalibrationService:
    """Owns the APScheduler instance, the lock file and the reconciliation of stored jobs."""

    def __init__(self, config: JobsConfig, runner: JobRunner, store: CalibrationStore, state_dir: Path,
                 links: Callable[[], list[dict[str, str]]]) -> None:
        self.config, self.runner, self.store, self.state_dir = config, runner, store, state_dir
        self.links = links
        self._lock_file: IO[str] | None = None
        self.scheduler: BackgroundScheduler | None = None
        self._started = threading.Event()

    def start(self) -> list[str]:
        """Lock the state directory, reconcile stored jobs, start running; returns the job ids."""
        global _ACTIVE
        self._lock()
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{self.state_dir / SCHEDULE_FILE}")},
            executors={"default": ThreadPoolExecutor(self.config.max_workers)}, timezone="UTC")
        self.scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR | EVENT_JOB_MAX_INSTANCES)
        _ACTIVE = self
        self.scheduler.start(paused=True)
        ids = self._reconcile(self.links())
        self.scheduler.resume()
        self._started.set()
        return ids

    def stop(self, wait: bool = True) -> None:
        """Stop scheduling; with ``wait``, let running jobs finish (their runs are recorded)."""
        global _ACTIVE
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=wait)
        if _ACTIVE is self:
            _ACTIVE = None
        self._unlock()

    def jobs(self) -> list[dict[str, Any]]:
        assert self.scheduler is not None
        return [{"id": j.id, "name": j.name, "next_run_time": j.next_run_time.timestamp() if j.next_run_time else None}
                for j in self.scheduler.get_jobs()]

    def scheduled(self) -> list[tuple[str, str, str]]:
        """(job, link, protocol) of every stored job."""
        assert self.scheduler is not None
        return [tuple(j.args) for j in self.scheduler.get_jobs()]  # type: ignore[misc]

    def _reconcile(self, links: list[dict[str, str]]) -> list[str]:
        assert self.scheduler is not None
        wanted: dict[str, tuple[JobSettings, str, str]] = {}
        for settings in self.config.jobs.values():
            if settings.enabled:
                for link, protocol in applicable_links(settings, links):
                    wanted[job_id(settings.name, link)] = (settings, link, protocol)
        for stored in self.scheduler.get_jobs():
            if stored.id not in wanted:
                log.info("schedule: removing %s (no longer configured)", stored.id)
                stored.remove()
        for jid, (settings, link, protocol) in wanted.items():
            name = f"{settings.name} on {link}: {settings.trigger.describe()}"
            options = {"misfire_grace_time": int(settings.misfire_grace_s) or None, "coalesce": settings.coalesce,
                       "max_instances": settings.max_instances}
            stored = self.scheduler.get_job(jid)
            if stored is not None and stored.name == name and tuple(stored.args) == (settings.name, link, protocol):
                stored.modify(**options)  # keeps the stored next run time
                log.info("schedule: kept %s, next run %s", jid, stored.next_run_time)
                continue
            self.scheduler.add_job(RUN_FUNCTION, build_trigger(settings), args=(settings.name, link, protocol),
                                   id=jid, name=name, replace_existing=True, **options)
            log.info("schedule: %s %s", "changed" if stored else "added", name)
        return sorted(wanted)

    def _on_event(self, event: JobExecutionEvent | JobSubmissionEvent) -> None:
        job, _, link = event.job_id.partition("@")
        protocol = _protocol_of(self.scheduler, event.job_id)
        if event.code in (EVENT_JOB_MISSED, EVENT_JOB_MAX_INSTANCES):
            why = "later than its misfire grace time" if event.code == EVENT_JOB_MISSED else "its previous run still going"
            log.warning("run of %s skipped: %s", event.job_id, why)
            self.store.count("misfires", job, link, protocol)
        elif event.code == EVENT_JOB_ERROR:
            log.error("run of %s raised %r", event.job_id, getattr(event, "exception", None))

    def _lock(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.state_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the service's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise SchedulerLocked(f"{self.state_dir / LOCK_FILE}: a calibration scheduler already runs here ({holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        handle.flush()
        self._lock_file = handle

    def _unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


def _protocol_of(scheduler: BackgroundScheduler | None, jid: str) -> str:
    job = scheduler.get_job(jid) if scheduler is not None else None
    return job.args[2] if job is not None and len(job.args) > 2 else ""
