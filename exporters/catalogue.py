"""The metric catalogue (``catalogue.yaml``), loaded and checked once, and the families built from it.

The collectors create their metric families from the catalogue — type, label names and HELP text —
so documentation and exposition cannot drift apart; the tests then check the exposed names, types,
labels and label values against the same file in both directions. ``Families`` is the only way the
collectors add samples: it drops missing values (None, NaN) instead of publishing them, and keeps
label values that come from data (intensity, basis) inside the catalogue's closed sets.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from prometheus_client.utils import floatToGoString

from qkdops.histogram import HistogramSnapshot
from qkdops.yaml_input import YamlInputError, load_text

DEVICE = "device"
POSTPROCESSING = "postprocessing"
CALIBRATION = "calibration"  # the calibration scheduler's exporter (calibration_jobs/)
KME_PROBE = "kme_probe"      # the blackbox exporter of ETSI 014 KMEs (exporters/kme_probe.py)
EXPORTERS = (DEVICE, POSTPROCESSING, CALIBRATION, KME_PROBE)
TYPES = ("counter", "gauge", "histogram")
CATALOGUE_FILE = "catalogue.yaml"
_NAME = re.compile(r"qkd_[a-z][a-z0-9_]*[a-z0-9]")

log = logging.getLogger(__name__)


class CatalogueError(ValueError):
    """The catalogue file is malformed; the message names the file, the field and what was expected."""


@dataclass(frozen=True)
class MetricSpec:
    """One catalogue entry. ``label_values``: allowed values per label, None for an open (config) set."""

    name: str
    type: str
    unit: str
    exporter: str
    labels: tuple[str, ...]
    help: str
    label_values: Mapping[str, frozenset[str] | None]


@dataclass(frozen=True)
class Catalogue:
    metrics: Mapping[str, MetricSpec]           # name → spec, in file order
    labels: Mapping[str, frozenset[str] | None]  # label → closed set of values, None when open

    def for_exporter(self, exporter: str) -> tuple[MetricSpec, ...]:
        return tuple(m for m in self.metrics.values() if m.exporter == exporter)


def load(text: str, where: str = CATALOGUE_FILE) -> Catalogue:
    """Parse and check catalogue YAML; any error is a CatalogueError naming ``where`` and the field."""
    try:
        data = load_text(text, where)
    except YamlInputError as exc:
        raise CatalogueError(str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict) or not isinstance(data.get("metrics"), dict):
        raise CatalogueError(f"{where}: expected a mapping with 'labels' and 'metrics' mappings")
    labels: dict[str, frozenset[str] | None] = {}
    for label, values in data["labels"].items():
        if values is not None and not (isinstance(values, list) and values and all(isinstance(v, str) for v in values)):
            raise CatalogueError(f"{where}: labels.{label}: expected null or a non-empty list of strings, got {values!r}")
        labels[label] = None if values is None else frozenset(values)
    metrics = {name: _metric(name, entry, labels, f"{where}: metrics.{name}") for name, entry in data["metrics"].items()}
    return Catalogue(MappingProxyType(metrics), MappingProxyType(labels))


def _metric(name: str, entry: object, labels: Mapping[str, frozenset[str] | None], where: str) -> MetricSpec:
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where}: expected a mapping, got {entry!r}")
    if not _NAME.fullmatch(name):
        raise CatalogueError(f"{where}: name must match {_NAME.pattern}")
    missing = {"type", "unit", "exporter", "labels", "help"} - set(entry)
    unknown = set(entry) - {"type", "unit", "exporter", "labels", "help", "label_values"}
    if missing or unknown:
        raise CatalogueError(f"{where}: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
    kind, exporter, names = entry["type"], entry["exporter"], entry["labels"]
    if kind not in TYPES:
        raise CatalogueError(f"{where}.type: expected one of {', '.join(TYPES)}, got {kind!r}")
    if (kind == "counter") != name.endswith("_total"):
        raise CatalogueError(f"{where}: counters, and only counters, end in _total")
    if exporter not in EXPORTERS:
        raise CatalogueError(f"{where}.exporter: expected one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(names, list) or (names[:2] != ["link", "protocol"] and names[:1] not in (["site"], ["worker"], ["target"])) \
            or len(set(names)) != len(names) or any(n not in labels for n in names):
        raise CatalogueError(f"{where}.labels: expected distinct labels from 'labels', starting with link, protocol "
                             f"(or site, for a KME's series; worker, for a sharded fleet's worker; target, for a "
                             f"kme-probe target); got {names!r}")
    if not isinstance(entry["help"], str) or not entry["help"].strip():
        raise CatalogueError(f"{where}.help: expected a non-empty string")
    values = {n: labels[n] for n in names}
    for label, narrowed in (entry.get("label_values") or {}).items():
        if label not in values or values[label] is None or not isinstance(narrowed, list) or not set(narrowed) <= values[label]:
            raise CatalogueError(f"{where}.label_values.{label}: expected a subset of labels.{label} for one of this metric's labels")
        values[label] = frozenset(narrowed)
    return MetricSpec(name, kind, str(entry["unit"]), exporter, tuple(names), entry["help"].strip(), MappingProxyType(values))


CATALOGUE = load(resources.files(__package__).joinpath(CATALOGUE_FILE).read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=256)
def _le(bound: float) -> str:
    """Bucket bound as Prometheus writes it (``+Inf``, ``1e-05``); bounds are a handful of constants."""
    return floatToGoString(bound)


@functools.lru_cache(maxsize=65_536)
def _escape(value: str) -> str:
    """A label value in the text format: backslash, newline and double quote escaped. Values repeat on
    every sample of a link (link, protocol, site), so they are escaped once; the sets are bounded."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


