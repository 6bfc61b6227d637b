"""OpenSLO v1 documents → the Sloth ``prometheus/v1`` spec that ``monitoring.slo`` validates and generates.

Specification: OpenSLO v1 (``apiVersion: openslo/v1``, github.com/OpenSLO/OpenSLO, README "Specification"
and ``pkg/openslo/v1``). Rather than a second reader that builds :class:`monitoring.slo.SLO` objects its
own way, each OpenSLO ``SLO`` document is translated into a one-SLO Sloth spec and handed to the Sloth
reader: the same validation, the same ``SLO`` objects, the same rule generator, so the same recording
rules, tiers, ``min_events`` guard, labels and exact-decimal thresholds. Sloth's own OpenSLO import
(``sloth generate`` on ``openslo/v1alpha``) does the same translation, though it turns good/total into
a raw ``1 - good/total`` ratio and so loses the event count the ``min_events`` guard needs; here they
stay events.

What the translation cannot honour exactly is refused, every problem at once, each naming the file,
the document (``documents[i]``, numbered from 0 in file order) and the OpenSLO field: budgeting by
time slices, threshold metrics, calendar windows, month/quarter/year durations, sources other than
Prometheus, several objectives, alert conditions that are not one of the generator's burn-rate tiers,
notification targets. A problem the Sloth reader finds in the translation (a query without
``{{.window}}``, a reserved label) is reported at the OpenSLO field it came from (:class:`_MappedReader`).

The ``qkdops`` extension of a Sloth spec is carried by the SLO's ``metadata.annotations`` with the prefix
``qkdops/`` (OpenSLO: "annotations … implementation / system specific metadata"); slo/README.md,
"OpenSLO input", has the table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from qkdops.durations import seconds as duration_seconds
from qkdops.yaml_fields import FieldReader, field_path
from qkdops.yaml_input import YamlInputError, load_text

API_VERSION = "openslo/v1"
PREFIX = "qkdops/"

KINDS = ("SLO", "SLI", "AlertPolicy", "AlertCondition", "DataSource", "Service")
REFUSED_KINDS = {
    "AlertNotificationTarget": "notification targets are not set per SLO: Alertmanager routes every alert by "
                               "severity and link (monitoring.yaml); remove this document",
}

Tiers = Mapping[str, tuple[Decimal, str]]
"""The generator's burn-rate tiers as an OpenSLO burnrate condition names them: long window → (burn rate,
which of page_alert / ticket_alert configures it). Passed in by ``monitoring.slo``, which imports this module."""

# qkdops/<name> annotation of an SLO → where it goes in the Sloth spec (slo/README.md, "OpenSLO input").
_EXTENSION = {"min-events": "min_events", "queries-return": "queries_return", "recording-rules": "recording_rules"}
_ALERT_NAME = "alert-name"
_ALERT_ANNOTATION = "alert."    # qkdops/alert.<name>: an annotation of every burn-rate alert
_INFO_LABEL = "info."           # qkdops/info.<name>: a label of slo:info

_SHORTHAND_RE = re.compile(r"^(0|[1-9][0-9]*)[mhdwMQY]$")   # OpenSLO duration-shorthand (0m: alertAfter's default)


class _MappedReader(FieldReader):
    """A collecting reader for one translated spec that reports each problem at the OpenSLO field the
    translated field came from (the longest mapped prefix of the Sloth path), into ``outer``'s list."""

    def __init__(self, outer: FieldReader, paths: Mapping[str, str]) -> None:
        super().__init__(outer.source, outer.error, collect=True)
        self.problems = outer.problems
        self.paths = paths

    def problem(self, where: str, message: str) -> None:
        best = max((p for p in self.paths if p and (where == p or where.startswith((p + ".", p + "[")))), key=len, default=None)
        super().problem(self.paths[""] + f" ({where})" if best is None else self.paths[best] + where[len(best):], message)


@dataclass(frozen=True)
class Translation:
    """One OpenSLO SLO as a Sloth ``prometheus/v1`` spec of one SLO, and the reader to validate it with."""

    spec: dict[str, Any]
    reader: FieldReader


@dataclass(frozen=True)
class _Doc:
    kind: str
    name: str
    spec: Any
    path: str          # documents[i]
    metadata: dict[Any, Any]


