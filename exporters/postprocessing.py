"""The post-processing exporter: sifting, finite-key estimation, key output, block outcomes, key delivery.

A prometheus_client custom collector over fresh ``LinkSnapshot``s at every scrape. Secret key rate
and QBER are published as counters (``qkd_secret_key_bits_total``, ``qkd_sifted_bits_total`` and
``qkd_sifted_bit_errors_total`` by basis — names other tools depend on) so Prometheus computes rates
and ratios over any window; the last block's bounds and QBER are gauges for the debug view.
Key delivery: hand-off attempts by outcome and their provisioning latency, the link's hand-off
backlog, what each end's KME holds and has served per SAE (per link), and the KMEs' ETSI 014
requests by site, call and status code (``kme_stats``, not per link).
Only counts, bounds, timestamps and latencies are read: the snapshot holds no key material.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporters.collector import SnapshotCollector
from exporters.catalogue import POSTPROCESSING, Families
from qkdops.kme.stats import KMEStatsSnapshot
from qkdops.kme.store import ACCEPTED, DISCARDED, ISSUED
from qkdops.runtime.state import BLOCK_REASONS, CPU_STAGES, HANDOFF_OUTCOMES, KME_CALLS, STAGES, LinkSnapshot

SUCCESS_REASON = "none"  # LinkState's reason for a block that produced key
# The KME store's byte tallies per link (KeyPoolStore.tallies) → their counters
STORE_TALLIES = {ACCEPTED: "qkd_key_handed_off_bytes_total", DISCARDED: "qkd_key_store_discarded_bytes_total",
                 ISSUED: "qkd_kme_key_issued_bytes_total"}


@dataclass(frozen=True)
class WorkerStatus:
    """One worker process of a sharded fleet, as its supervisor sees it."""

    worker: str
    up: bool
    restarts: int
    links: int


class PostProcessingCollector(SnapshotCollector):
    """Post-processing results of every link ``snapshots()`` returns; with ``kme_stats`` the KMEs'
    requests, with ``workers`` a sharded fleet's worker processes (what its supervisor publishes)."""

    exporter = POSTPROCESSING

    def __init__(self, snapshots: Callable[[], Sequence[LinkSnapshot]],
                 kme_stats: Callable[[], KMEStatsSnapshot] | None = None,
                 workers: Callable[[], Sequence[WorkerStatus]] | None = None) -> None:
        super().__init__(snapshots)
        self._kme_stats = kme_stats
        self._workers = workers

    def add_fleet(self, families: Families) -> None:
        """The KMEs' requests, per site (a request is not always about one link), and the workers."""
        for w in self._workers() if self._workers is not None else ():
            families.add("qkd_fleet_worker_up", (w.worker,), float(w.up))
            families.add("qkd_fleet_worker_restarts_total", (w.worker,), float(w.restarts))
            families.add("qkd_fleet_worker_links", (w.worker,), float(w.links))
        if self._kme_stats is None:
            return
        stats = self._kme_stats()
        for (site, api, call, code), n in sorted(stats.requests_total.items()):
            if Families.known("code", code, site):
                families.add("qkd_kme_requests_total", (site, api, call, code), n)
        for (site, api, call), histogram in sorted(stats.request_seconds.items()):
            families.add_histogram("qkd_kme_request_duration_seconds", (site, api, call), histogram)

    @staticmethod
    def add_link(families: Families, snapshot: LinkSnapshot) -> None:
        _add_link(families, snapshot)


