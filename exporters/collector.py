"""What both link exporters share: one exporter's exposition built from the runtime's link snapshots.

A subclass names its exporter (whose families the catalogue defines) and how one link's snapshot
becomes samples; ``render`` snapshots every link and writes the families in the text format at each
scrape, so nothing is cached between scrapes and counters are exactly the runtime's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from exporters.catalogue import Families
from qkdops.runtime.state import LinkSnapshot


class SnapshotCollector:
    exporter: str  # "device" or "postprocessing": which catalogue families this collector publishes

    def __init__(self, snapshots: Callable[[], Sequence[LinkSnapshot]]) -> None:
        self._snapshots = snapshots

    def render(self, names: Collection[str] | None = None) -> bytes:
        """The exposition of every link ``snapshots()`` returns (``names``: only those samples)."""
        families = Families(self.exporter)
        for snapshot in self._snapshots():
            self.add_link(families, snapshot)
        self.add_fleet(families)
        return families.render(names)

    def add_fleet(self, families: Families) -> None:
        """Series that belong to no single link (none by default)."""

    @staticmethod
    def add_link(families: Families, snapshot: LinkSnapshot) -> None:
        raise NotImplementedError
