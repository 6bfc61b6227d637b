"""SLO specs in Sloth's ``prometheus/v1`` format (or OpenSLO v1, ``monitoring.openslo``) → multiwindow
multi-burn-rate Prometheus rules.

Pure: spec files are read and validated into :class:`SLO` objects (``load_specs``), turned into rule
groups as plain Python data (``rule_groups``) and rendered as YAML (``render``); ``qkdops slo
generate`` (``qkdops_cli.slo_cmd``) writes the result to ``alert_rules/qkd-slos.yml``. The spec format,
its ``qkdops`` extension and the naming scheme of what is generated are documented in
``slo/README.md`` — dashboards depend on those names.

Where this departs from Sloth, on purpose (each is something Sloth users ask for):

* every window's error ratio, the SLO period's included, is the spec's error query over the spec's
  total query *for that window* — weighted by events — never an average of 5-minute ratios;
* thresholds are written as exact decimals (``0.0144``, not ``0.014400000000000001``): objectives
  are read through their shortest decimal form and multiplied with :class:`decimal.Decimal`;
* a tier alerts only when its long window holds at least ``min_events`` events, so a link with
  almost no traffic cannot page on one bad event;
* one alert rule per tier, labelled ``tier`` = its long window (1h, 6h, 1d, 3d), so Alertmanager
  can let a faster tier inhibit the slower ones;
* every rule carries an ``slo`` label and each window is recorded once, so ``promtool check rules``
  finds no duplicate rules;
* an error query that returns nothing for a series the total query has (no error has ever been
  counted) reads as zero errors, not as "no data";
* coverage-aware thresholds: a tier judges the errors seen so far as a share of its whole window
  (``ratio > threshold / coverage``), so a window only partly covered by data — a young stack, or
  one back from a gap — neither pages on a transient (the game day's 6h tier paged a 50-minute-old
  stack at 3.06 % against 3 %) nor stays blind to a real burn: a burn at error ratio r still pages
  after window × threshold / r, the Google SRE Workbook's (ch. 5) detection time, as on a mature
  stack clean before it. Fully covered windows (coverage 1) get the Workbook's thresholds exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from qkdops.durations import seconds as duration_seconds
from monitoring import openslo
from monitoring.config import TemplateError, render_template
from qkdops.yaml_fields import FieldError, FieldReader, describe, field_path
from qkdops.yaml_input import excerpt

SPEC_VERSION = "prometheus/v1"
EXTENSION = "qkdops"
DEFAULT_PERIOD = "30d"
DEFAULT_MIN_EVENTS = 10
ALERT_CLASS = "symptom"  # an SLO burn is a consequence; the cause alerts (e.g. QKDLinkDown) explain it

# Windows the SLI error ratio is recorded over: every window of a tier below, once each.
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
# When each series' SLI data began (Unix seconds): what the coverage of a window is computed from.
DATA_SINCE = "slo:sli_data_since:timestamp_seconds"


@dataclass(frozen=True)
class Tier:
    """One multiwindow, multi-burn-rate alert of the Google SRE Workbook, chapter 5 "Alerting on SLOs"."""

    long: str          # also the value of the ``tier`` label
    short: str
    burn_rate: Decimal
    kind: str          # page | ticket: which of the spec's page_alert / ticket_alert configures it


TIERS = (
    Tier("1h", "5m", Decimal("14.4"), "page"),    # 2 % of a 30-day budget in one hour
    Tier("6h", "30m", Decimal("6"), "page"),      # 5 % in six hours
    Tier("1d", "2h", Decimal("3"), "ticket"),     # 10 % in a day
    Tier("3d", "6h", Decimal("1"), "ticket"),     # 10 % in three days
)

# Labels the generator owns: inhibition and dashboards rely on them meaning one thing.
RESERVED_LABELS = {
    "slo": "the generator sets slo to the SLO's name on every rule",
    "tier": "the generator labels each burn-rate alert with tier=1h|6h|1d|3d (Alertmanager inhibits slower tiers on it)",
}
INFO_LABELS = ("service", "objective", "period")  # set by the generator on slo:info

_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_METRIC_RE = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
_TEMPLATE_RE = re.compile(r"\{\{(.*?)\}\}", re.S)
_WINDOW_RE = re.compile(r"\{\{\s*\.window\s*\}\}")
_PLACEHOLDER_RE = re.compile(r"\{\{\s*\.([a-z_]+)\s*\}\}")

# Placeholders the generator fills in alert annotations (Prometheus' own ``$labels``/``$value``
# templating is left alone; its fields are capitalised, so the two cannot clash).
ANNOTATION_PLACEHOLDERS = {
    "slo": "the SLO's name",
    "service": "the spec's service",
    "objective": "the objective in percent, e.g. 99.5",
    "error_budget": "the error budget in percent, e.g. 0.5%",
    "period": "the SLO period, e.g. 30d",
    "tier": "the tier (its long window)",
    "severity": "the alert's severity label",
    "long_window": "the tier's long window",
    "short_window": "the tier's short window",
    "burn_rate": "the tier's burn-rate factor, e.g. 14.4",
    "threshold": "the error ratio both windows must exceed, in percent, e.g. 7.2%",
    "exhausted_in": "how long the whole budget lasts at the tier's burn rate, e.g. 50h",
}

DEFAULT_ANNOTATIONS = {
    "summary": "SLO {{.slo}} of {{.service}} is burning its error budget {{.burn_rate}}x too fast ({{.tier}} tier)",
    "description": ("Error ratio {{ $value | humanizePercentage }} over {{.long_window}}, and above {{.threshold}} over "
                    "{{.short_window}} too: {{.burn_rate}}x the {{.error_budget}} error budget of the {{.objective}}% "
                    "objective; at this rate the {{.period}} budget is gone in {{.exhausted_in}}."),
}


class SpecError(FieldError):
    """Malformed specs. One line per problem: ``<file>: <field path>: <what was expected, what was found>``."""


@dataclass(frozen=True)
class AlertConfig:
    """The spec's ``page_alert`` or ``ticket_alert``."""

    disable: bool
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    for_: str | None


