"""The calibration scheduler's exporter: catalogue equality, promtool, restarts, closed label sets, HTTP.

The store is filled the way the runner fills it (a lease per run, ``finish`` with the job's state and
counter increments), misfires the way the service counts them, durations the way the runner reports
them, and a decoy estimate as the decoy job publishes it; the text exposition is then checked against
the ``calibration`` section of ``exporters/catalogue.yaml`` like the runtime's two exporters are in
tests/test_exporters.py.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from calibration_jobs.metrics import CalibrationCollector
from calibration_jobs.store import CalibrationStore
from exporters.catalogue import CALIBRATION, CATALOGUE
from exporters.server import render, serve
from tests.exposition_checks import assert_equals_catalogue, families

NOW = 1.75e9
LINKS = {"tf-a": "tf", "bb84-a": "bb84-decoy"}
PUBLISHED = {
    "y1_lower": 0.41, "e1_upper": 0.037, "qber": 0.021, "epsilon_sec": 1e-10, "key_rate_bytes_per_second": 512.5,
    "state": "none", "window_blocks": 30, "first_block": 10, "last_block": 39, "pulses": 3e10, "timestamp": NOW,
    # the optimiser recommends choice probabilities too: they are no intensity and must not be published as one
    "recommendation": {"observed_loss_db": 2.3, "gain_ratio": 1.04, "notes": [],
                       "parameters": {"mu": 0.55, "nu": 0.12, "omega": 0.0002, "p_mu": 0.6, "p_nu": 0.3, "key_basis_probability": 0.8}},
}
# (job, link, outcome, action or None, failures after the run, last success or None)
RUNS = [
    ("phase_relock", "tf-a", "healthy", None, 0, NOW - 60),
    ("phase_relock", "tf-a", "failed", "relock_phase", 1, NOW - 60),
    ("phase_relock", "tf-a", "held", None, 1, NOW - 60),
    ("phase_relock", "tf-a", "error", None, 2, NOW - 60),
    ("intensity_retune", "bb84-a", "corrected", "retune_intensities", 0, NOW),
    ("polarization_realign", "bb84-a", "failed", "realign_polarization", 1, None),
    ("detector_regate", "tf-a", "healthy", None, 0, NOW),
    ("decoy_estimation", "bb84-a", "healthy", None, 0, NOW),
]


def record(store: CalibrationStore, job: str, link: str, outcome: str, action: str | None, failures: int,
           last_success: float | None, published: dict[str, Any] | None = None) -> None:
    """One run as JobRunner.run records it."""
    with store.lease(job, link, "schedule") as run_id:
        state = store.state(job, link, LINKS[link])
        state.failures, state.last_success_at, state.last_outcome = failures, last_success, outcome
        if published is not None:
            state.published = published
        counts = {("runs", outcome): 1.0, **({("actions", action): 1.0} if action else {})}
        store.finish(run_id, state, outcome, "test", {"outcome": outcome}, counts)


def fill(store: CalibrationStore) -> None:
    for job, link, outcome, action, failures, last_success in RUNS:
        record(store, job, link, outcome, action, failures, last_success,
               PUBLISHED if job == "decoy_estimation" else None)
    store.count("misfires", "decoy_estimation", "bb84-a", "bb84-decoy")


@pytest.fixture
def store_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "calibration.sqlite"
    store = CalibrationStore(path, clock=lambda: NOW)
    fill(store)
    store.close()
    yield path


@pytest.fixture
def exposition(store_path: Path) -> Iterator[str]:
    store = CalibrationStore(store_path, clock=lambda: NOW)
    collector = CalibrationCollector(store)
    for job, link, *_ in RUNS:
        collector.observe_duration(job, link, LINKS[link], 0.2)
    yield render(collector).decode()
    store.close()


def series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) → value for every sample."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for _, samples in families(text).values() for s in samples}


def test_exposition_equals_the_catalogue(exposition: str) -> None:
    """Names, types and label names exposed == the catalogue's calibration section, both ways; HELP from it."""
    assert_equals_catalogue(exposition, CALIBRATION)