def is_openslo(documents: Sequence[Any]) -> bool:
    """Whether a file's documents are OpenSLO ones (any of them names an ``apiVersion``; Sloth's have ``version``)."""
    return any(isinstance(d, dict) and "apiVersion" in d for d in documents)


def translate(r: FieldReader, documents: Sequence[Any], tiers: Tiers) -> list[Translation]:
    """Every SLO of one file's OpenSLO documents as a Sloth spec, its alert conditions mapped onto ``tiers``;
    problems are recorded in ``r`` (collecting)."""
    docs = [d for i, raw in enumerate(documents) if raw is not None and (d := _document(r, raw, f"documents[{i}]"))]
    by_kind: dict[str, dict[str, _Doc]] = {}
    for doc in docs:
        if (first := by_kind.setdefault(doc.kind, {}).setdefault(doc.name, doc)) is not doc:
            r.problem(f"{doc.path}.metadata.name", f"{doc.kind} {doc.name!r} is already defined by {first.path}")
    for service in by_kind.get("Service", {}).values():    # a Service is its name (SLOs name it in spec.service)
        r.mapping(service.spec, f"{service.path}.spec", ["description"])
    return [t for doc in docs if doc.kind == "SLO" and (t := _slo(r, doc, by_kind, tiers))]


def _document(r: FieldReader, raw: Any, path: str) -> _Doc | None:
    doc = r.mapping(raw, path, ["spec"], required=["apiVersion", "kind", "metadata"])
    if doc is None or not {"apiVersion", "kind", "metadata"} <= doc.keys():
        return None
    if doc["apiVersion"] != API_VERSION:
        r.fail(f"{path}.apiVersion", f"{API_VERSION!r} (every document of an OpenSLO file; Sloth specs are files "
                                     "of their own)", doc["apiVersion"])
        return None
    kind = doc["kind"]
    if kind in REFUSED_KINDS:
        r.problem(f"{path}.kind", f"{kind}: {REFUSED_KINDS[kind]}")
        return None
    if kind not in KINDS:
        r.fail(f"{path}.kind", f"one of {', '.join(KINDS)}", kind)
        return None
    metadata = _metadata(r, doc["metadata"], f"{path}.metadata")
    if metadata is None:
        return None
    if "spec" not in doc and kind != "Service":
        r.problem(f"{path}.spec", "required field is missing")
        return None
    return _Doc(kind, metadata["name"], doc.get("spec", {}), path, metadata)


def _metadata(r: FieldReader, raw: Any, path: str) -> dict[Any, Any] | None:
    metadata = r.mapping(raw, path, ["displayName", "labels", "annotations"], required=["name"])
    if metadata is None or "name" not in metadata or r.string(metadata["name"], f"{path}.name") is None:
        return None
    return metadata


def _named(r: FieldReader, raw: Any, path: str, kind: str, registry: Mapping[str, _Doc], ref_key: str) -> tuple[Any, str] | None:
    """An object given inline (``{kind, metadata, spec}``) or by name (a string, or ``{<ref_key>: name}``):
    its spec and the path to report its fields at."""
    if isinstance(raw, dict) and ref_key in raw:
        r.mapping(raw, path, [ref_key])
        raw, path = raw[ref_key], field_path(path, ref_key)
    if isinstance(raw, str):
        if raw not in registry:
            defined = ", ".join(sorted(registry)) or "none"
            r.problem(path, f"no {kind} named {raw!r} in this file (defined: {defined}); references are resolved within the file")
            return None
        return registry[raw].spec, f"{registry[raw].path}.spec"
    block = r.mapping(raw, path, ["kind", "metadata", "spec", "apiVersion"], required=["spec"])
    if block is None or "spec" not in block:
        return None
    if "kind" in block and block["kind"] != kind:
        r.fail(field_path(path, "kind"), repr(kind), block["kind"])
        return None
    return block["spec"], field_path(path, "spec")


