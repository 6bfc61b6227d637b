"""``calibration_jobs/jobs.yaml``: which jobs run, when, how hard they retry, and their tolerances.

Every job inherits ``defaults`` and overrides what it needs. A trigger is either
``{interval_s, jitter_s}`` or ``{cron: "m h dom mon dow", jitter_s}`` (APScheduler's triggers);
``max_instances``, ``misfire_grace_s`` and ``coalesce`` are APScheduler's job options. ``retry``
bounds what a failing job may do: after a failed or errored run the job waits ``backoff_s`` ×
2^(failures − 1) (at most ``backoff_max_s``) before it acts again, and after ``max_attempts``
failures in a row it holds off acting on that link until its signals are back in tolerance (or a
human runs it with ``qkdops calibrate``). Errors name the file and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from qkdops.config import ConfigError, read_yaml
from qkdops.yaml_fields import FieldReader

DEFAULT_JOBS_FILE = Path(__file__).resolve().parent / "jobs.yaml"
JOB_NAMES = ("phase_relock", "intensity_retune", "polarization_realign", "detector_regate", "decoy_estimation")
SIGNAL_SOURCES = ("prometheus", "status")


@dataclass(frozen=True)
class Trigger:
    """Run every ``interval_s`` seconds, or on the ``cron`` schedule; ± ``jitter_s`` random delay."""

    interval_s: float | None = 30.0
    cron: str | None = None
    jitter_s: float = 0.0

    def describe(self) -> str:
        when = f"cron '{self.cron}'" if self.cron else f"every {self.interval_s:g} s"
        return when + (f" ± {self.jitter_s:g} s" if self.jitter_s else "")


@dataclass(frozen=True)
class Retry:
    max_attempts: int = 3
    backoff_s: float = 30.0
    backoff_max_s: float = 600.0

    def backoff(self, failures: int) -> float:
        """Seconds to wait before acting again after ``failures`` failures in a row."""
        return min(self.backoff_max_s, self.backoff_s * 2.0 ** max(0, failures - 1))


@dataclass(frozen=True)
class JobSettings:
    name: str
    enabled: bool = True
    trigger: Trigger = field(default_factory=Trigger)
    max_instances: int = 1
    misfire_grace_s: float = 30.0
    coalesce: bool = True
    retry: Retry = field(default_factory=Retry)
    links: tuple[str, ...] | None = None         # None: every link the job applies to
    thresholds: Mapping[str, float] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # job-specific (decoy estimation)

    def threshold(self, key: str) -> float:
        return float(self.thresholds[key])


@dataclass(frozen=True)
class SignalSettings:
    """Where jobs read signals: Prometheus (default) with the control API's link status as fallback."""

    source: str = "prometheus"
    prometheus_url: str | None = None   # None: http://<runtime.bind>:<runtime.prometheus_port>
    max_age_s: float = 30.0             # older samples (or samples from before the job's last action) → status
    timeout_s: float = 5.0


@dataclass(frozen=True)
class JobsConfig:
    signals: SignalSettings
    max_workers: int
    jobs: Mapping[str, JobSettings]
    source: Path = DEFAULT_JOBS_FILE


# Tolerances each job needs, with their allowed ranges; each job's `thresholds` must give every one,
# and nothing else.
THRESHOLDS: Mapping[str, Mapping[str, tuple[float, float]]] = MappingProxyType({
    "phase_relock": {"actuator_usage": (0.05, 0.99), "phase_error_rad": (0.01, 1.5)},
    "intensity_retune": {"relative_deviation": (0.005, 1.0), "vacuum_leak_ratio": (0.0001, 0.5)},
    "polarization_realign": {"angle_rad": (0.001, 1.0), "qber_alarm_ratio": (0.05, 1.0)},
    "detector_regate": {"dark_count_ratio": (1.01, 1000.0), "live_time_drop_ratio": (0.01, 0.99)},
    "decoy_estimation": {},
})
DECOY_OPTIONS = ("window_blocks", "recommend")
SHARED_OPTIONS = {"enabled", "trigger", "max_instances", "misfire_grace_s", "coalesce", "retry", "links"}


def load_jobs_config(path: str | Path = DEFAULT_JOBS_FILE) -> JobsConfig:
    """Read and validate ``path`` (ConfigError naming the file and field)."""
    path = Path(path)
    return parse_jobs_config(read_yaml(path), path)


def parse_jobs_config(raw: Any, path: Path) -> JobsConfig:
    r = FieldReader(path, ConfigError)
    top = r.mapping(raw, "", {"signals", "scheduler", "defaults", "jobs"})
    signals = _signals(r, top.get("signals", {}))
    scheduler = r.mapping(top.get("scheduler", {}), "scheduler", {"max_workers"})
    max_workers = r.integer(scheduler.get("max_workers", 4), "scheduler.max_workers", 1, 64)
    defaults = r.mapping(top.get("defaults", {}), "defaults", SHARED_OPTIONS)
    jobs_raw = r.mapping(top.get("jobs"), "jobs", set(JOB_NAMES))
    jobs = {name: _job(r, name, defaults, jobs_raw[name] or {}) for name in JOB_NAMES if name in jobs_raw}
    return JobsConfig(signals, max_workers, MappingProxyType(jobs), path)


