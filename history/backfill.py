"""``qkdops history``: emulate the fleet's past, turn it into TSDB blocks, hand them to the local Prometheus.

Steps, each with a progress bar on stderr: emulate [end − days, end] (``emulation.HistoryRun``), the
exporters' samples written into 2-hour blocks by ``promtool`` as they come (``tsdb.OpenMetricsBlocks``);
evaluate the recording rules over them level by level (``tsdb.RuleBackfill``); move every block into
the Prometheus data directories. The history's block archive (its blocks' counts and results) stays
in ``<state_dir>/history/blocks.sqlite``: the ground truth the SLOs' numbers can be checked against.

``end``: now — or, when the local Prometheus already holds live data, where that data begins, so the
history never overlaps what was scraped (a running Prometheus picks the blocks up within a minute).
A history ending more than a few minutes before live data begins leaves a gap the SLOs' coverage
counts as such (monitoring/slo.py); ``qkdops up --history`` closes it by emulating up to the moment
the stack starts (``extend_to``).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from calibration_jobs.config import JobsConfig
from history.emulation import HistoryRun, Target, Targets
from history.plan import Plan
from history.tsdb import (HistoryError, HistoryInputError, OpenMetricsBlocks, PrivatePrometheus, RuleBackfill, alerting_rules, move_blocks,
                          recording_rules)
from monitoring.config import MonitoringConfig
from monitoring.prometheus import RETENTION_DAYS, local_hosts
from monitoring.rules import render_rule_files
from qkdops.config import FleetConfig
from qkdops.processes import find_binary, pid_alive

HISTORY_DIR = "history"           # under the state dir: the history's block archive and calibration store
WORK_DIR = "history-work"         # under the state dir: removed when the run ends
MAX_DAYS = float(RETENTION_DAYS)   # what the local Prometheus keeps
SCRATCH = Path("/dev/shm")
SCRATCH_PREFIX = "qkdops-history-"   # + the pid of the run that owns it
KEY_STORES = ("kme.sqlite", "keys.sqlite")   # a --deliver-keys shard's KME store and hand-off buffer (with -wal, -shm)
DEFAULT_STEP_S = 30.0             # two samples in every 1-minute rate() window the rules use


@dataclass(frozen=True)
class BackfillResult:
    start: float
    end: float
    links: int
    raw_samples: int
    rule_samples: int
    blocks: int
    incidents: int
    emulation_s: float
    rules_s: float
    alerts_fired: int
    key_store_bytes: int = 0   # --deliver-keys: the KME stores' and hand-off buffers' files at the end (scratch, deleted)

    def summary(self) -> str:
        days = (self.end - self.start) / 86400
        return (f"history: {days:g} day(s) of {self.links} link(s), {self.incidents} incident(s); "
                f"{self.raw_samples:,} exporter samples in {self.emulation_s:.0f} s, {self.rule_samples:,} rule samples "
                f"(recordings, ALERTS: {self.alerts_fired} alert(s) fired) in {self.rules_s:.0f} s; {self.blocks} block(s) loaded"
                + (f"; KME stores and hand-off buffers {self.key_store_bytes / 1e6:,.1f} MB at the end (deleted)"
                   if self.key_store_bytes else ""))


def targets(config: FleetConfig, monitoring: MonitoringConfig) -> Targets:
    """The scrape targets' labels as the local stack's Prometheus gives them (job, instance)."""
    rt = config.runtime
    hosts = local_hosts(rt, rt.bind)
    assert hosts.device is not None and hosts.calibration is not None
    return Targets(Target(monitoring.jobs.device, hosts.device), Target(monitoring.jobs.postprocessing, hosts.postprocessing),
                   Target(monitoring.jobs.calibration, hosts.calibration))


def backfill(config: FleetConfig, monitoring: MonitoringConfig, jobs: JobsConfig, plan: Plan, days: float, end: float,
             data_dirs: Sequence[Path], step_s: float = DEFAULT_STEP_S, extend_to: bool = False,
             progress: bool = True, processes: int | None = None, deliver_keys: bool = False) -> BackfillResult:
    """Backfill ``days`` of history ending at ``end`` into every Prometheus data dir of ``data_dirs``.
    ``extend_to``: after the first pass, keep emulating up to the wall clock (minutes, quickly) so the
    history ends seconds before the caller starts the stack. ``processes``: how many processes emulate
    the links, each a shard of the fleet (``FleetConfig.shard``; default: one per CPU, at most one per link).
    ``deliver_keys``: keys go through hand-off into scratch KME stores (``history.emulation``)."""
    if not 0 < days <= MAX_DAYS:
        raise HistoryInputError(f"days of history: expected more than 0 and at most {MAX_DAYS:g} (the local Prometheus' "
                                f"retention), got {days:g}")
    promtool, prometheus = find_binary(("promtool",), HistoryError), find_binary(("prometheus",), HistoryError)
    work = config.runtime.state_dir / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    end = step_s * (end // step_s)
    start = end - days * 86400
    shards = max(1, min(processes or os.cpu_count() or 1, len(config.links)))
    # the emulated fleet's archive and calibration store take a write per block and per job run:
    # on tmpfs when there is one (measured: a fifth less time), moved to the state dir at the end
    scratch_root = SCRATCH if SCRATCH.is_dir() else Path(tempfile.gettempdir())
    _remove_dead_scratch(scratch_root)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=scratch_root))
    try:
        started = time.monotonic()
        end, samples, incidents, store_bytes = _emulate(config, monitoring, jobs, plan, start, end, step_s, shards, extend_to,
                                                        progress, work, scratch, promtool, deliver_keys)
        emulated = time.monotonic() - started
        tsdb_dir = work / "tsdb"
        tsdb_dir.mkdir()
        for i in range(shards):
            move_blocks(work / f"tsdb-{i}", tsdb_dir)
        rule_files = render_rule_files(monitoring)
        rules, alerts = recording_rules(rule_files, step_s), alerting_rules(rule_files, step_s)
        started = time.monotonic()
        backfiller = RuleBackfill(PrivatePrometheus(prometheus, tsdb_dir, work), rules, start, end, work, promtool, alerts)
        with _bar(progress, len(rules) + len(alerts), "rules", "rule") as bar:
            backfiller.run(lambda done: bar.update(done - bar.n))
        rules_s = time.monotonic() - started
        for target in data_dirs[1:]:   # an HA pair: each replica its own copy
            move_blocks(tsdb_dir, target, copy=True)
        blocks = len(move_blocks(tsdb_dir, data_dirs[0]))
        _keep_archives(scratch, shards, config.runtime.state_dir / HISTORY_DIR)
        return BackfillResult(start, end, len(config.links), samples, backfiller.samples, blocks, incidents, emulated, rules_s,
                              backfiller.alerts_fired, store_bytes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _remove_dead_scratch(root: Path) -> None:
    """Scratch dirs of history runs that were killed (tmpfs is memory: nobody else frees it)."""
    for path in root.glob(f"{SCRATCH_PREFIX}*"):
        pid = path.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _emulate(config: FleetConfig, monitoring: MonitoringConfig, jobs: JobsConfig, plan: Plan, start: float, end: float,
             step_s: float, shards: int, extend_to: bool, progress: bool, work: Path, scratch: Path,
             promtool: str, deliver_keys: bool) -> tuple[float, int, int, int]:
    """Emulate every shard (in its own process when there are several) → (end reached, samples, incidents,
    bytes of the key stores' files)."""
    context = multiprocessing.get_context("fork")
    done = [context.Value("d", 0.0) for _ in range(shards)]
    results = context.Queue()
    arguments = [(i, shards, config, monitoring, jobs, plan, start, end, step_s, extend_to, work, scratch, promtool, done[i], results,
                  deliver_keys) for i in range(shards)]
    processes = [context.Process(target=_emulate_shard, args=a, name=f"qkdops-history-{a[0]}", daemon=True)
                 for a in arguments] if shards > 1 else []
    reports: dict[int, tuple[str | None, float, int, int, int]] = {}
    with _bar(progress, (end - start) * shards, "emulating", "s") as bar:
        if not processes:
            _emulate_shard(*arguments[0])
        for process in processes:
            process.start()
        while len(reports) < shards:
            try:
                i, error, reached, samples, incidents, store_bytes = results.get(timeout=0.5)
                reports[i] = (error, reached, samples, incidents, store_bytes)
            except queue.Empty:
                if dead := [p for p in processes if p.exitcode not in (None, 0)]:
                    raise HistoryError(f"history: emulation process {dead[0].name} died (exit {dead[0].exitcode})") from None
            bar.total = max(bar.total, sum(d.value for d in done))
            bar.update(sum(d.value for d in done) - bar.n)
    for process in processes:
        process.join()
    if errors := [f"shard {i}: {r[0]}" for i, r in sorted(reports.items()) if r[0]]:
        raise HistoryError("history: emulation failed: " + "; ".join(errors))
    return (min(r[1] for r in reports.values()), sum(r[2] for r in reports.values()), sum(r[3] for r in reports.values()),
            sum(r[4] for r in reports.values()))


def _emulate_shard(index: int, shards: int, config: FleetConfig, monitoring: MonitoringConfig, jobs: JobsConfig, plan: Plan,
                   start: float, end: float, step_s: float, extend_to: bool, work: Path, scratch: Path, promtool: str,
                   done: Any, results: Any, deliver_keys: bool = False) -> None:
    """One shard's emulation, its samples into blocks in ``work/tsdb-<index>``; reports on ``results``
    (with the size of its key stores' files when it delivered keys)."""
    try:
        writer = OpenMetricsBlocks(work / f"raw-{index}", work / f"tsdb-{index}", promtool)
        fleet_dir = scratch / f"fleet-{index}"
        run = HistoryRun(config.shard(index, shards) if shards > 1 else config, jobs, plan, start, end, step_s,
                         fleet_dir, targets(config, monitoring), writer.add_exposition, deliver_keys=deliver_keys)
        try:
            def report(seconds: float) -> None:
                done.value = seconds
            run.run(report)
            while extend_to and time.time() - run.end > 2 * step_s:
                run.extend(step_s * (time.time() // step_s))
                run.run(report)
        finally:
            run.close()
            writer.close()
        store_bytes = sum(p.stat().st_size for name in KEY_STORES for p in fleet_dir.glob(f"{name}*"))
        results.put((index, None, run.end, writer.samples, run.incidents_started, store_bytes))
    except Exception as exc:   # reported to the parent, which names the shard
        results.put((index, f"{type(exc).__name__}: {exc}", 0.0, 0, 0, 0))


def _keep_archives(scratch: Path, shards: int, history_dir: Path) -> None:
    """The shards' block archives merged into ``history_dir/blocks.sqlite`` (the history's ground truth);
    their calibration stores kept beside it, one per shard."""
    shutil.rmtree(history_dir, ignore_errors=True)
    history_dir.mkdir(parents=True)
    archive = history_dir / "blocks.sqlite"
    shutil.copy(scratch / "fleet-0" / "blocks.sqlite", archive)
    with sqlite3.connect(archive) as db:
        for i in range(1, shards):
            db.execute("ATTACH DATABASE ? AS shard", (str(scratch / f"fleet-{i}" / "blocks.sqlite"),))
            db.execute("INSERT INTO blocks SELECT * FROM shard.blocks")
            db.execute("INSERT INTO results SELECT * FROM shard.results")
            db.commit()
            db.execute("DETACH DATABASE shard")
    for i in range(shards):
        shutil.copy(scratch / f"fleet-{i}" / "calibration.sqlite", history_dir / f"calibration-{i}.sqlite")


def _bar(enabled: bool, total: float, what: str, unit: str) -> tqdm:
    return tqdm(total=total, desc=f"history: {what}", unit=unit, unit_scale=True, disable=None if enabled else True,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
