"""SLO specs (Sloth ``prometheus/v1``) → ``alert_rules/qkd-slos.yml``: validation, generation, promtool.

Validation errors must name the file and the field path; Sloth users' specs must load; the output
must be deterministic, current (``qkdops slo generate --check``), free of float noise and of
duplicate rules, and pass ``promtool check rules`` and the unit tests in
``alert_rules/tests/slo_test.yml``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import slo
from qkdops_cli.cli import main
from qkdops.runtime.state import HANDOFF_OUTCOMES
from monitoring.config import load_monitoring_config
from monitoring.rules import RULES_DIR, SLO_RULES, SPEC_DIR

REPO = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")

SLO_ALERTS = {
    "key-availability": "QKDKeyAvailabilityBudgetBurn",
    "block-success": "QKDBlockSuccessBudgetBurn",
    "phase-lock-uptime": "QKDPhaseLockBudgetBurn",
    "qber-within-threshold": "QKDQBERBudgetBurn",
    "key-handoff-success": "QKDKeyHandoffBudgetBurn",
    "key-provisioning-latency": "QKDKeyProvisioningLatencyBudgetBurn",
    "calibration-success": "QKDCalibrationBudgetBurn",
}

# A valid spec to break one field at a time.
BASE = """
version: "prometheus/v1"
service: "svc"
slos:
  - name: "ok"
    objective: 99
    sli:
      events:
        error_query: sum(rate(x_total{code="5xx"}[{{.window}}]))
        total_query: sum(rate(x_total[{{.window}}]))
    alerting:
      name: SvcBurn
