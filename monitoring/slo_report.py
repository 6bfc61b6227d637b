"""``qkdops slo report``: per SLO and series (for our specs: per link) what Pyrra's list view shows —
objective, availability over a window, error budget left, burn rate now, firing burn alerts — from
Prometheus, computed from the SLI's own queries as the generated rules read them
(``monitoring.slo.window_queries``), so any window can be asked, not only the recorded ones.

Numbers, and why they are computed this way:

* **availability** = 1 − error events / events over the window, events-weighted (the generator's
  rule): a busy day counts for more than a quiet one. A series with no events in the window has
  no availability ("no events"), and an SLO whose queries return nothing has "no data": neither
  is 100 %.
* **error budget left** = 1 − (1 − availability) / (1 − objective): 1 untouched, 0 spent, negative
  overspent — ``slo:error_budget_remaining:ratio`` when the window is the SLO period.
* **burn now**: the error ratio over the fastest tier's long window (1h, the window the 14.4x page
  reads) over the error budget — 1 spends the budget exactly over the period. The tier's short
  window (5m) would follow single blocks of 10-30 s; the long one is what pages.
* **coverage**: the share of the window in which the SLI had data — the steps of a subquery over
  the window (the window / 1440, at least a second: half hours over 30 days, seconds over 10
  minutes) at which the SLI's events query over the last ``LOOKBACK`` (or the step, if longer)
  returned a value. A 30-day window over a week-old Prometheus reads 23 %, and the availability is
  then the availability of that week: said, not hidden. The lookback can only overstate: by at
  most a minute after each stretch of data, where the data stopped (not at the report's instant).

Every query is evaluated at one instant (``ReportTime``), so a test can recompute the numbers from
the raw counters at the same instant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from monitoring.slo import SLO, TIERS, WindowQueries, fmt_decimal, window_queries
from qkdops.durations import format_seconds, seconds as duration_seconds
from qkdops.http_client import PrometheusClient, PrometheusQueryError

BURN_TIER = TIERS[0]                 # the fastest page tier: burn now is over its long window
COVERAGE_STEPS = 1440                # coverage resolution: a 30-day window in half hours
LOOKBACK_S = 60                      # a rate over less than a minute may hold under two scrapes (5-s default)

LabelKey = tuple[tuple[str, str], ...]
OK, NO_EVENTS, NO_DATA = "ok", "no events", "no data"


@dataclass(frozen=True)
class FiringAlert:
    alertname: str
    tier: str
    severity: str


@dataclass
class Row:
    """One SLO on one series of its SLI (for our specs: one link)."""

    slo: str
    labels: dict[str, str]
    objective: float
    window: str
    status: str = NO_DATA
    errors: float | None = None          # error events in the window (events SLIs)
    events: float | None = None          # all events in the window
    availability: float | None = None
    budget_left: float | None = None
    burn_rate: float | None = None       # over BURN_TIER.long; None without events in it
    coverage: float | None = None        # 0..1 of the window with data
    firing: list[FiringAlert] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"slo": self.slo, "link": self.labels.get("link"), "labels": self.labels, "status": self.status,
                "objective": self.objective, "window": self.window, "availability": self.availability,
                "error_budget_remaining": self.budget_left, "error_events": self.errors, "events": self.events,
                "burn_rate": self.burn_rate, "coverage": self.coverage,
                "firing": [{"alertname": a.alertname, "tier": a.tier, "severity": a.severity} for a in self.firing]}


@dataclass
class Report:
    prometheus: str
    time: float
    window: str | None                   # None: each SLO over its own period
    rows: list[Row]

    def as_json(self) -> dict[str, Any]:
        return {"prometheus": self.prometheus, "time": self.time, "window": self.window,
                "burn_window": BURN_TIER.long, "burn_page_threshold": float(BURN_TIER.burn_rate),
                "rows": [r.as_json() for r in self.rows]}


def budget_left(availability: float, objective: float) -> float:
    """1 − (1 − availability) / (1 − objective): the share of the error budget not spent (negative: overspent)."""
    return 1 - (1 - availability) / (1 - objective)


def coverage_query(slo: SLO, window: str) -> tuple[str, int]:
    """PromQL counting, per series, the steps of ``window`` at which the SLI had data, and the number of steps."""
    step_s = max(1, math.ceil(duration_seconds(window) / COVERAGE_STEPS))
    presence = window_queries(slo, format_seconds(max(step_s, LOOKBACK_S), composite=False))
    step = format_seconds(step_s, composite=False)
    return (f"count_over_time(({presence.total or presence.ratio})[{window}:{step}])",
            math.ceil(duration_seconds(window) / step_s))


def build_report(client: PrometheusClient, slos: Sequence[SLO], at: float, window: str | None = None) -> Report:
    """The report for ``slos`` at time ``at`` (Unix seconds) over ``window`` (default: each SLO's period).

    Raises ``PrometheusUnreachable`` or ``PrometheusQueryError`` (naming the SLO and query) from the client."""
    alerts = _firing(_query(client, 'ALERTS{alertstate="firing", slo!=""}', at, "firing SLO alerts"))
    rows: list[Row] = []
    for slo in slos:
        rows.extend(slo_rows(client, slo, at, window or slo.period, alerts.get(slo.name, [])))
    return Report(client.url, at, window, rows)


def slo_rows(client: PrometheusClient, slo: SLO, at: float, window: str,
             alerts: Iterable[tuple[dict[str, str], FiringAlert]] = ()) -> list[Row]:
    """One row per series the SLI's queries return over ``window`` (or one "no data" row)."""
    objective = float(slo.objective / Decimal(100))
    here = f"SLO {slo.name}"
    q, burn_q = window_queries(slo, window), window_queries(slo, BURN_TIER.long)
    coverage, steps = coverage_query(slo, window)
    covered = _by_labels(_query(client, coverage, at, here))
    totals, errors, ratios = _ratios(client, q, at, here)
    _, _, burn_ratios = _ratios(client, burn_q, at, here)
    keys = sorted(set(ratios) | set(covered))
    rows = []
    for key in keys:
        labels = dict(key)
        row = Row(slo.name, labels, objective, window, coverage=min(1.0, covered[key] / steps) if key in covered else 0.0,
                  errors=errors.get(key, 0.0) if key in totals else None, events=totals.get(key))
        ratio = ratios.get(key)
        if ratio is not None:
            row.status, row.availability = OK, 1 - ratio
            row.budget_left = budget_left(row.availability, objective)
        else:   # the series exists, with no events in the window
            row.status = NO_EVENTS
        if (burn := burn_ratios.get(key)) is not None:
            row.burn_rate = burn / float(slo.error_budget)
        row.firing = sorted((a for alert_labels, a in alerts if labels.items() <= alert_labels.items()),
                            key=lambda a: duration_seconds(a.tier) if a.tier else 0)
        rows.append(row)
    return rows or [Row(slo.name, {}, objective, window, coverage=0.0)]


def _ratios(client: PrometheusClient, q: WindowQueries, at: float, what: str
            ) -> tuple[dict[LabelKey, float], dict[LabelKey, float], dict[LabelKey, float | None]]:
    """(events, error events, error ratio) per series; a raw SLI has a ratio and no events to weigh or count."""
    if q.total is None or q.errors is None:
        return {}, {}, {k: None if math.isnan(v) else v for k, v in _by_labels(_query(client, q.ratio, at, what)).items()}
    totals = _by_labels(_query(client, q.total, at, what))
    errors = _by_labels(_query(client, q.errors, at, what))   # no error series for a series with events: no errors
    return totals, errors, {k: _ratio(errors.get(k, 0.0), v) for k, v in totals.items()}


def _ratio(errors: float, total: float) -> float | None:
    """Errors over events; None without events (0/0 is no data, not 100 %)."""
    if math.isnan(total) or total <= 0:
        return None
    return min(1.0, max(0.0, errors / total))


def _query(client: PrometheusClient, expr: str, at: float, what: str) -> list[dict[str, Any]]:
    try:
        data = client.get("/api/v1/query", query=expr, time=f"{at:.3f}")
    except PrometheusQueryError as exc:
        raise PrometheusQueryError(f"{what}: {exc} (query: {' '.join(expr.split())[:300]})") from None
    if not isinstance(data, dict) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise PrometheusQueryError(f"{what}: Prometheus answered something other than an instant vector")
    return data["result"]


def _key(metric: Mapping[str, str]) -> LabelKey:
    return tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))


