"""The scheduler as a process: restart loses no job and never runs one job twice at once.

``qkdops scheduler`` runs as a child process against an in-process fleet and control API. It is
killed with SIGKILL in the middle of a run (a polarization realignment waiting for a clean block to
verify against, during a fibre cut) and started again: the stored schedule comes back whole, the
interrupted run is recorded as such, its lease is broken and the job runs again — and no two runs of
one job on one link ever overlap. A second scheduler on the same state directory is refused, and a
run due while the scheduler was down is counted as a misfire.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from calibration_jobs.config import DEFAULT_JOBS_FILE
from calibration_jobs.store import CalibrationStore
from control_api import server as control_api
from qkdops.config import load_config
from qkdops.control_client import ControlClient
from qkdops.runtime.fleet import Fleet
from tests.calibration_harness import BB84, TOKEN
from tests.stack_helpers import free_ports, wait_for

pytestmark = pytest.mark.slow
SLOW_BLOCKS = {**BB84, "id": "bb84-slow", "block_pulses": 4.0e9}  # 4-s blocks: verification waits seconds


def write_configs(directory: Path) -> tuple[Path, Path]:
    control, metrics = free_ports(2)
    links = directory / "links.yaml"
    links.write_text(yaml.safe_dump({"runtime": {"state_dir": str(directory / "state"), "control_port": control,
                                                 "calibration_exporter_port": metrics}, "links": [SLOW_BLOCKS]}))
    raw = yaml.safe_load(DEFAULT_JOBS_FILE.read_text())
    raw["signals"]["source"] = "status"
    raw["defaults"].update(misfire_grace_s=1, retry={"max_attempts": 50, "backoff_s": 0, "backoff_max_s": 0})
    for job in raw["jobs"].values():
        job["trigger"] = {"interval_s": 0.5}
    raw["jobs"]["decoy_estimation"].update(trigger={"interval_s": 6}, misfire_grace_s=1)
    jobs = directory / "jobs.yaml"
    jobs.write_text(yaml.safe_dump(raw))
    return links, jobs


@contextmanager
def fleet_and_api(links: Path) -> Iterator[None]:
    config = load_config(links)
    fleet = Fleet(config)
    server = control_api.serve(fleet, config.runtime, TOKEN)
    fleet.start(0.05)
    try:
        yield
    finally:
        server.stop()
        fleet.stop()


def start_scheduler(links: Path, jobs: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "QKDOPS_API_TOKEN": TOKEN}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "qkdops_cli.cli", "scheduler", "--config", str(links), "--jobs", str(jobs)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
        return r.status == 200


def schedule(state: Path) -> dict[str, float]:
    with sqlite3.connect(state / "calibration-schedule.sqlite") as db:
        return dict(db.execute("SELECT id, next_run_time FROM apscheduler_jobs").fetchall())


def test_restart_after_kill_loses_no_job_and_never_overlaps_runs(tmp_path: Path) -> None:
    links, jobs = write_configs(tmp_path)
    state, port = tmp_path / "state", load_config(links).runtime.calibration_exporter_port
    log = tmp_path / "scheduler.log"
    with fleet_and_api(links):
        first = start_scheduler(links, jobs, log)
        try:
            wait_for(lambda: healthy(port), 30, "scheduler /healthz")
            before = schedule(state)
            assert set(before) == {f"{job}@bb84-slow" for job in
                                   ("intensity_retune", "polarization_realign", "detector_regate", "decoy_estimation")}
            second = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "scheduler", "--config", str(links), "--jobs", str(jobs)],
                                    env={**os.environ, "QKDOPS_API_TOKEN": TOKEN}, capture_output=True, text=True, timeout=60)
            assert second.returncode == 1 and "already runs" in second.stderr, second.stderr
            api = ControlClient(f"http://127.0.0.1:{load_config(links).runtime.control_port}", TOKEN)
            api.inject("bb84-slow", "fiber_cut", {})
            cut_at = time.time()
            store = CalibrationStore(state / "calibration.sqlite")
            # a run begun well into the cut waits for a clean block (a run begun before it can end in ms);
            # pick one begun in the first half of a 4-s block, so the block that ends it is seconds away
            # (a run caught just before a block closes finished between the poll and the kill: CI flake)

            def mid_run() -> list[dict]:
                last_end = (api.status("bb84-slow")["last_block"] or {}).get("end_timestamp") or 0.0
                if time.time() - last_end > 2.0:
                    return []
                return [r for r in store.runs("polarization_realign", "bb84-slow", 50)
                        if r["finished_at"] is None and r["started_at"] > max(cut_at + 1.0, last_end)]
            # freeze the scheduler, then check the run is still in flight: a run seen by the poll can
            # still finish before a plain kill lands (CI flake); frozen, it cannot, so kill it there
            in_flight: list[dict] = []
            for _ in range(5):
                wait_for(mid_run, 60, "a realignment mid-run", interval_s=0.05)
                first.send_signal(signal.SIGSTOP)
                in_flight = [r for r in store.runs("polarization_realign", "bb84-slow", 50) if r["finished_at"] is None]
                if in_flight:
                    break
                first.send_signal(signal.SIGCONT)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            assert len(in_flight) == 1, in_flight  # the run the kill cut short
            assert [r["id"] for r in store.runs("polarization_realign", "bb84-slow", 50) if r["finished_at"] is None] \
                == [in_flight[0]["id"]]
        finally:
            if first.poll() is None:
                first.kill()
        killed_at = time.time()
        due = schedule(state)["decoy_estimation@bb84-slow"]
        time.sleep(max(0.0, due + 2.0 - time.time()))  # a decoy run falls due while down, past its 1-s grace
        restarted = start_scheduler(links, jobs, log)
        try:
            wait_for(lambda: healthy(port), 30, "restarted scheduler /healthz")
            interrupted = wait_for(lambda: [r for r in store.runs("polarization_realign", "bb84-slow", 200)
                                            if r["id"] == in_flight[0]["id"] and r["outcome"] == "interrupted"], 30,
                                   "the killed run recorded as interrupted")
            wait_for(lambda: [r for r in store.runs("polarization_realign", "bb84-slow", 200)
                              if r["started_at"] > killed_at and r["finished_at"] is not None], 60, "the job running again")
            after = schedule(state)
            misfires = {(m, j): v for m, j, _, _, _, v in store.counters() if m == "misfires"}
            restarted.send_signal(signal.SIGTERM)
            assert restarted.wait(30) == 0, log.read_text()[-2000:]
        finally:
            if restarted.poll() is None:
                restarted.kill()
        runs = sorted(store.runs(None, "bb84-slow", 1000), key=lambda r: r["started_at"])
        store.close()
    assert set(after) == set(before), "no job lost"
    assert "stopped mid-run" in interrupted[0]["reason"]
    for job in {r["job"] for r in runs}:
        mine = [r for r in runs if r["job"] == job]
        for earlier, later in zip(mine, mine[1:]):
            assert earlier["finished_at"] is not None and later["started_at"] >= earlier["finished_at"], (earlier, later)
    assert misfires.get(("misfires", "decoy_estimation"), 0) >= 1, misfires