# ---- SLO ------------------------------------------------------------------------------------------
def _slo(r: FieldReader, doc: _Doc, by_kind: Mapping[str, Mapping[str, _Doc]], tiers: Tiers) -> Translation | None:
    before = len(r.problems)
    spec_path = f"{doc.path}.spec"
    spec = r.mapping(doc.spec, spec_path, ["description", "indicator", "indicatorRef", "timeWindow", "alertPolicies"],
                     required=["service", "budgetingMethod", "objectives"])
    if spec is None:
        return None
    paths = {"": doc.path, "slos[0]": doc.path, "service": f"{spec_path}.service", "slos[0].name": f"{doc.path}.metadata.name",
             "slos[0].description": f"{spec_path}.description", "slos[0].labels": f"{doc.path}.metadata.labels"}
    slo: dict[str, Any] = {"name": doc.name}
    if "description" in spec:
        slo["description"] = spec["description"]
    if "budgetingMethod" in spec and spec["budgetingMethod"] != "Occurrences":
        r.problem(f"{spec_path}.budgetingMethod", _budgeting_problem(spec["budgetingMethod"]))
    objective = _objective(r, spec.get("objectives"), f"{spec_path}.objectives", paths) if "objectives" in spec else None
    sli = _indicator(r, spec, spec_path, by_kind, paths)
    ext = {"period": _time_window(r, spec["timeWindow"], f"{spec_path}.timeWindow", paths)} if "timeWindow" in spec else {}
    labels = _labels(r, doc.metadata.get("labels"), f"{doc.path}.metadata.labels")
    ann_path = f"{doc.path}.metadata.annotations"
    annotations = _annotations(r, doc.metadata.get("annotations"), ann_path)
    for key, field in _EXTENSION.items():
        if key in annotations:
            paths[f"slos[0].qkdops.{field}"] = field_path(ann_path, PREFIX + key)
            value = annotations[key]
            ext[field] = _recording_rules(r, value, paths[f"slos[0].qkdops.{field}"]) if key == "recording-rules" else value
    info = {k[len(_INFO_LABEL):]: v for k, v in annotations.items() if k.startswith(_INFO_LABEL)}
    paths.update({f"slos[0].infoLabels.{k}": field_path(ann_path, PREFIX + _INFO_LABEL + k) for k in info})
    alerting = _alerting(r, spec.get("alertPolicies"), f"{spec_path}.alertPolicies", by_kind, tiers, annotations, ann_path, paths)
    if len(r.problems) > before or objective is None or sli is None:
        return None
    slo.update(objective=objective, sli=sli, alerting=alerting, qkdops=ext)
    if labels:
        slo["labels"] = labels
    if info:
        slo["infoLabels"] = info
    return Translation({"version": "prometheus/v1", "service": spec["service"], "slos": [slo]}, _MappedReader(r, paths))


def _budgeting_problem(method: Any) -> str:
    if method in ("Timeslices", "RatioTimeslices"):
        return (f"{method} budgeting is not supported: the generated rules count events (budgetingMethod: "
                "Occurrences); a time-slice SLI can be written as events of its own, e.g. a recording rule of "
                "1 per bad slice and the count of slices (qkdops/recording-rules)")
    return f"expected Occurrences, got {method!r}"


def _objective(r: FieldReader, raw: Any, path: str, paths: dict[str, str]) -> int | float | None:
    """The one objective's target in percent, exactly as written (``target: 0.995`` → 99.5)."""
    objectives = r.sequence(raw, path, "a list of one objective")
    if objectives is None:
        return None
    if len(objectives) != 1:
        r.problem(path, f"one objective per SLO is supported, got {len(objectives)}: every generated rule is keyed on the "
                        "SLO's name (the slo label); write one SLO document per objective")
        return None
    where = f"{path}[0]"
    objective = r.mapping(objectives[0], where, ["displayName", "target", "targetPercent"], rejected={
        "op": "op and value are for thresholdMetric SLIs, which are not supported (use a ratioMetric)",
        "value": "op and value are for thresholdMetric SLIs, which are not supported (use a ratioMetric)",
        "timeSliceTarget": "time slices are not supported (budgetingMethod: Occurrences)",
        "timeSliceWindow": "time slices are not supported (budgetingMethod: Occurrences)",
        "indicator": "give the indicator once, as spec.indicator or spec.indicatorRef"})
    if objective is None:
        return None
    given = [k for k in ("target", "targetPercent") if k in objective]
    if len(given) != 1:
        r.problem(where, "expected exactly one of target, targetPercent" + (f" (got {', '.join(given)})" if given else ""))
        return None
    if given == ["targetPercent"]:
        paths["slos[0].objective"] = f"{where}.targetPercent"
        return objective["targetPercent"]      # the Sloth reader checks it: a number in (0, 100)
    target = objective["target"]
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target < 1:
        r.fail(f"{where}.target", "a number in (0, 1) (a ratio: 0.995 is 99.5 %)", target)
        return None
    paths["slos[0].objective"] = f"{where}.target"
    percent = Decimal(str(target)) * 100        # exact: 0.9995 → 99.95, never 99.95000000000000284
    return int(percent) if percent == percent.to_integral_value() else float(percent)


