"""``calibration_jobs/jobs.yaml``: the shipped file loads, and every mistake names the file and field.

Errors are checked through ``load_jobs_config`` on a file in tmp_path, so the message a user sees
(``FILE: jobs.phase_relock.trigger: expected …, got …``) is what is asserted, file name included.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from calibration_jobs.config import (
    DEFAULT_JOBS_FILE,
    JOB_NAMES,
    THRESHOLDS,
    JobsConfig,
    Retry,
    Trigger,
    load_jobs_config,
    parse_jobs_config,
)
from calibration_jobs.service import build_trigger
from qkdops.config import ConfigError

SHIPPED: dict[str, Any] = yaml.safe_load(DEFAULT_JOBS_FILE.read_text(encoding="utf-8"))


def shipped_with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    raw = copy.deepcopy(SHIPPED)
    change(raw)
    return raw


def load_raw(tmp_path: Path, raw: Any) -> JobsConfig:
    path = tmp_path / "my-jobs.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_jobs_config(path)


def load_error(tmp_path: Path, raw: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_raw(tmp_path, raw)
    return str(caught.value)


# ---- the shipped file -------------------------------------------------------------------------------

def test_shipped_jobs_file_loads_every_job_with_its_thresholds() -> None:
    config = load_jobs_config()
    assert config.source == DEFAULT_JOBS_FILE
    assert tuple(config.jobs) == JOB_NAMES
    for name, job in config.jobs.items():
        assert job.name == name and job.enabled
        assert set(job.thresholds) == set(THRESHOLDS[name]), name
        for key, (low, high) in THRESHOLDS[name].items():
            assert low <= job.threshold(key) <= high, (name, key)
        assert job.retry.max_attempts >= 1 and job.retry.backoff_max_s >= job.retry.backoff_s
        assert job.links is None  # `links: all`
        build_trigger(job)  # APScheduler accepts every trigger
    assert config.signals.source == "prometheus" and config.signals.prometheus_url is None
    assert config.max_workers == 4


def test_shipped_triggers_and_decoy_options() -> None:
    jobs = load_jobs_config().jobs
    decoy = jobs["decoy_estimation"]
    assert decoy.trigger == Trigger(interval_s=None, cron="*/5 * * * *", jitter_s=10.0)
    assert dict(decoy.options) == {"window_blocks": 30, "recommend": True}
    assert decoy.misfire_grace_s == 120.0  # its own, not the defaults' 30
    assert dict(decoy.thresholds) == {}
    for name in JOB_NAMES[:-1]:
        trigger = jobs[name].trigger
        assert trigger.cron is None and trigger.interval_s is not None and trigger.jitter_s < trigger.interval_s
        assert jobs[name].misfire_grace_s == 30.0 and dict(jobs[name].options) == {}
    assert jobs["phase_relock"].trigger.interval_s == 10.0


def test_a_subset_of_jobs_is_allowed(tmp_path: Path) -> None:
    config = load_raw(tmp_path, shipped_with(lambda raw: [raw["jobs"].pop(n) for n in JOB_NAMES[1:]]))
    assert tuple(config.jobs) == ("phase_relock",)


# ---- errors name the file and the field ---------------------------------------------------------------

def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set ``raw[a][b][c] = value`` for ``path`` "a.b.c" (creating mappings on the way)."""
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node[key]
        del node[last]
    return change