"""

OUTPUT = RULES_DIR / SLO_RULES
MONITORING = load_monitoring_config()
VALUES = MONITORING.values()


def spec(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def load(tmp_path: Path, text: str, name: str = "s.yaml") -> list[slo.SLO]:
    path = tmp_path / name
    path.write_text(spec(text))
    return slo.load_specs([path], VALUES, {path: f"slo/{name}"})


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(slo.SpecError) as info:
        load(tmp_path, text)
    return info.value.problems


def generated(slos: list[slo.SLO]) -> dict[str, Any]:
    return yaml.safe_load(slo.render(slo.rule_groups(slos), ["slo/s.yaml"]))


def rules_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


def committed() -> dict[str, Any]:
    return yaml.safe_load(OUTPUT.read_text())


# ---- validation: every error names the file and the field path -------------------------------------
@pytest.mark.parametrize(("broken", "expected"), [
    (BASE.replace("objective: 99", "objective: 120"), "slo/s.yaml: slos[0].objective: expected a number in (0, 100), got 120"),
    (BASE.replace("objective: 99", "objective: 100"), "slo/s.yaml: slos[0].objective: expected a number in (0, 100), got 100"),
    (BASE.replace("objective: 99", "objective: 0"), "slo/s.yaml: slos[0].objective: expected a number in (0, 100), got 0"),
    (BASE.replace("objective: 99", 'objective: "99.9"'),
     "slo/s.yaml: slos[0].objective: expected a number in (0, 100), got '99.9' (a string)"),
    (BASE.replace("objective: 99", "objective: true"),
     "slo/s.yaml: slos[0].objective: expected a number in (0, 100), got true (a boolean)"),
    (BASE.replace("    objective: 99\n", ""), "slo/s.yaml: slos[0].objective: required field is missing"),
    (BASE.replace('version: "prometheus/v1"', 'version: "prometheus/v2"'),
     "slo/s.yaml: version: expected 'prometheus/v1', got 'prometheus/v2' (a string)"),
    (BASE.replace('version: "prometheus/v1"\n', ""), "slo/s.yaml: version: required field is missing"),
    (BASE.replace('service: "svc"', 'service: "my service"'),
     "slo/s.yaml: service: expected a name of letters, digits, '-', '_' or '.', got 'my service'"),
    (BASE.replace('  - name: "ok"', '  - name: ""'), "slo/s.yaml: slos[0].name: expected a non-empty string, got '' (a string)"),
    (BASE.replace("    objective: 99", "    objective: 99\n    objectve: 99"),
     "slo/s.yaml: slos[0].objectve: expected one of the keys alerting, description, infoLabels, labels, name, objective, "
     "qkdops, sli, got 'objectve'"),
    (BASE.replace("[{{.window}}]))\n        total", "[5m]))\n        total"),
     "slo/s.yaml: slos[0].sli.events.error_query: the query must use the {{.window}} template variable"),
    (BASE.replace("sum(rate(x_total[{{.window}}]))", "sum(rate(x_total[{{.window}}])"),
     "slo/s.yaml: slos[0].sli.events.total_query: unclosed '(' in the query"),
    (BASE.replace("sum(rate(x_total[{{.window}}]))", "sum(rate(x_total[{{.Window}}]))"),
     "slo/s.yaml: slos[0].sli.events.total_query: unsupported template action '{{.Window}}': only {{.window}} is substituted"),
    (BASE.replace("        total_query: sum(rate(x_total[{{.window}}]))\n", ""),
     "slo/s.yaml: slos[0].sli.events.total_query: required field is missing"),
    (BASE.replace("      events:", "      raw:\n        error_ratio_query: x[{{.window}}]\n      events:"),
     "slo/s.yaml: slos[0].sli: expected exactly one of events, raw (got events, raw)"),
    (BASE.replace("      name: SvcBurn\n", "      name: Svc-Burn\n"),
     "slo/s.yaml: slos[0].alerting.name: expected an alert name ([A-Za-z_][A-Za-z0-9_]*), got 'Svc-Burn'"),
    (BASE.replace("      name: SvcBurn\n", "      page_alert:\n        for: 5 minutes\n"),
     "slo/s.yaml: slos[0].alerting.page_alert.for: expected a Prometheus duration such as 5m, 30d or 1h30m, got '5 minutes'"),
    (BASE.replace("      name: SvcBurn\n", "      name: SvcBurn\n      ticket_alert:\n        disable: yes please\n"),
     "slo/s.yaml: slos[0].alerting.ticket_alert.disable: expected true or false, got 'yes please' (a string)"),
    (BASE + "      labels:\n        tier: \"2\"\n",
     "slo/s.yaml: slos[0].alerting.labels.tier: reserved label: the generator labels each burn-rate alert with tier="),
    (BASE + "      labels:\n        team: 2\n",
     "slo/s.yaml: slos[0].alerting.labels.team: expected a string label value, got 2 (quote it)"),
    (BASE + "      labels:\n        bad-name: x\n", "slo/s.yaml: slos[0].alerting.labels.bad-name: invalid label name"),
    (BASE + "      annotations:\n        summary: \"{{.window}} burns\"\n",
     "slo/s.yaml: slos[0].alerting.annotations.summary: unknown placeholder {{.window}} (known: {{.slo}}"),
    (BASE.replace("slos:\n", "labels: [a, b]\nslos:\n"),
     "slo/s.yaml: labels: expected a mapping of label names to strings, got a list"),
    (BASE.replace("slos:\n", "qkdops:\n  period: 1d\nslos:\n"),
     "slo/s.yaml: qkdops.period: expected at least 3d (the longest alert window), got '1d'"),
    (BASE + "    qkdops:\n      min_events: -1\n", "slo/s.yaml: slos[0].qkdops.min_events: expected a whole number >= 0, got -1"),
    (BASE + "    qkdops:\n      queries_return: bytes\n", "slo/s.yaml: slos[0].qkdops.queries_return: expected one of rate, count, got 'bytes'"),
    (BASE + "    qkdops:\n      recording_rules:\n        - record: slo:mine\n          expr: up\n",
     "slo/s.yaml: slos[0].qkdops.recording_rules[0].record: names starting with slo: are the generator's"),
    (BASE + "    qkdops:\n      recording_rules:\n        - record: x:y\n",
     "slo/s.yaml: slos[0].qkdops.recording_rules[0].expr: required field is missing"),
    ('version: "prometheus/v1"\nservice: svc\nslos: []\n', "slo/s.yaml: slos: expected a non-empty list of SLOs, got a list"),
    ("", "slo/s.yaml: top level: empty spec (expected version, service and slos)"),
    ("- just\n- a list\n", "slo/s.yaml: top level: expected a mapping, got a list"),
    (BASE.replace('service: "svc"', 'service: "svc"\nservice: "again"'),
     "slo/s.yaml: line 3, column 1: invalid YAML: duplicate key 'service'"),
    (BASE.replace("    objective: 99", "    objective: [99"), "slo/s.yaml: line 6, column 8: invalid YAML: expected ',' or ']'"),
])
def test_malformed_spec_is_rejected_naming_file_and_field(tmp_path: Path, broken: str, expected: str) -> None:
    found = problems(tmp_path, broken)
    assert any(p.startswith(expected) for p in found), found


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    broken = BASE.replace("objective: 99", "objective: 120").replace("name: SvcBurn", "name: 7up")
    assert problems(tmp_path, broken) == [
        "slo/s.yaml: slos[0].objective: expected a number in (0, 100), got 120",
        "slo/s.yaml: slos[0].alerting.name: expected an alert name ([A-Za-z_][A-Za-z0-9_]*), got '7up'",
    ]


@pytest.mark.parametrize(("field", "message"), [
    ("slo_plugins:\n  chain:\n    - id: sloth.dev/contrib/alert_for/v1\n",
     "slo/s.yaml: slo_plugins: SLO plugins are not supported"),
    ("    sli:\n      plugin:\n        id: sloth-common/kubernetes/apiserver/availability\n",
     "slo/s.yaml: slos[0].sli.plugin: SLI plugins are not supported"),
    ("    interval:\n      all: 2m\n", "slo/s.yaml: slos[0].interval: per-SLO rule group intervals are not supported"),
])
def test_sloth_features_we_do_not_support_are_rejected_clearly(tmp_path: Path, field: str, message: str) -> None:
    if field.startswith("slo_plugins"):
        text = BASE.replace("slos:\n", field + "slos:\n")
    elif "plugin" in field:
        text = BASE.split("    sli:\n")[0] + field + "    alerting:\n      name: SvcBurn\n"
    else:
        text = BASE + field
    assert any(p.startswith(message) for p in problems(tmp_path, text))


def test_duplicate_slo_names_are_rejected_within_and_across_files(tmp_path: Path) -> None:
    twice = BASE + BASE.split("slos:\n")[1]
    assert "slo/s.yaml: slos[1].name: duplicate SLO name 'ok' (also slos[0])" in problems(tmp_path, twice)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(spec(BASE))
    b.write_text(spec(BASE.replace('service: "svc"', 'service: "other"')))
    with pytest.raises(slo.SpecError) as info:
        slo.load_specs([a, b], VALUES, {a: "slo/a.yaml", b: "slo/b.yaml"})
    assert info.value.problems == ["slo/b.yaml: slos[name=ok]: SLO name already used by slo/a.yaml (service svc); "
                                   "names must be unique across specs"]


def test_conflicting_input_recording_rules_are_rejected(tmp_path: Path) -> None:
    rule = "    qkdops:\n      recording_rules:\n        - record: job:x:sum\n          expr: {expr}\n"
    a = BASE + rule.format(expr="sum(x)")
    b = a.replace('name: "ok"', 'name: "ok2"').replace("sum(x)", "sum(y)")
    found = problems(tmp_path, a + b.split("slos:\n")[1])
    assert found == ["slo/s.yaml: slos[1].qkdops.recording_rules[0]: recording rule job:x:sum conflicts with the one at "
                     "slo/s.yaml: slos[0].qkdops.recording_rules[0] (same name and labels, different expr)"]


def test_cli_reports_a_malformed_spec_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "slo").mkdir()
    (tmp_path / "slo" / "bad.yaml").write_text(spec(BASE.replace("objective: 99", "objective: 120")))
    out = tmp_path / "rules.yml"
    assert main(["slo", "generate", "--specs", str(tmp_path / "slo"), "--output", str(out)]) == 2
    assert "slo/bad.yaml: slos[0].objective: expected a number in (0, 100), got 120" in capsys.readouterr().err
    assert not out.exists()


# ---- what Sloth users bring ------------------------------------------------------------------------
SLOTH_STYLE = """
# Written the way Sloth's own examples are: events and raw SLIs, multi-line queries, service and
# SLO labels, per-alert labels, annotations and `for`, a disabled ticket alert, an SLO without alerts.
version: "prometheus/v1"
service: "checkout-api"
labels:
  owner: "payments"
  repo: "acme/checkout"
