"""Samples into TSDB blocks with ``promtool``, and the recording rules evaluated over them.

Raw samples: ``promtool tsdb create-blocks-from openmetrics`` reads its whole input once per 2-hour
block range it covers (it cannot be told a longer block in Prometheus 2.42), so one input file of
30 days is read 360 times — measured: 5 minutes for 3 M samples. ``OpenMetricsBlocks`` therefore
writes one file per 2-hour range (aligned as the TSDB aligns blocks) and converts each as soon as it
is complete, in a ``promtool`` process beside the emulation, then deletes it.

Recording rules: ``promtool tsdb create-blocks-from rules`` evaluates each rule with range queries
against a Prometheus holding the raw data — and writes one block per rule per 2 hours: with the
shipped ~240 recording rules, ~87,000 blocks for 30 days, which Prometheus has to open and compact
one by one. ``RuleBackfill`` does the same evaluation (``query_range`` of each rule's expression at
its group's interval against a private Prometheus on the history's blocks, the rule's labels set
over the result's, as promtool does) and writes the results through ``OpenMetricsBlocks``: one block
per 2 hours for all rules. Rules read other rules' results, so they are evaluated in dependency
levels, the private Prometheus restarted on the new blocks between levels. The one self-referencing
rule (``slo:sli_data_since:timestamp_seconds``, the SLOs' coverage) cannot be evaluated by a range
query — each evaluation reads the previous one's result — and is computed here from where the
5-minute ratio it follows exists, as the rule's definition says (``since_series``).

Alerting rules: ``create-blocks-from rules`` ignores them, so a backfilled past had no ``ALERTS``
and every alert panel was empty over it. After the last recording level, each alerting rule's
expression is range-queried at its group's interval and run through Prometheus's alert state
machine (``alert_states``: pending, ``for``, firing, ``keep_firing_for``, resolution), and
``ALERTS`` / ``ALERTS_FOR_STATE`` are written as the rule manager writes them. One difference
stays: the rule manager ends a resolved alert's series with a staleness marker, which
OpenMetrics text cannot carry (a stale marker is one particular NaN bit pattern), so an instant
query over the history still finds an ended alert for up to the 5-minute lookback — the same as
every backfilled series that ends, recording rules included.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from monitoring.slo import DATA_SINCE
from qkdops import credentials
from qkdops.durations import seconds
from qkdops.http_client import Auth, PrometheusClient, PrometheusUnreachable
from qkdops.processes import log_tail

log = logging.getLogger("qkdops.history")
BLOCK_S = 7200                    # the TSDB's block range (tsdb.DefaultBlockDuration)
LOOKBACK_S = 300                  # Prometheus' instant-vector lookback (the since rule's tolerance)
QUERY_CHUNK_S = 86400             # one range query per rule per day at most…
MAX_QUERY_POINTS = 10_000         # …and under Prometheus' 11,000 points per series of a range query (query_chunk_s)
_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_RANGE_RE = re.compile(r"\[(\d+[smhdwy])\]")
# A rule over a window of a day or more (the SLOs' 1d/3d/30d ratios, the visibility baseline) reads up
# to 30 days of 30-s samples at every evaluation: at the history's 30-s step their level took most of a
# 30-day backfill's rule time (over 10 minutes of one core, measured). Evaluated every 4 minutes instead — under the 5-minute lookback,
# so every instant still finds a sample — it is an eighth of that; a day-long window moves little in 4 min.
LONG_WINDOW_S = 86400.0
LONG_WINDOW_STEP_S = 240.0
QUERY_THREADS = 2                 # range queries at once: the private Prometheus evaluates each on one core


class HistoryError(RuntimeError):
    """A history run could not finish: the message says which step and why."""


class HistoryInputError(HistoryError):
    """A history run was asked for something it cannot do (an option or input file is bad): the
    commands exit 2 for it, before any work."""


def _timestamp(t: float) -> bytes:
    return (b"%d" % t) if t == int(t) else repr(round(t, 3)).encode()


class OpenMetricsBlocks:
    """Samples in time order → one OpenMetrics file per 2-hour block range → promtool → ``out_dir``.

    ``add_exposition`` takes a scrape (text format 0.0.4) with its target's labels; ``add_series``
    takes already-labelled samples. Conversion of a finished range runs while the next is written;
    ``close`` converts the last one and waits. HistoryError when promtool fails (its output quoted).
    """

    def __init__(self, work_dir: Path, out_dir: Path, promtool: str) -> None:
        self.work_dir, self.out_dir, self.promtool = work_dir, out_dir, promtool
        work_dir.mkdir(parents=True, exist_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._range: int | None = None
        self._file: Any = None
        self._path: Path | None = None
        self._converting: tuple[subprocess.Popen[bytes], Path] | None = None
        self.samples = 0
        self.blocks = 0

    def add_exposition(self, t: float, job: str, instance: str, text: bytes, up: bool = True) -> None:
        out = self._file_for(t)
        ts = b" " + _timestamp(t) + b"\n"
        extra = f'job="{_escape(job)}",instance="{_escape(instance)}"'.encode()
        lines = [b"up{" + extra + b"} " + (b"1" if up else b"0") + ts]
        for line in text.split(b"\n"):
            if not line or line[0] == 35:   # '#': HELP and TYPE carry nothing a block stores
                continue
            head, value = line.rsplit(b" ", 1)
            head = head[:-1] + b"," + extra + b"}" if head[-1] == 125 else head + b"{" + extra + b"}"
            lines.append(head + b" " + value + ts)
        out.writelines(lines)
        self.samples += len(lines)

    def add_series(self, t: float, series: bytes, value: float) -> None:
        """One sample of ``series`` (``name{labels}``, escaped) at ``t``."""
        self._file_for(t).write(series + b" " + _value(value) + b" " + _timestamp(t) + b"\n")
        self.samples += 1

    def add_lines(self, t: float, lines: list[bytes]) -> None:
        """OpenMetrics sample lines (``series value timestamp``) of the block range holding ``t``."""
        self._file_for(t).writelines(lines)
        self.samples += len(lines)

    def close(self) -> None:
        self._finish_range()
        self._wait()

    def _file_for(self, t: float) -> Any:
        block = int(t // BLOCK_S)
        if block != self._range:
            if self._range is not None and block < self._range:
                raise ValueError(f"samples out of order: {t} is before the range already written")
            self._finish_range()
            self._range = block
            self._path = self.work_dir / f"samples-{block * BLOCK_S}.om"
            self._file = self._path.open("wb", buffering=1 << 20)
        return self._file

    def _finish_range(self) -> None:
        if self._file is None or self._path is None:
            return
        self._file.write(b"# EOF\n")
        self._file.close()
        self._file = None
        self._wait()
        process = subprocess.Popen([self.promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(self._path), str(self.out_dir)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._converting = (process, self._path)

    def _wait(self) -> None:
        if self._converting is None:
            return
        process, path = self._converting
        self._converting = None
        output, _ = process.communicate()
        if process.returncode != 0:
            raise HistoryError(f"promtool tsdb create-blocks-from openmetrics {path.name} failed "
                               f"(exit {process.returncode}): {output.decode(errors='replace')[-800:].strip()}")
        path.unlink()
        self.blocks += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(v: float) -> bytes:
    if math.isnan(v):
        return b"NaN"
    if math.isinf(v):
        return b"+Inf" if v > 0 else b"-Inf"
    return repr(float(v)).encode()


def series_key(name: str, labels: Mapping[str, str]) -> bytes:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()) if k != "__name__")
    return f"{name}{{{inner}}}".encode()


# ---- recording rules ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str
    labels: Mapping[str, str]
    interval_s: float
    group: str


@dataclass(frozen=True)
class AlertingRule:
    alert: str
    expr: str
    for_s: float
    keep_firing_for_s: float
    labels: Mapping[str, str]
    interval_s: float
    group: str


def _rules(rule_files: Mapping[str, str], default_interval_s: float) -> Iterable[tuple[dict[str, Any], float, str]]:
    """(rule, its group's interval, ``file:group``) for every rule of the rendered rule files (name → text), in order."""
    for name, text in rule_files.items():
        for group in (yaml.safe_load(text) or {}).get("groups", []):
            interval = float(seconds(group["interval"])) if group.get("interval") else default_interval_s
            for rule in group.get("rules", []):
                yield rule, interval, f"{name}:{group['name']}"


def recording_rules(rule_files: Mapping[str, str], default_interval_s: float) -> list[RecordingRule]:
    """Every recording rule of the rendered rule files (name → text), in file and group order."""
    rules = []
    for rule, interval, group in _rules(rule_files, default_interval_s):
        if "record" in rule:
            expr = str(rule["expr"])
            windows = [float(seconds(w)) for w in _RANGE_RE.findall(expr)]
            step = max(interval, LONG_WINDOW_STEP_S) if windows and max(windows) >= LONG_WINDOW_S else interval
            rules.append(RecordingRule(rule["record"], expr, dict(rule.get("labels") or {}), step, group))
    return rules


def alerting_rules(rule_files: Mapping[str, str], default_interval_s: float) -> list[AlertingRule]:
    """Every alerting rule of the rendered rule files, in order. HistoryError for a templated label
    (``{{ … }}``): its value depends on the evaluation, which the backfill does not render."""
    rules = []
    for rule, interval, group in _rules(rule_files, default_interval_s):
        if "alert" in rule:
            labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
            if templated := sorted(k for k, v in labels.items() if "{{" in v):
                raise HistoryError(f"{group}: alert {rule['alert']}: templated label(s) {', '.join(templated)} cannot be backfilled")
            rules.append(AlertingRule(rule["alert"], str(rule["expr"]), float(seconds(rule.get("for") or "0s")),
                                      float(seconds(rule.get("keep_firing_for") or "0s")), labels, interval, group))
    return rules


def alert_states(times: Sequence[float], interval_s: float, for_s: float, keep_firing_for_s: float,
                 last_evaluation: float) -> list[tuple[float, str, float]]:
    """One alert's ``(evaluation time, "pending" | "firing", active since)`` at every evaluation at which it is
    active, given the evaluations at which its expression returned its series (``times``, ascending, on the
    group's grid) — Prometheus's alerting-rule state machine (``rules/alerting.go``, ``AlertingRule.Eval``):
    new → pending since that evaluation, firing once pending for ``for_s`` (at once for 0); an evaluation
    without the series ends a pending alert, and a firing one unless ``keep_firing_for_s`` (counted from
    the first evaluation without it) still holds it; an alert that ended and returns is a new one."""
    out: list[tuple[float, str, float]] = []
    active_at: float | None = None
    firing = False
    kept_evaluations = math.ceil(keep_firing_for_s / interval_s) if keep_firing_for_s > 0 else 0

    def absent(previous: float, evaluations: int) -> None:
        """``evaluations`` evaluations after ``previous`` without the series."""
        nonlocal active_at, firing
        if active_at is None or evaluations <= 0:
            return
        kept = min(evaluations, kept_evaluations) if firing else 0
        out.extend((previous + i * interval_s, "firing", active_at) for i in range(1, kept + 1))
        if kept < evaluations:
            active_at, firing = None, False

    previous: float | None = None
    for t in times:
        if previous is not None:
            absent(previous, round((t - previous) / interval_s) - 1)
        if active_at is None:
            active_at = t
        firing = firing or t - active_at >= for_s
        out.append((t, "firing" if firing else "pending", active_at))
        previous = t
    if previous is not None:
        absent(previous, round((last_evaluation - previous) / interval_s))
    return out


def levels(rules: Sequence[RecordingRule]) -> list[list[RecordingRule]]:
    """The rules in evaluation levels: a rule comes after every rule whose output its expression reads
    (a rule reading its own output — the since rule — only after the others it reads)."""
    recorded = {r.record for r in rules}
    reads = {id(r): {n for n in _NAME_RE.findall(r.expr) if n in recorded and n != r.record} for r in rules}
    level: dict[str, int] = {}
    remaining = list(rules)
    while remaining:
        ready = [r for r in remaining if all(n in level for n in reads[id(r)])
                 and not any(o.record in reads[id(r)] for o in remaining if o is not r)]
        if not ready:
            raise HistoryError("recording rules read each other in a cycle: "
                               + ", ".join(sorted({r.record for r in remaining})))
        for r in ready:
            depth = 1 + max((level[n] for n in reads[id(r)]), default=0)
            level[r.record] = max(level.get(r.record, 0), depth)
        remaining = [r for r in remaining if r not in ready]
    out: dict[int, list[RecordingRule]] = defaultdict(list)
    for r in rules:
        out[level[r.record]].append(r)
    return [out[k] for k in sorted(out)]


def since_series(points: Iterable[float], lookback_s: float = LOOKBACK_S) -> list[tuple[float, float]]:
    """``slo:sli_data_since:timestamp_seconds`` at each evaluation where the 5-minute ratio exists
    (``points``: those evaluation times, ascending): the time its data began, carried on while each
    evaluation finds the previous value within the lookback, restarted after a longer gap — the
    rule ``since and ratio or timestamp(ratio)`` evaluated in sequence (monitoring/slo.py)."""
    out: list[tuple[float, float]] = []
    since = previous = None
    for t in points:
        if since is None or previous is None or t - previous > lookback_s:
            since = t
        out.append((t, since))
        previous = t
    return out


class PrivatePrometheus:
    """A Prometheus of our own on a TSDB directory, for range queries only: loopback, a free port, basic
    auth with a password made for this run, no scrape targets. ``restart`` loads blocks added since."""

    def __init__(self, binary: str, data_dir: Path, work_dir: Path, ready_timeout_s: float = 120.0) -> None:
        self.binary, self.data_dir, self.work_dir, self.ready_timeout_s = binary, data_dir, work_dir, ready_timeout_s
        password = secrets.token_urlsafe(24)
        self.web_config = work_dir / "web.yml"
        credentials.write_web_config(self.web_config, password)
        self.config = work_dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1m"}}), encoding="utf-8")
        self.auth = Auth(credentials.basic(credentials.USER, password), "history")
        self.process: subprocess.Popen[bytes] | None = None
        self.client: PrometheusClient | None = None
        self.log = work_dir / "prometheus.log"

    def start(self) -> PrometheusClient:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([
                self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={self.web_config}",
                "--storage.tsdb.retention.time=100y", "--query.timeout=10m", "--query.max-samples=200000000"],
                stdout=out, stderr=subprocess.STDOUT)
        client = PrometheusClient(url, self.auth, timeout_s=600.0)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.process.poll() is not None:
                raise HistoryError(f"the private Prometheus exited ({self.process.returncode}): {log_tail(self.log)}")
            try:
                client.get("/api/v1/status/tsdb", timeout_s=5.0)
                break
            except (PrometheusUnreachable, ValueError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise HistoryError(f"the private Prometheus was not ready within {self.ready_timeout_s:.0f} s: {log_tail(self.log)}") from None
                time.sleep(0.2)
        self.client = client
        return client

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> PrometheusClient:
        self.stop()
        return self.start()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RuleBackfill:
    """Evaluate ``rules`` level by level over [start, end] against a private Prometheus on ``data_dir``
    (which holds the raw blocks) and write each level's results there as blocks."""

    def __init__(self, prometheus: PrivatePrometheus, rules: Sequence[RecordingRule], start: float, end: float,
                 work_dir: Path, promtool: str, alerts: Sequence[AlertingRule] = ()) -> None:
        self.prometheus, self.rules, self.alerts, self.start, self.end = prometheus, list(rules), list(alerts), start, end
        self.work_dir, self.promtool = work_dir, promtool
        self.samples = 0
        self.alerts_fired = 0   # firing episodes: (alert, labels, active since) that reached firing

    def run(self, progress: Callable[[int], None] | None = None) -> None:
        """``progress(rules done)`` after each rule of each level, then after the alerting rules (evaluated
        last: they read the recorded series)."""
        client = self.prometheus.start()
        try:
            done = 0
            for level in levels(self.rules):
                writer = OpenMetricsBlocks(self.work_dir / "rules", self.prometheus.data_dir, self.promtool)
                pending: dict[int, list[bytes]] = defaultdict(list)
                for rule in level:   # the since rule first: its samples span the whole history
                    if rule.record == DATA_SINCE:
                        self._since(client, rule, pending)
                # one day at a time, every rule of the level: each 2-hour file then holds all of them
                evaluated = [r for r in level if r.record != DATA_SINCE]
                with ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="qkdops-history-rules") as pool:
                    chunk_s = query_chunk_s(min((r.interval_s for r in evaluated), default=QUERY_CHUNK_S))
                    for chunk_start in _chunks(self.start, self.end, chunk_s):
                        chunk_end = min(chunk_start + chunk_s, self.end)
                        for lines in pool.map(lambda r: self._evaluate(client, r, chunk_start, chunk_end), evaluated):
                            for block, line in lines:
                                pending[block].append(line)
                        self._flush(writer, pending, before=chunk_end)
                self._flush(writer, pending, before=math.inf)
                writer.close()
                self.samples += writer.samples
                done += len(level)
                if progress is not None:
                    progress(done)
                client = self.prometheus.restart()
            if self.alerts:
                self._alerting(client)
                if progress is not None:
                    progress(done + len(self.alerts))
        finally:
            self.prometheus.stop()

    def _alerting(self, client: PrometheusClient) -> None:
        """``ALERTS`` and ``ALERTS_FOR_STATE`` as the rule manager writes them (``alert_states``), from
        each alerting rule's expression evaluated at its group's interval."""
        writer = OpenMetricsBlocks(self.work_dir / "alerts", self.prometheus.data_dir, self.promtool)
        pending: dict[int, list[bytes]] = defaultdict(list)
        with ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="qkdops-history-alerts") as pool:
            found = pool.map(lambda rule: self._presence(client, rule.expr, rule.interval_s), self.alerts)
            for rule, present in zip(self.alerts, found):
                last = math.floor(self.end / rule.interval_s) * rule.interval_s
                for metric, times in present.items():
                    labels = {**{k: v for k, v in metric if k != "__name__"}, **rule.labels, "alertname": rule.alert}
                    keys = {state: series_key("ALERTS", {**labels, "alertstate": state}) for state in ("pending", "firing")}
                    for_state = series_key("ALERTS_FOR_STATE", labels)
                    fired: set[float] = set()
                    for t, state, since in alert_states(times, rule.interval_s, rule.for_s, rule.keep_firing_for_s, last):
                        stamp = b" " + _timestamp(t) + b"\n"
                        pending[int(t // BLOCK_S)] += [keys[state] + b" 1" + stamp, for_state + b" " + _value(since) + stamp]
                        if state == "firing":
                            fired.add(since)
                    self.alerts_fired += len(fired)
        self._flush(writer, pending, before=math.inf)
        writer.close()
        self.samples += writer.samples

    def _presence(self, client: PrometheusClient, expr: str, interval_s: float) -> dict[tuple[tuple[str, str], ...], list[float]]:
        """The evaluation times (on the ``interval_s`` grid, ascending) at which ``expr`` returned each of its series."""
        present: dict[tuple[tuple[str, str], ...], list[float]] = defaultdict(list)
        chunk_s = query_chunk_s(interval_s)
        for chunk_start in _chunks(self.start, self.end, chunk_s):
            chunk_end = min(chunk_start + chunk_s, self.end)
            first = math.ceil(chunk_start / interval_s) * interval_s
            if first > chunk_end:
                continue
            for series in client.query_range(expr, first, chunk_end, interval_s).get("result", []):
                times = present[tuple(sorted(series["metric"].items()))]
                times.extend(float(t) for t, _ in series["values"] if not times or float(t) > times[-1])
        return present

    def _evaluate(self, client: PrometheusClient, rule: RecordingRule, start: float, end: float) -> list[tuple[int, bytes]]:
        """The rule's samples over [start, end) (the last chunk: end included), each with its block range."""
        first = math.ceil(start / rule.interval_s) * rule.interval_s   # group evaluations align to the interval
        if first > end:
            return []
        data = client.query_range(rule.expr, first, end, rule.interval_s)
        lines = []
        for series in data.get("result", []):
            labels = {**series["metric"], **rule.labels}
            key = series_key(rule.record, labels)
            for t, v in series["values"]:
                t = float(t)
                if t >= end and end < self.end:   # the next chunk's first evaluation
                    continue
                lines.append((int(t // BLOCK_S), key + b" " + _value(float(v)) + b" " + _timestamp(t) + b"\n"))
        return lines

    def _since(self, client: PrometheusClient, rule: RecordingRule, pending: dict[int, list[bytes]]) -> None:
        ratio = "slo:sli_error:ratio_rate5m"
        selector = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(rule.labels.items()))
        for metric, times in self._presence(client, f"{ratio}{{{selector}}}", rule.interval_s).items():
            key = series_key(rule.record, {**dict(metric), **rule.labels})
            for t, value in since_series(times):
                pending[int(t // BLOCK_S)].append(key + b" " + _value(value) + b" " + _timestamp(t) + b"\n")

    def _flush(self, writer: OpenMetricsBlocks, pending: dict[int, list[bytes]], before: float) -> None:
        for block in sorted(b for b in pending if (b + 1) * BLOCK_S <= before):
            writer.add_lines(block * BLOCK_S, pending.pop(block))


def query_chunk_s(interval_s: float) -> float:
    """The span of one range query at ``interval_s``: a day, or — below a ~8-s step, where a day is more
    points than Prometheus answers (``--history-step 5s`` failed on any day-long history) — the most
    whole TSDB blocks (2 h) under ``MAX_QUERY_POINTS`` (one block at least: 7,200 points at 1 s)."""
    return min(QUERY_CHUNK_S, max(BLOCK_S, (MAX_QUERY_POINTS * interval_s) // BLOCK_S * BLOCK_S))


def _chunks(start: float, end: float, size: float) -> Iterable[float]:
    t = start
    while t < end:
        yield t
        t += size


def move_blocks(source: Path, target: Path, copy: bool = False) -> list[str]:
    """Move (``copy``: copy) every TSDB block — a directory with a meta.json — from ``source`` into
    ``target``; a block arrives whole (copied beside it, then renamed), as Prometheus expects."""
    target.mkdir(parents=True, exist_ok=True)
    moved = []
    for block in sorted(p for p in source.iterdir() if (p / "meta.json").is_file()):
        if copy:
            staging = target / f"{block.name}.tmp-for-creation"
            shutil.copytree(block, staging)
            staging.rename(target / block.name)
        else:
            shutil.move(str(block), str(target / block.name))
        moved.append(block.name)
    return moved
