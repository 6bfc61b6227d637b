"""Request counts and latencies of the sites' KMEs, for the post-processing exporter.

Per (site, api, call, code) and (site, api, call): every label set is closed (configured sites, the
two APIs — ``etsi014`` and ``skip`` — their calls, the status codes the services answer with), so
the series stay bounded whatever a client sends. Counters restart with the process, which Prometheus ``rate()`` handles.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

from qkdops.histogram import Histogram, HistogramSnapshot

# 1 ms … 3 s: a healthy call is a SQLite transaction plus TLS; seconds mean a stuck store.
REQUEST_BUCKETS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)


@dataclass(frozen=True)
class KMEStatsSnapshot:
    requests_total: Mapping[tuple[str, str, str, str], float]      # (site, api, call, code) → requests
    request_seconds: Mapping[tuple[str, str, str], HistogramSnapshot]   # (site, api, call)


class KMEStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str, str], float] = {}
        self._latency: dict[tuple[str, str, str], Histogram] = {}

    def request(self, site: str, api: str, call: str, code: int, seconds: float) -> None:
        with self._lock:
            key = (site, api, call, str(code))
            self._requests[key] = self._requests.get(key, 0.0) + 1
            self._latency.setdefault((site, api, call), Histogram(REQUEST_BUCKETS)).observe(seconds)

    def snapshot(self) -> KMEStatsSnapshot:
        with self._lock:
            return KMEStatsSnapshot(dict(self._requests), {k: h.snapshot() for k, h in self._latency.items()})
