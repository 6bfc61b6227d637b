"""A running fleet (accelerated clock) + control API + calibration service, in-process, for loop tests.

The fleet's emulated time runs ``SPEED`` times faster than wall time, so a drift that takes minutes
on a real link plays out in seconds; job triggers are wall-clock, so the jobs' emulated cadence is
``SPEED`` × their interval. Signals come from the links' status endpoint (the fallback path; the
Prometheus path is exercised by the end-to-end test).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from calibration_jobs.config import DEFAULT_JOBS_FILE, JobsConfig, parse_jobs_config
from calibration_jobs.runner import JobRunner
from calibration_jobs.service import CalibrationService
from calibration_jobs.signals import SignalReader
from calibration_jobs.store import CalibrationStore
from control_api import server as control_api
from qkdops.config import parse_config
from qkdops.control_client import ControlClient
from qkdops.runtime.fleet import Fleet

SPEED = 10.0
TOKEN = "calibration-test-token-0123456789abcdef"
# Model engine: at 10x real time the BB84 link sifts ~100 Mbit a second, far beyond what the bits
# engine reconciles on a test machine, and the calibration loop reads device and block signals only.
BB84 = {"id": "bb84-fast", "protocol": "bb84-decoy", "preset": "lim2014", "sites": {"alice": "a", "bob": "b"},
        "distance_km": 10, "detector": {"dead_time_s": 1.0e-8},
        "source": {"key_basis_probability": 0.7, "p_mu": 0.6, "p_nu": 0.3}, "block_pulses": 1.0e9, "seed": 9,
        "postprocessing": {"engine": "model"}}
TF = {"id": "tf-fast", "protocol": "tf", "preset": "snspd", "sites": {"alice": "a", "bob": "b", "charlie": "c"},
      "distances_km": {"alice_charlie": 25, "charlie_bob": 25},
      "source": {"mu": 0.45, "epsilon_send": 0.023, "nu": 0.09, "nu2": 0.42, "z_window_probability": 0.7},
      "block_pulses": 2.0e9, "seed": 3, "postprocessing": {"engine": "model"}}


def jobs_config(fast: str | None = None, interval_s: float = 0.2, others_s: float = 2.0,
                overrides: dict[str, dict[str, Any]] | None = None) -> JobsConfig:
    """The shipped jobs.yaml with job ``fast`` every ``interval_s`` wall seconds and the others every
    ``others_s`` (no jitter; runs of one link are serialised, so the others must leave it room)."""
    raw = yaml.safe_load(DEFAULT_JOBS_FILE.read_text())
    raw["defaults"]["misfire_grace_s"] = 5
    for name, job in raw["jobs"].items():
        job["trigger"] = {"interval_s": interval_s if name == fast or fast is None else others_s}
        job.update((overrides or {}).get(name, {}))
    raw["signals"]["source"] = "status"
    return parse_jobs_config(raw, DEFAULT_JOBS_FILE)


@dataclass
class LoopRig:
    fleet: Fleet
    api: ControlClient
    runner: JobRunner
    store: CalibrationStore
    jobs: JobsConfig
    state_dir: Path

    def blocks(self, link: str, n: int, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        """The next ``n`` post-processed blocks of ``link`` (their last_block status entries)."""
        seen = (self.api.status(link)["last_block"] or {}).get("index", -1)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{link}: only {len(out)} of {n} blocks in {timeout_s} s")
            last = self.api.status(link)["last_block"]
            if last is not None and last["index"] > seen:
                seen = last["index"]
                out.append(last)
            time.sleep(0.02)
        return out

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if value := predicate():
                return value
            time.sleep(0.05)
        raise TimeoutError(f"{what} not seen within {timeout_s} s")


def mean_key_and_qber(blocks: list[dict[str, Any]]) -> tuple[float, float]:
    return (statistics.mean(b["secret_key_bits"] for b in blocks),
            statistics.mean(b["qber"] for b in blocks if b["qber"] is not None))


@contextmanager
def running_fleet(directory: Path, links: list[dict[str, Any]], jobs: JobsConfig, schedule: bool = True) -> Iterator[LoopRig]:
    """Fleet + API + (with ``schedule``) the APScheduler service; stops everything on exit."""
    config = parse_config({"runtime": {"state_dir": str(directory / "state")}, "links": links}, directory / "links.yaml")
    t0 = time.time()
    fleet = Fleet(config, clock=lambda: t0 + SPEED * (time.time() - t0))
    server = control_api.serve(fleet, dataclasses.replace(config.runtime, control_port=0), TOKEN)
    api = ControlClient(f"http://127.0.0.1:{server.server_address[1]}", TOKEN)
    store = CalibrationStore(directory / "state" / "calibration.sqlite")
    runner = JobRunner(jobs, api, SignalReader(api, None, 30.0), store)
    service = CalibrationService(jobs, runner, store, directory / "state", api.links)
    fleet.start(0.02)
    try:
        if schedule:
            service.start()
        yield LoopRig(fleet, api, runner, store, jobs, directory / "state")
    finally:
        service.stop(wait=True)
        server.stop()
        fleet.stop()
        store.close()
