"""``qkdops slo report``'s numbers (``monitoring.slo_report``) from a fake Prometheus answer: availability
weighted by events, budget left, burn now, coverage, firing alerts, "no data" and "no events" kept apart
from 100 %, and the CLI's errors. The same report against a real Prometheus, recomputed from the raw
counters: ``tests/test_slo_report_e2e.py``."""

from __future__ import annotations

import json
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

from monitoring import slo, slo_report
from monitoring.config import load_monitoring_config
from monitoring.rules import SPEC_DIR
from qkdops.http_client import PrometheusClient, PrometheusQueryError
from qkdops_cli.cli import main

AT = 1_800_000_000.0
SLOS = {s.name: s for s in slo.generate(SPEC_DIR, load_monitoring_config().values())[1]}
A = {"link": "metro-a", "protocol": "bb84-decoy"}
B = {"link": "metro-b", "protocol": "bb84-decoy"}


class FakePrometheus(PrometheusClient):
    """Answers instant queries from ``answers`` (exact expression → [(labels, value)]), nothing otherwise;
    records every query and its time."""

    def __init__(self, answers: dict[str, list[tuple[dict[str, str], float | str]]] | None = None,
                 fail_on: str | None = None) -> None:
        super().__init__("http://prometheus.test:9090")
        self.answers, self.fail_on, self.asked = answers or {}, fail_on, []

    def get(self, path: str, timeout_s: float | None = None, **params: Any) -> dict[str, Any]:
        assert path == "/api/v1/query"
        self.asked.append((params["query"], params["time"]))
        if self.fail_on and self.fail_on in params["query"]:
            raise PrometheusQueryError("Prometheus at http://prometheus.test:9090 answered HTTP 422: boom")
        result = [{"metric": labels, "value": [AT, str(value)]} for labels, value in self.answers.get(params["query"], [])]
        return {"resultType": "vector", "result": result}


def answers_for(spec: slo.SLO, window: str, *, total=(), errors=(), burn_total=(), burn_errors=(), covered=()):
    q, burn = slo.window_queries(spec, window), slo.window_queries(spec, "1h")
    return {q.total: list(total), q.errors: list(errors), burn.total: list(burn_total), burn.errors: list(burn_errors),
            slo_report.coverage_query(spec, window)[0]: list(covered)}


def test_availability_budget_burn_and_coverage_per_link():
    fake = FakePrometheus(answers_for(SLOS["block-success"], "30d", total=[(A, 1000.0), (B, 0.0)], errors=[(A, 5.0)],
                                      burn_total=[(A, 100.0)], burn_errors=[(A, 2.0)], covered=[(A, 720), (B, 1440)]))
    a, b = slo_report.slo_rows(fake, SLOS["block-success"], AT, "30d")
    assert (a.labels, a.status, a.events, a.errors) == (A, "ok", 1000.0, 5.0)
    assert a.availability == pytest.approx(0.995) and a.budget_left == pytest.approx(0.5)
    assert a.burn_rate == pytest.approx(2.0)                      # 2 % over the last hour / 1 % budget
    assert a.coverage == pytest.approx(0.5)                       # 720 of the 1440 half-hour slots of 30 d
    assert (b.labels, b.status, b.availability, b.budget_left, b.burn_rate) == (B, "no events", None, None, None)
    assert {t for _, t in fake.asked} == {f"{AT:.3f}"}            # one instant for every query


def test_no_error_series_is_no_errors_and_overspending_goes_negative():
    spec = SLOS["key-handoff-success"]                            # 99.9 %: budget 0.1 %
    fake = FakePrometheus(answers_for(spec, "7d", total=[(A, 2000.0), (B, 1000.0)], errors=[(B, 3.0)],
                                      covered=[(A, 1440), (B, 1440)]))
    a, b = slo_report.slo_rows(fake, spec, AT, "7d")
    assert a.availability == 1.0 and a.budget_left == 1.0 and a.errors == 0.0
    assert b.availability == pytest.approx(0.997) and b.budget_left == pytest.approx(-2.0)


def test_an_slo_without_any_series_is_no_data_not_100_percent():
    rows = slo_report.slo_rows(FakePrometheus(), SLOS["phase-lock-uptime"], AT, "30d")
    assert [(r.slo, r.labels, r.status, r.availability, r.coverage) for r in rows] == [
        ("phase-lock-uptime", {}, "no data", None, 0.0)]
    assert "no data" in slo_report.table(slo_report.Report("http://p", AT, None, rows))


def test_count_slis_are_counted_as_the_spec_counts_them_and_rate_slis_times_the_window():
    count, rate = slo.window_queries(SLOS["key-availability"], "2h"), slo.window_queries(SLOS["block-success"], "2h")
    assert count.total == ("sum by (link, protocol) (count_over_time(qkd_link:key_rate_below_target:bool_rate1m[2h]))")
    assert rate.errors == '(sum by (link, protocol) (rate(qkd_blocks_total{outcome="aborted"}[2h]))) * 7200'
    assert "[2h]" in rate.ratio and "{{" not in rate.ratio


def test_coverage_counts_steps_of_the_window_over_1440_looking_back_at_least_a_minute():
    spec = SLOS["block-success"]
    month, day, ten = (slo_report.coverage_query(spec, w) for w in ("30d", "1d", "10m"))
    assert (month[1], day[1], ten[1]) == (1440, 1440, 600)
    assert month[0].endswith("[30d:1800s])") and "[1800s]" in month[0] and "* 1800" in month[0]
    assert day[0].endswith("[1d:60s])") and "[60s]" in day[0]
    assert ten[0].endswith("[10m:1s])") and "[60s]" in ten[0]


