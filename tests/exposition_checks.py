"""Checks every exporter's exposition must pass: parsed families, and equality with the catalogue."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from exporters.catalogue import CATALOGUE


def families(text: str) -> dict[str, tuple[str, list]]:
    """Exposed name (counters with _total, as Prometheus stores them) → (type, samples)."""
    return {f.name + "_total" if f.type == "counter" else f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def assert_equals_catalogue(text: str, exporter: str) -> None:
    """Names, types and label names exposed == the exporter's catalogue entries, both ways; HELP from it."""
    exposed = families(text)
    specs = {m.name: m for m in CATALOGUE.for_exporter(exporter)}
    assert set(exposed) == set(specs)
    for name, (kind, samples) in exposed.items():
        assert kind == specs[name].type, name
        assert samples, f"{name} has no sample"
        for s in samples:
            assert set(s.labels) - {"le"} == set(specs[name].labels), (name, s.labels)
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, flags=re.M))
    assert helps == {name: spec.help for name, spec in specs.items()}