ERRORS = {
    "unknown top-level key": (_set("schedule", {"max_workers": 2}), "schedule", "one of the keys defaults, jobs, scheduler, signals"),
    "unknown job name": (_set("jobs.phase_relok", {}), "jobs.phase_relok", "one of the keys"),
    "interval and cron": (_set("jobs.phase_relock.trigger", {"interval_s": 10, "cron": "* * * * *"}),
                          "jobs.phase_relock.trigger", "exactly one of interval_s or cron"),
    "neither interval nor cron": (_set("jobs.phase_relock.trigger", {"jitter_s": 1}),
                                  "jobs.phase_relock.trigger", "exactly one of interval_s or cron"),
    "jitter equal to interval": (_set("jobs.intensity_retune.trigger", {"interval_s": 5, "jitter_s": 5}),
                                 "jobs.intensity_retune.trigger.jitter_s", "less than interval_s (5)"),
    "jitter above interval in defaults": (lambda raw: (_set("defaults.trigger", {"interval_s": 5, "jitter_s": 8})(raw),
                                                       _delete("jobs.intensity_retune.trigger")(raw)),
                                          "defaults.trigger.jitter_s", "less than interval_s (5)"),
    "crontab with four fields": (_set("jobs.decoy_estimation.trigger", {"cron": "*/5 * * *"}),
                                 "jobs.decoy_estimation.trigger.cron", "a crontab expression"),
    "crontab minute out of range": (_set("jobs.decoy_estimation.trigger", {"cron": "61 * * * *"}),
                                    "jobs.decoy_estimation.trigger.cron", "a crontab expression"),
    "missing threshold": (_delete("jobs.phase_relock.thresholds.phase_error_rad"),
                          "jobs.phase_relock.thresholds.phase_error_rad", "(required), got nothing (null)"),
    "missing thresholds mapping": (_delete("jobs.detector_regate.thresholds"),
                                   "jobs.detector_regate.thresholds.dark_count_ratio", "(required)"),
    "threshold above range": (_set("jobs.phase_relock.thresholds.actuator_usage", 1.2),
                              "jobs.phase_relock.thresholds.actuator_usage", "a number in [0.05, 0.99], got 1.2"),
    "threshold below range": (_set("jobs.detector_regate.thresholds.dark_count_ratio", 1.0),
                              "jobs.detector_regate.thresholds.dark_count_ratio", "a number in [1.01, 1000.0], got 1.0"),
    "threshold not a number": (_set("jobs.polarization_realign.thresholds.angle_rad", "small"),
                               "jobs.polarization_realign.thresholds.angle_rad", "a finite number"),
    "unknown threshold": (_set("jobs.polarization_realign.thresholds.angle_deg", 2.0),
                          "jobs.polarization_realign.thresholds.angle_deg", "one of the keys angle_rad, qber_alarm_ratio"),
    "threshold on the decoy job": (_set("jobs.decoy_estimation.thresholds", {"qber": 0.1}),
                                   "jobs.decoy_estimation.thresholds.qber", "one of the keys"),
    "retry cap below back-off (defaults)": (_set("defaults.retry", {"max_attempts": 3, "backoff_s": 60, "backoff_max_s": 30}),
                                            "defaults.retry.backoff_max_s", "at least backoff_s (60)"),
    "retry cap below back-off (job)": (_set("jobs.detector_regate.retry", {"backoff_s": 700}),
                                       "jobs.detector_regate.retry.backoff_max_s", "at least backoff_s (700)"),
    "retry attempts zero": (_set("jobs.phase_relock.retry", {"max_attempts": 0}), "jobs.phase_relock.retry.max_attempts", "[1, 100]"),
    "links a string": (_set("jobs.phase_relock.links", "tf-a"), "jobs.phase_relock.links", "'all' or a non-empty list of link ids"),
    "links empty": (_set("jobs.phase_relock.links", []), "jobs.phase_relock.links", "'all' or a non-empty list of link ids"),
    "links a mapping in defaults": (_set("defaults.links", {"tf-a": True}), "defaults.links", "'all' or a non-empty list"),
    "link id not a string": (_set("jobs.phase_relock.links", ["tf-a", 7]), "jobs.phase_relock.links[1]", "a non-empty string"),
    "signals source": (_set("signals.source", "grafana"), "signals.source", "one of prometheus, status, got 'grafana'"),
    "prometheus url without scheme": (_set("signals.prometheus_url", "localhost:9090"), "signals.prometheus_url", "an http(s) URL"),
    "prometheus url ftp": (_set("signals.prometheus_url", "ftp://prom:9090"), "signals.prometheus_url", "an http(s) URL"),
    "prometheus url bad port": (_set("signals.prometheus_url", "http://prom:9o90"), "signals.prometheus_url", "an http(s) URL"),
    "unknown signals key": (_set("signals.url", "http://x"), "signals.url", "one of the keys"),
    "max age out of range": (_set("signals.max_age_s", 0), "signals.max_age_s", "[0.5, 3600.0]"),
    "max workers zero": (_set("scheduler.max_workers", 0), "scheduler.max_workers", "[1, 64]"),
    "enabled not a boolean": (_set("jobs.intensity_retune.enabled", "no"), "jobs.intensity_retune.enabled", "true or false"),
    "decoy option on another job": (_set("jobs.phase_relock.window_blocks", 10), "jobs.phase_relock.window_blocks", "one of the keys"),
    "decoy window zero": (_set("jobs.decoy_estimation.window_blocks", 0), "jobs.decoy_estimation.window_blocks", "[1, 1000]"),
    "decoy recommend not a boolean": (_set("jobs.decoy_estimation.recommend", "sometimes"),
                                      "jobs.decoy_estimation.recommend", "true or false"),
    "thresholds in defaults": (_set("defaults.thresholds", {"angle_rad": 0.1}), "defaults.thresholds", "one of the keys"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors_name_the_file_and_the_field(tmp_path: Path, case: str) -> None:
    change, field, expected = ERRORS[case]
    message = load_error(tmp_path, shipped_with(change))
    assert message.startswith(f"{tmp_path / 'my-jobs.yaml'}: {field}: expected "), message
    assert expected in message, message


def test_missing_jobs_section_and_unreadable_files(tmp_path: Path) -> None:
    assert re.fullmatch(rf"{re.escape(str(tmp_path / 'my-jobs.yaml'))}: jobs: expected a mapping, got nothing \(null\)",
                        load_error(tmp_path, shipped_with(_delete("jobs"))))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'absent.yaml'))}: cannot read"):
        load_jobs_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("jobs: {phase_relock: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(broken))}: line \d+, column \d+: invalid YAML"):
        load_jobs_config(broken)


