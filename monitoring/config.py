"""The monitoring config (``monitoring.yaml``): runbook base URL, job names and their selectors,
scrape interval, Alertmanager's group timers and the static alert thresholds — the one place every
monitoring artefact takes them from, as a monitoring mixin's ``_config`` does.

Python renderers (Prometheus and Alertmanager configs, dashboards) read the typed fields. Text
sources (the alert-rule templates in ``alert_rules/templates/``, the SLO specs in ``slo/``) name
values as ``[[ name ]]`` placeholders — ``[[ thresholds.fiber_cut_excess_loss_db ]]``,
``[[ selectors.device ]]``, ``[[ runbook_base_url ]]`` — which ``render_template`` fills. Double
brackets because PromQL never writes ``[[`` and Prometheus's own templates use ``{{ }}``, so a
rule's ``{{ $labels.link }}`` passes through untouched. An unknown name fails with the source's
file and line, so a typo never ships as literal text in a rule.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from qkdops.assets import asset
from qkdops.config import ConfigError
from qkdops.durations import format_seconds, seconds
from qkdops.yaml_fields import FieldReader

DEFAULT_PATH = asset("monitoring.yaml")
SEVERITIES = ("page", "ticket")
TIMERS = ("group_wait", "group_interval", "repeat_interval")
REFERENCE_INTERVAL_S = 5.0   # the scrape interval the Alertmanager timers are given at
PLACEHOLDER = re.compile(r"\[\[\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\]\]")
# A Prometheus job name goes into rules as a PromQL string literal and into regexes (job=~"a|b"):
# letters, digits and - _ . : only, so no quoting or regex escaping can be needed.
_JOB_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_THRESHOLD_NAME = re.compile(r"[a-z][a-z0-9_]{0,80}")


class TemplateError(ValueError):
    """A template names a value the monitoring config does not have (message: FILE:LINE: …)."""


@dataclass(frozen=True)
class Jobs:
    """Prometheus job names of the scrape targets (what ``up{job=…}`` selects)."""

    device: str
    postprocessing: str
    calibration: str
    kme_probe: str


@dataclass(frozen=True)
class Timing:
    """Alertmanager's group timers of one severity, in seconds, at the 5-s reference interval."""

    group_wait: float
    group_interval: float
    repeat_interval: float

    def scaled(self, evaluation_interval_s: float) -> dict[str, str]:
        """In proportion to the evaluation interval: a 1-s test profile pages in seconds, not minutes."""
        factor = evaluation_interval_s / REFERENCE_INTERVAL_S
        return {name: format_seconds(getattr(self, name) * factor) for name in TIMERS}


@dataclass(frozen=True)
class MonitoringConfig:
    """The parsed ``monitoring.yaml``; ``with_runbook_base`` gives a deployment's own copy."""

    source: Path
    runbook_base_url: str
    scrape_interval_s: float
    jobs: Jobs
    timing: Mapping[str, Timing]        # severity → group timers
    thresholds: Mapping[str, float]

    def with_runbook_base(self, base_url: str) -> MonitoringConfig:
        """This config with runbook links on ``base_url`` (a deployment's own control API)."""
        return dataclasses.replace(self, runbook_base_url=base_url.rstrip("/"))

    def runbook_url(self, alert: str) -> str:
        return f"{self.runbook_base_url}/runbooks/{alert}"

    def selectors(self) -> dict[str, str]:
        """PromQL label matchers per job, and ``exporters`` for every exporter whose scrape QKDExporterDown
        watches: both link exporters and the kme-probe."""
        out = {name: f'job="{job}"' for name, job in dataclasses.asdict(self.jobs).items()}
        out["exporters"] = f'job=~"{self.jobs.device}|{self.jobs.postprocessing}|{self.jobs.kme_probe}"'
        return out

    def values(self) -> dict[str, str]:
        """Every placeholder a template may name, as the text it is replaced by."""
        values = {"runbook_base_url": self.runbook_base_url}
        values |= {f"jobs.{name}": job for name, job in dataclasses.asdict(self.jobs).items()}
        values |= {f"selectors.{name}": selector for name, selector in self.selectors().items()}
        values |= {f"thresholds.{name}": promql_number(value) for name, value in self.thresholds.items()}
        return values


def promql_number(value: float) -> str:
    """A number as PromQL (and a reader) writes it: 20, not 20.0; 1e-10 as is; full precision."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def render_template(text: str, source: str, values: Mapping[str, str]) -> str:
    """``text`` with every ``[[ name ]]`` replaced by ``values[name]``; TemplateError naming the
    source, line and name of the first unknown one (and the names that exist)."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            line = text.count("\n", 0, match.start()) + 1
            raise TemplateError(f"{source}:{line}: unknown monitoring value [[ {name[:100]} ]] (known: "
                                f"{', '.join(sorted(values))})")
        return values[name]
    return PLACEHOLDER.sub(replace, text)


def load_monitoring_config(path: Path = DEFAULT_PATH) -> MonitoringConfig:
    """Read and check ``path``; ConfigError naming the file and field of the first problem. Every
    field is required, so a config never silently falls back to a value nobody chose."""
    r = FieldReader(path, ConfigError)
    data = r.mapping(r.load(), "", (), required=("runbook_base_url", "scrape_interval", "jobs", "alertmanager", "thresholds"))
    base = r.http_url(data["runbook_base_url"], "runbook_base_url").rstrip("/")
    job_names = tuple(f.name for f in dataclasses.fields(Jobs))
    jobs_raw = r.mapping(data["jobs"], "jobs", (), required=job_names)
    jobs = {name: r.string(jobs_raw[name], f"jobs.{name}", _JOB_NAME, "a job name of letters, digits and - _ . : (at most 100)")
            for name in job_names}
    if len(set(jobs.values())) < len(jobs):
        r.fail("jobs", "a different name for each job", jobs_raw)
    timing_raw = r.mapping(data["alertmanager"], "alertmanager", (), required=SEVERITIES)
    timing = {}
    for severity in SEVERITIES:
        timers = r.mapping(timing_raw[severity], f"alertmanager.{severity}", (), required=TIMERS)
        timing[severity] = Timing(*(_seconds(r, timers[t], f"alertmanager.{severity}.{t}") for t in TIMERS))
    thresholds = {}
    for name, raw in r.mapping(data["thresholds"], "thresholds").items():
        if not isinstance(name, str) or not _THRESHOLD_NAME.fullmatch(name):
            r.fail(f"thresholds.{name}", "a threshold name of lower-case letters, digits and _", name)
        thresholds[name] = r.number(raw, f"thresholds.{name}")
    return MonitoringConfig(path, base, _seconds(r, data["scrape_interval"], "scrape_interval", maximum_s=300.0),
                            Jobs(**jobs), MappingProxyType(timing), MappingProxyType(thresholds))


def _seconds(r: FieldReader, raw: Any, where: str, maximum_s: float = 400 * 86400.0) -> float:
    value = float(seconds(r.duration(raw, where)))
    if value > maximum_s:
        r.fail(where, f"a duration of at most {format_seconds(maximum_s)}", raw)
    return value
