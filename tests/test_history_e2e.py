"""``qkdops history`` end to end: a few hours of the shipped fleet's past backfilled with the real promtool,
then a real Prometheus started on the local data dir answers for the whole span — raw exporter series,
recording rules, every SLO's ratio and coverage — and the block counters it holds are exactly the
history's own block archive (``<state_dir>/history/blocks.sqlite``), recounted here in SQL. ~1-2 min."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dashboards.generate import INTENDED_EMPTY
from monitoring.config import load_monitoring_config
from monitoring.rules import render_rule_files
from monitoring.slo import DATA_SINCE
from qkdops.http_client import PrometheusClient
from stack_helpers import RunningStack, e2e_profile, prometheus_on_state, run_history, wait_for
from test_dashboards import panels, substitute

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                                                   reason="Prometheus not installed: `bash scripts/setup.sh` installs it")]
REPO = Path(__file__).resolve().parents[1]
HOURS = 3.0
SLOS = ("key-availability", "block-success", "phase-lock-uptime", "qber-within-threshold", "key-handoff-success",
        "key-provisioning-latency", "calibration-success")


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory):
    directory = tmp_path_factory.mktemp("history")
    state, stdout = run_history(directory, HOURS / 24,
                                "incidents:\n  - {fault: fiber_cut, protocols: [bb84-decoy], at: 1h, duration: 15m}\n")
    with prometheus_on_state(state, directory) as client:
        yield client, stdout, state, directory / "links.yaml"


def series_over(client: PrometheusClient, expr: str, start: float, end: float, step: float = 600.0) -> dict[str, list[float]]:
    data = client.query_range(expr, start, end, step)
    return {str(s["metric"]): [float(t) for t, _ in s["values"]] for s in data["result"]}


def test_prometheus_answers_for_the_whole_history(backfilled):
    client, stdout, state, _ = backfilled
    assert "0.125 day(s) of 3 link(s), 1 incident(s)" in stdout, stdout
    end = time.time()
    start = end - HOURS * 3600
    # from the first quarter-hour to the last, every step: raw series, a recording rule, every SLO's numbers
    for expr in ("sum by (link) (qkd_secret_key_bits_total)", "qkd_link:qber:ratio_rate5m",
                 *(f'slo:sli_error:ratio_rate5m{{slo="{slo}"}}' for slo in SLOS),
                 *(f'slo:sli_coverage:ratio1h{{slo="{slo}"}}' for slo in SLOS),
                 'slo:error_budget_remaining:ratio{slo="block-success"}'):
        found = series_over(client, expr, start + 900, end - 900)
        assert found, f"{expr}: no data in the backfilled span"
        steps = max(len(v) for v in found.values())
        assert steps >= (HOURS * 3600 - 1800) / 600 - 1, f"{expr}: only {steps} of the span's steps answered"


def test_the_slos_coverage_counts_from_the_historys_start(backfilled):
    client, _, state, _ = backfilled
    first_block = sqlite3.connect(state / "history" / "blocks.sqlite").execute(
        "SELECT min(json_extract(body, '$.start_timestamp')) FROM blocks").fetchone()[0]
    since = client.query_range(f'{DATA_SINCE}{{slo="block-success"}}', time.time() - HOURS * 3600 + 1800, time.time() - 600, 600)
    assert since["result"]
    for series in since["result"]:
        values = {float(v) for _, v in series["values"]}
        assert len(values) == 1 and abs(values.pop() - first_block) <= 120, series


def test_block_counters_match_the_historys_block_archive(backfilled):
    client, _, state, _ = backfilled
    db = sqlite3.connect(state / "history" / "blocks.sqlite")
    archived = {(link, reason): n for link, reason, n in db.execute(
        "SELECT link, json_extract(body, '$.reason'), count(*) FROM results GROUP BY 1, 2")}
    # the counters' last values: every block the history processed (it ends with the last sample)
    result = client.query("last_over_time(qkd_blocks_total[10m])")["result"]
    # the last sample is taken at the end; blocks that ended after it are in the archive but not the counters
    last = {}
    for s in result:
        key = (s["metric"]["link"], s["metric"]["reason"])
        last[key] = last.get(key, 0.0) + float(s["value"][1])
    late = {link: n for link, n in db.execute(
        "SELECT b.link, count(*) FROM blocks b JOIN results r USING (link, idx) "
        "WHERE json_extract(b.body, '$.end_timestamp') > (SELECT max(json_extract(body, '$.end_timestamp')) - 60 FROM blocks) "
        "GROUP BY 1")}
    for (link, reason), n in archived.items():
        got = last.get((link, reason), 0.0)
        assert n - late.get(link, 0) <= got <= n, (link, reason, n, got)
    # the fibre cut of the plan: metro's blocks aborted for about its quarter hour (10-s blocks)
    assert 60 <= archived.get(("metro-bb84", "qber"), 0) + archived.get(("metro-bb84", "low_counts"), 0) \
        + archived.get(("metro-bb84", "estimation"), 0) <= 120


def test_the_calibration_loop_holds_the_links_outside_the_incident(backfilled):
    """The jobs hold the drifts: on the links the plan leaves alone at most 1 % of blocks abort, and no
    job run errs (a run waiting for its verification frames must not be starved by other links' runs).
    Not none: a history's 10-s frames stretch a verification tenfold, the link's next job waits that
    long, and a phase stretcher just under its 80 % mark can run out meanwhile (about once in a few
    hours on the MDI link; live, with 1-s frames, it does not)."""
    _, _, state, _ = backfilled
    db = sqlite3.connect(state / "history" / "blocks.sqlite")
    counts = {(link, bool(aborted)): n for link, aborted, n in db.execute(
        "SELECT link, json_extract(body, '$.reason') != 'none', count(*) FROM results GROUP BY 1, 2")}
    for link in ("relay-mdi", "longhaul-tf"):
        aborted, total = counts.get((link, True), 0), counts.get((link, True), 0) + counts.get((link, False), 0)
        assert total > 300 and aborted <= 0.01 * total, (link, aborted, total)
    outcomes: dict[str, float] = {}
    acted = 0.0
    for store in sorted((state / "history").glob("calibration-*.sqlite")):
        with sqlite3.connect(store) as calibration:
            for metric, key, value in calibration.execute("SELECT metric, key, value FROM counters"):
                if metric == "runs":
                    outcomes[key] = outcomes.get(key, 0.0) + value
                elif metric == "actions":
                    acted += value
    assert outcomes.get("error", 0) == 0 and outcomes.get("healthy", 0) > 1000, outcomes
    assert acted > 0   # the phase loops were re-centred, the intensities retuned: the jobs did act


def test_the_slo_reports_block_success_matches_the_block_archive(backfilled):
    """`qkdops slo report` over the history's span (its PromQL on the backfilled counters) against the
    same availability recounted from the history's block archive: aborted blocks over all blocks."""
    client, _, state, fleet = backfilled
    done = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "slo", "report", "--window", "3h", "--json", "--config", str(fleet),
                           "--prometheus", client.url], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {(r["slo"], r["link"]): r for r in json.loads(done.stdout)["rows"]}
    db = sqlite3.connect(state / "history" / "blocks.sqlite")
    counts = {link: (aborted, total) for link, aborted, total in db.execute(
        "SELECT link, sum(json_extract(body, '$.reason') != 'none'), count(*) FROM results GROUP BY link")}
    assert set(counts) == {"metro-bb84", "relay-mdi", "longhaul-tf"}
    for link, (aborted, total) in counts.items():
        row = rows[("block-success", link)]
        recount = 1 - aborted / total
        # the report's window ends a little after the history (the test runs on), and increase()
        # extrapolates at the window's edges: a few blocks of the 360–1,080 either way
        assert row["availability"] == pytest.approx(recount, abs=0.01), (link, row, aborted, total)
    metro = rows[("block-success", "metro-bb84")]
    assert metro["availability"] < 0.95 and metro["error_budget_remaining"] < 0   # the 15-min cut overspent 3 h of budget


