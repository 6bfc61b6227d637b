"""`qkdops up --workers 2` end to end (issue 17): every worker's targets up in a real Prometheus, rules
evaluating, the control API routing to the workers, and a worker killed with SIGKILL while two SAEs
stream keys — restarted, its link resuming from the archive, the restart ticket firing, no key lost
and none served twice."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kme_stream import Stream, assert_no_key_lost_or_served_twice
from stack_helpers import BITS_LINK, FAST_LINK, RunningStack, free_ports, wait_for

from qkdops.kme.pki import Pki

pytestmark = pytest.mark.slow
WORKERS = 2


def free_run(n: int) -> int:
    """A base port with ``n`` free ports in a row (the workers' ports are consecutive)."""
    for _ in range(200):
        base = random.randrange(20000, 40000)
        sockets = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports")


def sharded_profile(directory: Path) -> Path:
    """Two links on two workers: e2e-fast (bits engine, sites a-b; worker 0) and a model-engine link
    between c and d (worker 1), every port free, 1-s scrapes."""
    control, device, pp, prom, am, sink, calibration, vm, probe, *kmes = free_ports(17)
    raw = {"runtime": {"state_dir": str(directory / "state"), "control_port": control, "device_exporter_port": device,
                       "postprocessing_exporter_port": pp, "prometheus_port": prom, "alertmanager_port": am,
                       "pager_sink_port": sink, "calibration_exporter_port": calibration, "victoria_metrics_port": vm,
                       "kme_probe_port": probe,
                       "worker_port_base": free_run(3 * WORKERS), "scrape_interval_s": 1.0},
           "links": [{**BITS_LINK, "id": "e2e-fast"}, {**FAST_LINK, "id": "e2e-other", "sites": {"alice": "c", "bob": "d"}}],
           "key_delivery": {"kmes": [{"site": site, "port": port, "skip_port": skip, "saes": [f"sae-{site}"]}
                                     for site, port, skip in zip("abcd", kmes, kmes[4:])]}}
    path = directory / "links.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def pids(stack: RunningStack) -> dict[str, int]:
    return json.loads((stack.state_dir / "up.json").read_text())["pids"]


def test_a_sharded_stack_scrapes_routes_and_survives_a_killed_worker(tmp_path: Path):
    config_path = sharded_profile(tmp_path)
    raw = yaml.safe_load(config_path.read_text())
    state = Path(raw["runtime"]["state_dir"])
    # no kme-probe: its round trips would take keys the conservation check below accounts for
    stack = RunningStack(config_path, "--workers", str(WORKERS), "--no-calibration", "--no-kme-probe")
    stream: Stream | None = None
    try:
        stack.wait_up(timeout_s=120)
        # every target up: two device exporters (the workers), three post-processing ones (the workers and the supervisor)
        wait_for(lambda: sorted((r["metric"]["job"], r["metric"].get("worker", "-"), r["value"][1]) for r in stack.prometheus(
            'up{job=~"qkd-device|qkd-postprocessing"}')) == [
            ("qkd-device", "worker-0", "1"), ("qkd-device", "worker-1", "1"),
            ("qkd-postprocessing", "-", "1"), ("qkd-postprocessing", "worker-0", "1"), ("qkd-postprocessing", "worker-1", "1")],
            60, "both workers' targets and the supervisor's up", stack)
        # rules evaluate over both workers' links
        wait_for(lambda: set(stack.by_link("qkd_link:last_block_timestamp_seconds:max10m")) == {"e2e-fast", "e2e-other"},
                 60, "a recording rule over both workers' links", stack)
        assert {r["metric"]["worker"]: r["value"][1] for r in stack.prometheus("qkd_fleet_worker_links")} == {
            "worker-0": "1", "worker-1": "1"}

        # the supervisor's control API acts on a link of worker 1
        injected = stack.api("POST", "/api/v1/links/e2e-other/faults", {"fault": "loss_step", "parameters": {"loss_db": 2.0}})
        assert injected["fault"] == "loss_step"
        wait_for(lambda: stack.by_link('qkd_fault_active{fault="loss_step"} == 1') == {"e2e-other": 1.0}, 30,
                 "the routed fault in the worker's telemetry", stack)
        assert stack.api("DELETE", "/api/v1/links/e2e-other/faults")["cleared"] == ["loss_step"]

        # keys flow from worker 0's link through the supervisor's KMEs; then worker 0 is killed
        stream = Stream(Pki(state / "pki"), {site: k["port"] for site, k in zip("abcd", raw["key_delivery"]["kmes"])})
        stream.thread.start()
        wait_for(lambda: len(stream.redeemed) >= 200, 60, "keys streaming before the kill", stack)
        killed = pids(stack)["worker-0"]
        next_block = stack.api("GET", "/api/v1/links/e2e-fast")["next_block"]
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: pids(stack)["worker-0"] != killed, 30, "the supervisor to restart worker 0", stack)
        wait_for(lambda: stack.api("GET", "/api/v1/links/e2e-fast")["next_block"] > next_block + 2, 60,
                 "e2e-fast closing blocks again after the restart", stack)
        wait_for(lambda: [a["labels"]["worker"] for a in stack.get_json("prometheus_port", "/api/v1/alerts")["data"]["alerts"]
                          if a["labels"]["alertname"] == "QKDFleetWorkerRestarted" and a["state"] == "firing"] == ["worker-0"],
                 60, "QKDFleetWorkerRestarted for worker-0", stack)
        issued_at_restart = len(stream.issued)
        wait_for(lambda: len(stream.issued) >= issued_at_restart + 200 and stream.settled, 60,
                 "keys streaming after the restart", stack)
        status = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "status", "--config", str(config_path)],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "worker-0" in status.stdout and "UNAVAILABLE" not in status.stdout
    finally:
        if stream is not None:
            stream.stop.set()
            stream.thread.join(10)
        assert stack.stop() == 0, stack.output()[-3000:]

    assert stream.failures == 0   # the KMEs run in the supervisor: the kill never interrupted key delivery
    assert_no_key_lost_or_served_twice(stream, state)
    with sqlite3.connect(state / "blocks.sqlite") as blocks:
        indices = [i for (i,) in blocks.execute("SELECT idx FROM blocks WHERE link='e2e-fast' ORDER BY idx")]
    assert indices == list(range(len(indices))) and len(indices) > next_block   # resumed where it stopped, no gap, no repeat
    assert "worker-0 exited with status -9" in stack.output()


