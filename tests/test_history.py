"""The history run's pieces that need no server: the incident plan, the rule levels, the since series."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from calibration_jobs.store import CalibrationStore
from history.plan import DEFAULT_PLAN, PlanError, load_plan
from history.tsdb import HistoryError, RecordingRule, alert_states, alerting_rules, levels, query_chunk_s, since_series
from monitoring.slo import DATA_SINCE
from qkdops.config import load_config
from qkdops.runtime.fleet import Fleet

LINKS = [("metro-bb84", "bb84-decoy"), ("relay-mdi", "mdi"), ("longhaul-tf", "tf")]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_default_plan_loads_and_fits_the_shipped_fleet():
    plan = load_plan(DEFAULT_PLAN, [link for link, _ in LINKS])
    occurrences = plan.occurrences(LINKS, 0.0, 30 * 86400.0)
    faults = {o.fault for o in occurrences}
    assert {"polarization_drift", "fiber_cut", "loss_step", "classical_channel_outage"} <= faults
    # protocol filters: the phase drift only on the interferometric links, the cut only on TF
    assert {o.link for o in occurrences if o.fault == "phase_drift"} == {"relay-mdi", "longhaul-tf"}
    assert {o.link for o in occurrences if o.fault == "fiber_cut"} == {"longhaul-tf"}
    assert occurrences == sorted(occurrences, key=lambda o: (o.start, o.link, o.fault))


def test_recurring_incidents_repeat_and_are_clipped_to_the_history(tmp_path):
    plan = load_plan(write(tmp_path, "incidents:\n  - {fault: loss_step, at: 1h, every: 1d, duration: 30m, links: [a]}\n"), ["a", "b"])
    occurrences = plan.occurrences([("a", "tf"), ("b", "tf")], 1000.0, 1000.0 + 2 * 86400 + 3600 + 600)
    assert [(o.start - 1000, o.end - 1000) for o in occurrences] == [(3600, 5400), (90000, 91800), (176400, 177000)]
    assert {o.link for o in occurrences} == {"a"}
    assert occurrences[0].parameters == {"loss_db": 3.0}   # the catalogue's default


def test_a_bad_plan_names_the_file_and_every_bad_field_at_once(tmp_path):
    path = write(tmp_path, """incidents:
  - {fault: warp_drive, at: 1h, duration: 1h}
  - {fault: key_handoff_failure, at: 1h, duration: 1h}
  - {fault: loss_step, at: soon, duration: 1h, links: [nowhere]}
  - {fault: loss_step, at: 1h, duration: 2d, every: 1d, parameters: {loss_db: -4}}
  - {fault: loss_step, at: 1h}
  - {fault: fiber_cut, at: 1h, duration: 1h, protocols: [qkd]}