def burn_alerts(severity: str) -> dict[str, str]:
    """Alert name + tier → expression of every SLO burn alert of ``severity``, from the rules qkdops loads."""
    alerts = {}
    for text in render_rule_files(load_monitoring_config()).values():
        for group in yaml.safe_load(text)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule and "tier" in rule.get("labels", {}) and rule["labels"]["severity"] == severity:
                    alerts[f"{rule['alert']}/{rule['labels']['tier']}"] = rule["expr"]
    return alerts


def test_the_bring_up_pages_nobody_and_the_real_burn_pages_in_its_detection_time(backfilled):
    """The history starts as a fresh stack would (no data before it), so its first hour is a bring-up
    judged by the coverage-aware burn rates; the plan's 15-minute fibre cut on metro at 1 h is a real
    burn (every block aborted). Evaluated over the backfilled hours, no page tier's condition holds
    before the cut, and the 1-h tier's holds within its Workbook detection time (1 h × 14.4 × 1 % of
    errors at ratio 1: 8.6 min) plus a minute of rule-evaluation slack."""
    client, _, state, _ = backfilled
    db = sqlite3.connect(state / "history" / "blocks.sqlite")
    start = db.execute("SELECT min(json_extract(body, '$.start_timestamp')) FROM blocks").fetchone()[0]
    cut = start + 3600
    pages = burn_alerts("page")
    assert len(pages) >= 10
    firing_at: dict[str, float] = {}
    for name, expr in pages.items():
        for series in client.query_range(expr, start, start + HOURS * 3600, 60)["result"]:
            first = min(float(t) for t, _ in series["values"])
            assert first >= cut, f"{name} {series['metric']} holds at +{(first - start) / 60:.0f} min, before the cut"
            if series["metric"].get("link") == "metro-bb84":
                firing_at[name] = min(first, firing_at.get(name, first))
    one_hour = {name: t - cut for name, t in firing_at.items() if name.endswith("/1h")}
    assert "QKDBlockSuccessBudgetBurn/1h" in one_hour, firing_at
    print("page tiers holding after the cut (s):", {k: round(v - cut) for k, v in sorted(firing_at.items())})
    assert one_hour["QKDBlockSuccessBudgetBurn/1h"] <= 8.64 * 60 + 90, one_hour