def _time_window(r: FieldReader, raw: Any, path: str, paths: dict[str, str]) -> str | None:
    """The SLO period: one rolling window."""
    windows = r.sequence(raw, path, "a list of one time window")
    if windows is None:
        return None
    if len(windows) != 1:
        r.problem(path, f"expected exactly one time window (OpenSLO v1), got {len(windows)}")
        return None
    where = f"{path}[0]"
    window = r.mapping(windows[0], where, ["isRolling"], required=["duration"], rejected={
        "calendar": "calendar-aligned windows are not supported: the generated rules measure a rolling window "
                    "(isRolling: true); a budget that resets at a calendar boundary cannot be written as one"})
    if window is None or "calendar" in window:
        return None
    if window.get("isRolling", True) is not True:
        r.fail(f"{where}.isRolling", "true (only rolling windows are supported)", window["isRolling"])
        return None
    paths["slos[0].qkdops.period"] = f"{where}.duration"
    return _duration(r, window.get("duration"), f"{where}.duration")


def _duration(r: FieldReader, raw: Any, path: str) -> str | None:
    """An OpenSLO duration-shorthand that is also a Prometheus duration."""
    if not isinstance(raw, str) or not _SHORTHAND_RE.fullmatch(raw):
        r.fail(path, "an OpenSLO duration such as 30d, 4w or 1h", raw)
        return None
    if raw[-1] in "MQY":
        r.problem(path, f"months, quarters and years have no fixed length in Prometheus: write {raw!r} in days or "
                        "weeks (e.g. 30d, 4w)")
        return None
    return raw


# ---- SLI ------------------------------------------------------------------------------------------
def _indicator(r: FieldReader, spec: Mapping[Any, Any], spec_path: str, by_kind: Mapping[str, Mapping[str, _Doc]],
               paths: dict[str, str]) -> dict[str, Any] | None:
    given = [k for k in ("indicator", "indicatorRef") if k in spec]
    if len(given) != 1:
        r.problem(spec_path, "expected exactly one of indicator, indicatorRef" + (" (got both)" if given else ""))
        return None
    named = _named(r, spec[given[0]], f"{spec_path}.{given[0]}", "SLI", by_kind.get("SLI", {}), "indicatorRef")
    if named is None:
        return None
    sli_spec, path = named
    block = r.mapping(sli_spec, path, ["description", "ratioMetric"], rejected={
        "thresholdMetric": "thresholdMetric SLIs are not supported: the generator alerts on the ratio of bad events "
                           "(ratioMetric good/total, bad/total or raw)"})
    if block is None or "ratioMetric" not in block:
        if block is not None and "thresholdMetric" not in block:
            r.problem(f"{path}.ratioMetric", "required field is missing")
        return None
    return _ratio(r, block["ratioMetric"], f"{path}.ratioMetric", by_kind.get("DataSource", {}), paths)


