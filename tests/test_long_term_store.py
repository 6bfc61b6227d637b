"""The long-term store (issue 17): `qkdops up --victoria-metrics` runs a single VictoriaMetrics node that
the real Prometheus remote-writes to, behind basic auth; it holds the same series and the same samples
as Prometheus, and its Prometheus-compatible API answers the dashboards' and SLOs' queries."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

import pytest

from qkdops.http_client import open_url
from stack_helpers import FAST_LINK, RunningStack, e2e_profile, wait_for

pytestmark = pytest.mark.skipif(shutil.which("victoria-metrics") is None,
                                reason="victoria-metrics not installed: `bash scripts/setup.sh`")
QKD_SERIES = '{__name__=~"qkd_.+"}'   # every exported series and every recording of the rules
EXTERNAL = {"stack"}   # Prometheus's external labels: remote write adds them, its own queries do not show them


def _instant(stack: RunningStack, port_key: str, query: str, at: float) -> dict[tuple[tuple[str, str], ...], float]:
    """``query`` at ``at`` → {series labels (external ones left out) as a sorted tuple: value}. NaN
    samples (a 0/0 ratio) are left out: VictoriaMetrics stores none, by design."""
    answer = stack.get_json(port_key, "/api/v1/query", query=query, time=f"{at:.3f}")
    assert answer["status"] == "success", answer
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in EXTERNAL)): float(r["value"][1])
            for r in answer["data"]["result"] if not math.isnan(float(r["value"][1]))}


@pytest.mark.slow
def test_victoria_metrics_holds_what_prometheus_holds(tmp_path: Path) -> None:
    config = e2e_profile(tmp_path, [FAST_LINK], scrape_interval_s=1.0)
    stack = RunningStack(config, "--victoria-metrics", "--no-calibration")
    try:
        stack.wait_up(60)
        vm = stack.url("victoria_metrics_port")
        # its API wants the stack's credentials
        with pytest.raises(urllib.error.HTTPError) as refused:
            open_url(f"{vm}/api/v1/query", None, query={"query": "up"})
        assert refused.value.code == 401
        refused.value.close()
        wait_for(lambda: _instant(stack, "victoria_metrics_port", QKD_SERIES, time.time()), 60, "qkd series in VictoriaMetrics", stack)
        time.sleep(10)   # a few remote-write batches past the moment compared

        stores = (("p", "prometheus_port"), ("v", "victoria_metrics_port"))

        def same_at(at: float) -> dict[str, Any] | None:
            """The same series, and the same sample in each to 1e-9: VictoriaMetrics keeps a value's
            first 12 significant digits (its decimal compression), Prometheus all 17."""
            p, v = (_instant(stack, port, QKD_SERIES, at) for _, port in stores)
            return p if p.keys() == v.keys() and all(math.isclose(p[k], v[k], rel_tol=1e-9, abs_tol=1e-300) for k in p) else None
        # every series with the same value at a moment both have had time to hold (remote write lags a
        # scrape or two): counts and samples alike
        at = time.time() - 5
        held = wait_for(lambda: same_at(at), 30, "VictoriaMetrics to hold Prometheus's series and samples", stack)
        names = {dict(k)["__name__"] for k in held}
        assert len(names) > 40 and len(held) > 300
        assert {dict(k)["link"] for k in held if dict(k)["__name__"] == "qkd_pulses_sent_total"} >= {"e2e-fast", "metro-bb84"}
        # the process is the stack's: listed by `qkdops status`
        status = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "status", "--config", str(config)],
                                capture_output=True, text=True, timeout=60)
        assert "victoria_metrics" in status.stdout, status.stdout + status.stderr
    finally:
        stack.stop()


def test_victoria_metrics_needs_the_prometheus_it_stores(tmp_path: Path) -> None:
    config = e2e_profile(tmp_path, [FAST_LINK])
    run = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "up", "--config", str(config), "--no-prometheus", "--victoria-metrics"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--victoria-metrics" in run.stderr and "--no-prometheus" in run.stderr
