"""The generated Grafana dashboards: current, structurally valid, only known metrics, and every query
returns data from the real Prometheus of `qkdops up` (slow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dashboards.generate import DIRECTORY, INTENDED_EMPTY, render
from monitoring.config import load_monitoring_config
from stack_helpers import FAST_LINK, RunningStack, e2e_profile, wait_for

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = {name: json.loads((DIRECTORY / name).read_text()) for name in ("executive.json", "oncall.json", "debug.json", "slo.json")}
CATALOGUE = yaml.safe_load((ROOT / "exporters" / "catalogue.yaml").read_text())["metrics"]
RECORDINGS = {rule["record"] for path in (ROOT / "alert_rules").glob("*.yml")
              for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "record" in rule}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
                "inf", "nan"}


def panels():
    """Every panel with queries (row headers have none)."""
    return [(name, panel) for name, dashboard in DASHBOARDS.items() for panel in dashboard["panels"] if panel["type"] != "row"]


def known_metrics() -> set[str]:
    names = {"ALERTS", "up"} | RECORDINGS
    for name, spec in CATALOGUE.items():
        names.add(name)
        if spec["type"] == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: identifiers that are not functions, keywords, label names or strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                      # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)                                  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)                                 # range / subquery windows
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    tokens = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:]|\s*\()", expr)
    return {t for t in tokens if t.lower() not in PROMQL_WORDS}


def test_committed_json_is_the_generators_output():
    rendered = render(load_monitoring_config())
    assert set(rendered) == set(DASHBOARDS)
    for name, text in rendered.items():
        assert (DIRECTORY / name).read_text() == text, f"{name} is stale: run qkdops generate --only dashboards"


def test_dashboards_are_structurally_valid():
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) and all(uids)
    for name, dashboard in DASHBOARDS.items():
        assert isinstance(dashboard.get("schemaVersion"), int) and dashboard["schemaVersion"] >= 36, name
        assert dashboard["title"] and dashboard["uid"].startswith("qkdops-")
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert variables["link"]["query"] == "label_values(qkd_link_info, link)"
        assert variables["link"]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(set(ids)) == len(ids), name
        for panel in dashboard["panels"]:
            where = f"{name}: {panel.get('title')}"
            if panel["type"] == "row":  # an expanded row header: full width, one unit high, owns no panels itself
                assert panel.get("id") and panel.get("title"), where
                assert panel["gridPos"]["x"] == 0 and panel["gridPos"]["w"] == 24 and panel["gridPos"]["h"] == 1, where
                assert panel.get("collapsed") is False and panel.get("panels") == [], where
                continue
            for key in ("id", "type", "title", "gridPos", "datasource", "targets", "description"):
                assert panel.get(key), f"{where} lacks {key}"
            assert panel["type"] in {"timeseries", "stat", "table", "heatmap"}, where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            grid = panel["gridPos"]
            assert set(grid) == {"h", "w", "x", "y"} and grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
            defaults = panel["fieldConfig"]["defaults"]
            assert defaults.get("unit"), f"{where} has no unit"
            assert defaults["thresholds"]["steps"] and defaults["thresholds"]["steps"][0]["value"] is None, where
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), where
            assert all(t.get("expr") for t in panel["targets"]), where
        # no two panels overlap
        cells = [(x, y) for p in dashboard["panels"] for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
                 for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])]
        assert len(cells) == len(set(cells)), name


def test_metric_name_extraction():
    assert metric_names('sum by (link, le) (rate(qkd_x_bucket{link="$link", a=~"b.c"}[5m])) / 8 > bool on (link) group_left () '
                        "slo:y:ratio offset 1m or vector(1e9)") == {"qkd_x_bucket", "slo:y:ratio"}


def test_every_query_uses_only_catalogue_metrics_recordings_alerts_or_up():
    known = known_metrics()
    used = set()
    for name, panel in panels():
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{name}: {panel['title']}: no metric in {target['expr']!r}"
            assert names <= known, f"{name}: {panel['title']}: unknown {sorted(names - known)}"
            used |= names
    assert {"qkd_secret_key_bits_total", "ALERTS", "slo:error_budget_remaining:ratio"} <= used


def substitute(expr: str, link: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$link", link)


@pytest.mark.slow
def test_every_panel_query_returns_data_from_the_real_prometheus(tmp_path):
    stack = RunningStack(e2e_profile(tmp_path, [FAST_LINK]))
    try:
        stack.wait_up()
        links = sorted(wait_for(lambda: stack.by_link("qkd_link_info"), 30, "the first scrape", stack))
        assert "e2e-fast" in links and len(links) >= 4
        wait_for(lambda: set(stack.by_link("sum by (link) (qkd_secret_key_bits_total) > 0")) >= set(links), 70,
                 "key on every link", stack, interval_s=2)
        # The KME panels have data once an application fetched keys: two SAEs at the e2e link's ends (sites a, b,
        # SAEs sae-<site>) fetch through both KMEs, as `qkdops keys fetch` does for an operator, once the hand-off
        # has given the KMEs key of that link.
        wait_for(lambda: stack.by_link('min by (link) (qkd_key_store_keys{link="e2e-fast"}) > 0'), 60,
                 "key of e2e-fast at both KMEs", stack, interval_s=1)
        fetch = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "keys", "fetch", "--sae", "sae-a", "--peer", "sae-b",
                                "--number", "2", "--config", str(stack.config_path)], capture_output=True, text=True, timeout=60)
        assert fetch.returncode == 0 and fetch.stdout.count("same key") == 2, fetch.stdout + fetch.stderr
        # The scheduler's decoy_estimation job runs on the clock every 5 minutes: estimate each link now, as an
        # operator would (recorded and published like a scheduled run), instead of waiting for the next slot.
        for link in links:
            run = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "calibrate", "decoy_estimation", "--link", link,
                                  "--config", str(stack.config_path)], capture_output=True, text=True, timeout=120)
            assert run.returncode == 0, run.stdout + run.stderr
        targets = [(f"{name}: {panel['title']} [{t['refId']}]", t["expr"], INTENDED_EMPTY in panel["description"])
                   for name, panel in panels() for t in panel["targets"]]
        # A query with $link passes if it returns data for some link (phase lock exists only on MDI/TF links).
        missing: list[str] = []
        deadline = time.monotonic() + 60  # the 1-minute baseline group and the SLO windows fill in over a minute
        while True:
            missing = [where for where, expr, may_be_empty in targets if not may_be_empty
                       and not any(stack.prometheus(substitute(expr, link)) for link in (links if "$link" in expr else links[:1]))]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert not missing, f"panel queries without data: {missing}"
        for _where, expr, may_be_empty in targets:  # intended-empty queries must still be valid PromQL
            if may_be_empty:
                stack.prometheus(substitute(expr, links[0]))
    finally:
        stack.stop()


def test_block_traces_are_one_click_from_latency_and_abort_panels():
    """Debug stage latencies and on-call aborts link to the Jaeger search for the link's block traces."""
    for name, title in (("debug", "Post-processing stage latency p95"), ("oncall", "Aborts by reason")):
        panel = next(p for p in DASHBOARDS[f"{name}.json"]["panels"] if p["title"] == title)
        urls = [link["url"] for link in panel.get("links", [])]
        assert any("service=qkdops-postprocessing" in u and "${link}" in u and "${__from}" in u for u in urls), urls