@dataclass(frozen=True)
class RecordingRule:
    """An input recording rule an SLI needs (``qkdops.recording_rules``), emitted once before the SLOs."""

    record: str
    expr: str
    labels: Mapping[str, str]
    where: str  # "<file>: <field path>", for conflict messages


@dataclass(frozen=True)
class SLO:
    """One validated SLO: everything the generator needs, nothing it does not."""

    source: str
    service: str
    name: str
    objective: Decimal                  # percent, e.g. Decimal("99.5")
    labels: Mapping[str, str]           # spec labels merged with the SLO's: on every rule
    info_labels: Mapping[str, str]
    error_query: str | None             # events SLI
    total_query: str | None
    error_ratio_query: str | None       # raw SLI
    queries_return: str                 # rate | count (events SLIs)
    min_events: int                     # 0: no guard (raw SLIs)
    period: str
    alert_name: str | None
    alert_labels: Mapping[str, str]
    alert_annotations: Mapping[str, str]
    page: AlertConfig
    ticket: AlertConfig
    recording_rules: tuple[RecordingRule, ...]

    @property
    def error_budget(self) -> Decimal:
        """The allowed error ratio, exactly: 1 - objective / 100."""
        return (Decimal(100) - self.objective) / Decimal(100)

    def windows(self) -> list[str]:
        """The tier windows and the SLO period, each once, shortest first."""
        return sorted(set(WINDOWS) | {self.period}, key=duration_seconds)


# ---- loading and validation ------------------------------------------------------------------------
def load_specs(paths: Iterable[Path], values: Mapping[str, str], display: Mapping[Path, str] | None = None) -> list[SLO]:
    """Validate every spec file; raise one :class:`SpecError` listing every problem of every file.

    ``values``: the monitoring config's placeholders (``MonitoringConfig.values``) the specs may name,
    e.g. ``runbook_url: "[[ runbook_base_url ]]/runbooks/…"``. ``display`` maps a path to the name
    used in messages (default: the path as given).
    """
    slos: list[SLO] = []
    problems: list[str] = []
    for path in paths:
        source = (display or {}).get(path, str(path))
        try:
            slos.extend(parse_spec(path.read_text(), source, values))
        except SpecError as exc:
            problems.extend(exc.problems)
        except OSError as exc:
            problems.append(f"{source}: cannot read: {exc.strerror}")
    problems.extend(_cross_checks(slos))
    if problems:
        raise SpecError(problems)
    return slos