def _signals(r: FieldReader, raw: Any) -> SignalSettings:
    data = r.mapping(raw, "signals", {f.name for f in dataclasses.fields(SignalSettings)})
    values: dict[str, Any] = {}
    if "source" in data:
        values["source"] = r.choice(data["source"], "signals.source", SIGNAL_SOURCES)
    if data.get("prometheus_url") is not None:
        values["prometheus_url"] = r.http_url(data["prometheus_url"], "signals.prometheus_url").rstrip("/")
    for key, low, high in (("max_age_s", 0.5, 3600.0), ("timeout_s", 0.1, 120.0)):
        if key in data:
            values[key] = r.number(data[key], f"signals.{key}", low, high)
    return SignalSettings(**values)


def _job(r: FieldReader, name: str, defaults: Mapping[str, Any], raw: Any) -> JobSettings:
    where = f"jobs.{name}"
    allowed = SHARED_OPTIONS | {"thresholds"} | (set(DECOY_OPTIONS) if name == "decoy_estimation" else set())
    data = r.mapping(raw, where, allowed)

    def pick(key: str) -> tuple[Any, str] | None:
        if key in data:
            return data[key], f"{where}.{key}"
        if key in defaults:
            return defaults[key], f"defaults.{key}"
        return None

    values: dict[str, Any] = {"name": name}
    for key in ("enabled", "coalesce"):
        if (v := pick(key)) is not None:
            values[key] = r.boolean(*v)
    if (v := pick("trigger")) is not None:
        values["trigger"] = _trigger(r, *v)
    if (v := pick("max_instances")) is not None:
        values["max_instances"] = r.integer(v[0], v[1], 1, 16)
    if (v := pick("misfire_grace_s")) is not None:
        values["misfire_grace_s"] = r.number(v[0], v[1], 0.0, 86400.0)
    if (v := pick("retry")) is not None:
        values["retry"] = _retry(r, *v)
    if (v := pick("links")) is not None and v[0] != "all":
        links = r.sequence(v[0], v[1], "'all' or a non-empty list of link ids")
        values["links"] = tuple(r.string(link, f"{v[1]}[{i}]") for i, link in enumerate(links))
    values["thresholds"] = MappingProxyType(_thresholds(r, name, data.get("thresholds", {})))
    if name == "decoy_estimation":
        values["options"] = MappingProxyType({
            "window_blocks": r.integer(data.get("window_blocks", 30), f"{where}.window_blocks", 1, 1000),
            "recommend": r.boolean(data.get("recommend", True), f"{where}.recommend")})
    return JobSettings(**values)


def _trigger(r: FieldReader, raw: Any, where: str) -> Trigger:
    data = r.mapping(raw, where, {"interval_s", "cron", "jitter_s"})
    jitter = r.number(data.get("jitter_s", 0.0), f"{where}.jitter_s", 0.0, 3600.0)
    if ("interval_s" in data) == ("cron" in data):
        r.fail(where, "exactly one of interval_s or cron", raw)
    if "cron" in data:
        expression = r.string(data["cron"], f"{where}.cron")
        try:
            CronTrigger.from_crontab(expression)
        except ValueError as exc:
            r.fail(f"{where}.cron", f"a crontab expression 'minute hour day month weekday' ({exc})", expression)
        return Trigger(interval_s=None, cron=expression, jitter_s=jitter)
    interval = r.number(data["interval_s"], f"{where}.interval_s", 0.1, 86400.0)
    if jitter >= interval:
        r.fail(f"{where}.jitter_s", f"less than interval_s ({interval:g})", jitter)
    return Trigger(interval_s=interval, jitter_s=jitter)


def _retry(r: FieldReader, raw: Any, where: str) -> Retry:
    data = r.mapping(raw, where, {"max_attempts", "backoff_s", "backoff_max_s"})
    defaults = Retry()
    retry = Retry(r.integer(data.get("max_attempts", defaults.max_attempts), f"{where}.max_attempts", 1, 100),
                  r.number(data.get("backoff_s", defaults.backoff_s), f"{where}.backoff_s", 0.0, 86400.0),
                  r.number(data.get("backoff_max_s", defaults.backoff_max_s), f"{where}.backoff_max_s", 0.0, 7 * 86400.0))
    if retry.backoff_max_s < retry.backoff_s:
        r.fail(f"{where}.backoff_max_s", f"at least backoff_s ({retry.backoff_s:g})", retry.backoff_max_s)
    return retry


def _thresholds(r: FieldReader, name: str, raw: Any) -> dict[str, float]:
    """The job's tolerances: every one it needs (``THRESHOLDS``), in range, and nothing else."""
    where = f"jobs.{name}.thresholds"
    given = r.mapping(raw, where, set(THRESHOLDS[name]))
    out = {}
    for key, (low, high) in THRESHOLDS[name].items():
        if key not in given:
            r.fail(f"{where}.{key}", f"a number in [{low}, {high}] (required)", None)
        out[key] = r.number(given[key], f"{where}.{key}", low, high)
    return out