def _by_title(name: str) -> dict[str, dict]:
    return {p["title"]: p for p in DASHBOARDS[name]["panels"]}


def test_oncall_shows_scheduler_runs_and_phase_actuator_usage_beside_phase_lock():
    panels = _by_title("oncall.json")
    runs = panels["Calibration job runs by outcome (1 h)"]
    assert any("qkd_calibration_runs_total" in t["expr"] and "job_name, outcome" in t["expr"] for t in runs["targets"])
    lock, usage = panels["Phase lock and relocks"]["gridPos"], panels["Phase actuator usage"]["gridPos"]
    assert usage["y"] == lock["y"] and usage["x"] == lock["x"] + lock["w"]
    assert [s["value"] for s in panels["Phase actuator usage"]["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.8, 1.0]


def _row(name: str, title: str) -> list[dict]:
    """The panels under the row header ``title`` up to the next row header."""
    panels = DASHBOARDS[name]["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == title)
    end = next((i for i in range(start + 1, len(panels)) if panels[i]["type"] == "row"), len(panels))
    return panels[start + 1:end]


def _metrics(panels: list[dict]) -> set[str]:
    return {m for p in panels for t in p["targets"] for m in metric_names(t["expr"])}


def test_key_delivery_is_on_the_executive_oncall_and_debug_dashboards():
    """Issue 7: key served and hand-off success (executive); per link hand-offs by outcome, provisioning latency,
    backlog vs buffer, KME stores vs capacity (on-call); KME requests, their latency, keys per SAE (debug)."""
    assert {"qkd_kme_keys_served_total", "qkd_key_handoffs_total", "qkd_key_store_keys"} <= _metrics(
        _row("executive.json", "Key delivery"))
    oncall = _row("oncall.json", "Key delivery")
    assert {"qkd_key_handoffs_total", "qkd_key_handoff_duration_seconds_bucket", "qkd_key_handoff_backlog_bytes",
            "qkd_key_handoff_buffer_capacity_bytes", "qkd_key_store_keys", "qkd_key_store_capacity_keys"} <= _metrics(oncall)
    latency = next(p for p in oncall if p["title"] == "Key provisioning latency")
    assert [t["expr"].split(",")[0] for t in latency["targets"]] == ["histogram_quantile(0.5", "histogram_quantile(0.99"]
    assert [s["value"] for s in latency["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 1.0]  # the SLO's 1 s
    assert all("$link" in t["expr"] for p in oncall for t in p["targets"])
    assert {"qkd_kme_requests_total", "qkd_kme_request_duration_seconds_bucket", "qkd_kme_keys_served_total"} <= _metrics(
        _row("debug.json", "Key delivery (KMEs at the link's ends)"))


def test_no_dashboard_uses_the_removed_key_store_metrics():
    text = "".join((DIRECTORY / name).read_text() for name in DASHBOARDS)
    assert "qkd_key_store_bytes" not in text and "qkd_key_store_capacity_bytes" not in text


def test_debug_decoy_estimation_row_compares_the_window_with_blocks_and_device():
    panels = DASHBOARDS["debug.json"]["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Decoy estimation (sliding window)")
    in_row = _row("debug.json", "Decoy estimation (sliding window)")
    assert in_row and all(p["gridPos"]["y"] > panels[start]["gridPos"]["y"] for p in in_row)
    used = {m for p in in_row for t in p["targets"] for m in metric_names(t["expr"])}
    pairs = [("qkd_decoy_estimate_single_photon_yield_lower_bound_ratio", "qkd_single_photon_yield_lower_bound_ratio"),
             ("qkd_decoy_estimate_single_photon_phase_error_upper_bound_ratio", "qkd_single_photon_phase_error_upper_bound_ratio"),
             ("qkd_decoy_estimate_key_rate_bytes_per_second", "qkd_secret_key_bits_total"),
             ("qkd_decoy_observed_channel_loss_decibels", "qkd_channel_loss_decibels"),
             ("qkd_decoy_recommended_mean_photon_number", "qkd_mean_photon_number_commanded")]
    for window, other in pairs:  # each comparison in one panel
        assert any({window, other} <= {m for t in p["targets"] for m in metric_names(t["expr"])} for p in in_row), (window, other)
    assert {"qkd_decoy_estimate_state", "qkd_decoy_recommended_key_rate_gain_ratio"} <= used


def test_debug_postprocessing_row_compares_measured_ec_with_the_model_and_latency_with_its_target():
    """Issue 14: Cascade's measured f against the model's, its cost, PA in and out, CPU per stage, latency vs 1 s."""
    in_row = _row("debug.json", "Error correction & privacy amplification")
    metrics = [{m for t in p["targets"] for m in metric_names(t["expr"])} for p in in_row]
    for together in ({"qkd_ec_leakage_bytes_total", "qkd_ec_shannon_limit_bytes_total", "qkd_link:ec_model_efficiency:max10m"},
                     {"qkd_ec_messages_total", "qkd_ec_round_trips_total", "qkd_blocks_total"},
                     {"qkd_ec_frames_total", "qkd_ec_frame_failures_total"},
                     {"qkd_privacy_amplification_input_bytes_total", "qkd_secret_key_bits_total"},
                     {"qkd_postprocessing_cpu_seconds_total"}):
        assert any(together <= used for used in metrics), together
    latency = next(p for p in in_row if p["title"] == "Per-block post-processing latency")
    assert [t["expr"].split(",")[0] for t in latency["targets"]] == ["histogram_quantile(0.5", "histogram_quantile(0.99"]
    assert [s["value"] for s in latency["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 1.0]  # M8: 1 s
    oncall = _by_title("oncall.json")["Verification aborts and key mismatches"]
    assert {"qkd_blocks_total", "qkd_key_confirmation_failures_total"} <= {m for t in oncall["targets"] for m in metric_names(t["expr"])}
    assert any('reason="verification"' in t["expr"] for t in oncall["targets"])


def test_slo_dashboard_has_a_row_per_spec_slo_with_objective_sli_burn_down_burn_rates_and_alerts():
    """Issue 18: generated from the specs — each SLO's objective, SLI over its period, budget remaining over time,
    burn rate per window with its alert tiers' thresholds as lines, and its firing burn alerts."""
    from monitoring import slo
    from monitoring.rules import SPEC_DIR

    specs = slo.generate(SPEC_DIR, load_monitoring_config().values())[1]
    rows = [p["title"] for p in DASHBOARDS["slo.json"]["panels"] if p["type"] == "row"]
    assert rows == [f"SLO {s.name}: {slo.fmt_decimal(s.objective)} % over {s.period}" for s in specs]
    for spec, title in zip(specs, rows):
        objective, sli, budget, burn, alerts = _row("slo.json", title)
        assert [p["type"] for p in (objective, sli, budget, burn, alerts)] == ["stat", "stat", "timeseries", "timeseries", "table"]
        assert objective["targets"][0]["expr"] == f'slo:objective:ratio{{slo="{spec.name}"}}'
        sel = f'{{slo="{spec.name}", link="$link"}}'
        assert sli["targets"][0]["expr"] == f"1 - slo:sli_error:ratio_rate{spec.period}{sel}"
        assert [s["value"] for s in sli["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, float(spec.objective / 100)]
        assert budget["targets"][0]["expr"] == f"slo:error_budget_remaining:ratio{sel}"
        assert [t["expr"] for t in burn["targets"]] == [f"slo:burn_rate:ratio_rate{w}{sel}" for w in slo.WINDOWS]
        tiers = [t for t in slo.TIERS if not (spec.page if t.kind == "page" else spec.ticket).disable]
        assert [s["value"] for s in burn["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
            None, *sorted(float(t.burn_rate) for t in tiers)]
        assert all(p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed" for p in (budget, burn))
        assert f'slo="{spec.name}"' in alerts["targets"][0]["expr"] and "tier" in alerts["targets"][0]["expr"]
        assert INTENDED_EMPTY in alerts["description"]
