"""End to end with real servers: `qkdops up --ha` (two Prometheus replicas, three Alertmanager peers),
a fibre cut, and one Prometheus and one Alertmanager killed with SIGKILL while it is in force.

What on-call must see is exactly one page. The survivors page it. Neither the restarted replica (which
evaluates the rule afresh and sends the alert again) nor the restarted peer (which rejoins the cluster
and takes the notification log from the others) pages it a second time, and no peer pages it again
when the resolution goes out. The fault is held long enough after the restarts for a duplicate to
show: a restarted peer notifies at the latest after its position's wait (``--cluster.peer-timeout``,
3 s a position on this profile) once Prometheus has sent it the alert. The same holds after the
fault is cleared and the resolution is sent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from qkdops.http_client import open_url
from qkdops.processes import pid_alive
from stack_helpers import FAST_LINK, RunningStack, e2e_profile, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None,
    reason="Prometheus/Alertmanager not installed: `bash scripts/setup.sh` installs them (CI always has them)")]
PEER_PORTS = {"alertmanager_port": "alertmanager", "alertmanager_b_port": "alertmanager_b", "alertmanager_c_port": "alertmanager_c"}
HOLD_AFTER_RESTART_S = 20.0   # > the restarted peer's group wait + worst turn (two positions × 3 s) after Prometheus resends
LINK = FAST_LINK["id"]


def _pids(stack: RunningStack) -> dict[str, int]:
    return json.loads((stack.state_dir / "up.json").read_text())["pids"]


def _ready(stack: RunningStack, name: str) -> bool:
    url = json.loads((stack.state_dir / "up.json").read_text())["endpoints"][name]
    auth = stack.auth.prometheus if name.startswith("prometheus") else stack.auth.alertmanager
    try:
        with open_url(f"{url}/-/ready", auth, timeout_s=2) as response:
            return response.status == 200
    except OSError:
        return False


def _firing_pages(stack: RunningStack, since: float) -> list[dict]:
    return stack.notifications(kind="page", alertname="QKDFiberCut", link=LINK, status="firing", since=f"{since:.3f}")


def test_killing_a_prometheus_and_an_alertmanager_during_a_fibre_cut_still_pages_exactly_once(tmp_path: Path):
    config_path = e2e_profile(tmp_path, [FAST_LINK])
    stack = RunningStack(config_path, "--ha", "--no-calibration")
    try:
        stack.wait_up(60)
        names = {"prometheus", "prometheus_b", "alertmanager", "alertmanager_b", "alertmanager_c"}
        assert names <= _pids(stack).keys()
        # both replicas scrape the same targets under their own replica label; the peers form one cluster
        for port_key, replica in (("prometheus_port", "a"), ("prometheus_replica_port", "b")):
            config = stack.get_json(port_key, "/api/v1/status/config")["data"]["yaml"]
            assert f"replica: {replica}" in config and "labeldrop" in config, replica
        wait_for(lambda: all(len(stack.get_json(key, "/api/v2/status")["cluster"]["peers"]) == 3
                             and stack.get_json(key, "/api/v2/status")["cluster"]["status"] == "ready"
                             for key in PEER_PORTS),
                 60, "a settled cluster of three Alertmanagers", stack)
        wait_for(lambda: stack.by_link(f'rate(qkd_secret_key_bits_total{{link="{LINK}"}}[5s]) > 0'), 60, "key on the link", stack)

        started = time.time()
        before = _pids(stack)
        stack.api("POST", f"/api/v1/links/{LINK}/faults", {"fault": "fiber_cut"})
        # The worst moment: the cluster holds the alert, and the peer whose turn it is to notify (the first
        # by name, position 0) dies inside its group wait; replica a dies with it.
        wait_for(lambda: stack.get_json("alertmanager_port", "/api/v2/alerts", filter=['alertname="QKDFiberCut"']),
                 60, "QKDFiberCut at the Alertmanagers", stack, interval_s=0.1)
        names = {stack.get_json(key, "/api/v2/status")["cluster"]["name"]: name for key, name in PEER_PORTS.items()}
        killed = ("prometheus", names[min(names)])
        paged_before_kill = bool(_firing_pages(stack, started))
        for name in killed:
            os.kill(before[name], signal.SIGKILL)
        killed_at = time.monotonic()
        restarted_after_s: dict[str, float] = {}   # the test only watches: the supervisor restarts them regardless
        while len(restarted_after_s) < len(killed) and time.monotonic() - killed_at < 60:
            for name in set(killed) - restarted_after_s.keys():
                if _pids(stack)[name] != before[name] and pid_alive(_pids(stack)[name]) and _ready(stack, name):
                    restarted_after_s[name] = time.monotonic() - killed_at
            time.sleep(0.2)
        assert restarted_after_s.keys() == set(killed), f"not restarted and ready within 60 s: {restarted_after_s}"
        page = wait_for(lambda: _firing_pages(stack, started), 90, "the QKDFiberCut page at the pager sink", stack)
        paged_after_s = time.monotonic() - killed_at
        restarted_peer = next(key for key, name in PEER_PORTS.items() if name == killed[1])
        wait_for(lambda: len(stack.get_json(restarted_peer, "/api/v2/status")["cluster"]["peers"]) == 3,
                 30, "the restarted peer back in the cluster", stack)
        # the restarted replica sends the alert again to every peer, the restarted one included, which
        # must find in the notification log it took from the others that the page went out
        wait_for(lambda: stack.get_json(restarted_peer, "/api/v2/alerts", filter=['alertname="QKDFiberCut"']),
                 90, "the restarted peer to hold the alert again", stack)
        time.sleep(HOLD_AFTER_RESTART_S)

        pages = _firing_pages(stack, started)
        print(f"HA e2e: killed {', '.join(killed)} ({'after' if paged_before_kill else 'before'} the page went out); "
              f"restarted and ready after {', '.join(f'{n} {t:.1f} s' for n, t in restarted_after_s.items())}; "
              f"page seen {paged_after_s:.1f} s after the kills; firing pages: {len(pages)}")
        assert len(pages) == 1, pages
        assert "replica" not in page[0]["alerts"][0]["labels"]   # dropped before it reached the cluster
        assert stack.process.poll() is None   # one replica down never stopped the stack
        assert "restarted" in stack.output()
        stack.api("DELETE", f"/api/v1/links/{LINK}/faults/fiber_cut")
        wait_for(lambda: stack.notifications(kind="page", alertname="QKDFiberCut", link=LINK, status="resolved",
                                             since=f"{started:.3f}"), 60, "the resolution at the pager sink", stack)
        time.sleep(HOLD_AFTER_RESTART_S)   # the later peers' turns after the resolution: no firing page again
        assert len(_firing_pages(stack, started)) == 1, _firing_pages(stack, started)
    finally:
        stack.stop()