def _by_labels(result: list[dict[str, Any]]) -> dict[LabelKey, float]:
    return {_key(r["metric"]): float(r["value"][1]) for r in result}


def _firing(result: list[dict[str, Any]]) -> dict[str, list[tuple[dict[str, str], FiringAlert]]]:
    """Firing burn alerts by SLO name, each with its labels (rows match on theirs being a subset)."""
    out: dict[str, list[tuple[dict[str, str], FiringAlert]]] = {}
    for r in result:
        m = r["metric"]
        out.setdefault(m["slo"], []).append((m, FiringAlert(m.get("alertname", ""), m.get("tier", ""), m.get("severity", ""))))
    return out


# ---- the table -------------------------------------------------------------------------------------
COLUMNS = ("SLO", "LINK", "OBJECTIVE", "AVAILABILITY", "BUDGET LEFT", f"BURN {BURN_TIER.long}", "EVENTS", "COVERAGE", "FIRING")


def table(report: Report) -> str:
    """The report as an aligned plain-text table, with a header line saying what was asked of whom."""
    window = ", ".join(sorted({r.window for r in report.rows}, key=duration_seconds))
    lines = [f"SLO report from {report.prometheus}, window {window}; burn {BURN_TIER.long} = error ratio over the last "
             f"{BURN_TIER.long} / error budget (pages at {fmt_decimal(BURN_TIER.burn_rate)} with the {BURN_TIER.short} window)"]
    cells = [list(COLUMNS)] + [_cells(r) for r in report.rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    if any(r.coverage is not None and r.status != NO_DATA and r.coverage < 1 for r in report.rows):
        lines.append("coverage < 100%: Prometheus holds data for part of the window; availability and events are "
                     "those of the covered part")
    return "\n".join(lines) + "\n"


def _cells(row: Row) -> list[str]:
    link = row.labels.get("link") or ",".join(f"{k}={v}" for k, v in row.labels.items()) or "-"
    availability = _percent(row.availability, 3) if row.availability is not None else row.status
    return [row.slo, link, _percent(row.objective, 3), availability,
            _percent(row.budget_left, 1) if row.budget_left is not None else "-",
            f"{row.burn_rate:.2f}" if row.burn_rate is not None else "-",
            f"{row.events:.0f}" if row.events is not None else "-",
            _percent(row.coverage, 1) if row.coverage is not None else "-",
            " ".join(f"{a.tier}({a.severity})" for a in row.firing) or "-"]


def _percent(value: float, places: int) -> str:
    """99.5%, 87.1%, -250%: at most ``places`` decimals, no trailing zeros."""
    return f"{100 * value:.{places}f}".rstrip("0").rstrip(".") + "%"
