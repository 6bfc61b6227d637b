"""What a job sees of a link: one typed snapshot, read from Prometheus or the link's status endpoint.

Prometheus is the default source: it is what on-call sees on the dashboards, so a job decides on the
same numbers a human would. One instant query per read fetches the last raw sample of every series
the jobs use for the link (a range selector keeps each sample's scrape timestamp). The control API's
link status (``GET /api/v1/links/{link}``) is the fallback: when Prometheus does not answer, lacks a
series, or its samples are older than ``max_age_s`` or older than the job's own last action (a job
must not act twice on the reading that made it act once). The status endpoint also gives the fresh
read-outs a job verifies its action against.

Both sources map onto ``LinkSignals`` with the exporters' vocabulary (intensity classes ``signal``,
``decoy``, ``decoy2``, ``vacuum``), so a job's decision never depends on where the numbers came from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qkdlink.settings import INTENSITY_OF_PARAMETER
from qkdops.control_client import ApiResponseError, ApiUnreachable, CalibrationApi
from qkdops.http_client import Auth, PrometheusClient

PROMETHEUS = "prometheus"
STATUS = "status"
# Series the jobs read; every one is a gauge the exporters publish per link.
METRICS = (
    "qkd_phase_locked", "qkd_phase_error_radians", "qkd_phase_actuator_usage_ratio",
    "qkd_mean_photon_number_commanded", "qkd_mean_photon_number_measured",
    "qkd_dark_count_rate_hertz", "qkd_dark_count_rate_nominal_hertz", "qkd_detector_live_time_ratio",
    "qkd_polarization_drift_radians", "qkd_interference_visibility_ratio", "qkd_detection_rate_hertz",
    "qkd_block_qber_ratio", "qkd_last_block_timestamp_seconds", "qkd_qber_threshold_ratio",
)
# Noisy per-frame readings: averaged over the samples since the job's last action (state read-outs
# and block statistics are taken as last seen).
AVERAGED = ("qkd_mean_photon_number_measured", "qkd_detection_rate_hertz")
# Series every link has (the others depend on protocol or on a first block having finished).
REQUIRED = ("qkd_dark_count_rate_hertz", "qkd_dark_count_rate_nominal_hertz", "qkd_detector_live_time_ratio",
            "qkd_polarization_drift_radians", "qkd_interference_visibility_ratio", "qkd_mean_photon_number_measured")


class SignalsUnavailable(Exception):
    """Neither source could describe the link; the message says why for each."""


@dataclass(frozen=True)
class LinkSignals:
    """One link's readings at ``observed_at`` (Unix s, the oldest sample used), from ``source``.

    Phase fields are None on single-arm (BB84) links; block fields are None before the first block.
    """

    link: str
    protocol: str
    source: str
    observed_at: float
    phase_locked: bool | None
    phase_error_rad: float | None
    phase_actuator_usage: float | None
    intensity_commanded: Mapping[str, float]
    intensity_measured: Mapping[str, float]
    dark_count_rate_hz: float
    dark_count_rate_nominal_hz: float
    live_time_ratio: float
    polarization_angle_rad: float
    visibility: float
    detection_rate_hz: float
    block_qber: float | None
    block_end_timestamp: float | None
    qber_threshold: float | None
    notes: tuple[str, ...] = field(default=())  # why the fallback was used, for the run report

    def describe(self) -> dict[str, Any]:
        """JSON-ready readings for reports and logs (numbers only, never key material)."""
        return {k: (dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v)
                for k, v in self.__dict__.items()}


def _intensities(values: Mapping[str, float]) -> dict[str, float]:
    return {INTENSITY_OF_PARAMETER.get(k, k): float(v) for k, v in values.items()}


def from_status(status: Mapping[str, Any], now: float) -> LinkSignals:
    """Signals from a control-API link status (``Fleet.status``): device read-outs are current."""
    t = status["telemetry"]
    last = status.get("last_block") or {}
    objectives = status.get("objectives") or {}
    return LinkSignals(
        link=status["link"], protocol=status["protocol"], source=STATUS, observed_at=now,
        phase_locked=t.get("phase_locked"), phase_error_rad=t.get("phase_error_rad"),
        phase_actuator_usage=t.get("phase_actuator_usage"),
        intensity_commanded=_intensities(t["mean_photon_number_commanded"]),
        intensity_measured=_intensities(t["mean_photon_number_measured"]),
        dark_count_rate_hz=t["dark_count_rate_hz"],
        dark_count_rate_nominal_hz=objectives.get("nominal_dark_count_rate_hz", t["dark_count_rate_hz"]),
        live_time_ratio=t["dead_time_live_fraction"], polarization_angle_rad=t["polarization_drift_rad"],
        visibility=t["visibility"], detection_rate_hz=t["detection_rate_hz"],
        block_qber=last.get("qber"), block_end_timestamp=last.get("end_timestamp"),
        qber_threshold=objectives.get("qber_threshold"))


def from_prometheus(link: str, protocol: str, samples: Mapping[str, list[tuple[Mapping[str, str], float, float]]]) -> LinkSignals:
    """Signals from one sample per series: metric → [(labels, value, timestamp)] (the last sample;
    for sampled readings, the mean of the window's samples)."""
    def one(name: str) -> float | None:
        rows = samples.get(name)
        return rows[0][1] if rows else None

    def by_intensity(name: str) -> dict[str, float]:
        return {labels["intensity"]: value for labels, value, _ in samples.get(name, [])}

    locked = one("qkd_phase_locked")
    stamps = [ts for rows in samples.values() for _, _, ts in rows]
    return LinkSignals(
        link=link, protocol=protocol, source=PROMETHEUS, observed_at=min(stamps),
        phase_locked=None if locked is None else locked >= 0.5, phase_error_rad=one("qkd_phase_error_radians"),
        phase_actuator_usage=one("qkd_phase_actuator_usage_ratio"),
        intensity_commanded=by_intensity("qkd_mean_photon_number_commanded"),
        intensity_measured=by_intensity("qkd_mean_photon_number_measured"),
        dark_count_rate_hz=one("qkd_dark_count_rate_hertz") or 0.0,
        dark_count_rate_nominal_hz=one("qkd_dark_count_rate_nominal_hertz") or 0.0,
        live_time_ratio=one("qkd_detector_live_time_ratio") or 0.0,
        polarization_angle_rad=one("qkd_polarization_drift_radians") or 0.0,
        visibility=one("qkd_interference_visibility_ratio") or 0.0,
        detection_rate_hz=one("qkd_detection_rate_hertz") or 0.0,
        block_qber=one("qkd_block_qber_ratio"), block_end_timestamp=one("qkd_last_block_timestamp_seconds"),
        qber_threshold=one("qkd_qber_threshold_ratio"))


class PrometheusQuery(PrometheusClient):
    """Prometheus as the scheduler reads it (``qkdops.http_client.PrometheusClient``), plus raw samples."""

    def __init__(self, url: str, timeout_s: float, auth: Auth | None = None) -> None:
        super().__init__(url, auth, timeout_s)

    def raw_samples(self, selector: str, window_s: float) -> dict[str, list[tuple[dict[str, str], list[tuple[float, float]]]]]:
        """Raw samples [(scrape timestamp, value)] of each series matching ``selector`` within ``window_s``."""
        data = self.query(f"{selector}[{max(1, math.ceil(window_s))}s]")
        out: dict[str, list[tuple[dict[str, str], list[tuple[float, float]]]]] = {}
        for series in data.get("result", []):
            labels = dict(series["metric"])
            name = labels.pop("__name__", "")
            points = [(float(ts), float(value)) for ts, value in series.get("values", [])]
            if points:
                out.setdefault(name, []).append((labels, points))
        return out


class SignalReader:
    """Reads ``LinkSignals`` from Prometheus, falling back to the control API's link status."""

    def __init__(self, api: CalibrationApi, prometheus: PrometheusQuery | None, max_age_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.api, self.prometheus, self.max_age_s, self.clock = api, prometheus, max_age_s, clock

    def read(self, link: str, protocol: str, not_before: float | None = None) -> LinkSignals:
        """The link's signals; samples older than ``max_age_s`` or than ``not_before`` are not used."""
        notes: list[str] = []
        if self.prometheus is not None:
            try:
                signals = self._from_prometheus(link, protocol, not_before)
                if signals is not None:
                    return signals
                notes.append("Prometheus has no fresh samples for this link")
            except (OSError, ValueError) as exc:
                notes.append(str(exc))
        try:
            status = self.api.status(link)
        except (ApiUnreachable, ApiResponseError) as exc:
            raise SignalsUnavailable("; ".join([*notes, f"link status: {exc}"])) from None
        signals = from_status(status, self.clock())
        return signals if not notes else _with_notes(signals, notes)

    def status(self, link: str) -> LinkSignals:
        """Fresh read-outs straight from the link (what a job verifies its action against)."""
        return from_status(self.api.status(link), self.clock())

    def _from_prometheus(self, link: str, protocol: str, not_before: float | None) -> LinkSignals | None:
        assert self.prometheus is not None
        names = "|".join(METRICS)
        selector = f'{{__name__=~"{names}",link="{_escape(link)}"}}'
        samples = self.prometheus.raw_samples(selector, self.max_age_s)
        oldest_allowed = max(self.clock() - self.max_age_s, not_before or 0.0)
        fresh: dict[str, list[tuple[Mapping[str, str], float, float]]] = {}
        for name, series in samples.items():
            for labels, points in series:
                points = [p for p in points if p[0] >= oldest_allowed]
                if not points:
                    continue
                # A sampled reading (monitor noise) is averaged over the window; a state, the latest.
                value = sum(v for _, v in points) / len(points) if name in AVERAGED else points[-1][1]
                fresh.setdefault(name, []).append((labels, value, points[-1][0]))
        if any(name not in fresh for name in REQUIRED):
            return None
        return from_prometheus(link, protocol, fresh)


def averaged(readings: list[LinkSignals]) -> LinkSignals:
    """The last of ``readings`` with its sampled readings (``AVERAGED``) replaced by their means."""
    last = readings[-1]
    levels = set.intersection(*(set(r.intensity_measured) for r in readings))
    return LinkSignals(**{
        **last.__dict__,
        "intensity_measured": {k: sum(r.intensity_measured[k] for r in readings) / len(readings) for k in sorted(levels)},
        "detection_rate_hz": sum(r.detection_rate_hz for r in readings) / len(readings),
        "notes": (*last.notes, f"sampled readings averaged over {len(readings)} frames")})


def _with_notes(signals: LinkSignals, notes: list[str]) -> LinkSignals:
    return LinkSignals(**{**signals.__dict__, "notes": tuple(notes)})


def _escape(value: str) -> str:
    """A PromQL string literal's content (link ids are validated names, but never trust a label)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