@dataclass(frozen=True)
class _Layout:
    """How one family's samples are written: label names in the exposition's (sorted) order and, for each
    position, which of the caller's label values goes there; a histogram's ``le`` at its sorted place."""

    header: str
    names: tuple[str, ...]        # sorted label names (a histogram's bucket line adds le)
    order: tuple[int, ...]        # caller's value index for each sorted name
    le_at: int                    # where le goes among the sorted names of a bucket line
    sample_names: frozenset[str]  # what ?name[]= selects this family by


@functools.cache
def _layouts(exporter: str) -> dict[str, _Layout]:
    layouts = {}
    for m in CATALOGUE.for_exporter(exporter):
        names = tuple(sorted(m.labels))
        suffixes = ("_bucket", "_count", "_sum") if m.type == "histogram" else ("",)
        help_text = m.help.replace("\\", r"\\").replace("\n", r"\n")
        layouts[m.name] = _Layout(f"# HELP {m.name} {help_text}\n# TYPE {m.name} {m.type}\n", names,
                                  tuple(m.labels.index(n) for n in names), sum(n < "le" for n in names),
                                  frozenset(m.name + s for s in suffixes))
    return layouts


class Families:
    """One exporter's families (catalogue order) for one scrape: samples are written straight into the
    Prometheus text format 0.0.4, byte for byte what prometheus_client's ``generate_latest`` writes for
    the same families (labels sorted, values by ``floatToGoString``) without its per-sample label-name
    validation and escaping, which cost most of a 1,000-link scrape (bench/bench_exporters.py)."""

    _warned: set[tuple[str, str]] = set()  # (link, label) already reported, so a bad key logs once

    def __init__(self, exporter: str) -> None:
        self._layouts = _layouts(exporter)
        self._lines: dict[str, list[str]] = {name: [] for name in self._layouts}

    def _labels(self, layout: _Layout, values: Sequence[str]) -> list[str]:
        return [f'{name}="{_escape(values[i])}"' for name, i in zip(layout.names, layout.order)]

    def add(self, name: str, labels: Sequence[str], value: float | None) -> None:
        """One sample; a missing value (None or NaN) is omitted rather than published."""
        if value is None or math.isnan(value):
            return
        self._lines[name].append(f"{name}{{{','.join(self._labels(self._layouts[name], labels))}}} {floatToGoString(value)}\n")

    def add_histogram(self, name: str, labels: Sequence[str], histogram: HistogramSnapshot) -> None:
        layout = self._layouts[name]
        pairs = self._labels(layout, labels)
        before, after = ",".join(pairs[:layout.le_at]), ",".join(pairs[layout.le_at:])
        head, tail = f"{name}_bucket{{{before}{',' if before else ''}le=\"", f"\"{',' if after else ''}{after}}} "
        lines = self._lines[name]
        lines.extend(f"{head}{_le(bound)}{tail}{floatToGoString(n)}\n" for bound, n in histogram.buckets)
        base = ",".join(pairs)
        lines.append(f"{name}_count{{{base}}} {floatToGoString(histogram.count)}\n")
        lines.append(f"{name}_sum{{{base}}} {floatToGoString(histogram.sum)}\n")

    def render(self, names: Collection[str] | None = None) -> bytes:
        """The exposition; ``names``: only the samples of these names (``?name[]=``, as prometheus_client's
        restricted registry: a family none of whose samples is named is left out whole)."""
        out: list[str] = []
        wanted = None if names is None else frozenset(names)
        for family, lines in self._lines.items():
            layout = self._layouts[family]
            if wanted is None:
                out.append(layout.header)
                out.extend(lines)
            elif layout.sample_names & wanted:
                kept = [line for line in lines if line[:line.index("{")] in wanted]
                if kept:
                    out.append(layout.header)
                    out.extend(kept)
        return "".join(out).encode()
    @classmethod
    def known(cls, label: str, value: str, link: str) -> bool:
        """Whether a data-derived label value is in its closed set; anything else is dropped.

        A value outside the set would be an unbounded or unexpected series (or, at worst, leaked
        data), so it is never published. The log names the link and the label, never the value.
        """
        allowed = CATALOGUE.labels[label]
        if allowed is None or value in allowed:
            return True
        if (link, label) not in cls._warned:
            cls._warned.add((link, label))
            log.warning("link %s: dropped a %s label value outside the catalogue's closed set", link, label)
        return False
