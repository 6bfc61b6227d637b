"""The device exporter: optics, detector, phase, clock, RNG and classical-channel telemetry per link.

A prometheus_client custom collector: every scrape reads fresh ``LinkSnapshot``s and builds the
families from the catalogue, so nothing is cached between scrapes and counters are exactly the
runtime's. Device readings come from the link's last ``DeviceTelemetry`` (none before its first
frame: then only the counters, the link info and the fault states are published).
"""

from __future__ import annotations

from exporters.collector import SnapshotCollector
from exporters.catalogue import DEVICE, Families
from qkdlink.emulator import DeviceTelemetry
from qkdlink.settings import INTENSITY_OF_PARAMETER
from qkdops.runtime.faults import FAULTS
from qkdops.runtime.state import CALIBRATION_ACTIONS, LinkSnapshot

CALIBRATION_OUTCOMES = ("ok", "failed")


class DeviceCollector(SnapshotCollector):
    """Device telemetry and frame counters of every link ``snapshots()`` returns."""

    exporter = DEVICE

    @staticmethod
    def add_link(families: Families, snapshot: LinkSnapshot) -> None:
        _add_link(families, snapshot)


def _add_link(f: Families, s: LinkSnapshot) -> None:
    base = (s.link, s.protocol)
    f.add("qkd_link_info", (*base, s.sites.get("alice", ""), s.sites.get("bob", ""), s.sites.get("charlie", ""), s.qkdl_id), 1.0)
    f.add("qkd_pulses_sent_total", base, s.pulses_total)
    f.add("qkd_detections_total", base, s.detections_total)
    for intensity, pulses in s.decoy_pulses_total.items():
        if Families.known("intensity", intensity, s.link):
            f.add("qkd_decoy_pulses_sent_total", (*base, intensity), pulses)
    for intensity, detections in s.decoy_detections_total.items():
        if Families.known("intensity", intensity, s.link):
            f.add("qkd_decoy_detections_total", (*base, intensity), detections)
    f.add_histogram("qkd_timing_jitter_seconds", base, s.timing_jitter_seconds)
    f.add("qkd_rng_health_failures_total", base, s.rng_health_failures_total)
    active = set(s.active_faults)
    for fault in FAULTS:  # every fault, so "not active" is an explicit 0 rather than a missing series
        f.add("qkd_fault_active", (*base, fault), 1.0 if fault in active else 0.0)
    for action in CALIBRATION_ACTIONS:
        for outcome in CALIBRATION_OUTCOMES:
            f.add("qkd_calibration_actions_total", (*base, action, outcome), s.calibrations_total.get((action, outcome), 0.0))
    if s.objectives is not None:
        f.add("qkd_dark_count_rate_nominal_hertz", base, s.objectives.nominal_dark_count_rate_hz)
        f.add("qkd_channel_loss_nominal_decibels", base, s.objectives.nominal_channel_loss_db)
    if s.telemetry is not None:
        _add_telemetry(f, base, s.telemetry)


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(value)


def _add_telemetry(f: Families, base: tuple[str, str], t: DeviceTelemetry) -> None:
    link = base[0]
    f.add("qkd_detection_rate_hertz", base, t.detection_rate_hz)
    for kind, levels in (("commanded", t.mean_photon_number_commanded), ("measured", t.mean_photon_number_measured)):
        for parameter, photons in levels.items():
            intensity = INTENSITY_OF_PARAMETER.get(parameter, parameter)
            if Families.known("intensity", intensity, link):
                f.add(f"qkd_mean_photon_number_{kind}", (*base, intensity), photons)
    f.add("qkd_dark_count_rate_hertz", base, t.dark_count_rate_hz)
    f.add("qkd_detector_efficiency_ratio", base, t.detector_efficiency)
    f.add("qkd_detector_temperature_celsius", base, t.detector_temperature_c)
    f.add("qkd_detector_live_time_ratio", base, t.dead_time_live_fraction)
    f.add("qkd_detector_afterpulse_ratio", base, t.afterpulse_probability)
    f.add("qkd_interference_visibility_ratio", base, t.visibility)
    # A single-arm link has no phase reference (phase_locked None): no lock state, error or relocks.
    f.add("qkd_phase_locked", base, _flag(t.phase_locked))
    f.add("qkd_phase_error_radians", base, t.phase_error_rad)
    f.add("qkd_phase_relocks_total", base, None if t.phase_locked is None else t.phase_relock_count)
    f.add("qkd_phase_actuator_usage_ratio", base, t.phase_actuator_usage)
    f.add("qkd_polarization_drift_radians", base, t.polarization_drift_rad)
    f.add("qkd_channel_loss_decibels", base, t.channel_loss_db)
    f.add("qkd_channel_transmittance_ratio", base, t.channel_transmittance)
    f.add("qkd_clock_offset_seconds", base, t.clock_offset_s)
    f.add("qkd_rng_bias_ratio", base, t.rng_bias)
    f.add("qkd_rng_health_pass", base, _flag(t.rng_health_pass))
    f.add("qkd_classical_channel_up", base, _flag(t.classical_channel_up))
    f.add("qkd_classical_channel_latency_seconds", base, t.classical_latency_s)
