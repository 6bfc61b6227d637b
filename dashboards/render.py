"""Render the key panels of a generated dashboard to a PNG from real Prometheus data.

For READMEs and incident reports: each panel's targets run as range queries against Prometheus (with
the dashboard's ``$link``, ``$__rate_interval`` and ``$__interval`` substituted the way Grafana would),
drawn with matplotlib in a grid with the panel's unit, thresholds and legend, and every span in which an
alert for the link was firing shaded on every panel (plus a timeline of the firing alerts).

    python -m dashboards.render --prometheus http://127.0.0.1:9090 --link metro-a --since 10m --out incident.png

Prometheus wants basic auth: ``render_panels(..., auth=StackAuth(state_dir).prometheus)``; the command
line reads the password ``qkdops up`` generated in the state dir of ``--config`` (default ``links.yaml``),
or the file env ``QKDOPS_PROMETHEUS_PASSWORD_FILE`` names.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter, MaxNLocator, PercentFormatter  # noqa: E402

from dashboards.generate import DIRECTORY  # noqa: E402
from qkdops import durations  # noqa: E402
from qkdops.config import DEFAULT_CONFIG, finite_float, load_config  # noqa: E402
from qkdops.credentials import CredentialError  # noqa: E402
from qkdops.http_client import Auth, PrometheusClient, PrometheusQueryError, PrometheusUnreachable, StackAuth  # noqa: E402

# The panels worth a picture, in drawing order; dashboards not listed draw every time-series panel.
KEY_PANELS: dict[str, list[str]] = {
    "oncall": ["Secret key rate vs target", "QBER per basis", "Detection rate", "Aborts by reason",
               "Phase lock and relocks", "Interference visibility", "Dark counts vs nominal"],
}
ALERTS_TITLE = "Firing alerts for {link}"
DEFAULT_SCRAPE_INTERVAL_S = 15.0  # Grafana's default when the datasource does not say
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GRAFANA_COLOURS = {"green": "#37872d", "orange": "#fa6400", "red": "#c4162a", "yellow": "#e0b400", "blue": "#1f60c4"}
ALERT_SHADE = "#c4162a"


class RenderError(RuntimeError):
    """A query failed or the dashboard/panel is unusable; the message names the panel."""


@dataclass
class Series:
    labels: dict[str, str]
    times: list[float]
    values: list[float]


@dataclass
class PanelData:
    panel: dict[str, Any]
    targets: list[tuple[dict[str, Any], list[Series]]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(series for _target, series in self.targets)


# --- Prometheus -------------------------------------------------------------------------------------

def _prometheus(prometheus_url: str, auth: Auth | None) -> PrometheusClient:
    return PrometheusClient(prometheus_url, auth, timeout_s=15.0)


def scrape_interval_s(prometheus_url: str, auth: Auth | None = None) -> float:
    """The global scrape interval from Prometheus's loaded configuration (what Grafana's datasource would know)."""
    try:
        config = _prometheus(prometheus_url, auth).get("/api/v1/status/config", timeout_s=5)["yaml"]
    except (PrometheusQueryError, PrometheusUnreachable, KeyError, TypeError):
        return DEFAULT_SCRAPE_INTERVAL_S
    match = re.search(r"^\s*scrape_interval:\s*(\S+)", config, re.MULTILINE)
    try:
        return parse_duration(match.group(1)) if match else DEFAULT_SCRAPE_INTERVAL_S
    except ValueError:
        return DEFAULT_SCRAPE_INTERVAL_S


def query_range(prometheus_url: str, expr: str, start: float, end: float, step_s: float, auth: Auth | None = None) -> list[Series]:
    try:
        data = _prometheus(prometheus_url, auth).query_range(expr, start, end, step_s)
    except (PrometheusQueryError, PrometheusUnreachable) as exc:
        raise RenderError(str(exc)) from exc
    if data.get("resultType") != "matrix":
        raise RenderError(f"expected a matrix, got {data.get('resultType')!r}")
    out = []
    for result in data["result"]:
        points = [(float(t), float(v)) for t, v in result.get("values", [])]
        out.append(Series(result.get("metric", {}), [t for t, _ in points], [v for _, v in points]))
    return out


# --- substitution, legends, durations -------------------------------------------------------------

def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d``, ``1m30s`` → seconds (``qkdops.durations``)."""
    return float(durations.seconds(text, plain_seconds=True))


