"""A game day's report: JSON (every number), Markdown (for people and docs/), and per scenario a
timeline PNG of the link's key rate and QBER from Prometheus with the injection, the pages and the
recovery marked."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the headless backend)

from dashboards.render import RenderError, query_range  # noqa: E402
from gameday.runner import Outcome  # noqa: E402
from qkdops.http_client import Auth  # noqa: E402

SIGNALS = (  # (title, PromQL with LINK, unit)
    ("secret key rate", 'rate(qkd_secret_key_bits_total{link="LINK"}[30s]) / 8', "bytes/s"),
    ("QBER (Z)", 'rate(qkd_sifted_bit_errors_total{link="LINK", basis="Z"}[30s]) '
                 '/ rate(qkd_sifted_bits_total{link="LINK", basis="Z"}[30s])', "ratio"),
)


def write(outcomes: Sequence[Outcome], directory: Path, prometheus_url: str, auth: Auth | None) -> Path:
    """Write report.json, report.md and <scenario>.png under ``directory``; returns the Markdown path.
    ``auth``: the stack's Prometheus credentials (the timelines' queries)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps([o.to_json() for o in outcomes], indent=2) + "\n")
    for outcome in outcomes:
        _plot(outcome, directory / f"{outcome.scenario}.png", prometheus_url, auth)
    markdown = directory / "report.md"
    markdown.write_text(_markdown(outcomes))
    return markdown


def _markdown(outcomes: Sequence[Outcome]) -> str:
    when = datetime.fromtimestamp(min(o.started_at for o in outcomes), UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Game day report — {when}", "",
             f"{sum(o.passed for o in outcomes)} of {len(outcomes)} scenarios passed.", "",
             "| scenario | link | fault | result | time to detect (page/ticket delivered, or calibration) | time to recover | unexpected alerts |",
             "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        detect = ", ".join(f"{alert} {'never' if s is None else f'{s:.1f} s'}"
                           + (f" (delivered {o.deliveries[alert]}×)" if o.deliveries.get(alert, 1) != 1 else "")
                           for alert, s in o.detect_s.items()) or "no page expected"
        recover = "-" if o.recover_s is None else f"{o.recover_s:.1f} s"
        lines.append(f"| {o.scenario} | {o.link} | {o.fault} | {'passed' if o.passed else 'FAILED'} | {detect} "
                     f"| {recover} | {', '.join(o.unexpected) or 'none'} |")
    for o in outcomes:
        lines += ["", f"## {o.scenario}: {o.title}", "",
                  f"Limits: detect ≤ {o.limits['detect_s']:g} s, recover ≤ {o.limits['recover_s']:g} s. "
                  f"Chaos Toolkit status: {o.status}{', deviated' if o.deviated else ''}.", ""]
        if o.failed_activities:
            lines += ["Failed activities:", *(f"- {a}" for a in o.failed_activities), ""]
        lines += [f"![timeline]({o.scenario}.png)", "", "| t (s) | event |", "|---:|---|"]
        lines += [f"| {e['t'] - o.started_at:.1f} | {e['what']} |" for e in o.timeline]
    return "\n".join(lines) + "\n"


def _plot(o: Outcome, path: Path, prometheus_url: str, auth: Auth | None) -> None:
    start, end = o.started_at - 60, (o.finished_at or o.started_at) + 15
    fig, axes = plt.subplots(len(SIGNALS), 1, figsize=(9, 2.4 * len(SIGNALS)), sharex=True)
    for ax, (title, expr, unit) in zip(axes, SIGNALS):
        try:
            series = query_range(prometheus_url, expr.replace("LINK", o.link), start, end, max(1.0, (end - start) / 300), auth)
        except RenderError as exc:
            series = []
            ax.text(0.5, 0.5, f"no data: {exc}", transform=ax.transAxes, ha="center", fontsize=8)
        for s in series:
            ax.plot([t - o.started_at for t in s.times], s.values, lw=1.2)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_title(f"{o.link}: {title}", fontsize=9, loc="left")
        for t, label, colour in _marks(o):
            ax.axvline(t - o.started_at, color=colour, lw=0.8, ls="--")
            if ax is axes[0]:
                ax.text(t - o.started_at, ax.get_ylim()[1], f" {label}", fontsize=7, color=colour, va="top", rotation=90)
    axes[-1].set_xlabel("seconds since the run began")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _marks(o: Outcome) -> list[tuple[float, str, str]]:
    marks = []
    if o.injected_at is not None:
        marks.append((o.injected_at, f"{o.fault} injected", "#c4162a"))
        marks += [(o.injected_at + s, f"{alert}", "#fa6400") for alert, s in o.detect_s.items() if s is not None]
        if o.recover_s is not None:
            marks.append((o.injected_at + o.recover_s, "recovered", "#37872d"))
    return marks