def test_values_are_the_stores(exposition: str) -> None:
    values = series(exposition)

    def value(name: str, link: str, **labels: str) -> float | None:
        key = (name, tuple(sorted({"link": link, "protocol": LINKS[link], **labels}.items())))
        return values.get(key)

    for outcome, n in (("healthy", 1.0), ("failed", 1.0), ("held", 1.0), ("error", 1.0), ("corrected", None)):
        assert value("qkd_calibration_runs_total", "tf-a", job_name="phase_relock", outcome=outcome) == n, outcome
    assert value("qkd_calibration_job_actions_total", "tf-a", job_name="phase_relock", action="relock_phase") == 1.0
    assert value("qkd_calibration_misfires_total", "bb84-a", job_name="decoy_estimation") == 1.0
    assert value("qkd_calibration_consecutive_failures", "tf-a", job_name="phase_relock") == 2.0
    assert value("qkd_calibration_last_success_timestamp_seconds", "tf-a", job_name="phase_relock") == NOW - 60
    assert value("qkd_calibration_last_success_timestamp_seconds", "bb84-a", job_name="polarization_realign") is None  # never
    assert value("qkd_calibration_run_duration_seconds_count", "tf-a", job_name="phase_relock") == 4.0
    assert value("qkd_decoy_estimate_single_photon_yield_lower_bound_ratio", "bb84-a") == 0.41
    assert value("qkd_decoy_estimate_failure_probability_ratio", "bb84-a") == 1e-10
    assert {r: value("qkd_decoy_estimate_state", "bb84-a", reason=r) for r in ("none", "qber", "low_counts", "estimation")} == \
        {"none": 1.0, "qber": 0.0, "low_counts": 0.0, "estimation": 0.0}
    recommended = {dict(labels)["intensity"]: v for (name, labels), v in values.items() if name == "qkd_decoy_recommended_mean_photon_number"}
    assert recommended == {"signal": 0.55, "decoy": 0.12, "vacuum": 0.0002}  # no p_mu, no key_basis_probability
    assert not [key for key in values if dict(key[1]).get("link") == "tf-a" and key[0].startswith("qkd_decoy_")]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_check_metrics_reports_nothing(exposition: str) -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_counters_and_state_survive_a_restart(store_path: Path, exposition: str) -> None:
    """A new store on the same file (scheduler restart) exposes the same counters and gauges, and
    counts on from them: Prometheus sees one monotonic counter, never a reset."""
    def persistent(text: str) -> dict:
        return {k: v for k, v in series(text).items() if not k[0].startswith("qkd_calibration_run_duration_seconds")}

    before = persistent(exposition)
    restarted = CalibrationStore(store_path, clock=lambda: NOW + 30)
    try:
        after_restart = render(CalibrationCollector(restarted)).decode()
        assert persistent(after_restart) == before
        assert "qkd_calibration_run_duration_seconds_count" not in after_restart  # this process has run nothing yet
        record(restarted, "phase_relock", "tf-a", "failed", "relock_phase", 3, NOW - 60)
        grown = persistent(render(CalibrationCollector(restarted)).decode())
    finally:
        restarted.close()
    changed = {k for k in before if grown[k] != before[k]}
    runs = ("qkd_calibration_runs_total", (("job_name", "phase_relock"), ("link", "tf-a"), ("outcome", "failed"), ("protocol", "tf")))
    actions = ("qkd_calibration_job_actions_total",
               (("action", "relock_phase"), ("job_name", "phase_relock"), ("link", "tf-a"), ("protocol", "tf")))
    failures = ("qkd_calibration_consecutive_failures", (("job_name", "phase_relock"), ("link", "tf-a"), ("protocol", "tf")))
    assert changed == {runs, actions, failures}
    assert (grown[runs], grown[actions], grown[failures]) == (2.0, 2.0, 3.0)
    assert set(grown) == set(before)