def generate(spec_dir: Path, values: Mapping[str, str]) -> tuple[str, list[SLO]]:
    """The rule file the specs in ``spec_dir`` generate (every ``*.yaml``/``*.yml``, in name order; their
    placeholders from ``values``), and the SLOs it was made from. Files are named ``<dir>/<file>`` in
    messages and in the header, so the output does not depend on the working directory."""
    paths = sorted(p for p in spec_dir.glob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    if not paths:
        raise SpecError([f"{spec_dir}: no *.yaml spec files"])
    names = {p: f"{spec_dir.name}/{p.name}" for p in paths}
    slos = load_specs(paths, values, names)
    return render(rule_groups(slos), [names[p] for p in paths]), slos


def parse_spec(text: str, source: str, values: Mapping[str, str]) -> list[SLO]:
    """Validate one spec file, its ``[[ name ]]`` placeholders filled from ``values`` first, every problem
    of it at once; ``source`` names it in messages. A Sloth spec is one document; a file of OpenSLO v1
    documents is translated SLO by SLO into Sloth specs (``monitoring.openslo``) read the same way."""
    try:
        text = render_template(text, source, values)
    except TemplateError as exc:
        raise SpecError([str(exc)]) from None
    r = FieldReader(source, SpecError, collect=True)
    documents = r.documents(text)   # no alias bombs, deep nesting or duplicate keys
    if openslo.is_openslo(documents):
        tiers = {t.long: (t.burn_rate, t.kind) for t in TIERS}
        slos = [slo for t in openslo.translate(r, documents, tiers) for slo in _spec(t.reader, t.spec)]
    elif len(documents) > 1:
        r.problem("", f"{len(documents)} YAML documents: a Sloth spec is one document (only OpenSLO files, "
                      f"apiVersion: {openslo.API_VERSION}, hold several)")
        slos = []
    else:
        slos = _spec(r, documents[0] if documents else None)
    r.finish()
    return slos


def _cross_checks(slos: Sequence[SLO]) -> list[str]:
    """What no single file shows: SLO names are unique (every rule is keyed on them), input rules agree."""
    problems = []
    first: dict[str, SLO] = {}
    for slo in slos:
        if (other := first.setdefault(slo.name, slo)) is not slo:
            problems.append(f"{slo.source}: slos[name={slo.name}]: SLO name already used by {other.source} "
                            f"(service {other.service}); names must be unique across specs")
    rules: dict[tuple[str, tuple[tuple[str, str], ...]], RecordingRule] = {}
    for rule in (r for slo in slos for r in slo.recording_rules):
        key = (rule.record, tuple(sorted(rule.labels.items())))
        if (other_rule := rules.setdefault(key, rule)) is not rule and _normal(other_rule.expr) != _normal(rule.expr):
            problems.append(f"{rule.where}: recording rule {rule.record} conflicts with the one at {other_rule.where} "
                            "(same name and labels, different expr)")
    return problems


# Each reads one part of a spec with a collecting FieldReader: a problem is recorded and reading goes
# on, so a part that cannot be built comes back as None (or empty) and the spec's other parts are
# still checked.
def _spec(r: FieldReader, raw: Any) -> list[SLO]:
    if raw is None:
        r.problem("", "empty spec (expected version, service and slos)")
        return []
    top = r.mapping(raw, "", ["labels", EXTENSION], required=["version", "service", "slos"], rejected={
        "slo_plugins": "SLO plugins are not supported: the generator has no plugin chain (remove slo_plugins)"})
    if top is None:
        return []
    if "version" in top and top["version"] != SPEC_VERSION:
        r.fail("version", repr(SPEC_VERSION), top["version"])
    service = r.string(top["service"], "service", _NAME_RE, "a name of letters, digits, '-', '_' or '.'") \
        if "service" in top else None
    labels = _labels(r, top.get("labels"), "labels")
    defaults = _extension(r, top.get(EXTENSION), EXTENSION, slo_level=False)
    raw_slos = r.sequence(top["slos"], "slos", "a non-empty list of SLOs") if "slos" in top else None
    slos = []
    names: dict[str, int] = {}
    for i, raw_slo in enumerate(raw_slos or []):
        slo = _slo(r, raw_slo, f"slos[{i}]", service or "", labels, defaults)
        if slo is not None:
            if slo.name in names:
                r.problem(f"slos[{i}].name", f"duplicate SLO name {excerpt(slo.name)} (also slos[{names[slo.name]}])")
            names.setdefault(slo.name, i)
            slos.append(slo)
    return slos


def _extension(r: FieldReader, raw: Any, path: str, slo_level: bool) -> dict[str, Any]:
    """The ``qkdops`` block: spec level (defaults for every SLO) or SLO level."""
    if raw is None:
        return {}
    block = r.mapping(raw, path, ["period", "min_events"] + (["queries_return", "recording_rules"] if slo_level else []))
    if block is None:
        return {}
    out: dict[str, Any] = {}
    if "period" in block:
        where, longest = field_path(path, "period"), TIERS[-1].long
        period = r.duration(block["period"], where)
        if period is not None and duration_seconds(period) < duration_seconds(longest):
            r.problem(where, f"expected at least {longest} (the longest alert window), got {excerpt(period)}")
            period = None
        out["period"] = period
    if "min_events" in block:
        out["min_events"] = r.integer(block["min_events"], field_path(path, "min_events"), 0)
    if "queries_return" in block:
        out["queries_return"] = r.choice(block["queries_return"], field_path(path, "queries_return"), ("rate", "count"))
    if "recording_rules" in block:
        out["recording_rules"] = _recording_rules(r, block["recording_rules"], field_path(path, "recording_rules"))
    return out


def _recording_rules(r: FieldReader, raw: Any, path: str) -> tuple[RecordingRule, ...]:
    rules = []
    for i, item in enumerate(r.sequence(raw, path, "a non-empty list of {record, expr, labels}") or []):
        where = f"{path}[{i}]"
        rule = r.mapping(item, where, ["labels"], required=["record", "expr"])
        if rule is None:
            continue
        record = r.string(rule["record"], f"{where}.record", _METRIC_RE, "a metric name") if "record" in rule else None
        if record is not None and record.startswith("slo:"):
            r.problem(f"{where}.record", "names starting with slo: are the generator's (slo/README.md); choose another prefix")
            record = None
        expr = _query(r, rule["expr"], f"{where}.expr", windowed=False) if "expr" in rule else None
        labels = _labels(r, rule.get("labels"), f"{where}.labels", reserved={})
        if record is not None and expr is not None:
            rules.append(RecordingRule(record, expr, labels, f"{r.source}: {where}"))
    return tuple(rules)


def _slo(r: FieldReader, raw: Any, path: str, service: str, spec_labels: Mapping[str, str],
         defaults: Mapping[str, Any]) -> SLO | None:
    before = len(r.problems)
    slo = r.mapping(raw, path, ["description", "labels", "infoLabels", "alerting", EXTENSION], required=["name", "objective", "sli"],
                    rejected={"interval": "per-SLO rule group intervals are not supported: every generated rule "
                                          "runs at the global evaluation interval (remove interval)"})
    if slo is None:
        return None
    name = r.string(slo["name"], f"{path}.name", _NAME_RE, "a name of letters, digits, '-', '_' or '.'") if "name" in slo else None
    objective = _objective(r, slo["objective"], f"{path}.objective") if "objective" in slo else None
    if "description" in slo:
        r.string(slo["description"], f"{path}.description")
    labels = {**spec_labels, **_labels(r, slo.get("labels"), f"{path}.labels")}
    info_labels = _labels(r, slo.get("infoLabels"), f"{path}.infoLabels",
                          reserved={**RESERVED_LABELS, **{k: f"the generator sets {k} on slo:info" for k in INFO_LABELS}})
    sli = _sli(r, slo["sli"], f"{path}.sli") if "sli" in slo else None
    ext = {**defaults, **_extension(r, slo.get(EXTENSION), f"{path}.{EXTENSION}", slo_level=True)}
    alerting = _alerting(r, slo.get("alerting"), f"{path}.alerting")
    if sli is not None and sli[0] == "raw":
        for key in ("queries_return", "min_events"):
            if key in (slo.get(EXTENSION) or {}):
                r.problem(f"{path}.{EXTENSION}.{key}", "only for sli.events: a raw error ratio has no event count")
    if len(r.problems) > before or name is None or objective is None or sli is None or alerting is None:
        return None
    kind, error_query, total_query, ratio_query = sli
    return SLO(
        source=r.source, service=service, name=name, objective=objective, labels=labels, info_labels=info_labels,
        error_query=error_query, total_query=total_query, error_ratio_query=ratio_query,
        queries_return=ext.get("queries_return") or "rate",
        min_events=0 if kind == "raw" else ext.get("min_events", DEFAULT_MIN_EVENTS),
        period=ext.get("period") or DEFAULT_PERIOD,
        alert_name=alerting["name"], alert_labels=alerting["labels"], alert_annotations=alerting["annotations"],
        page=alerting["page_alert"], ticket=alerting["ticket_alert"],
        recording_rules=ext.get("recording_rules", ()),
    )


def _objective(r: FieldReader, raw: Any, path: str) -> Decimal | None:
    """A percentage strictly between 0 and 100, exactly as written: a number, not a quoted one."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw < 100:
        r.fail(path, "a number in (0, 100)", raw)
        return None
    return Decimal(str(raw))  # the shortest decimal that reads back as this float: 99.9, not 99.900000000000005684…


def _sli(r: FieldReader, raw: Any, path: str) -> tuple[str, str | None, str | None, str | None] | None:
    sli = r.mapping(raw, path, ["events", "raw"], rejected={
        "plugin": "SLI plugins are not supported (the generator runs no Go plugins): "
                  "write the plugin's queries as sli.events.error_query and total_query"})
    if sli is None:
        return None
    kinds = [k for k in ("events", "raw", "plugin") if k in sli]
    if len(kinds) != 1:
        if not kinds:
            r.problem(path, "expected exactly one of events, raw (none given)")
        elif "plugin" not in kinds:
            r.problem(path, f"expected exactly one of events, raw (got {', '.join(kinds)})")
        return None
    if kinds == ["events"]:
        events = r.mapping(sli["events"], f"{path}.events", [], required=["error_query", "total_query"])
        if events is None:
            return None
        error = _query(r, events["error_query"], f"{path}.events.error_query") if "error_query" in events else None
        total = _query(r, events["total_query"], f"{path}.events.total_query") if "total_query" in events else None
        return ("events", error, total, None) if error and total else None
    if kinds == ["raw"]:
        # Sloth's current key is error_ratio_query; some of its releases documented errorRatioQuery.
        raw_sli = r.mapping(sli["raw"], f"{path}.raw", ["error_ratio_query", "errorRatioQuery"])
        if raw_sli is None:
            return None
        keys = [k for k in ("error_ratio_query", "errorRatioQuery") if k in raw_sli]
        if len(keys) != 1:
            r.problem(f"{path}.raw.error_ratio_query", "required field is missing" if not keys
                      else "give error_ratio_query or errorRatioQuery, not both")
            return None
        ratio = _query(r, raw_sli[keys[0]], f"{path}.raw.{keys[0]}")
        return ("raw", None, None, ratio) if ratio else None
    return None


def _alerting(r: FieldReader, raw: Any, path: str) -> dict[str, Any] | None:
    block = r.mapping({} if raw is None else raw, path, ["name", "labels", "annotations", "page_alert", "ticket_alert"])
    if block is None:
        return None
    page = _alert(r, block.get("page_alert"), f"{path}.page_alert")
    ticket = _alert(r, block.get("ticket_alert"), f"{path}.ticket_alert")
    name = None
    if "name" in block:
        name = r.string(block["name"], f"{path}.name", _LABEL_RE, "an alert name ([A-Za-z_][A-Za-z0-9_]*)")
    elif not (page.disable and ticket.disable):
        r.problem(f"{path}.name", "required field is missing (or disable both page_alert and ticket_alert)")
    return {"name": name, "labels": _labels(r, block.get("labels"), f"{path}.labels"),
            "annotations": _annotations(r, block.get("annotations"), f"{path}.annotations"),
            "page_alert": page, "ticket_alert": ticket}


def _alert(r: FieldReader, raw: Any, path: str) -> AlertConfig:
    block = r.mapping({} if raw is None else raw, path, ["disable", "labels", "annotations", "for"]) or {}
    return AlertConfig(
        disable=bool(r.boolean(block["disable"], f"{path}.disable")) if "disable" in block else False,
        labels=_labels(r, block.get("labels"), f"{path}.labels"),
        annotations=_annotations(r, block.get("annotations"), f"{path}.annotations"),
        for_=r.duration(block["for"], f"{path}.for") if "for" in block else None,
    )


def _named_strings(r: FieldReader, raw: Any, path: str, kind: str) -> Iterator[tuple[str, str, Any]]:
    """(field path, name, value) of each entry of a ``kind`` (label, annotation) mapping; absent: none."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        r.fail(path, f"a mapping of {kind} names to strings", raw)
        return
    for name, value in raw.items():
        yield field_path(path, name), name, value


def _labels(r: FieldReader, raw: Any, path: str, reserved: Mapping[str, str] = RESERVED_LABELS) -> dict[str, str]:
    out = {}
    for where, name, value in _named_strings(r, raw, path, "label"):
        if not isinstance(name, str) or not _LABEL_RE.fullmatch(name) or name.startswith("__"):
            r.problem(where, "invalid label name (expected [A-Za-z_][A-Za-z0-9_]*, not starting with __)")
        elif name in reserved:
            r.problem(where, f"reserved label: {reserved[name]}; rename this label")
        elif not isinstance(value, str):
            r.problem(where, f"expected a string label value, got {describe(value)} (quote it)")
        else:
            out[name] = value
    return out


def _annotations(r: FieldReader, raw: Any, path: str) -> dict[str, str]:
    out = {}
    for where, name, value in _named_strings(r, raw, path, "annotation"):
        if not isinstance(name, str) or not _LABEL_RE.fullmatch(name):
            r.problem(where, "invalid annotation name (expected [A-Za-z_][A-Za-z0-9_]*)")
        elif not isinstance(value, str):
            r.fail(where, "a string", value)
        elif unknown := sorted({m for m in _PLACEHOLDER_RE.findall(value) if m not in ANNOTATION_PLACEHOLDERS}):
            r.problem(where, f"unknown placeholder {{{{.{unknown[0]}}}}} (known: "
                             f"{', '.join('{{.' + p + '}}' for p in ANNOTATION_PLACEHOLDERS)})")
        else:
            out[name] = value
    return out


def _query(r: FieldReader, raw: Any, path: str, windowed: bool = True) -> str | None:
    """A PromQL query: balanced brackets; with ``windowed``, ``{{.window}}`` and no other template action."""
    text = r.string(raw, path)
    if text is None:
        return None
    text = text.strip()
    if windowed:
        for action in _TEMPLATE_RE.finditer(text):
            if not _WINDOW_RE.fullmatch(action.group(0)):
                r.problem(path, f"unsupported template action {excerpt(action.group(0))}: only {{{{.window}}}} is substituted")
                return None
        if not _WINDOW_RE.search(text):
            r.problem(path, "the query must use the {{.window}} template variable (e.g. rate(x[{{.window}}])): "
                            "it is evaluated once per window")
            return None
    if (problem := _bracket_problem(text)) is not None:
        r.problem(path, problem)
        return None
    return text


# ---- generation -----------------------------------------------------------------------------------
def rule_groups(slos: Sequence[SLO]) -> list[dict[str, Any]]:
    """The Prometheus rule groups for ``slos``: input recordings (deduplicated) first, then one group per SLO.

    One group per SLO keeps its rules in evaluation order: ratios, then what is computed from them,
    then the alerts, all from the same evaluation.
    """
    groups = []
    inputs: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
    for rule in (r for slo in slos for r in slo.recording_rules):
        inputs.setdefault((rule.record, tuple(sorted(rule.labels.items()))), _rule("record", rule.record, rule.expr, rule.labels))
    if inputs:
        groups.append({"name": "slo-inputs", "rules": list(inputs.values())})
    for slo in slos:
        groups.append({"name": f"slo-{slo.service}-{slo.name}", "rules": [*_recordings(slo), *_alerts(slo)]})
    return groups


def _recordings(slo: SLO) -> list[dict[str, Any]]:
    labels = {"slo": slo.name, **slo.labels}
    sel = _selector(slo)
    budget = fmt_decimal(slo.error_budget)
    rules = [_rule("record", f"slo:sli_error:ratio_rate{w}", _ratio_expr(slo, w), labels) for w in slo.windows()]
    rules.append(_rule("record", DATA_SINCE, _since_expr(sel), labels))
    rules += [_rule("record", f"slo:sli_coverage:ratio{w}", f"clamp_max((time() - {DATA_SINCE}{sel}) / "
                    f"{fmt_decimal(duration_seconds(w))}, 1)", labels) for w in WINDOWS]
    if slo.min_events:
        rules += [_rule("record", f"slo:sli_events:increase{t.long}", _events_expr(slo, t.long), labels) for t in TIERS]
    rules += [_rule("record", f"slo:burn_rate:ratio_rate{w}", f"slo:sli_error:ratio_rate{w}{sel} / {budget}", labels)
              for w in slo.windows()]
    rules += [
        _rule("record", "slo:error_budget_remaining:ratio", f"1 - slo:sli_error:ratio_rate{slo.period}{sel} / {budget}", labels),
        _rule("record", "slo:objective:ratio", f"vector({fmt_decimal(slo.objective / 100)})", labels),
        _rule("record", "slo:error_budget:ratio", f"vector({budget})", labels),
        _rule("record", "slo:info", "vector(1)", {**labels, "service": slo.service, "objective": fmt_decimal(slo.objective),
                                                  "period": slo.period, **slo.info_labels}),
    ]
    return rules


def _alerts(slo: SLO) -> list[dict[str, Any]]:
    rules = []
    sel = _selector(slo)
    for tier in TIERS:
        config = slo.page if tier.kind == "page" else slo.ticket
        if config.disable:
            continue
        threshold = fmt_decimal(tier.burn_rate * slo.error_budget)
        # The errors seen so far as a share of the whole window (ratio × coverage > threshold), written
        # so that $value stays the window's error ratio; coverage 0 makes the threshold +Inf (no alert).
        expr = "\nand\n".join(f"slo:sli_error:ratio_rate{w}{sel} > {threshold} / slo:sli_coverage:ratio{w}{sel}"
                              for w in (tier.long, tier.short))
        if slo.min_events:
            expr += f"\nand\nslo:sli_events:increase{tier.long}{sel} >= {slo.min_events}"
        labels = {"severity": tier.kind, "class": ALERT_CLASS, **slo.labels, **slo.alert_labels, **config.labels,
                  "slo": slo.name, "tier": tier.long}
        values = _placeholders(slo, tier, labels["severity"])
        annotations = {k: _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], v)
                       for k, v in {**DEFAULT_ANNOTATIONS, **slo.alert_annotations, **config.annotations}.items()}
        assert slo.alert_name is not None  # validated: required unless both alert kinds are disabled
        rules.append(_rule("alert", slo.alert_name, expr, labels, annotations, config.for_))
    return rules