# ---- defaults: inherited, overridden per job ------------------------------------------------------------

def test_defaults_are_inherited_and_overridden_per_job(tmp_path: Path) -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["defaults"] = {"trigger": {"interval_s": 20, "jitter_s": 2}, "max_instances": 2, "misfire_grace_s": 7,
                           "coalesce": False, "retry": {"max_attempts": 5, "backoff_s": 10, "backoff_max_s": 100},
                           "links": ["tf-a", "mdi-a"], "enabled": False}
        raw["jobs"]["phase_relock"] = {"enabled": True, "links": "all", "retry": {"max_attempts": 2, "backoff_s": 1, "backoff_max_s": 4},
                                       "thresholds": SHIPPED["jobs"]["phase_relock"]["thresholds"]}
        raw["jobs"]["intensity_retune"].pop("trigger")
        raw["jobs"]["detector_regate"]["links"] = ["bb84-a"]
        raw["jobs"]["detector_regate"]["coalesce"] = True

    jobs = load_raw(tmp_path, shipped_with(change)).jobs
    relock, retune, regate = jobs["phase_relock"], jobs["intensity_retune"], jobs["detector_regate"]
    # phase_relock overrides enabled, links and retry; keeps the defaults' trigger and options
    assert relock.enabled and relock.links is None
    assert relock.retry == Retry(max_attempts=2, backoff_s=1.0, backoff_max_s=4.0)
    assert relock.trigger == Trigger(interval_s=20.0, jitter_s=2.0)
    assert (relock.max_instances, relock.misfire_grace_s, relock.coalesce) == (2, 7.0, False)
    # intensity_retune has no trigger of its own: the defaults' one; everything else inherited too
    assert retune.trigger == Trigger(interval_s=20.0, jitter_s=2.0)
    assert not retune.enabled and retune.links == ("tf-a", "mdi-a")
    assert retune.retry == Retry(max_attempts=5, backoff_s=10.0, backoff_max_s=100.0)
    # detector_regate: its own trigger (shipped), links and coalesce
    assert regate.trigger == Trigger(interval_s=30.0, jitter_s=3.0)
    assert regate.links == ("bb84-a",) and regate.coalesce
    assert regate.retry == retune.retry


def test_without_defaults_the_built_in_ones_apply() -> None:
    raw = {"jobs": {"detector_regate": {"thresholds": {"dark_count_ratio": 2, "live_time_drop_ratio": 0.5}},
                    "decoy_estimation": None}}
    config = parse_jobs_config(raw, Path("inline.yaml"))
    regate, decoy = config.jobs["detector_regate"], config.jobs["decoy_estimation"]
    assert regate.trigger == Trigger() and regate.retry == Retry() and regate.links is None
    assert regate.threshold("dark_count_ratio") == 2.0
    assert dict(decoy.options) == {"window_blocks": 30, "recommend": True}
    assert config.signals.source == "prometheus" and config.max_workers == 4


def test_signal_settings_are_read(tmp_path: Path) -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["signals"] = {"source": "status", "prometheus_url": "https://prom.example:9090/", "max_age_s": 12, "timeout_s": 2}

    signals = load_raw(tmp_path, shipped_with(change)).signals
    assert (signals.source, signals.prometheus_url, signals.max_age_s, signals.timeout_s) == \
        ("status", "https://prom.example:9090", 12.0, 2.0)


# ---- retry back-off -----------------------------------------------------------------------------------------

def test_retry_backoff_doubles_and_caps() -> None:
    retry = Retry(max_attempts=3, backoff_s=30.0, backoff_max_s=600.0)
    assert [retry.backoff(n) for n in range(1, 8)] == [30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0]
    assert retry.backoff(0) == 30.0  # never less than one back-off
    assert Retry(backoff_s=5.0, backoff_max_s=5.0).backoff(10) == 5.0
    assert Retry(backoff_s=0.0, backoff_max_s=0.0).backoff(4) == 0.0


def test_trigger_describe() -> None:
    assert Trigger(interval_s=10.0, jitter_s=1.0).describe() == "every 10 s ± 1 s"
    assert Trigger(interval_s=None, cron="*/5 * * * *").describe() == "cron '*/5 * * * *'"