def test_no_series_leaves_the_catalogues_closed_label_sets(store_path: Path) -> None:
    """Label values are the catalogue's closed sets (links: the store's); a published estimate with
    an unknown abort state or parameter adds no series outside them."""
    store = CalibrationStore(store_path, clock=lambda: NOW)
    try:
        odd = {**PUBLISHED, "state": "mystery", "recommendation": {**PUBLISHED["recommendation"],
                                                                    "parameters": {"mu": 0.5, "lambda": 0.3, "signal": 0.2}}}
        record(store, "decoy_estimation", "tf-a", "healthy", None, 0, NOW, odd)
        collector = CalibrationCollector(store)
        collector.observe_duration("decoy_estimation", "tf-a", "tf", 1.5)
        text = render(collector).decode()
    finally:
        store.close()
    seen: set[tuple[str, str]] = set()
    for name, (_, samples) in families(text).items():
        spec = CATALOGUE.metrics[name]
        for s in samples:
            for label, value in s.labels.items():
                if label == "le":
                    continue
                allowed = spec.label_values[label]
                assert value in (set(LINKS) if allowed is None else allowed), (name, label, value)
                seen.add((label, value))
    assert {v for label, v in seen if label == "job_name"} == set(CATALOGUE.labels["job_name"])
    assert {v for label, v in seen if label == "outcome"} == {"healthy", "corrected", "failed", "error", "held"}
    tf_state = {s.labels["reason"]: s.value for s in families(text)["qkd_decoy_estimate_state"][1] if s.labels["link"] == "tf-a"}
    assert tf_state == {"none": 0.0, "qber": 0.0, "low_counts": 0.0, "estimation": 0.0}  # unknown state: no reason is 1
    tf_mu = {s.labels["intensity"]: s.value for s in families(text)["qkd_decoy_recommended_mean_photon_number"][1]
             if s.labels["link"] == "tf-a"}
    assert tf_mu == {"signal": 0.5}


def test_exporter_serves_healthz_and_metrics(store_path: Path) -> None:
    store = CalibrationStore(store_path, clock=lambda: NOW)
    server = serve(CalibrationCollector(store), "127.0.0.1", 0)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{server.server_port}/healthz", timeout=10) as response:
            assert (response.status, response.read()) == (200, b"ok\n")
            assert response.headers["Content-Type"].startswith("text/plain")
        with opener.open(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as response:
            body = response.read().decode()
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        exposed = set(families(body))
        assert "qkd_calibration_runs_total" in exposed and exposed <= {m.name for m in CATALOGUE.for_exporter(CALIBRATION)}
        assert server.serving
    finally:
        server.stop()
        store.close()


def test_scheduled_jobs_publish_their_counters_from_zero(tmp_path: Path) -> None:
    """A scheduled job's first failure must be an increase Prometheus sees, not a new series."""
    store = CalibrationStore(tmp_path / "fresh.sqlite")
    try:
        collector = CalibrationCollector(store)
        collector.expect([("phase_relock", "tf-a", "tf"), ("decoy_estimation", "tf-a", "tf")])
        published = series(render(collector).decode())
    finally:
        store.close()
    runs = {dict(labels)["outcome"]: v for (name, labels), v in published.items()
            if name == "qkd_calibration_runs_total" and dict(labels)["job_name"] == "phase_relock"}
    assert runs == dict.fromkeys(("healthy", "corrected", "failed", "error", "held"), 0.0)
    actions = {(dict(labels)["job_name"], dict(labels)["action"]) for (name, labels), _ in published.items()
               if name == "qkd_calibration_job_actions_total"}
    assert actions == {("phase_relock", "relock_phase")}, "decoy estimation takes no action"
    misfires = {dict(labels)["job_name"] for (name, labels), _ in published.items() if name == "qkd_calibration_misfires_total"}
    assert misfires == {"phase_relock", "decoy_estimation"}