def test_the_history_holds_the_alerts_its_rules_would_have_fired(backfilled):
    """ALERTS backfilled as the rule manager writes it: the plan's fibre cut fires QKDFiberCut on metro
    within minutes of the cut and ends within minutes of its end; metro's pages stay within the cut and
    40 minutes after it (the 6-h burn tier's 30-min short window); the links the plan leaves alone page
    nobody; and no calibration job is left failing (a dark fibre once taught detector_regate a
    saturated live-time reference, and it held off for good)."""
    client, stdout, state, _ = backfilled
    assert re.search(r"ALERTS: [1-9]\d* alert\(s\) fired", stdout), stdout
    db = sqlite3.connect(state / "history" / "blocks.sqlite")
    start = db.execute("SELECT min(json_extract(body, '$.start_timestamp')) FROM blocks").fetchone()[0]
    cut, mended = start + 3600, start + 3600 + 900
    firing: dict[tuple[str, str, str], list[float]] = {}
    for series in client.query_range('ALERTS{alertstate="firing"}', start, start + HOURS * 3600, 30)["result"]:
        m = series["metric"]
        key = (m["alertname"], m.get("link", ""), m.get("job_name", "") if m["alertname"] == "QKDCalibrationFailing" else m["severity"])
        firing.setdefault(key, []).extend(float(t) for t, _ in series["values"])
    cut_alert = firing.get(("QKDFiberCut", "metro-bb84", "page"))
    assert cut_alert and cut <= min(cut_alert) <= cut + 300 and max(cut_alert) <= mended + 600, firing.keys()
    for (name, link, severity), times in firing.items():
        if severity == "page":
            assert link == "metro-bb84" and cut <= min(times) and max(times) <= mended + 2400, (name, link, max(times) - mended)
    assert ("QKDCalibrationFailing", "metro-bb84", "detector_regate") not in firing