def rate_interval_s(step_s: float, scrape_s: float) -> float:
    """Grafana's ``$__rate_interval``: max(``$__interval`` + scrape interval, 4 × scrape interval)."""
    return max(step_s + scrape_s, 4 * scrape_s)


def substitute(expr: str, link: str, step_s: float, scrape_s: float) -> str:
    return (expr.replace("$__rate_interval", durations.format_seconds(rate_interval_s(step_s, scrape_s), composite=False))
            .replace("$__interval", durations.format_seconds(step_s, composite=False))
            .replace("${link}", link).replace("$link", link))


def legend(target: dict[str, Any], series: Series) -> str:
    fmt = target.get("legendFormat") or ""
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: series.labels.get(m.group(1), ""), fmt).strip() or target["refId"]
    labels = {k: v for k, v in series.labels.items() if k != "__name__"}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else target["refId"]


# --- panel selection and data ---------------------------------------------------------------------

def load_dashboard(dashboard: str) -> dict[str, Any]:
    path = DIRECTORY / f"{dashboard.removesuffix('.json')}.json"
    if not path.exists():
        known = sorted(p.stem for p in DIRECTORY.glob("*.json"))
        raise RenderError(f"no dashboard {dashboard!r} in {DIRECTORY} (known: {', '.join(known)})")
    return json.loads(path.read_text())


