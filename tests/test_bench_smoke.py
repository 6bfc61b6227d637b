"""Every benchmark in bench/ still runs: a tiny-size smoke run of each (no timing asserted), so a
benchmark cannot rot unnoticed between the sessions that run it for real (issue 17: one had)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# script → (arguments that make it tiny, text its report must contain)
SMOKE = {
    "bench_ec.py": (["--smoke"], ("Throughput", "Frame failure rate", "Side by side")),
    "bench_emulator.py": (["--links", "3", "--frames", "2"], ("| tf |",)),
    "bench_estimation.py": (["--repeat", "3"], ("| tf | finite |",)),
    "bench_history.py": (["--days", "0.02"], ("| 0.02 | 3 |",)),
    "bench_exporters.py": (["--links", "3", "--repeats", "1"], ("| 3 | device |", "| 3 | post-processing |")),
    "bench_http.py": (["--clients", "3", "--requests", "1", "--slow", "2", "--hold", "1"],
                      ("| control API | 3 | 0 |", "| KME a (mTLS) | 3 | 0 |", "slow clients held")),
    "bench_kme.py": (["--seconds", "0.2", "--max-pairs", "5", "--numbers", "1", "--threads", "1", "--prefill-block-bytes", "4096",
                      "--handoff-sizes", "2048", "--handoff-blocks", "2", "--handoff-mib", "1", "--handoff-seconds", "1",
                      "--frames", "3", "--pools", "10x2048", "--scaling-calls", "2", "--scaling-seconds", "0.3"], ("Total",)),
    "bench_pa.py": (["--smoke"], ("Mbit/s", "tag")),
    "bench_postprocessing.py": (["--smoke"], ("| metro-bb84 |",)),
    "bench_workers.py": (["--links", "2", "--workers", "2", "--scrapes", "2", "--settle", "0.5", "--scrape-interval", "1", "--idle", "0.5"],
                         ("| 2 | 2 | 5 |", "| 2 | worker-1 | 1 |")),
    "soak_calibration.py": (["--minutes", "0.5", "--speed", "30"], ("| phase_relock |",)),
}


def test_every_benchmark_has_a_smoke_run() -> None:
    assert {p.name for p in (ROOT / "bench").glob("*.py")} == set(SMOKE)


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_the_benchmark_runs_at_tiny_sizes(script: str) -> None:
    arguments, expected = SMOKE[script]
    run = subprocess.run([sys.executable, str(ROOT / "bench" / script), *arguments], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for text in expected:
        assert text in run.stdout, f"{script}: {text!r} not in its report:\n{run.stdout[-2000:]}"