def _add_link(f: Families, s: LinkSnapshot) -> None:
    base = (s.link, s.protocol)
    f.add("qkd_secret_key_bits_total", base, s.secret_key_bits_total)
    for basis, bits in s.sifted_bits_total.items():
        if Families.known("basis", basis, s.link):
            f.add("qkd_sifted_bits_total", (*base, basis), bits)
    for basis, errors in s.sifted_bit_errors_total.items():
        if Families.known("basis", basis, s.link):
            f.add("qkd_sifted_bit_errors_total", (*base, basis), errors)
    f.add("qkd_ec_leakage_bytes_total", base, s.ec_leak_bits_total / 8.0)
    f.add("qkd_ec_shannon_limit_bytes_total", base, s.ec_shannon_limit_bits_total / 8.0)
    f.add("qkd_ec_efficiency", base, s.ec_efficiency)
    f.add("qkd_ec_messages_total", base, s.ec_messages_total)
    f.add("qkd_ec_round_trips_total", base, s.ec_round_trips_total)
    f.add("qkd_ec_frames_total", base, s.ec_frames_total)
    f.add("qkd_ec_frame_failures_total", base, s.ec_frame_failures_total)
    f.add("qkd_ec_frames_discarded_total", base, s.ec_frames_discarded_total)
    f.add("qkd_privacy_amplification_input_bytes_total", base, s.pa_input_bits_total / 8.0)
    f.add("qkd_key_confirmation_failures_total", base, s.key_confirmation_failures_total)
    for stage in CPU_STAGES:
        f.add("qkd_postprocessing_cpu_seconds_total", (*base, stage), s.cpu_seconds_total.get(stage, 0.0))
    f.add_histogram("qkd_postprocessing_duration_seconds", base, s.postprocessing_seconds)
    f.add("qkd_single_photon_yield_lower_bound_ratio", base, s.y1_lower)
    f.add("qkd_single_photon_phase_error_upper_bound_ratio", base, s.e1_upper)
    f.add("qkd_block_qber_ratio", base, s.block_qber)
    for reason in BLOCK_REASONS:  # every reason, zeros included, so rate() and ratios see them all
        outcome = "success" if reason == SUCCESS_REASON else "aborted"
        f.add("qkd_blocks_total", (*base, outcome, reason), s.blocks_total.get(reason, 0.0))
    f.add("qkd_last_block_timestamp_seconds", base, s.last_block_end_timestamp_seconds)
    f.add("qkd_last_success_timestamp_seconds", base, s.last_success_timestamp_seconds)
    for stage in STAGES:
        if stage in s.stage_seconds:
            f.add_histogram("qkd_postprocessing_stage_duration_seconds", (*base, stage), s.stage_seconds[stage])
    f.add("qkd_key_handoff_backlog_bytes", base, s.handoff_backlog_bits / 8.0)
    f.add("qkd_key_handoff_buffer_capacity_bytes", base, s.handoff_buffer_capacity_bits / 8.0)
    for outcome in HANDOFF_OUTCOMES:
        f.add("qkd_key_handoffs_total", (*base, outcome), s.handoffs_total.get(outcome, 0.0))
    f.add_histogram("qkd_key_handoff_duration_seconds", base, s.handoff_seconds)
    for site, keys in s.key_store_keys.items():
        f.add("qkd_key_store_keys", (*base, site), keys)
        f.add("qkd_key_store_capacity_keys", (*base, site), s.key_store_capacity_keys)
    for (sae, call), keys in sorted(s.keys_served_total.items()):
        if call in KME_CALLS:
            f.add("qkd_kme_keys_served_total", (*base, sae, KME_CALLS[call], call), keys)
    f.add("qkd_kme_keys_expired_total", base, s.keys_expired_total)
    for kind, family in STORE_TALLIES.items():
        if kind in s.key_store_bytes_total:
            f.add(family, base, s.key_store_bytes_total[kind])
    if s.objectives is not None:
        f.add("qkd_block_duration_seconds", base, s.objectives.block_seconds)
        f.add("qkd_key_rate_target_bytes_per_second", base, s.objectives.key_rate_target_bps / 8.0)
        f.add("qkd_qber_threshold_ratio", base, s.objectives.qber_threshold)
        f.add("qkd_ec_model_efficiency", base, s.objectives.model_ec_efficiency)