slos:
  - name: "requests-availability"
    objective: 99.9
    description: "Requests answered without a 5xx or 429."
    labels:
      category: availability
    sli:
      events:
        error_query: sum(rate(http_requests_total{job="checkout",code=~"(5..|429)"}[{{.window}}]))
        total_query: sum(rate(http_requests_total{job="checkout"}[{{.window}}]))
    alerting:
      name: CheckoutHighErrorRate
      labels:
        category: "availability"
      annotations:
        summary: "High error rate on checkout requests"
        runbook: "https://example.org/runbooks/checkout"
      page_alert:
        for: 5m
        labels:
          routing_key: payments
      ticket_alert:
        for: 10m
        labels:
          slack_channel: "#payments"
  - name: "requests-latency"
    objective: 99
    sli:
      events:
        error_query: |
          (
            sum(rate(http_request_duration_seconds_count{job="checkout"}[{{ .window }}]))
            -
            sum(rate(http_request_duration_seconds_bucket{job="checkout",le="0.4"}[{{ .window }}]))
          )
        total_query: sum(rate(http_request_duration_seconds_count{job="checkout"}[{{ .window }}]))
    alerting:
      name: CheckoutLatency
      page_alert:
        labels:
          severity: critical
      ticket_alert:
        disable: true
  - name: "client-satisfaction"
    objective: 95
    infoLabels:
      dashboard: wifi
    sli:
      raw:
        error_ratio_query: 1 - avg(avg_over_time(client_satisfaction_ratio[{{.window}}]))
    alerting:
      name: ClientSatisfaction
  - name: "older-raw-key"
    objective: 95
    sli:
      raw:
        errorRatioQuery: 1 - avg(avg_over_time(client_satisfaction_ratio[{{.window}}]))
    alerting:
      page_alert:
        disable: true
      ticket_alert:
        disable: true