def _placeholders(slo: SLO, tier: Tier, severity: str) -> dict[str, str]:
    budget_pct = Decimal(100) - slo.objective
    return {
        "slo": slo.name, "service": slo.service, "objective": fmt_decimal(slo.objective),
        "error_budget": f"{fmt_decimal(budget_pct)}%", "period": slo.period, "tier": tier.long, "severity": severity,
        "long_window": tier.long, "short_window": tier.short, "burn_rate": fmt_decimal(tier.burn_rate),
        "threshold": f"{fmt_decimal(tier.burn_rate * budget_pct)}%",
        "exhausted_in": _human_duration(Decimal(duration_seconds(slo.period)) / tier.burn_rate),
    }


def _ratio_expr(slo: SLO, window: str) -> str:
    """Errors over events of the same window: weighted by events, whatever the window's length."""
    if slo.error_ratio_query is not None:
        return _fill(slo.error_ratio_query, window)
    assert slo.error_query is not None and slo.total_query is not None
    errors, total = _paren(_fill(slo.error_query, window)), _paren(_fill(slo.total_query, window))
    # No error series for a link that has events means no errors, not no data.
    return f"(\n{_indent(errors)}\n  or\n{_indent('0 * ' + total)}\n)\n/\n{total}"


def _since_expr(sel: str) -> str:
    """When the series' SLI data began: kept while the 5-minute ratio exists, restarted when it reappears.

    Self-referencing: each evaluation reads the value it recorded the previous time (within Prometheus'
    5-minute lookback). The 5-minute ratio exists whenever its window holds two samples of the total
    query — whatever its value: ``timestamp()`` is taken, not the ratio, so a 0/0 (NaN) ratio of a
    link without events in the window still counts as data (it is: no events, so no errors). After a
    gap longer than that, the ratio is absent, the series ends, and it restarts at the next ratio:
    a window reaching back across a gap is not fully covered, and is judged as the young window it is.
    """
    ratio = f"slo:sli_error:ratio_rate5m{sel}"
    return f"{DATA_SINCE}{sel} and {ratio}\nor\ntimestamp({ratio})"