def key_panels(dashboard_name: str, dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    series_panels = [p for p in dashboard["panels"] if p.get("type") == "timeseries"]
    wanted = KEY_PANELS.get(dashboard_name.removesuffix(".json"))
    if wanted is None:
        return series_panels
    by_title = {p["title"]: p for p in series_panels}
    missing = [t for t in wanted if t not in by_title]
    if missing:
        raise RenderError(f"dashboard {dashboard_name!r} has no time-series panel {missing[0]!r}")
    return [by_title[t] for t in wanted]


def fetch_panel(prometheus_url: str, panel: dict[str, Any], link: str, start: float, end: float, step_s: float,
                scrape_s: float, auth: Auth | None = None) -> PanelData:
    data = PanelData(panel)
    for target in panel.get("targets", []):
        expr = substitute(target["expr"], link, step_s, scrape_s)
        try:
            data.targets.append((target, query_range(prometheus_url, expr, start, end, step_s, auth)))
        except RenderError as exc:
            raise RenderError(f"panel {panel['title']!r} target {target.get('refId')}: query {expr!r} failed: {exc}") from exc
    return data


def alert_spans(prometheus_url: str, link: str, start: float, end: float, step_s: float,
                auth: Auth | None = None) -> dict[str, list[tuple[float, float]]]:
    """alertname → [(from, to)] in which ``ALERTS{link, alertstate="firing"}`` had a sample."""
    expr = f'ALERTS{{link="{link}", alertstate="firing"}}'
    try:
        series = query_range(prometheus_url, expr, start, end, step_s, auth)
    except RenderError as exc:
        raise RenderError(f"panel 'firing alerts' (shading): query {expr!r} failed: {exc}") from exc
    spans: dict[str, list[tuple[float, float]]] = {}
    for s in series:
        name = s.labels.get("alertname", "?")
        current: list[float] | None = None
        for t in s.times:
            if current is not None and t - current[1] <= 1.5 * step_s:
                current[1] = t
            else:
                if current is not None:
                    spans.setdefault(name, []).append((current[0], current[1] + step_s))
                current = [t, t]
        if current is not None:
            spans.setdefault(name, []).append((current[0], min(current[1] + step_s, end)))
    return {name: _merge(v) for name, v in sorted(spans.items())}


def _merge(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


# --- drawing ----------------------------------------------------------------------------------------

def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=UTC)


def _unit_formatter(unit: str):
    if unit == "percentunit":
        return PercentFormatter(1.0, decimals=None), "%"
    if unit == "percent":
        return PercentFormatter(100.0), "%"
    named = {"bps": "b/s", "Bps": "B/s", "hertz": "Hz", "s": "s", "ms": "s", "bytes": "B", "bits": "b"}
    if unit in named:
        return EngFormatter(unit=named[unit], sep=" "), named[unit]
    if unit in ("short", "none", ""):
        return EngFormatter(sep=""), ""
    return FuncFormatter(lambda v, _pos: f"{v:g}"), unit


def _format_value(value: float, unit: str) -> str:
    formatter, _ = _unit_formatter(unit)
    if isinstance(formatter, PercentFormatter):
        return f"{value * (100 if unit == 'percentunit' else 1):g} %"
    if isinstance(formatter, EngFormatter):
        return formatter(value).strip()
    return f"{value:g} {unit}".strip()


def _draw_panel(ax, data: PanelData, spans: dict[str, list[tuple[float, float]]], start: float, end: float) -> None:
    panel = data.panel
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "")
    formatter, unit_label = _unit_formatter(unit)
    ax.set_title(panel["title"], fontsize=11, loc="left", fontweight="bold")
    _shade(ax, spans)
    drawn = 0
    peak = -math.inf
    for target, series_list in data.targets:
        if not series_list:
            ax.plot([], [], " ", label=f"{target.get('legendFormat') or target['refId']}: no data")
        for series in series_list:
            finite = [(t, v) for t, v in zip(series.times, series.values, strict=True) if math.isfinite(v)]
            # earlier series drawn thicker, so a later one lying exactly on top of it leaves it visible
            ax.plot([_dt(t) for t, _ in finite], [v for _, v in finite], linewidth=max(1.2, 2.8 - 0.7 * drawn),
                    label=legend(target, series), marker="." if len(finite) < 3 else None)
            peak = max([peak, *(v for _, v in finite)])
            drawn += 1
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step.get("value") is None:
            continue
        colour = GRAFANA_COLOURS.get(step.get("color", ""), step.get("color", "grey"))
        ax.axhline(step["value"], color=colour, linestyle="--", linewidth=1.0, alpha=0.8,
                   label=f"threshold {_format_value(step['value'], unit)}")
    if data.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=16, color="grey",
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "lightgrey"})
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"])
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"])
    elif math.isfinite(peak) and peak > 0 and ax.get_ylim()[1] < peak * 1.08:
        ax.set_ylim(top=peak * 1.08)  # keep a flat line off the frame
    ax.yaxis.set_major_formatter(formatter)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    if unit_label:
        ax.set_ylabel(unit_label)
    _time_axis(ax, start, end)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.85, ncol=2 if len(ax.get_legend_handles_labels()[1]) > 3 else 1)


def _shade(ax, spans: dict[str, list[tuple[float, float]]]) -> None:
    for name_spans in spans.values():
        for a, b in name_spans:
            ax.axvspan(_dt(a), _dt(b), color=ALERT_SHADE, alpha=0.10, linewidth=0)


def _time_axis(ax, start: float, end: float) -> None:
    ax.set_xlim(_dt(start), _dt(end))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=3, maxticks=7, tz=UTC))
    ax.grid(True, alpha=0.3)


