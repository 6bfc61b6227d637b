"""Calibration soak: the shipped fleet and schedule, accelerated, with and without the jobs (run on demand).

    .venv/bin/python bench/soak_calibration.py [--minutes 45] [--speed 10] [--no-jobs]

Runs ``links.yaml``'s links in-process with emulated time ``--speed`` times faster than wall time
(the rig of ``tests/calibration_harness.py``), the control API, and — unless ``--no-jobs`` — the
calibration service with ``calibration_jobs/jobs.yaml``'s jobs at their shipped cadence in emulated
time (cron jobs every 5 emulated minutes), signals from the links' status endpoint. Every half
second it samples each link's phase lock and records each new block's outcome. Prints, for
docs/benchmarks.md: per link the share of samples with the phase lock open and the block outcomes,
and the job runs by outcome (from the scheduler's counters).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calibration_jobs.config import DEFAULT_JOBS_FILE, parse_jobs_config  # noqa: E402
from qkdops.config import DEFAULT_CONFIG  # noqa: E402
from tests import calibration_harness  # noqa: E402

CRON_EMULATED_S = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=45.0, help="emulated minutes")
    parser.add_argument("--speed", type=float, default=10.0, help="emulated seconds per wall second")
    parser.add_argument("--no-jobs", action="store_true", help="run without the calibration service")
    args = parser.parse_args()
    calibration_harness.SPEED = args.speed
    raw = yaml.safe_load(DEFAULT_JOBS_FILE.read_text())
    raw["signals"]["source"] = "status"
    for job in raw["jobs"].values():
        job["trigger"] = {"interval_s": (job["trigger"].get("interval_s") or CRON_EMULATED_S) / args.speed}
    raw["jobs"]["decoy_estimation"]["window_blocks"] = 10
    jobs = parse_jobs_config(raw, DEFAULT_JOBS_FILE)
    links = yaml.safe_load(DEFAULT_CONFIG.read_text())["links"]
    open_lock: collections.Counter[str] = collections.Counter()
    samples: collections.Counter[str] = collections.Counter()
    outcomes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    seen: dict[str, int] = {}
    with calibration_harness.running_fleet(Path(tempfile.mkdtemp()), links, jobs, schedule=not args.no_jobs) as rig:
        end = time.monotonic() + args.minutes * 60.0 / args.speed
        while time.monotonic() < end:
            for link in links:
                status = rig.api.status(link["id"])
                if status["telemetry"].get("phase_locked") is not None:
                    samples[link["id"]] += 1
                    open_lock[link["id"]] += status["telemetry"]["phase_locked"] is False
                last = status["last_block"]
                if last and seen.get(link["id"]) != last["index"]:
                    seen[link["id"]] = last["index"]
                    outcomes[link["id"]][last["reason"]] += 1
            time.sleep(0.5)
        runs = collections.Counter()
        for metric, job, _, _, outcome, value in rig.store.counters():
            if metric == "runs":
                runs[(job, outcome)] += int(value)
    print(f"{args.minutes:g} emulated minutes at {args.speed:g}x, jobs {'off' if args.no_jobs else 'on'}\n")
    print("| link | phase lock open | blocks | aborted (reason: n) |\n|---|---|---|---|")
    for link in links:
        lid = link["id"]
        locked = f"{open_lock[lid] / samples[lid]:.0%}" if samples[lid] else "n/a"
        aborted = {r: n for r, n in outcomes[lid].items() if r != "none"}
        print(f"| {lid} | {locked} | {sum(outcomes[lid].values())} | {aborted or 'none'} |")
    if runs:
        print("\n| job | " + " | ".join(("healthy", "corrected", "failed", "error", "held")) + " |\n|---|---|---|---|---|---|")
        for job in sorted({j for j, _ in runs}):
            print(f"| {job} | " + " | ".join(str(runs[(job, o)]) for o in ("healthy", "corrected", "failed", "error", "held")) + " |")


if __name__ == "__main__":
    main()