def _events_expr(slo: SLO, window: str) -> str:
    """Events in the window: the total query itself (count) or its per-second rate times the window."""
    assert slo.total_query is not None
    total = _fill(slo.total_query, window)
    return total if slo.queries_return == "count" else f"{_paren(total)} * {fmt_decimal(duration_seconds(window))}"


@dataclass(frozen=True)
class WindowQueries:
    """PromQL for an SLI over one window, as the generated rules read it, for readers of the raw data
    (``qkdops slo report``) that want any window, not only the recorded ones."""

    ratio: str             # the error ratio: what slo:sli_error:ratio_rate<window> records
    errors: str | None     # error events in the window (events SLIs; None for a raw ratio)
    total: str | None      # all events in the window


def window_queries(slo: SLO, window: str) -> WindowQueries:
    """The SLI's queries over ``window``; events are counts, whatever the spec's ``queries_return``."""
    if slo.error_query is None or slo.total_query is None:
        return WindowQueries(_ratio_expr(slo, window), None, None)
    seconds = fmt_decimal(duration_seconds(window))
    def count(query: str) -> str:
        filled = _fill(query, window)
        return filled if slo.queries_return == "count" else f"{_paren(filled)} * {seconds}"
    return WindowQueries(_ratio_expr(slo, window), count(slo.error_query), count(slo.total_query))


