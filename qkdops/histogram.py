"""A cumulative-bucket histogram in Prometheus's shape, and its immutable snapshot.

The runtime, the KMEs and the calibration jobs record latencies under their own locks and publish
snapshots through custom collectors (``exporters.catalogue``), so a scrape reads a consistent set of
buckets without touching the recorder's lock for longer than a copy.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass


class Histogram:
    """Cumulative-bucket histogram in Prometheus's shape (le buckets, +Inf, sum, count)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += count
        self._sum += value * count

    def snapshot(self) -> HistogramSnapshot:
        cumulative, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self._counts):
            running += n
            cumulative.append((bound, running))
        return HistogramSnapshot(tuple(cumulative), self._sum)


@dataclass(frozen=True)
class HistogramSnapshot:
    buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count), last is +Inf
    sum: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1]