"""


def test_a_sloth_users_spec_is_accepted_and_generated(tmp_path: Path) -> None:
    slos = load(tmp_path, SLOTH_STYLE)
    assert [s.name for s in slos] == ["requests-availability", "requests-latency", "client-satisfaction", "older-raw-key"]
    rules = rules_of(generated(slos))
    alerts = [r for r in rules if "alert" in r]
    tiers = {(r["alert"], r["labels"]["tier"]) for r in alerts}
    assert tiers == {("CheckoutHighErrorRate", t) for t in ("1h", "6h", "1d", "3d")} | \
        {("CheckoutLatency", "1h"), ("CheckoutLatency", "6h"), ("ClientSatisfaction", "1h"), ("ClientSatisfaction", "6h"),
         ("ClientSatisfaction", "1d"), ("ClientSatisfaction", "3d")}
    page = next(r for r in alerts if r["alert"] == "CheckoutHighErrorRate" and r["labels"]["tier"] == "1h")
    assert page["for"] == "5m"
    assert page["labels"] == {"category": "availability", "class": "symptom", "owner": "payments", "repo": "acme/checkout",
                              "routing_key": "payments", "severity": "page", "slo": "requests-availability", "tier": "1h"}
    assert page["annotations"]["summary"] == "High error rate on checkout requests"
    assert page["annotations"]["runbook"] == "https://example.org/runbooks/checkout"
    assert page["annotations"]["description"].startswith("Error ratio {{ $value | humanizePercentage }} over 1h, and above "
                                                         "1.44% over 5m too: 14.4x the 0.1% error budget")
    ticket = next(r for r in alerts if r["alert"] == "CheckoutHighErrorRate" and r["labels"]["tier"] == "3d")
    assert (ticket["for"], ticket["labels"]["severity"], ticket["labels"]["slack_channel"]) == ("10m", "ticket", "#payments")
    latency = next(r for r in alerts if r["alert"] == "CheckoutLatency")
    assert latency["labels"]["severity"] == "critical"  # a Sloth user's own severity wins over the default
    # The multi-line error query is kept, with the window filled in.
    latency_5m = next(r for r in rules if r.get("record") == "slo:sli_error:ratio_rate5m" and r["labels"]["slo"] == "requests-latency")
    assert 'sum(rate(http_request_duration_seconds_bucket{job="checkout",le="0.4"}[5m]))' in latency_5m["expr"]
    # Raw SLIs: the query is the ratio; no event count, so no minimum-events guard.
    raw_1h = next(r for r in rules if r.get("record") == "slo:sli_error:ratio_rate1h" and r["labels"]["slo"] == "client-satisfaction")
    assert raw_1h["expr"] == "1 - avg(avg_over_time(client_satisfaction_ratio[1h]))"
    assert not [r for r in rules if r.get("record", "").startswith("slo:sli_events:") and r["labels"]["slo"] == "client-satisfaction"]
    info = next(r for r in rules if r.get("record") == "slo:info" and r["labels"]["slo"] == "client-satisfaction")
    assert info["labels"]["dashboard"] == "wifi"
    # An SLO without alerts still gets its recordings.
    assert any(r.get("record") == "slo:error_budget_remaining:ratio" and r["labels"]["slo"] == "older-raw-key" for r in rules)


@needs_promtool
def test_a_sloth_users_spec_generates_rules_promtool_accepts(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(slo.render(slo.rule_groups(load(tmp_path, SLOTH_STYLE)), ["slo/s.yaml"]))
    result = subprocess.run([PROMTOOL, "check", "rules", "--lint=all", "--lint-fatal", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_sloths_getting_started_labels_conflict_is_explained(tmp_path: Path) -> None:
    """Sloth's getting-started spec labels everything ``tier: "2"``; our tier label means the burn tier."""
    text = BASE.replace("slos:\n", 'labels:\n  owner: "myteam"\n  tier: "2"\nslos:\n')
    assert problems(tmp_path, text) == [
        "slo/s.yaml: labels.tier: reserved label: the generator labels each burn-rate alert with tier=1h|6h|1d|3d "
        "(Alertmanager inhibits slower tiers on it); rename this label"]