def _ratio(r: FieldReader, raw: Any, path: str, sources: Mapping[str, _Doc], paths: dict[str, str]) -> dict[str, Any] | None:
    ratio = r.mapping(raw, path, ["counter", "good", "bad", "total", "rawType", "raw"])
    if ratio is None:
        return None
    if "counter" in ratio:
        r.boolean(ratio["counter"], f"{path}.counter")   # what the queries return is qkdops/queries-return
    shapes = {("bad", "total"), ("good", "total"), ("raw", "rawType")}
    given = tuple(sorted(k for k in ("good", "bad", "total", "raw", "rawType") if k in ratio))
    if given not in shapes:
        r.problem(path, f"expected good and total, bad and total, or raw and rawType (got {', '.join(given) or 'none'})")
        return None
    queries = {k: _query(r, ratio[k], f"{path}.{k}", sources) for k in given if k != "rawType"}
    if None in queries.values():
        return None
    if "raw" in queries:
        raw_type = r.choice(ratio["rawType"], f"{path}.rawType", ("success", "failure"))
        if raw_type is None:
            return None
        paths["slos[0].sli.raw.error_ratio_query"] = f"{path}.raw.metricSource.spec.query"
        query = queries["raw"] if raw_type == "failure" else f"1 - ({queries['raw']})"
        return {"raw": {"error_ratio_query": query}}
    total = queries["total"]
    paths["slos[0].sli.events.total_query"] = f"{path}.total.metricSource.spec.query"
    if "bad" in queries:
        paths["slos[0].sli.events.error_query"] = f"{path}.bad.metricSource.spec.query"
        return {"events": {"error_query": queries["bad"], "total_query": total}}
    paths["slos[0].sli.events.error_query"] = f"{path}.good.metricSource.spec.query"
    # Bad = total - good; a series with events but no good series at all is all bad, not absent.
    return {"events": {"error_query": f"({total}) - (({queries['good']}) or 0 * ({total}))", "total_query": total}}


def _query(r: FieldReader, raw: Any, path: str, sources: Mapping[str, _Doc]) -> str | None:
    """The PromQL query of one ``metricSource`` whose type (its own or its DataSource's) is Prometheus."""
    metric = r.mapping(raw, path, [], required=["metricSource"])
    if metric is None or "metricSource" not in metric:
        return None
    where = f"{path}.metricSource"
    source = r.mapping(metric["metricSource"], where, ["metricSourceRef", "type"], required=["spec"])
    if source is None:
        return None
    kind = source.get("type")
    if "metricSourceRef" in source:
        ref = source["metricSourceRef"]
        if not isinstance(ref, str) or ref not in sources:
            r.problem(f"{where}.metricSourceRef", f"no DataSource named {ref!r} in this file "
                                                  f"(defined: {', '.join(sorted(sources)) or 'none'})")
            return None
        data_source = r.mapping(sources[ref].spec, f"{sources[ref].path}.spec", ["description", "connectionDetails"],
                                required=["type"])
        if data_source is None or "type" not in data_source:
            return None
        if kind is not None and kind != data_source["type"]:
            r.problem(f"{where}.type", f"{kind!r} contradicts its DataSource's type {data_source['type']!r}")
            return None
        kind, where_type = data_source["type"], f"{sources[ref].path}.spec.type"
    else:
        where_type = f"{where}.type"
    if kind != "Prometheus":
        r.fail(where_type, "Prometheus (the only metric source the generated rules can query)"
               if kind is not None else "Prometheus (type, or a metricSourceRef to a DataSource of that type)", kind)
        return None
    query = r.mapping(source["spec"], f"{where}.spec", [], required=["query"])
    if query is None or "query" not in query:
        return None
    return query["query"]      # the Sloth reader checks it: {{.window}}, balanced brackets


