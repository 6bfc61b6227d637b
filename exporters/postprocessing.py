"""The post-processing exporter: sifting, finite-key estimation, key output, block outcomes, key store.

A prometheus_client custom collector over fresh ``LinkSnapshot``s at every scrape. Secret key rate
and QBER are published as counters (``qkd_secret_key_bits_total``, ``qkd_sifted_bits_total`` and
``qkd_sifted_bit_errors_total`` by basis — names other tools depend on) so Prometheus computes rates
and ratios over any window; the last block's bounds and QBER are gauges for the debug view.
Only counts, bounds, timestamps and latencies are read: the snapshot holds no key material.
"""

from __future__ import annotations

from exporters.collector import SnapshotCollector
from exporters.catalogue import POSTPROCESSING, Families
from qkdops.runtime.state import BLOCK_REASONS, HANDOFF_OUTCOMES, STAGES, LinkSnapshot

SUCCESS_REASON = "none"  # LinkState's reason for a block that produced key


class PostProcessingCollector(SnapshotCollector):
    """Post-processing results of every link ``snapshots()`` returns."""

    exporter = POSTPROCESSING

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
    f.add("qkd_key_store_bytes", base, s.key_store_bits / 8.0)
    f.add("qkd_key_store_capacity_bytes", base, s.key_store_capacity_bits / 8.0)
    for outcome in HANDOFF_OUTCOMES:
        f.add("qkd_key_handoffs_total", (*base, outcome), s.handoffs_total.get(outcome, 0.0))
    f.add_histogram("qkd_key_handoff_duration_seconds", base, s.handoff_seconds)
    if s.objectives is not None:
        f.add("qkd_block_duration_seconds", base, s.objectives.block_seconds)
        f.add("qkd_key_rate_target_bytes_per_second", base, s.objectives.key_rate_target_bps / 8.0)
        f.add("qkd_qber_threshold_ratio", base, s.objectives.qber_threshold)