# ---- generation -----------------------------------------------------------------------------------
def test_thresholds_are_exact_decimal_literals(tmp_path: Path) -> None:
    """(b): 14.4 x 0.1 % is written 0.0144, not 0.014400000000000001 (Sloth writes 14.4 * 0.0009999999999999432)."""
    objectives = ["99.9", "99.95", "99.99", "99.5", "95", "97.5", "99.999", "99.7"]
    head, block = BASE.split("slos:\n")
    text = head + "slos:\n" + "".join(block.replace('name: "ok"', f'name: "o{i}"').replace("objective: 99", f"objective: {o}")
                                      for i, o in enumerate(objectives))
    alerts = [r for r in rules_of(generated(load(tmp_path, text))) if "alert" in r]
    for i, objective in enumerate(objectives):
        budget = (Decimal(100) - Decimal(objective)) / 100
        for tier in slo.TIERS:
            rule = next(r for r in alerts if r["labels"]["slo"] == f"o{i}" and r["labels"]["tier"] == tier.long)
            threshold = format((tier.burn_rate * budget).normalize(), "f")
            assert rule["expr"].startswith(f'slo:sli_error:ratio_rate{tier.long}{{slo="o{i}"}} > {threshold} / '), rule["expr"]
    assert alerts[0]["expr"].startswith('slo:sli_error:ratio_rate1h{slo="o0"} > 0.0144 / ')
    assert next(r for r in alerts if r["labels"]["slo"] == "o2")["expr"].startswith('slo:sli_error:ratio_rate1h{slo="o2"} > 0.00144 / ')


def test_no_float_noise_anywhere_in_the_committed_rules() -> None:
    """No literal such as 0.014400000000000001 or 0.9990000000000001: at most 6 significant digits."""
    for number in re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", OUTPUT.read_text()):
        assert len(number.replace(".", "").strip("0")) <= 6, number


