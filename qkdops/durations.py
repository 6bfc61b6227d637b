"""Durations as Prometheus writes them (``1h30m``, ``5m``, ``250ms``): the one parser and the one
formatter behind SLO specs and rules, Alertmanager timing, dashboard rendering and CLI options.

Prometheus's syntax (https://prometheus.io/docs/prometheus/latest/configuration/configuration/,
"<duration>"): units y w d h m s ms, each at most once, largest first, whole numbers. Parsing is
exact (``Decimal``), so a window times a ratio in a generated rule prints as the number it is.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

PATTERN = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, Decimal("0.001"))
_PLAIN_SECONDS = re.compile(r"^\d+(\.\d+)?$")


def is_duration(text: str) -> bool:
    return bool(text) and PATTERN.match(text) is not None


def seconds(text: str, plain_seconds: bool = False) -> Decimal:
    """Seconds in a Prometheus duration (``1h30m`` → 5400); ``plain_seconds``: a bare number (``90``,
    ``1.5``) is seconds too, as CLI options take it. ValueError otherwise."""
    text = text.strip()
    if plain_seconds and _PLAIN_SECONDS.match(text):
        return Decimal(text)
    match = PATTERN.match(text)
    if not match or not text:
        raise ValueError(f"not a Prometheus duration (e.g. 90s, 10m, 1h30m, 1d): {text[:40]!r}")
    return sum((Decimal(int(g)) * unit for g, unit in zip(match.groups(), UNITS) if g), Decimal(0))


def format_seconds(value: float, composite: bool = True) -> str:
    """Whole seconds, at least 1, rounded up, in Prometheus's syntax: ``composite`` as Alertmanager's
    config reads best (``4h48m``, ``12s``), else plain seconds (``300s``) as a PromQL range."""
    left = max(1, math.ceil(value))
    if not composite:
        return f"{left}s"
    out = ""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            out += f"{left // size}{unit}"
            left %= size
    return out