def test_workers_run_elsewhere_are_routed_to_by_their_control_apis(tmp_path: Path):
    """Compose and Kubernetes run `qkdops worker` as services or pods (each on explicit ports) and the
    supervisor with `--no-prometheus --worker-api URL…`: it routes, the workers run the links."""
    config_path = sharded_profile(tmp_path)
    raw = yaml.safe_load(config_path.read_text())
    state = Path(raw["runtime"]["state_dir"])
    state.mkdir(parents=True)
    (state / "api-token").write_text("t" * 43)   # as compose's api-token secret provides it
    (state / "api-token").chmod(0o600)
    ports = free_ports(6)
    workers = [subprocess.Popen([sys.executable, "-m", "qkdops_cli.cli", "worker", "--config", str(config_path), "--shard", str(i),
                                 "--workers", "2", "--control-port", str(ports[3 * i]), "--device-port", str(ports[3 * i + 1]),
                                 "--postprocessing-port", str(ports[3 * i + 2])],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True) for i in range(2)]
    stack = RunningStack(config_path, "--no-prometheus", "--worker-api", f"http://127.0.0.1:{ports[0]}",
                         "--worker-api", f"http://127.0.0.1:{ports[3]}")
    try:
        stack.wait_up(timeout_s=60)
        wait_for(lambda: stack.api("GET", "/api/v1/links/e2e-other")["next_block"] > 0, 60, "worker 1's link stepping", stack)
        assert stack.api("POST", "/api/v1/links/e2e-fast/faults", {"fault": "loss_step"})["fault"] == "loss_step"
        assert [f["name"] for f in stack.api("GET", "/api/v1/links/e2e-fast")["active_faults"]] == ["loss_step"]
        recorded = json.loads((state / "up.json").read_text())["endpoints"]
        assert recorded["worker-1"] == f"http://127.0.0.1:{ports[3]}"
        assert "device_exporter" not in recorded   # the workers serve the device telemetry
        status = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "status", "--config", str(config_path)],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        assert stack.stop() == 0, stack.output()[-3000:]
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        assert [w.wait(timeout=60) for w in workers] == [0, 0]


def test_a_killed_supervisors_workers_are_stopped_before_the_next_one_starts(tmp_path: Path):
    """kill -9 of `qkdops up --workers 2`: its workers notice and stop, and the next `up` waits for
    them (they hold their ports and would step the same links), so every link's blocks stay one
    numbered sequence."""
    config_path = sharded_profile(tmp_path)
    first = RunningStack(config_path, "--workers", str(WORKERS), "--no-prometheus")
    try:
        first.wait_up(timeout_s=120)
        wait_for(lambda: first.api("GET", "/api/v1/links/e2e-other")["next_block"] >= 3, 60, "blocks before the kill", first)
        os.kill(first.process.pid, signal.SIGKILL)   # the supervisor only: its workers are left to notice
        first.process.wait(10)
    finally:
        first.log.close()
    second = RunningStack(config_path, "--workers", str(WORKERS), "--no-prometheus")
    try:
        second.wait_up(timeout_s=120)
        resumed = second.api("GET", "/api/v1/links/e2e-other")["next_block"]
        wait_for(lambda: second.api("GET", "/api/v1/links/e2e-other")["next_block"] >= resumed + 3, 60, "blocks after", second)
    finally:
        assert second.stop() == 0, second.output()[-3000:]
    with sqlite3.connect(second.state_dir / "blocks.sqlite") as blocks:
        for link in ("e2e-fast", "e2e-other"):
            indices = [i for (i,) in blocks.execute("SELECT idx FROM blocks WHERE link=? ORDER BY idx", (link,))]
            assert indices == list(range(len(indices))), link