# ---- alerting -------------------------------------------------------------------------------------
def _alerting(r: FieldReader, raw: Any, path: str, by_kind: Mapping[str, Mapping[str, _Doc]], tiers: Tiers, annotations: Mapping[str, Any],
              ann_path: str, paths: dict[str, str]) -> dict[str, Any]:
    """Sloth ``alerting``: the tiers the SLO's alert policies name, each policy's one burn-rate condition
    mapped onto the generator tier with the same long window and burn rate. No policies: no alerts."""
    alert_annotations = {k[len(_ALERT_ANNOTATION):]: v for k, v in annotations.items() if k.startswith(_ALERT_ANNOTATION)}
    paths.update({f"slos[0].alerting.annotations.{k}": field_path(ann_path, PREFIX + _ALERT_ANNOTATION + k)
                  for k in alert_annotations})
    chosen: dict[str, tuple[dict[str, Any], str]] = {}    # long window → (condition, its path)
    policies = [] if raw is None else r.sequence(raw, path, "a list of alert policies", empty=True) or []
    resolved = True
    for i, item in enumerate(policies):
        named = _named(r, item, f"{path}[{i}]", "AlertPolicy", by_kind.get("AlertPolicy", {}), "alertPolicyRef")
        condition = None if named is None else _policy(r, *named, by_kind.get("AlertCondition", {}), tiers)
        if condition is None:
            resolved = False
            continue
        tier, cond, cond_path = condition
        if tier in chosen:
            r.problem(f"{path}[{i}]", f"a second condition for the {tier} tier (also {chosen[tier][1]})")
        chosen.setdefault(tier, (cond, cond_path))
    kinds = {}
    for kind in ("page", "ticket"):
        named = [(t, *chosen[t]) for t, (_, k) in tiers.items() if k == kind and t in chosen]
        both = [t for t, (_, k) in tiers.items() if k == kind]
        # A policy already refused leaves its tier out: a missing tier is then no news.
        kinds[kind] = _alert_kind(r, kind, both, named, path, paths, tiers) if resolved else {"disable": True}
    alerting: dict[str, Any] = {"page_alert": kinds["page"], "ticket_alert": kinds["ticket"]}
    if alert_annotations:
        alerting["annotations"] = alert_annotations
    if _ALERT_NAME in annotations:
        alerting["name"] = annotations[_ALERT_NAME]
        paths["slos[0].alerting.name"] = field_path(ann_path, PREFIX + _ALERT_NAME)
    elif chosen:
        r.problem(field_path(ann_path, PREFIX + _ALERT_NAME), "required with alertPolicies: the Prometheus alert name "
                                                             "of the burn-rate alerts (e.g. QKDBlockSuccessBudgetBurn)")
    return alerting


def _alert_kind(r: FieldReader, kind: str, both: list[str], named: list[tuple[str, dict[str, Any], str]], path: str,
                paths: dict[str, str], tiers: Tiers) -> dict[str, Any]:
    """Sloth ``page_alert`` or ``ticket_alert``: both of its tiers or neither (one rule config drives both)."""
    if not named:
        return {"disable": True}
    if len(named) != len(both):
        missing = next(t for t in both if t not in {n[0] for n in named})
        r.problem(path, f"the {' and '.join(both)} tiers are one {kind} alert configuration: a condition for "
                        f"{named[0][0]} needs one for {missing} too (burn rate {tiers[missing][0]}, lookbackWindow {missing})")
        return {"disable": True}
    (_, first, first_path), (_, second, second_path) = named
    for field, value in (("severity", lambda c: c["severity"]), ("alertAfter", lambda c: duration_seconds(c["alertAfter"] or "0m"))):
        if value(first) != value(second):
            r.problem(f"{second_path}.{field}", f"must equal the {named[0][0]} tier's ({first_path}): the {kind} "
                                                f"tiers share one rule configuration")
    config: dict[str, Any] = {"labels": {"severity": first["severity"]}}
    paths[f"slos[0].alerting.{kind}_alert.labels.severity"] = f"{first_path}.severity"
    if first["alertAfter"] and duration_seconds(first["alertAfter"]) > 0:
        config["for"] = first["alertAfter"]
        paths[f"slos[0].alerting.{kind}_alert.for"] = f"{first_path}.alertAfter"
    return config


def _policy(r: FieldReader, raw: Any, path: str, conditions: Mapping[str, _Doc], tiers: Tiers) -> tuple[str, dict[str, Any], str] | None:
    """The tier an AlertPolicy's one condition maps onto, the condition, and its path."""
    policy = r.mapping(raw, path, ["description", "alertWhenBreaching", "alertWhenResolved", "alertWhenNoData"],
                       required=["conditions"], rejected={
        "notificationTargets": "notification targets are not set per SLO: Alertmanager routes every alert by severity "
                               "and link (monitoring.yaml); remove notificationTargets"})
    if policy is None:
        return None
    for field, honoured, why in (
            ("alertWhenBreaching", True, "an alert policy's condition alerts while it breaches"),
            ("alertWhenResolved", False, "resolved notifications are Alertmanager's (send_resolved), not the rule's"),
            ("alertWhenNoData", False, "the generated rules never alert on missing data (QKDLinkDown and the "
                                       "exporter alerts do)")):
        if field in policy and policy[field] is not honoured:
            r.fail(f"{path}.{field}", f"{str(honoured).lower()} or absent: {why}", policy[field])
    items = r.sequence(policy.get("conditions"), f"{path}.conditions", "a list of one alert condition")
    if items is None or "notificationTargets" in policy:
        return None
    if len(items) != 1:
        r.problem(f"{path}.conditions", f"expected one condition (OpenSLO v1 allows one per policy), got {len(items)}")
        return None
    named = _named(r, items[0], f"{path}.conditions[0]", "AlertCondition", conditions, "conditionRef")
    return None if named is None else _condition(r, *named, tiers)


