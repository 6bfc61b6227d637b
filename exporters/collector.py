"""What both exporters share: a prometheus_client custom collector over the runtime's link snapshots.

A subclass names its exporter (whose families the catalogue defines) and how one link's snapshot
becomes samples; this class builds the families per scrape and describes them without scraping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporters.catalogue import Families
from qkdops.runtime.state import LinkSnapshot


class SnapshotCollector(Collector):
    exporter: str  # "device" or "postprocessing": which catalogue families this collector publishes

    def __init__(self, snapshots: Callable[[], Sequence[LinkSnapshot]]) -> None:
        self._snapshots = snapshots

    def describe(self) -> Iterable[Metric]:
        """The (empty) families, so registering the collector does not run a scrape."""
        return list(Families(self.exporter))

    def collect(self) -> Iterable[Metric]:
        families = Families(self.exporter)
        for snapshot in self._snapshots():
            self.add_link(families, snapshot)
        self.add_fleet(families)
        return list(families)

    def add_fleet(self, families: Families) -> None:
        """Series that belong to no single link (none by default)."""

    @staticmethod
    def add_link(families: Families, snapshot: LinkSnapshot) -> None:
        raise NotImplementedError