def test_firing_burn_alerts_are_matched_to_their_link_fastest_tier_first():
    spec = SLOS["block-success"]
    fake = FakePrometheus({**answers_for(spec, "30d", total=[(A, 10.0), (B, 10.0)]),
                           'ALERTS{alertstate="firing", slo!=""}': [
                               ({"alertname": "QKDBlockSuccessBudgetBurn", "slo": "block-success", "tier": "6h",
                                 "severity": "page", **A}, 1),
                               ({"alertname": "QKDBlockSuccessBudgetBurn", "slo": "block-success", "tier": "1h",
                                 "severity": "page", **A}, 1),
                               ({"alertname": "QKDQBERBudgetBurn", "slo": "qber-within-threshold", "tier": "1h",
                                 "severity": "page", **B}, 1)]})
    report = slo_report.build_report(fake, [spec], AT)
    a, b = report.rows
    assert [x.tier for x in a.firing] == ["1h", "6h"] and b.firing == []
    assert "1h(page) 6h(page)" in slo_report.table(report)


def test_raw_slis_report_their_ratio_without_events(tmp_path: Path):
    (tmp_path / "raw.yaml").write_text(textwrap.dedent("""
        version: "prometheus/v1"
        service: svc
        slos:
          - name: raw-one
            objective: 99
            sli: {raw: {error_ratio_query: "sum by (link) (rate(err_total[{{.window}}])) / sum by (link) (rate(all_total[{{.window}}]))"}}
            alerting: {name: RawBurn}
        """))
    spec = slo.generate(tmp_path, {})[1][0]
    window = slo.window_queries(spec, "30d")
    fake = FakePrometheus({window.ratio: [({"link": "x"}, 0.002)], slo.window_queries(spec, "1h").ratio: [({"link": "x"}, "NaN")],
                           slo_report.coverage_query(spec, "30d")[0]: [({"link": "x"}, 1440)]})
    (row,) = slo_report.slo_rows(fake, spec, AT, "30d")
    assert (row.availability, row.events, row.burn_rate, row.coverage) == (pytest.approx(0.998), None, None, 1.0)
    assert row.budget_left == pytest.approx(0.8)


def test_table_is_aligned_and_says_what_burn_and_partial_coverage_mean():
    spec = SLOS["block-success"]
    fake = FakePrometheus(answers_for(spec, "30d", total=[(A, 1000.0)], errors=[(A, 1.0)], burn_total=[(A, 10.0)],
                                      covered=[(A, 72)]))
    text = slo_report.table(slo_report.build_report(fake, [spec, SLOS["phase-lock-uptime"]], AT))
    header, columns, first, second, note = text.splitlines()
    assert "window 30d" in header and "burn 1h" in header and "14.4" in header
    assert columns.split() [:3] == ["SLO", "LINK", "OBJECTIVE"]
    for row in (first, second):   # columns start where their headers start
        assert row.index(row.split()[2]) == columns.index("OBJECTIVE")
    assert first.split() == ["block-success", "metro-a", "99%", "99.9%", "90%", "0.00", "1000", "5%", "-"]
    assert second.split()[:4] == ["phase-lock-uptime", "-", "99.5%", "no"] and "no data" in second
    assert note.startswith("coverage < 100%")


def test_a_query_error_names_the_slo_and_the_query():
    with pytest.raises(PrometheusQueryError, match=r"SLO block-success: .*HTTP 422: boom \(query: .*qkd_blocks_total"):
        slo_report.slo_rows(FakePrometheus(fail_on="qkd_blocks_total"), SLOS["block-success"], AT, "30d")


@pytest.fixture
def password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("secret\n")
    monkeypatch.setenv("QKDOPS_PROMETHEUS_PASSWORD_FILE", str(tmp_path / "pw"))


def test_cli_unreachable_prometheus_is_exit_1_naming_it(password, capsys: pytest.CaptureFixture[str]):
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["slo", "report", "--prometheus", f"http://127.0.0.1:{port}", "--json"]) == 1
    err = capsys.readouterr().err
    assert f"qkdops slo report: Prometheus at http://127.0.0.1:{port} is not reachable" in err


@pytest.mark.parametrize("window", ["30 days", "0s", "-1d"])
def test_cli_rejects_a_malformed_window_with_exit_2(password, window: str, capsys: pytest.CaptureFixture[str]):
    assert main(["slo", "report", f"--window={window}", "--prometheus", "http://127.0.0.1:1"]) == 2
    assert "--window: expected a Prometheus duration" in capsys.readouterr().err


def test_report_json_is_plain_json():
    spec = SLOS["block-success"]
    fake = FakePrometheus(answers_for(spec, "6h", total=[(A, 50.0)], covered=[(A, 1440)]))
    body = json.loads(json.dumps(slo_report.build_report(fake, [spec], AT, "6h").as_json()))
    assert body["window"] == "6h" and body["burn_window"] == "1h" and body["burn_page_threshold"] == 14.4
    (row,) = body["rows"]
    assert row | {"labels": None} == {"slo": "block-success", "link": "metro-a", "labels": None, "status": "ok",
                                      "objective": 0.99, "window": "6h", "availability": 1.0, "error_budget_remaining": 1.0,
                                      "error_events": 0.0, "events": 50.0, "burn_rate": None, "coverage": 1.0, "firing": []}
