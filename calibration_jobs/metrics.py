"""The scheduler's exporter: a custom collector over the durable store (``exporters/catalogue.yaml``).

Counters and gauges are read from the store at scrape time, so they are monotonic across scheduler
restarts and include ``qkdops calibrate`` runs; every scheduled (job, link) publishes its counters
from 0 (``expect``); run durations are a histogram of this process's
runs (it restarts with the process, which ``rate()`` handles). HELP, types and labels come from the
catalogue, like the runtime's two exporters. Decoy-estimation gauges are the last window estimate
the store holds for each link.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable


from calibration_jobs.checks import CHECKS
from calibration_jobs.runner import OUTCOMES
from calibration_jobs.store import CalibrationStore
from exporters.catalogue import CALIBRATION, Families
from qkdlink.settings import INTENSITY_OF_PARAMETER
from qkdops.histogram import Histogram

DURATION_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
COUNTERS = {"runs": "qkd_calibration_runs_total", "actions": "qkd_calibration_job_actions_total",
            "misfires": "qkd_calibration_misfires_total"}
ABORT_STATES = ("none", "qber", "low_counts", "estimation")


class CalibrationCollector:
    def __init__(self, store: CalibrationStore) -> None:
        self.store = store
        self._durations: dict[tuple[str, str, str], Histogram] = {}
        self._expected: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def expect(self, scheduled: Iterable[tuple[str, str, str]]) -> None:
        """(job, link, protocol) the scheduler runs: their counters are published from 0, so the
        first failure is an increase Prometheus sees, not the birth of a series."""
        with self._lock:
            self._expected.update(scheduled)

    def observe_duration(self, job: str, link: str, protocol: str, seconds: float) -> None:
        with self._lock:
            self._durations.setdefault((link, protocol, job), Histogram(DURATION_BUCKETS)).observe(seconds)

    def render(self, names: Collection[str] | None = None) -> bytes:
        """The scheduler's exposition: run counters (from 0 for every expected job), durations, job state
        and the published decoy estimates (``names``: only those samples)."""
        f = Families(CALIBRATION)
        values: dict[tuple[str, str, str, str, str], float] = {}
        with self._lock:
            expected = set(self._expected)
        for job, link, protocol in expected:
            values.update({("runs", job, link, protocol, outcome): 0.0 for outcome in OUTCOMES})
            values[("misfires", job, link, protocol, "")] = 0.0
            if job in CHECKS:
                values[("actions", job, link, protocol, CHECKS[job].action)] = 0.0
        for metric, job, link, protocol, key, value in self.store.counters():
            values[(metric, job, link, protocol, key)] = value
        for (metric, job, link, protocol, key), value in sorted(values.items()):
            if metric in COUNTERS:
                f.add(COUNTERS[metric], [link, protocol, job] + ([key] if metric != "misfires" else []), value)
        with self._lock:
            durations = {k: h.snapshot() for k, h in self._durations.items()}
        for labels, snapshot in durations.items():
            f.add_histogram("qkd_calibration_run_duration_seconds", list(labels), snapshot)
        for state in self.store.states():
            base = [state.link, state.protocol, state.job]
            f.add("qkd_calibration_last_success_timestamp_seconds", base, state.last_success_at)
            f.add("qkd_calibration_consecutive_failures", base, float(state.failures))
            if state.published:
                add_decoy_estimate(f, state.link, state.protocol, state.published)
        return f.render(names)


def add_decoy_estimate(f: Families, link: str, protocol: str, p: dict) -> None:
    base = [link, protocol]
    f.add("qkd_decoy_estimate_single_photon_yield_lower_bound_ratio", base, p.get("y1_lower"))
    f.add("qkd_decoy_estimate_single_photon_phase_error_upper_bound_ratio", base, p.get("e1_upper"))
    f.add("qkd_decoy_estimate_failure_probability_ratio", base, p.get("epsilon_sec"))
    f.add("qkd_decoy_estimate_key_rate_bytes_per_second", base, p.get("key_rate_bytes_per_second"))
    f.add("qkd_decoy_estimate_qber_ratio", base, p.get("qber"))
    for reason in ABORT_STATES:
        f.add("qkd_decoy_estimate_state", [*base, reason], 1.0 if p.get("state") == reason else 0.0)
    f.add("qkd_decoy_estimate_window_blocks", base, p.get("window_blocks"))
    f.add("qkd_decoy_estimate_timestamp_seconds", base, p.get("timestamp"))
    rec = p.get("recommendation")
    if rec:
        f.add("qkd_decoy_observed_channel_loss_decibels", base, rec.get("observed_loss_db"))
        f.add("qkd_decoy_recommended_key_rate_gain_ratio", base, rec.get("gain_ratio"))
        for name, value in rec.get("parameters", {}).items():
            if name in INTENSITY_OF_PARAMETER:
                f.add("qkd_decoy_recommended_mean_photon_number", [*base, INTENSITY_OF_PARAMETER[name]], value)
