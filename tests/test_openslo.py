"""OpenSLO v1 input (``monitoring.openslo``): the same generator, the same guarantees, clear refusals.

An OpenSLO translation of a shipped Sloth SLO must generate rule groups equal to the Sloth spec's
(as Python data) and pass ``promtool check rules``; every OpenSLO feature the generator cannot honour
exactly is refused naming the file, the document and the field, all problems of a file at once.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from monitoring import slo
from monitoring.config import load_monitoring_config
from monitoring.rules import SPEC_DIR
from qkdops_cli.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "slo" / "examples" / "qkd-openslo.yaml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
VALUES = load_monitoring_config().values()

# A valid OpenSLO file to break one field at a time: an SLO with an inline SLI, an inline policy and
# one whose condition is a document of its own (documents[1]).
BASE = textwrap.dedent("""\
    apiVersion: openslo/v1
    kind: SLO
    metadata:
      name: ok
      annotations:
        qkdops/alert-name: SvcBurn
        other.example/key: left alone
    spec:
      service: svc
      budgetingMethod: Occurrences
      timeWindow:
        - duration: 30d
          isRolling: true
      objectives:
        - target: 0.999
      indicator:
        metadata:
          name: errors
        spec:
          ratioMetric:
            counter: true
            bad:
              metricSource:
                type: Prometheus
                spec:
                  query: sum(rate(x_total{code="5xx"}[{{.window}}]))
            total:
              metricSource:
                type: Prometheus
                spec:
                  query: sum(rate(x_total[{{.window}}]))
      alertPolicies:
        - kind: AlertPolicy
          metadata: {name: fast}
          spec:
            alertWhenBreaching: true
            conditions:
              - kind: AlertCondition
                metadata: {name: fast}
                spec:
                  severity: page
                  condition: {kind: burnrate, op: gt, threshold: 14.4, lookbackWindow: 1h, alertAfter: 2m}
        - alertPolicyRef: slow
    ---
    apiVersion: openslo/v1
    kind: AlertPolicy
    metadata:
      name: slow
    spec:
      conditions:
        - conditionRef: six-hours
    ---
    apiVersion: openslo/v1
    kind: AlertCondition
    metadata:
      name: six-hours
    spec:
      severity: page
      condition: {op: gt, threshold: 6, lookbackWindow: 360m, alertAfter: 2m}
    """)


def load(tmp_path: Path, text: str, name: str = "o.yaml") -> list[slo.SLO]:
    path = tmp_path / name
    path.write_text(text)
    return slo.load_specs([path], VALUES, {path: f"slo/{name}"})


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(slo.SpecError) as info:
        load(tmp_path, text)
    return info.value.problems


def shipped() -> dict[str, slo.SLO]:
    return {s.name: s for s in slo.load_specs([SPEC_DIR / "qkd.yaml"], VALUES)}


# ---- same generator, same guarantees --------------------------------------------------------------
def test_the_example_generates_exactly_what_the_sloth_specs_do() -> None:
    """slo/examples/qkd-openslo.yaml: block-success (events, SLI and DataSource documents, policies by
    name) and key-availability (inline SLI, count queries, min_events 60, an input recording rule)."""
    translated = slo.load_specs([EXAMPLE], VALUES)
    ours = shipped()
    assert [s.name for s in translated] == ["block-success", "key-availability"]
    for s in translated:
        assert slo.rule_groups([s]) == slo.rule_groups([ours[s.name]]), s.name


def _openslo_of(s: slo.SLO) -> str:
    """An OpenSLO v1 translation of a Sloth-specified SLO: target as a ratio, inline policies and conditions."""
    conditions = [("page", 14.4, "1h", s.page), ("page", 6, "6h", s.page), ("ticket", 3, "1d", s.ticket), ("ticket", 1, "3d", s.ticket)]
    policies = [{"kind": "AlertPolicy", "metadata": {"name": f"{kind}-{window}"}, "spec": {"alertWhenBreaching": True, "conditions": [
        {"kind": "AlertCondition", "metadata": {"name": f"{kind}-{window}"}, "spec": {
            "severity": config.labels.get("severity", kind),
            "condition": {"kind": "burnrate", "op": "gt", "threshold": rate, "lookbackWindow": window, "alertAfter": config.for_ or "0m"}}}]}}
        for kind, rate, window, config in conditions if not config.disable]
    annotations = {"qkdops/alert-name": s.alert_name, "qkdops/queries-return": s.queries_return, "qkdops/min-events": str(s.min_events),
                   **{f"qkdops/alert.{k}": v for k, v in s.alert_annotations.items()}}
    doc = {"apiVersion": "openslo/v1", "kind": "SLO", "metadata": {"name": s.name, "annotations": annotations}, "spec": {
        "service": s.service, "budgetingMethod": "Occurrences", "timeWindow": [{"duration": s.period, "isRolling": True}],
        "objectives": [{"target": float(s.objective / 100)}],
        "indicator": {"metadata": {"name": "sli"}, "spec": {"ratioMetric": {"counter": True,
            "bad": {"metricSource": {"type": "Prometheus", "spec": {"query": s.error_query}}},
            "total": {"metricSource": {"type": "Prometheus", "spec": {"query": s.total_query}}}}}},
        "alertPolicies": policies}}
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.mark.parametrize("name", ["phase-lock-uptime", "key-handoff-success", "calibration-success"])
def test_an_openslo_translation_of_a_shipped_slo_generates_the_same_rule_groups(tmp_path: Path, name: str) -> None:
    """99.5 % and 99.9 % written as target: 0.995 / 0.999 keep their exact-decimal thresholds; calibration's
    tickets-only alerting becomes policies for the ticket tiers only."""
    ours = shipped()[name]
    translated = load(tmp_path, _openslo_of(ours))
    assert slo.rule_groups(translated) == slo.rule_groups([ours])


@needs_promtool
def test_openslo_generated_rules_pass_promtool(tmp_path: Path) -> None:
    out = tmp_path / "openslo-slos.yml"
    assert main(["slo", "generate", "--specs", str(EXAMPLE.parent), "--output", str(out)]) == 0
    result = subprocess.run([PROMTOOL, "check", "rules", str(out)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "examples/qkd-openslo.yaml" in out.read_text().splitlines()[0]


def test_sloth_and_openslo_files_share_a_spec_dir(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text((SPEC_DIR / "qkd.yaml").read_text())
    (tmp_path / "b.yaml").write_text(BASE)
    text, slos = slo.generate(tmp_path, VALUES)
    assert [s.name for s in slos][-1] == "ok" and len(slos) == len(shipped()) + 1
    assert f"from {tmp_path.name}/a.yaml, {tmp_path.name}/b.yaml" in text.splitlines()[0]


def test_base_maps_policies_onto_the_page_tiers(tmp_path: Path) -> None:
    (s,) = load(tmp_path, BASE)
    assert (s.name, s.service, str(s.objective), s.period, s.min_events) == ("ok", "svc", "99.9", "30d", 10)
    assert (s.page.disable, s.page.for_, dict(s.page.labels), s.ticket.disable) == (False, "2m", {"severity": "page"}, True)
    alerts = [r for g in slo.rule_groups([s]) for r in g["rules"] if "alert" in r]
    assert [(a["labels"]["tier"], a["expr"].splitlines()[0]) for a in alerts] == [
        ("1h", 'slo:sli_error:ratio_rate1h{slo="ok"} > 0.0144 / slo:sli_coverage:ratio1h{slo="ok"}'),
        ("6h", 'slo:sli_error:ratio_rate6h{slo="ok"} > 0.006 / slo:sli_coverage:ratio6h{slo="ok"}')]


def test_good_over_total_counts_a_series_without_good_events_as_all_bad(tmp_path: Path) -> None:
    text = BASE.replace("        bad:", "        good:").replace('code="5xx"', 'code="2xx"')
    (s,) = load(tmp_path, text)
    assert s.error_query == ('(sum(rate(x_total[{{.window}}]))) - ((sum(rate(x_total{code="2xx"}[{{.window}}]))) '
                             'or 0 * (sum(rate(x_total[{{.window}}]))))')
    assert s.total_query == "sum(rate(x_total[{{.window}}]))"


@pytest.mark.parametrize(("raw_type", "expected"), [("failure", "x:error_ratio[{{.window}}]"), ("success", "1 - (x:error_ratio[{{.window}}])")])
def test_raw_ratios_become_raw_slis(tmp_path: Path, raw_type: str, expected: str) -> None:
    bad_total = BASE[BASE.index("        bad:\n"):BASE.index("  alertPolicies:")]
    raw = f"        rawType: {raw_type}\n        raw:\n          metricSource:\n            type: Prometheus\n" \
          "            spec:\n              query: x:error_ratio[{{.window}}]\n"
    text = BASE.replace(bad_total, raw)
    (s,) = load(tmp_path, text)
    assert (s.error_ratio_query, s.error_query, s.min_events) == (expected, None, 0)


def test_an_slo_without_alert_policies_has_no_alerts(tmp_path: Path) -> None:
    text = BASE[:BASE.index("  alertPolicies:")]
    (s,) = load(tmp_path, text.replace("    qkdops/alert-name: SvcBurn\n", ""))
    assert s.page.disable and s.ticket.disable
    assert not [r for g in slo.rule_groups([s]) for r in g["rules"] if "alert" in r]


# ---- refusals: every one names the file, the document and the field -------------------------------
S = "slo/o.yaml: documents[0]"
SLI = f"{S}.spec.indicator.spec.ratioMetric"


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("budgetingMethod: Occurrences", "budgetingMethod: Timeslices",
     f"{S}.spec.budgetingMethod: Timeslices budgeting is not supported: the generated rules count events"),
    ("budgetingMethod: Occurrences", "budgetingMethod: RatioTimeslices", f"{S}.spec.budgetingMethod: RatioTimeslices budgeting is not supported"),
    ("    - target: 0.999\n", "    - target: 0.999\n      timeSliceWindow: 5m\n",
     f"{S}.spec.objectives[0].timeSliceWindow: time slices are not supported"),
    ("      ratioMetric:\n", "      thresholdMetric: {metricSource: {type: Prometheus, spec: {query: up}}}\n      ratioMetric:\n",
     f"{S}.spec.indicator.spec.thresholdMetric: thresholdMetric SLIs are not supported"),
    ("      isRolling: true", "      isRolling: false", f"{S}.spec.timeWindow[0].isRolling: expected true (only rolling windows are supported)"),
    ("      isRolling: true", "      calendar: {startTime: '2026-01-01 00:00:00', timeZone: UTC}",
     f"{S}.spec.timeWindow[0].calendar: calendar-aligned windows are not supported"),
    ("duration: 30d", "duration: 1M", f"{S}.spec.timeWindow[0].duration: months, quarters and years have no fixed length in Prometheus"),
    ("duration: 30d", "duration: 1d", f"{S}.spec.timeWindow[0].duration: expected at least 3d (the longest alert window), got '1d'"),
    ("            type: Prometheus\n            spec:\n              query: sum(rate(x_total[",
     "            type: Datadog\n            spec:\n              query: sum(rate(x_total[",
     f"{SLI}.total.metricSource.type: expected Prometheus (the only metric source the generated rules can query), got 'Datadog'"),
    ("            type: Prometheus\n            spec:\n              query: sum(rate(x_total[",
     "            metricSourceRef: dd\n            spec:\n              query: sum(rate(x_total[",
     f"{SLI}.total.metricSource.metricSourceRef: no DataSource named 'dd' in this file (defined: none)"),
    ("    - target: 0.999\n", "    - target: 0.999\n    - target: 0.99\n",
     f"{S}.spec.objectives: one objective per SLO is supported, got 2"),
    ("    - target: 0.999\n", "    - target: 99.9\n", f"{S}.spec.objectives[0].target: expected a number in (0, 1) (a ratio: 0.995 is 99.5 %)"),
    ("    - target: 0.999\n", "    - targetPercent: 100\n", f"{S}.spec.objectives[0].targetPercent: expected a number in (0, 100), got 100"),
    ("    - target: 0.999\n", "    - target: 0.999\n      op: lte\n", f"{S}.spec.objectives[0].op: op and value are for thresholdMetric SLIs"),
    ("op: gt, threshold: 14.4", "op: gte, threshold: 14.4",
     f"{S}.spec.alertPolicies[0].spec.conditions[0].spec.condition.op: expected gt (a tier alerts while the burn rate is above"),
    ("threshold: 14.4", "threshold: 10",
     f"{S}.spec.alertPolicies[0].spec.conditions[0].spec.condition: burn rate 10 over 1h is none of the generator's tiers"),
    ("threshold: 6, lookbackWindow: 360m", "threshold: 6, lookbackWindow: 3h",
     "slo/o.yaml: documents[2].spec.condition: burn rate 6 over 3h is none of the generator's tiers"),
    ("    - alertPolicyRef: slow\n", "",
     f"{S}.spec.alertPolicies: the 1h and 6h tiers are one page alert configuration: a condition for 1h needs one for 6h too"),
    ("threshold: 6, lookbackWindow: 360m, alertAfter: 2m", "threshold: 6, lookbackWindow: 360m, alertAfter: 5m",
     "slo/o.yaml: documents[2].spec.condition.alertAfter: must equal the 1h tier's"),
    ("        alertWhenBreaching: true\n", "        alertWhenBreaching: true\n        notificationTargets: [{targetRef: mail}]\n",
     f"{S}.spec.alertPolicies[0].spec.notificationTargets: notification targets are not set per SLO"),
    ("        alertWhenBreaching: true\n", "        alertWhenNoData: true\n",
     f"{S}.spec.alertPolicies[0].spec.alertWhenNoData: expected false or absent: the generated rules never alert on missing data"),
    ("    - conditionRef: six-hours\n", "    - conditionRef: six-hours\n    - conditionRef: six-hours\n",
     "slo/o.yaml: documents[1].spec.conditions: expected one condition (OpenSLO v1 allows one per policy), got 2"),
    ("    - conditionRef: six-hours\n", "    - conditionRef: six-hour\n",
     "slo/o.yaml: documents[1].spec.conditions[0].conditionRef: no AlertCondition named 'six-hour' in this file (defined: six-hours)"),
    ("    qkdops/alert-name: SvcBurn\n", "", f"{S}.metadata.annotations.qkdops/alert-name: required with alertPolicies"),
    ("    qkdops/alert-name: SvcBurn\n", "    qkdops/alert-name: Svc-Burn\n",
     f"{S}.metadata.annotations.qkdops/alert-name: expected an alert name ([A-Za-z_][A-Za-z0-9_]*), got 'Svc-Burn'"),
    ("    qkdops/alert-name: SvcBurn\n", "    qkdops/alert-name: SvcBurn\n    qkdops/min_events: '5'\n",
     f"{S}.metadata.annotations.qkdops/min_events: unknown qkdops annotation (known: qkdops/min-events"),
    ("    qkdops/alert-name: SvcBurn\n", "    qkdops/alert-name: SvcBurn\n    qkdops/min-events: '-1'\n",
     f"{S}.metadata.annotations.qkdops/min-events: expected a whole number >= 0, got '-1'"),
    ("    qkdops/alert-name: SvcBurn\n", "    qkdops/alert-name: SvcBurn\n    qkdops/alert.summary: '{{.window}}'\n",
     f"{S}.metadata.annotations.qkdops/alert.summary: unknown placeholder {{{{.window}}}}"),
    ("    qkdops/alert-name: SvcBurn\n", "    qkdops/alert-name: SvcBurn\n    qkdops/recording-rules: |\n      - record: slo:x\n        expr: up\n",
     f"{S}.metadata.annotations.qkdops/recording-rules[0].record: names starting with slo: are the generator's"),
    ("  name: ok\n", "  name: ok\n  labels: {tier: gold}\n", f"{S}.metadata.labels.tier: reserved label"),
    ("  name: ok\n", "  name: ok\n  labels: {team: [a, b]}\n", f"{S}.metadata.labels.team: a list of values cannot be a Prometheus label value"),
    ('query: sum(rate(x_total{code="5xx"}[{{.window}}]))', 'query: sum(rate(x_total{code="5xx"}[5m]))',
     f"{SLI}.bad.metricSource.spec.query: the query must use the {{{{.window}}}} template variable"),
    ("  service: svc\n", "  service: my service\n", f"{S}.spec.service: expected a name of letters, digits"),
    ("  indicator:\n", "  indicatorRef: errors\n  indicator:\n", f"{S}.spec: expected exactly one of indicator, indicatorRef (got both)"),
    ("apiVersion: openslo/v1\nkind: SLO\n", "apiVersion: openslo/v1alpha\nkind: SLO\n",
     f"{S}.apiVersion: expected 'openslo/v1' (every document of an OpenSLO file; Sloth specs are files of their own), got 'openslo/v1alpha'"),
    ("kind: AlertPolicy\nmetadata:\n  name: slow\n", "kind: AlertNotificationTarget\nmetadata:\n  name: slow\n",
     "slo/o.yaml: documents[1].kind: AlertNotificationTarget: notification targets are not set per SLO"),
    ("lookbackWindow: 360m, alertAfter: 2m}\n",
     "lookbackWindow: 360m, alertAfter: 2m}\n---\napiVersion: openslo/v1\nkind: AlertCondition\nmetadata:\n  name: six-hours\n"
     "spec: {severity: page, condition: {op: gt, threshold: 6, lookbackWindow: 6h}}\n",
     "slo/o.yaml: documents[3].metadata.name: AlertCondition 'six-hours' is already defined by documents[2]"),
])
def test_what_cannot_be_honoured_is_refused_naming_file_document_and_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in BASE
    found = problems(tmp_path, BASE.replace(old, new, 1))
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    text = (BASE.replace("budgetingMethod: Occurrences", "budgetingMethod: Timeslices").replace("duration: 30d", "duration: 1Q")
            .replace("threshold: 6,", "threshold: 7,"))
    found = problems(tmp_path, text)
    assert [p.split(":")[1].strip() for p in found] == [
        "documents[0].spec.budgetingMethod", "documents[0].spec.timeWindow[0].duration", "documents[2].spec.condition"], found


def test_a_sloth_spec_of_several_documents_is_refused(tmp_path: Path) -> None:
    text = (SPEC_DIR / "qkd.yaml").read_text()
    assert problems(tmp_path, text + "---\n" + text) == [
        "slo/o.yaml: top level: 2 YAML documents: a Sloth spec is one document (only OpenSLO files, apiVersion: openslo/v1, hold several)"]


def test_cli_reports_openslo_problems_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "o.yaml").write_text(BASE.replace("budgetingMethod: Occurrences", "budgetingMethod: Timeslices"))
    assert main(["slo", "generate", "--specs", str(tmp_path), "--output", str(tmp_path / "out.yml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path.name}/o.yaml: documents[0].spec.budgetingMethod: Timeslices budgeting is not supported" in err
    assert not (tmp_path / "out.yml").exists()


