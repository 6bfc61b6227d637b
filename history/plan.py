"""The incident plan of a history run: which faults of the catalogue happen to which links, when, for how long.

A plan file (``--incidents PLAN``; ``history/incidents.yaml`` by default) lists incidents::

    incidents:
      - fault: polarization_drift          # a name of the fault catalogue (`qkdops fault list`)
        parameters: {rate_rad_per_s: 0.02} # optional; the catalogue's defaults otherwise
        links: [metro-bb84]                # optional; every link of the fleet otherwise
        protocols: [bb84-decoy]            # optional; only links of these protocols
        at: 1d6h                           # first start, from the beginning of the history
        every: 3d                          # optional: again every 3 days until the history ends
        duration: 45m                      # how long it stays in force before it is cleared

Times are Prometheus durations. Every problem of a file is reported at once, each naming the file and
the field. ``key_handoff_failure`` is refused: a history run delivers no keys (its keys count as
handed off and are dropped), so a hand-off fault would have nothing to act on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdlink.emulator.faults import FaultError
from qkdops.durations import seconds
from qkdops.runtime.faults import FAULTS, fault_spec
from qkdops.runtime.handoff import FAULT as HANDOFF_FAULT
from qkdops.yaml_fields import FieldError, FieldReader

DEFAULT_PLAN = Path(__file__).with_name("incidents.yaml")
FIELDS = ("fault", "parameters", "links", "protocols", "at", "every", "duration")
PROTOCOLS = ("bb84-decoy", "mdi", "tf")


class PlanError(FieldError):
    """The plan file is malformed: the message names the file and every bad field."""


@dataclass(frozen=True)
class Incident:
    """One fault on a set of links: first at ``at_s`` from the start, again every ``every_s`` (0: once)."""

    fault: str
    at_s: float
    duration_s: float
    every_s: float = 0.0
    links: tuple[str, ...] | None = None      # None: every link
    protocols: tuple[str, ...] | None = None  # None: every protocol
    parameters: dict[str, float] = field(default_factory=dict)

    def windows(self, span_s: float) -> Iterator[tuple[float, float]]:
        """(start, end) offsets of each occurrence that starts within ``span_s``."""
        start = self.at_s
        while start < span_s:
            yield start, start + self.duration_s
            if not self.every_s:
                return
            start += self.every_s


@dataclass(frozen=True)
class Occurrence:
    """One incident on one link, in absolute (emulated) time."""

    link: str
    fault: str
    parameters: dict[str, float]
    start: float
    end: float


@dataclass(frozen=True)
class Plan:
    incidents: tuple[Incident, ...]
    source: str

    def occurrences(self, links: Sequence[tuple[str, str]], start: float, end: float) -> list[Occurrence]:
        """Every occurrence on the given (link, protocol)s between ``start`` and ``end`` (absolute), by
        start time. Incidents naming only links outside ``links`` (another shard) contribute nothing."""
        found = []
        for incident in self.incidents:
            targets = [link for link, protocol in links if (incident.links is None or link in incident.links)
                       and (incident.protocols is None or protocol in incident.protocols)]
            for offset, until in incident.windows(end - start):
                found += [Occurrence(link, incident.fault, incident.parameters, start + offset, min(start + until, end))
                          for link in targets]
        return sorted(found, key=lambda o: (o.start, o.link, o.fault))


def load_plan(path: Path | None = None, links: Sequence[str] | None = None) -> Plan:
    """The plan at ``path`` (the shipped default when None), checked against the fault catalogue and,
    when given, the fleet's ``links``. PlanError naming the file and every bad field."""
    path = path or DEFAULT_PLAN
    r = FieldReader(path, PlanError, collect=True)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the incident plan: {exc.strerror or exc}") from None
    raw = r.load(text)
    incidents: list[Incident] = []
    top = r.mapping(raw, "", allowed=("incidents",), required=("incidents",))
    entries = r.sequence(top.get("incidents"), "incidents", "incident", empty=True) if top is not None else None
    for i, entry in enumerate(entries or []):
        if (incident := _incident(r, entry, f"incidents[{i}]", links)) is not None:
            incidents.append(incident)
    r.finish()
    return Plan(tuple(incidents), str(path))


def _incident(r: FieldReader, raw: Any, where: str, links: Sequence[str] | None) -> Incident | None:
    m = r.mapping(raw, where, allowed=FIELDS, required=("fault", "at", "duration"))
    if m is None:
        return None
    ok = True
    name = r.string(m.get("fault"), f"{where}.fault")
    parameters: dict[str, float] = {}
    if name is not None:
        if name == HANDOFF_FAULT:
            r.problem(f"{where}.fault", f"{HANDOFF_FAULT} cannot be emulated in history: a history run delivers no keys")
            ok = False
        elif name not in FAULTS:
            r.problem(f"{where}.fault", f"unknown fault {name!r} (faults: {', '.join(f for f in FAULTS if f != HANDOFF_FAULT)})")
            ok = False
        else:
            raw_parameters = r.mapping(m.get("parameters", {}), f"{where}.parameters")
            try:
                parameters = fault_spec(name).validate(raw_parameters or {})
            except FaultError as exc:
                r.problem(f"{where}.parameters", str(exc))
                ok = False
    else:
        ok = False
    chosen: tuple[str, ...] | None = None
    if "links" in m:
        items = r.sequence(m["links"], f"{where}.links", "link id")
        if items is None:
            ok = False
        else:
            chosen = tuple(str(x) for x in items)
            unknown = [x for x in chosen if links is not None and x not in links]
            if unknown:
                r.problem(f"{where}.links", f"unknown link(s) {', '.join(map(repr, unknown))} (links: {', '.join(links or ())})")
                ok = False
    protocols: tuple[str, ...] | None = None
    if "protocols" in m:
        items = r.sequence(m["protocols"], f"{where}.protocols", "protocol")
        if items is None or any(x not in PROTOCOLS for x in items):
            r.problem(f"{where}.protocols", f"expected a list of {', '.join(PROTOCOLS)}, got {items!r}")
            ok = False
        else:
            protocols = tuple(items)
    times = {}
    for key in ("at", "every", "duration"):
        if key not in m:
            continue
        text = r.duration(m[key], f"{where}.{key}")
        if text is None:
            ok = False
            continue
        times[key] = float(seconds(text))
        if key != "at" and not (times[key] > 0 and math.isfinite(times[key])):
            r.problem(f"{where}.{key}", f"expected a positive duration, got {text!r}")
            ok = False
    if ok and times.get("every") and times["duration"] >= times["every"]:
        r.problem(f"{where}.duration", f"{m['duration']!r} is not shorter than every {m['every']!r}: occurrences would overlap")
        ok = False
    if not ok or name is None or "at" not in times or "duration" not in times:   # a missing one: reported by mapping()
        return None
    return Incident(name, times["at"], times["duration"], times.get("every", 0.0), chosen, protocols, parameters)