def _draw_alerts(ax, spans: dict[str, list[tuple[float, float]]], link: str, start: float, end: float) -> None:
    ax.set_title(ALERTS_TITLE.format(link=link), fontsize=11, loc="left", fontweight="bold")
    names = list(spans)
    for row, name in enumerate(names):
        for a, b in spans[name]:
            ax.barh(row, mdates.date2num(_dt(b)) - mdates.date2num(_dt(a)), left=mdates.date2num(_dt(a)), height=0.4,
                    color=ALERT_SHADE, alpha=0.75)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(-0.7, max(len(names), 1) - 0.3)
    ax.invert_yaxis()
    if not names:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no alerts firing", transform=ax.transAxes, ha="center", va="center", fontsize=14,
                color="grey")
    _time_axis(ax, start, end)
    ax.grid(True, axis="x", alpha=0.3)


def render_panels(prometheus_url: str, dashboard: str, link: str, start: float, end: float, out: Path,
                  step_s: float = 5.0, auth: Auth | None = None) -> Path:
    """Draw ``dashboard``'s key time-series panels for ``link`` over [start, end] (unix s) to the PNG ``out``.

    The PNG's text chunks ``qkdops:panels`` (JSON list of drawn panel titles) and ``qkdops:axes`` record what
    was drawn. Raises :class:`RenderError`, naming the panel, when a query fails. ``auth``: Prometheus's
    basic auth (``StackAuth(state_dir).prometheus``).
    """
    if end <= start:
        raise RenderError(f"empty time range: start {start} ≥ end {end}")
    if step_s <= 0:
        raise RenderError(f"step must be positive, got {step_s}")
    name = dashboard.removesuffix(".json")
    spec = load_dashboard(name)
    panels = key_panels(name, spec)
    scrape_s = scrape_interval_s(prometheus_url, auth)
    data = [fetch_panel(prometheus_url, panel, link, start, end, step_s, scrape_s, auth) for panel in panels]
    spans = alert_spans(prometheus_url, link, start, end, step_s, auth)

    n_axes = len(data) + 1  # + the firing-alerts timeline
    ncols = 2
    nrows = math.ceil(n_axes / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(16, 3.6 * nrows + 1.0), squeeze=False, layout="constrained")
    flat = list(axes.flat)
    try:
        for ax, panel_data in zip(flat, data, strict=False):
            _draw_panel(ax, panel_data, spans, start, end)
        _draw_alerts(flat[len(data)], spans, link, start, end)
        for ax in flat[n_axes:]:
            fig.delaxes(ax)
        firing = ", ".join(spans) or "none"
        fig.suptitle(f"{spec.get('title', name)} — link {link}\n"
                     f"{_dt(start):%Y-%m-%d %H:%M:%S} → {_dt(end):%H:%M:%S} UTC ({(end - start) / 60:.1f} min, step {step_s:g} s)"
                     f"   ·   shaded: alert firing ({firing})", fontsize=13)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png", dpi=100, metadata={
            "Title": f"{spec.get('title', name)} {link}", "Software": "qkdops dashboards.render",
            "qkdops:panels": json.dumps([d.panel["title"] for d in data] + [ALERTS_TITLE.format(link=link)]),
            "qkdops:axes": str(len(fig.axes))})
    finally:
        plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--link", required=True, help="value of the dashboard's $link variable")
    parser.add_argument("--dashboard", default="oncall", help="dashboard in dashboards/ (default: oncall)")
    parser.add_argument("--since", default="10m", help="start, as a duration before --until (default: 10m)")
    parser.add_argument("--until", default=None, help="end, unix seconds (default: now)")
    parser.add_argument("--step", type=finite_float, default=None, help="query step in s (default: range/300, at least 5)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="links.yaml whose state dir holds Prometheus's password (default: the shipped one)")
    args = parser.parse_args(argv)
    try:
        end = float(args.until) if args.until else time.time()
        start = end - parse_duration(args.since)
    except ValueError as exc:
        parser.error(str(exc))
    step = args.step if args.step else max(5.0, (end - start) / 300)
    try:
        auth = StackAuth(load_config(args.config).runtime.state_dir).prometheus
        out = render_panels(args.prometheus, args.dashboard, args.link, start, end, args.out, step, auth=auth)
    except (RenderError, CredentialError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