def _rule(kind: str, name: str, expr: str, labels: Mapping[str, str],
          annotations: Mapping[str, str] | None = None, for_: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {kind: name, "expr": Expr(expr)}
    if for_:
        rule["for"] = for_
    if labels:
        rule["labels"] = {k: labels[k] for k in sorted(labels)}
    if annotations:
        first = [k for k in ("summary", "description", "runbook_url") if k in annotations]
        rule["annotations"] = {k: annotations[k] for k in first + sorted(set(annotations) - set(first))}
    return rule


def _selector(slo: SLO) -> str:
    return f'{{slo="{slo.name}"}}'


def _fill(query: str, window: str) -> str:
    return _WINDOW_RE.sub(window, query)


def _paren(query: str) -> str:
    return f"({query})" if "\n" not in query else f"(\n{_indent(query)}\n)"


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line.strip() else "" for line in text.splitlines())


# ---- rendering ------------------------------------------------------------------------------------
class Expr(str):
    """A PromQL expression: a multi-line one is rendered as a YAML literal block, so it stays readable."""


class _Dumper(yaml.SafeDumper):
    pass


def _expr_representer(dumper: yaml.SafeDumper, value: Expr) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style="|" if "\n" in value else None)


_Dumper.add_representer(Expr, _expr_representer)


def render(groups: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> str:
    """The rule file's text; the same input always gives the same bytes (``--check`` compares them)."""
    header = (f"# Generated by `qkdops slo generate` from {', '.join(sources)}: do not edit, edit the spec and regenerate.\n"
              "# Recording-rule names and labels: slo/README.md.\n")
    return header + yaml.dump({"groups": list(groups)}, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)


# ---- small helpers --------------------------------------------------------------------------------
def fmt_decimal(value: Decimal | int) -> str:
    """A decimal as a plain literal without exponent or trailing zeros: 0.0144, 3600, 0.995."""
    return format(Decimal(value).normalize(), "f")


def _human_duration(seconds: Decimal) -> str:
    if seconds >= 3 * 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    hours = (seconds / 3600).quantize(Decimal("0.1"))
    return f"{fmt_decimal(hours)}h"


def _normal(expr: str) -> str:
    return " ".join(expr.split())


def _bracket_problem(query: str) -> str | None:
    """Unbalanced (), [] or {} outside string literals: the commonest PromQL typo, caught before Prometheus does."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for ch in query:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return f"unbalanced {ch!r} in the query"
    if quote:
        return "unterminated string literal in the query"
    if stack:
        return f"unclosed {stack[-1]!r} in the query"
    return None