def test_each_window_is_recorded_once_and_rules_are_unique(tmp_path: Path) -> None:
    """(e): 6h is tier 6h's long window and tier 3d's short one; a 3d period is the 3d window."""
    text = BASE + "    qkdops:\n      period: 3d\n"
    rules = rules_of(generated(load(tmp_path, text)))
    records = [r["record"] for r in rules if "record" in r]
    assert records.count("slo:sli_error:ratio_rate6h") == 1
    assert records.count("slo:sli_error:ratio_rate3d") == 1
    assert [r for r in records if r.startswith("slo:sli_error:")] == [
        f"slo:sli_error:ratio_rate{w}" for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")]
    budget = next(r for r in rules if r.get("record") == "slo:error_budget_remaining:ratio")
    assert budget["expr"] == '1 - slo:sli_error:ratio_rate3d{slo="ok"} / 0.01'
    keys = [(r.get("record") or r["alert"], tuple(sorted(r.get("labels", {}).items()))) for r in rules_of(committed())]
    assert len(keys) == len(set(keys))


def test_tiers_judge_young_windows_by_their_coverage(tmp_path: Path) -> None:
    """Issue 18 item 2: each tier's threshold is divided by the coverage of each of its windows, and the
    coverage is recorded for every tier window from one self-referencing "data since" series. What it
    does to alerts on young, mature and gappy stacks: alert_rules/tests/slo_coverage_test.yml."""
    rules = rules_of(generated(load(tmp_path, BASE)))
    since = next(r for r in rules if r.get("record") == slo.DATA_SINCE)
    assert since["expr"] == (f'{slo.DATA_SINCE}{{slo="ok"}} and slo:sli_error:ratio_rate5m{{slo="ok"}}\n'
                             'or\ntimestamp(slo:sli_error:ratio_rate5m{slo="ok"})')  # a NaN ratio is data too
    coverage = {r["record"]: r["expr"] for r in rules if r.get("record", "").startswith("slo:sli_coverage:ratio")}
    assert list(coverage) == [f"slo:sli_coverage:ratio{w}" for w in slo.WINDOWS]
    assert coverage["slo:sli_coverage:ratio6h"] == f'clamp_max((time() - {slo.DATA_SINCE}{{slo="ok"}}) / 21600, 1)'
    for tier in slo.TIERS:
        alert = next(r for r in rules if r.get("alert") and r["labels"]["tier"] == tier.long)
        for window in (tier.long, tier.short):
            assert f'slo:sli_error:ratio_rate{window}{{slo="ok"}} > ' in alert["expr"]
            assert f' / slo:sli_coverage:ratio{window}{{slo="ok"}}\n' in alert["expr"] + "\n"
    names = [r.get("record") for r in rules]  # recorded after the ratios it reads, before the alerts read it
    assert names.index("slo:sli_error:ratio_rate5m") < names.index(slo.DATA_SINCE) < names.index("slo:sli_coverage:ratio5m")


def test_period_and_min_events_come_from_the_extension(tmp_path: Path) -> None:
    text = BASE.replace("slos:\n", "qkdops:\n  period: 28d\n  min_events: 25\nslos:\n") + \
        BASE.split("slos:\n")[1].replace('name: "ok"', 'name: "own"') + "    qkdops:\n      min_events: 0\n"
    slos = load(tmp_path, text)
    rules = rules_of(generated(slos))
    records = {(r["record"], r["labels"]["slo"]) for r in rules if "record" in r and "slo" in r["labels"]}
    assert ("slo:sli_error:ratio_rate28d", "ok") in records and ("slo:sli_error:ratio_rate30d", "ok") not in records
    page = next(r for r in rules if r.get("alert") and r["labels"]["slo"] == "ok" and r["labels"]["tier"] == "1h")
    assert page["expr"].endswith('slo:sli_events:increase1h{slo="ok"} >= 25')
    unguarded = next(r for r in rules if r.get("alert") and r["labels"]["slo"] == "own" and r["labels"]["tier"] == "1h")
    assert "sli_events" not in unguarded["expr"]
    events = next(r for r in rules if r.get("record") == "slo:sli_events:increase6h" and r["labels"]["slo"] == "ok")
    assert events["expr"] == "(sum(rate(x_total[6h]))) * 21600"  # Sloth's rate queries: events = rate x seconds


def test_long_windows_are_weighted_by_events_not_averaged() -> None:
    """(a): every window, the period's included, divides the error query by the total query over it."""
    for rule in rules_of(committed()):
        if rule.get("record", "").startswith("slo:sli_error:ratio_rate"):
            window = rule["record"].removeprefix("slo:sli_error:ratio_rate")
            assert f"[{window}]" in rule["expr"] and "avg_over_time" not in rule["expr"], rule
            assert "slo:sli_error" not in rule["expr"]  # not computed from other (shorter) ratios


def test_generation_is_deterministic_and_independent_of_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = slo.generate(SPEC_DIR, VALUES)
    monkeypatch.chdir(tmp_path)
    second, _ = slo.generate(SPEC_DIR, VALUES)
    assert first == second
    assert first.startswith("# Generated by `qkdops slo generate` from slo/qkd.yaml")


def test_committed_rules_are_current() -> None:
    assert main(["slo", "generate", "--check"]) == 0


def test_check_fails_on_a_stale_or_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "qkd-slos.yml"
    stale.write_text(OUTPUT.read_text().replace("> 0.144", "> 0.15", 1))
    assert main(["slo", "generate", "--check", "--output", str(stale)]) == 1
    err = capsys.readouterr().err
    assert "is stale: run `qkdops slo generate`" in err and "> 0.15" in err  # and a diff shows where
    assert main(["slo", "generate", "--check", "--output", str(tmp_path / "missing.yml")]) == 1
    assert main(["slo", "generate", "--output", str(stale)]) == 0
    assert stale.read_text() == OUTPUT.read_text()


# ---- our SLOs ---------------------------------------------------------------------------------------
def test_our_slos_alert_per_tier_with_the_contract_labels_and_annotations() -> None:
    alerts = [r for r in rules_of(committed()) if "alert" in r]
    assert {(r["alert"], r["labels"]["slo"]) for r in alerts} == {(a, s) for s, a in SLO_ALERTS.items()}
    for name, slo_name in ((a, s) for s, a in SLO_ALERTS.items()):
        mine = [r for r in alerts if r["alert"] == name]
        assert [r["labels"]["tier"] for r in mine] == ["1h", "6h", "1d", "3d"]  # one rule per tier
        for rule in mine:
            tier = rule["labels"]["tier"]
            expected_severity = "ticket" if tier in ("1d", "3d") or slo_name == "calibration-success" else "page"
            assert rule["labels"] == {"severity": expected_severity, "class": "symptom", "slo": slo_name, "tier": tier}
            assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
            assert rule["annotations"]["runbook_url"] == MONITORING.runbook_url(name)
            assert "{{ $labels.link }}" in rule["annotations"]["description"]
            assert "{{ $value | humanizePercentage }}" in rule["annotations"]["description"]
            assert "{{." not in rule["annotations"]["summary"] + rule["annotations"]["description"]
            assert rule["for"] == ("2m" if tier in ("1h", "6h") else "15m")
            assert f"slo:sli_events:increase{tier}{{slo=\"{slo_name}\"}} >= " in rule["expr"]  # every one of our SLIs counts events


def test_our_slis_aggregate_by_link_and_protocol() -> None:
    for s in slo.load_specs(sorted(SPEC_DIR.glob("*.yaml")), VALUES):
        for query in (s.error_query, s.total_query):
            assert query is not None and query.startswith("sum by (link, protocol) ("), (s.name, query)


def test_key_handoff_success_counts_block_keys_not_attempts() -> None:
    """One event per distilled block key: handed off (success) or discarded, the link's buffer full (buffer_full).
    The other outcomes are failed attempts whose key waits in the buffer and is retried every second: counted,
    a KME outage of seconds would burn the 99.9 % budget at page rate on top of QKDKeyHandoffFailing."""
    (spec,) = [s for s in slo.load_specs(sorted(SPEC_DIR.glob("*.yaml")), VALUES) if s.name == "key-handoff-success"]
    assert (spec.objective, spec.alert_name) == (Decimal("99.9"), "QKDKeyHandoffBudgetBurn")
    assert spec.error_query == \
        'sum by (link, protocol) (rate(qkd_key_handoffs_total{outcome="buffer_full"}[{{.window}}]))'
    assert spec.total_query == \
        'sum by (link, protocol) (rate(qkd_key_handoffs_total{outcome=~"success|buffer_full"}[{{.window}}]))'
    assert set(HANDOFF_OUTCOMES) - {"success", "buffer_full"} == {"kme_unavailable", "kme_timeout", "store_full"}


@needs_promtool
def test_promtool_check_rules_is_clean() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", "--lint=all", "--lint-fatal", str(OUTPUT)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "WARNING" not in result.stdout + result.stderr
    assert "duplicate" not in (result.stdout + result.stderr).lower()


def test_unit_tests_evaluate_every_generated_group_in_file_order() -> None:
    """promtool evaluates groups in random order unless ``group_eval_order`` lists them (inputs first)."""
    tests = yaml.safe_load((REPO / "alert_rules" / "tests" / "slo_test.yml").read_text())
    assert tests["group_eval_order"] == [g["name"] for g in committed()["groups"]]


@needs_promtool
def test_promtool_unit_tests_of_the_slo_rules_pass() -> None:
    """alert_rules/tests/slo_test.yml: recordings' values, every tier, the events guard, missed scrapes."""
    result = subprocess.run([PROMTOOL, "test", "rules", str(REPO / "alert_rules" / "tests" / "slo_test.yml")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