def _condition(r: FieldReader, raw: Any, path: str, tiers: Tiers) -> tuple[str, dict[str, Any], str] | None:
    spec = r.mapping(raw, path, ["description"], required=["severity", "condition"])
    if spec is None or not {"severity", "condition"} <= spec.keys():
        return None
    severity = r.string(spec["severity"], f"{path}.severity")
    where = f"{path}.condition"
    cond = r.mapping(spec["condition"], where, ["kind", "alertAfter"], required=["op", "threshold", "lookbackWindow"])
    if cond is None or severity is None or not {"op", "threshold", "lookbackWindow"} <= cond.keys():
        return None
    known = ", ".join(f"{rate} over {long}" for long, (rate, _) in tiers.items())
    problems = len(r.problems)
    if cond.get("kind", "burnrate") != "burnrate":
        r.fail(f"{where}.kind", "burnrate", cond["kind"])
    if cond["op"] != "gt":
        r.fail(f"{where}.op", "gt (a tier alerts while the burn rate is above its threshold)", cond["op"])
    window = _duration(r, cond["lookbackWindow"], f"{where}.lookbackWindow")
    alert_after = _duration(r, cond["alertAfter"], f"{where}.alertAfter") if "alertAfter" in cond else None
    threshold = cond["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        r.fail(f"{where}.threshold", "a number", threshold)
    if len(r.problems) > problems or window is None:
        return None
    tier = next((long for long, (rate, _) in tiers.items()
                 if duration_seconds(long) == duration_seconds(window) and rate == Decimal(str(threshold))), None)
    if tier is None:
        r.problem(where, f"burn rate {threshold} over {window} is none of the generator's tiers ({known}; each also "
                         "checks a short window of 1/12 the long one): it cannot be honoured exactly")
        return None
    return tier, {"severity": severity, "alertAfter": alert_after}, where


# ---- metadata -------------------------------------------------------------------------------------
def _labels(r: FieldReader, raw: Any, path: str) -> dict[Any, Any]:
    """metadata.labels as Sloth SLO labels; OpenSLO allows a list of strings as a value, a Prometheus label does not."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.fail(path, "a mapping of label names to strings", raw)
        return {}
    for name, value in raw.items():
        if isinstance(value, list):
            r.problem(field_path(path, name), "a list of values cannot be a Prometheus label value: give one string")
    return {k: v for k, v in raw.items() if not isinstance(v, list)}   # the Sloth reader checks names and values


def _annotations(r: FieldReader, raw: Any, path: str) -> dict[str, Any]:
    """The ``qkdops/`` annotations without their prefix; others belong to other implementations and are left alone."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.fail(path, "a mapping of annotation names to strings", raw)
        return {}
    out = {}
    known = [*_EXTENSION, _ALERT_NAME, _ALERT_ANNOTATION + "<name>", _INFO_LABEL + "<name>"]
    for key, value in raw.items():
        if not isinstance(key, str) or not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX):]
        if not isinstance(value, str):
            r.fail(field_path(path, key), "a string (OpenSLO annotations are strings)", value)
        elif name in _EXTENSION or name == _ALERT_NAME or (name.startswith((_ALERT_ANNOTATION, _INFO_LABEL))
                                                            and name.split(".", 1)[1]):
            out[name] = value
        else:
            r.problem(field_path(path, key), f"unknown qkdops annotation (known: {', '.join(PREFIX + k for k in known)})")
    return out


def _recording_rules(r: FieldReader, text: str, path: str) -> Any:
    """The ``qkdops/recording-rules`` annotation: a YAML list of {record, expr, labels}, as in a Sloth spec."""
    try:
        return load_text(text, "the annotation")
    except YamlInputError as exc:
        r.problem(path, f"expected a YAML list of recording rules: {exc}")
        return None

