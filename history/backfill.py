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

import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from calibration_jobs.config import JobsConfig
from history.emulation import HistoryRun, Target, Targets
from history.plan import Plan
from history.tsdb import HistoryError, OpenMetricsBlocks, PrivatePrometheus, RuleBackfill, move_blocks, recording_rules
from monitoring.config import MonitoringConfig
from monitoring.prometheus import RETENTION_DAYS, local_hosts
from monitoring.rules import render_rule_files
from qkdops.config import FleetConfig

HISTORY_DIR = "history"           # under the state dir: the history's block archive and calibration store
WORK_DIR = "history-work"         # under the state dir: removed when the run ends
MAX_DAYS = float(RETENTION_DAYS)   # what the local Prometheus keeps
SCRATCH = Path("/dev/shm")
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

    def summary(self) -> str:
        days = (self.end - self.start) / 86400
        return (f"history: {days:g} days of {self.links} link(s), {self.incidents} incident(s); "
                f"{self.raw_samples:,} exporter samples in {self.emulation_s:.0f} s, {self.rule_samples:,} recording-rule "
                f"samples in {self.rules_s:.0f} s; {self.blocks} block(s) loaded")


def find_tool(name: str) -> str:
    if (path := shutil.which(name)) is None:
        raise HistoryError(f"{name} not found on PATH (Debian: apt-get install prometheus; README: Quick start)")
    return path


def targets(config: FleetConfig, monitoring: MonitoringConfig) -> Targets:
    """The scrape targets' labels as the local stack's Prometheus gives them (job, instance)."""
    rt = config.runtime
    hosts = local_hosts(rt, rt.bind)
    assert hosts.device is not None and hosts.calibration is not None
    return Targets(Target(monitoring.jobs.device, hosts.device), Target(monitoring.jobs.postprocessing, hosts.postprocessing),
                   Target(monitoring.jobs.calibration, hosts.calibration))


def backfill(config: FleetConfig, monitoring: MonitoringConfig, jobs: JobsConfig, plan: Plan, days: float, end: float,
             data_dirs: Sequence[Path], step_s: float = DEFAULT_STEP_S, extend_to: bool = False,
             progress: bool = True) -> BackfillResult:
    """Backfill ``days`` of history ending at ``end`` into every Prometheus data dir of ``data_dirs``.
    ``extend_to``: after the first pass, keep emulating up to the wall clock (minutes, quickly) so the
    history ends seconds before the caller starts the stack."""
    if not 0 < days <= MAX_DAYS:
        raise HistoryError(f"--days: expected more than 0 and at most {MAX_DAYS:g} (the local Prometheus' retention), got {days:g}")
    promtool, prometheus = find_tool("promtool"), find_tool("prometheus")
    work = config.runtime.state_dir / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    tsdb_dir = work / "tsdb"
    end = step_s * (end // step_s)
    start = end - days * 86400
    writer = OpenMetricsBlocks(work / "raw", tsdb_dir, promtool)
    started = time.monotonic()
    # the emulated fleet's archive and calibration store take a write per block and per job run:
    # on tmpfs when there is one (measured: a fifth less time), moved to the state dir at the end
    fleet_dir = Path(tempfile.mkdtemp(prefix="qkdops-history-", dir=SCRATCH if SCRATCH.is_dir() else None))
    try:
        return _backfill(config, monitoring, jobs, plan, start, end, step_s, data_dirs, extend_to, progress,
                         work, tsdb_dir, fleet_dir, writer, promtool, prometheus, started)
    finally:
        shutil.rmtree(fleet_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _backfill(config: FleetConfig, monitoring: MonitoringConfig, jobs: JobsConfig, plan: Plan, start: float, end: float,
              step_s: float, data_dirs: Sequence[Path], extend_to: bool, progress: bool, work: Path, tsdb_dir: Path,
              fleet_dir: Path, writer: OpenMetricsBlocks, promtool: str, prometheus: str, started: float) -> BackfillResult:
    state_dir = config.runtime.state_dir
    run = HistoryRun(config, jobs, plan, start, end, step_s, fleet_dir, targets(config, monitoring), writer.add_exposition)
    try:
        with _bar(progress, end - start, "emulating", "s") as bar:
            run.run(lambda done: bar.update(done - bar.n))
            while extend_to and time.time() - run.end > 2 * step_s:
                new_end = step_s * (time.time() // step_s)
                bar.total = new_end - start
                run.extend(new_end)
                run.run(lambda done: bar.update(done - bar.n))
        end = run.end
    finally:
        run.close()
        writer.close()
    emulated = time.monotonic() - started
    rules = recording_rules(render_rule_files(monitoring), step_s)
    started = time.monotonic()
    backfiller = RuleBackfill(PrivatePrometheus(prometheus, tsdb_dir, work), rules, start, end, work, promtool)
    with _bar(progress, len(rules), "recording rules", "rule") as bar:
        backfiller.run(lambda done: bar.update(done - bar.n))
    rules_s = time.monotonic() - started
    for target in data_dirs[1:]:   # an HA pair: each replica its own copy
        move_blocks(tsdb_dir, target, copy=True)
    blocks = len(move_blocks(tsdb_dir, data_dirs[0]))
    history_dir = state_dir / HISTORY_DIR
    shutil.rmtree(history_dir, ignore_errors=True)
    history_dir.mkdir(parents=True)
    for name in ("blocks.sqlite", "calibration.sqlite"):
        if (fleet_dir / name).exists():
            shutil.move(str(fleet_dir / name), str(history_dir / name))
    return BackfillResult(start, end, len(config.links), writer.samples, backfiller.samples, blocks, run.incidents_started,
                          emulated, rules_s)


def _bar(enabled: bool, total: float, what: str, unit: str) -> tqdm:
    return tqdm(total=total, desc=f"history: {what}", unit=unit, unit_scale=True, disable=None if enabled else True,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