def test_every_dashboard_panel_answers_over_the_history(backfilled):
    """Every panel query (as Grafana sends it, with $link set) returns data early, midway and late in the
    history — except the intended-empty ones and what the README says a history does not have: KME
    traffic (no application fetches a month-old key), the KME stores' byte counters and the ETSI 015
    figures read from them (its keys reach no store without ``--deliver-keys``) and EC measured on
    bits (the model engine)."""
    client, _, _, _ = backfilled
    links = ("metro-bb84", "relay-mdi", "longhaul-tf")
    live_only = ("qkd_kme_", "qkd_ec_leakage_bytes_total", "qkd_link:ec_efficiency:ratio30m", "qkd_key_handed_off_bytes_total",
                 "qkd_key_store_discarded_bytes_total", "qkdl:eskr_", "qkdl:expected_consumption_")
    now = time.time()
    instants = (now - HOURS * 3600 + 1800, now - HOURS * 3600 / 2, now - 600)
    missing = []
    for name, panel in panels():
        for target in panel["targets"]:
            if INTENDED_EMPTY in panel["description"] or any(m in target["expr"] for m in live_only):
                continue
            for at in instants:
                if not any(client.get("/api/v1/query", query=substitute(target["expr"], link), time=at)["result"]
                           for link in (links if "$link" in target["expr"] else links[:1])):
                    missing.append(f"{name}: {panel['title']} [{target['refId']}] at -{(now - at) / 60:.0f} min")
    assert not missing, missing


def test_up_with_history_starts_a_stack_whose_slos_carry_on_from_the_history(tmp_path):
    """``qkdops up --history`` on a first start: the backfill ends as the stack starts, so each SLO's
    coverage series keeps the history's first moment (no gap for the since rule to restart at) and the
    hour-long windows are fully covered within seconds of the start; the history's samples are there."""
    stack = RunningStack(e2e_profile(tmp_path), "--history", "0.05", "--no-calibration")
    try:
        stack.wait_up(240)
        first_block = sqlite3.connect(stack.state_dir / "history" / "blocks.sqlite").execute(
            "SELECT min(json_extract(body, '$.start_timestamp')) FROM blocks").fetchone()[0]
        wait_for(lambda: len(stack.by_link(f'{DATA_SINCE}{{slo="block-success"}}')) == 3, 60, "the live since rule", stack)
        time.sleep(5)   # several live evaluations on
        for link, since in stack.by_link(f'{DATA_SINCE}{{slo="block-success"}}').items():
            assert abs(since - first_block) <= 120, (link, since, first_block)
        assert set(stack.by_link('slo:sli_coverage:ratio1h{slo="block-success"}').values()) == {1.0}
        assert len(stack.by_link("count_over_time(qkd_secret_key_bits_total[30m] offset 30m)")) == 3
        burns = [a["labels"]["alertname"] for n in stack.notifications() for a in n["alerts"] if "BudgetBurn" in a["labels"]["alertname"]]
        assert not burns, burns
    finally:
        stack.stop()
    assert "history: 0.05 day(s) of 3 link(s)" in (tmp_path / "qkdops-up.log").read_text()


def test_history_into_a_running_stack_ends_where_its_data_begins_and_is_picked_up(tmp_path):
    """``qkdops history`` beside a running stack: the backfill ends where the running Prometheus's own
    data begins (no overlap with what it scraped), and that Prometheus picks the new blocks up on its
    own — samples from before the stack started answer within its block-reload minute, no restart."""
    stack = RunningStack(e2e_profile(tmp_path), "--no-calibration")
    try:
        stack.wait_up()
        wait_for(lambda: len(stack.by_link("qkd_link_info")) == 3, 60, "the first scrapes", stack)
        client = PrometheusClient(stack.url("prometheus_port"), stack.auth.prometheus)
        live_from = client.get("/api/v1/status/tsdb")["headStats"]["minTime"] / 1000.0
        assert not stack.by_link("count_over_time(qkd_link_info[10m] offset 15m)")   # nothing before the stack
        done = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "history", "--days", "0.02", "--fleet", str(stack.config_path)],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "0.02 day(s) of 3 link(s)" in done.stdout, done.stdout
        wait_for(lambda: len(stack.by_link("count_over_time(qkd_link_info[10m] offset 15m)")) == 3, 150,
                 "the history's samples in the running Prometheus", stack, interval_s=5)
        # no overlap with what the stack scraped: the history ended where the live head began
        history_end = sqlite3.connect(stack.state_dir / "history" / "blocks.sqlite").execute(
            "SELECT max(json_extract(body, '$.end_timestamp')) FROM blocks").fetchone()[0]
        assert live_from - 300 <= history_end <= live_from, (history_end, live_from)
    finally:
        stack.stop()