""")
    with pytest.raises(PlanError) as err:
        load_plan(path, ["a"])
    text = str(err.value)
    assert str(path) in text
    for field in ("incidents[0].fault", "incidents[1].fault", "incidents[2].at", "incidents[2].links",
                  "incidents[3].parameters", "incidents[4]", "incidents[5].protocols"):
        assert field in text, field
    assert "warp_drive" in text and "delivers no keys" in text and "nowhere" in text


def test_a_missing_plan_file_is_named(tmp_path):
    with pytest.raises(PlanError, match="plan.yaml"):
        load_plan(tmp_path / "plan.yaml")


def test_the_since_series_carries_on_across_short_gaps_and_restarts_after_a_long_one():
    points = [0.0, 30.0, 60.0, 300.0, 330.0, 700.0, 730.0]   # 60 → 300 is within the 5-min lookback; 330 → 700 is not
    assert since_series(points) == [(0.0, 0.0), (30.0, 0.0), (60.0, 0.0), (300.0, 0.0), (330.0, 0.0), (700.0, 700.0), (730.0, 700.0)]
    assert since_series([]) == []


def rule(record: str, expr: str) -> RecordingRule:
    return RecordingRule(record, expr, {}, 30.0, "g")


def test_rules_are_evaluated_after_the_rules_they_read_and_the_since_rule_after_its_ratio():
    raw = rule("a:x:rate5m", "rate(x_total[5m])")
    ratio = rule("slo:sli_error:ratio_rate5m", "a:x:rate5m / 2")
    since = rule(DATA_SINCE, f"{DATA_SINCE} and slo:sli_error:ratio_rate5m or timestamp(slo:sli_error:ratio_rate5m)")
    coverage = rule("slo:sli_coverage:ratio1h", f"clamp_max((time() - {DATA_SINCE}) / 3600, 1)")
    other = rule("b:y:max10m", "max_over_time(y[10m])")
    assert levels([coverage, since, ratio, raw, other]) == [[raw, other], [ratio], [since], [coverage]]


def test_rules_reading_each_other_in_a_cycle_are_refused():
    with pytest.raises(HistoryError, match="cycle"):
        levels([rule("a:b:c", "x:y:z + 1"), rule("x:y:z", "a:b:c + 1")])


def test_scratch_dirs_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    from history.backfill import SCRATCH_PREFIX, _remove_dead_scratch

    child = subprocess.Popen(["true"])   # a pid that has exited
    child.wait()
    stale = tmp_path / f"{SCRATCH_PREFIX}{child.pid}-abc"
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def"
    other = tmp_path / "unrelated"
    for d in (stale, live, other):
        d.mkdir()
    _remove_dead_scratch(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()


@pytest.mark.parametrize("days", [0.0, -1.0, 35.5])
def test_days_outside_the_retention_are_refused_before_any_work(tmp_path, days):
    """``qkdops history`` and ``qkdops up --history`` exit 2 for it (a HistoryInputError), nothing written."""
    from calibration_jobs.config import load_jobs_config
    from history.backfill import backfill
    from history.tsdb import HistoryInputError
    from monitoring.config import load_monitoring_config
    from qkdops.config import load_config

    config = load_config()
    with pytest.raises(HistoryInputError, match=r"days of history: expected more than 0 and at most 35 .*got"):
        backfill(config, load_monitoring_config(), load_jobs_config(), load_plan(), days, 1.8e9, [tmp_path / "prometheus"],
                 progress=False)
    assert not any(tmp_path.iterdir())


def test_a_history_s_stores_skip_the_sync_the_live_ones_keep(tmp_path, fleet_config_path):
    """A history's archive and calibration store are scratch (synchronous=OFF: a crash loses the run anyway);
    the live fleet's and job service's commits survive power loss (FULL)."""
    config = load_config(fleet_config_path)
    scratch = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, state_dir=tmp_path / "history"))
    live, history = Fleet(config), Fleet(scratch, deliver_keys=False, durable=False)
    stores = [live.archive, history.archive, CalibrationStore(tmp_path / "live.sqlite"),
              CalibrationStore(tmp_path / "history.sqlite", durable=False)]
    try:
        assert [s._db.execute("PRAGMA synchronous").fetchone()[0] for s in stores] == [2, 0, 2, 0]   # FULL, OFF
    finally:
        for fleet in (live, history):
            fleet.stop()
        for store in stores[2:]:
            store.close()


def test_alerts_go_pending_fire_after_for_and_end_as_prometheus_rules_do():
    """``alert_states`` against rules/alerting.go's state machine, on a 30-s evaluation grid."""
    # for 60 s: pending at 0 and 30, firing from 60; a missed evaluation (120) ends it; back at 150: a new alert
    assert alert_states([0, 30, 60, 90, 150, 180], 30, 60, 0, 240) == [
        (0, "pending", 0), (30, "pending", 0), (60, "firing", 0), (90, "firing", 0), (150, "pending", 150), (180, "pending", 150)]
    assert alert_states([0], 30, 0, 0, 90) == [(0, "firing", 0)]   # for 0: fires at its first evaluation
    # a pending alert missing once starts over
    assert alert_states([0, 60], 30, 120, 0, 60) == [(0, "pending", 0), (60, "pending", 60)]
    # keep_firing_for 60 s: two more evaluations firing after the last one with the series, then it ends ...
    assert alert_states([0, 30], 30, 0, 60, 300) == [(0, "firing", 0), (30, "firing", 0), (60, "firing", 0), (90, "firing", 0)]
    # ... and a series back within that time is the same alert, still active since 0
    assert alert_states([0, 90], 30, 0, 60, 90) == [(0, "firing", 0), (30, "firing", 0), (60, "firing", 0), (90, "firing", 0)]


def test_alerting_rules_are_read_with_their_for_and_labels_and_templated_labels_refused():
    text = """groups:
  - name: g
    interval: 1m
    rules:
      - alert: Down
        expr: up == 0
        for: 2m
        labels: {severity: page}
      - record: r
        expr: up
"""
    (rule,) = alerting_rules({"a.yml": text}, 30.0)
    assert (rule.alert, rule.for_s, rule.keep_firing_for_s, dict(rule.labels), rule.interval_s, rule.group) == \
        ("Down", 120.0, 0.0, {"severity": "page"}, 60.0, "a.yml:g")
    with pytest.raises(HistoryError, match=r"a.yml:g: alert Down: templated label\(s\) severity"):
        alerting_rules({"a.yml": text.replace("{severity: page}", "{severity: '{{ $labels.job }}'}")}, 30.0)


def test_range_queries_stay_under_prometheus_point_limit_at_every_history_step():
    """Prometheus refuses a range query of more than 11,000 points per series: a day at a 5-s step is
    17,280 (``qkdops history --history-step 5s`` failed on any history of a day or more)."""
    for step in (1.0, 2.0, 5.0, 7.5, 10.0, 15.0, 30.0):
        chunk = query_chunk_s(step)
        assert chunk / step + 1 <= 11_000 and chunk % 7200 == 0 and 7200 <= chunk <= 86400, step
    assert query_chunk_s(30.0) == query_chunk_s(10.0) == 86400
