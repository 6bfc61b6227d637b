"""A sharded fleet's pieces (issue 17): links split over workers, worker ports, Prometheus finding the
workers through file service discovery, and the supervisor's control API routing every link's
request to the worker that runs it — real control APIs on 127.0.0.1, one per worker."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from stack_helpers import metro_fleet_yaml

from control_api import server as control_api
from control_api.shards import ShardedExporter, ShardedFleet
from exporters import DeviceCollector, PostProcessingCollector
from exporters.server import ServedExporter
from monitoring.config import load_monitoring_config
from monitoring.prometheus import local_hosts, prometheus_config, worker_targets
from qkdops.config import ConfigError, FleetConfig, load_config, worker_ports
from qkdops.control_client import ApiResponseError, ControlClient
from qkdops.http_server import HttpServer
from qkdops.runtime.fleet import Fleet
from qkdops_cli.stack import plan_workers

TOKEN = "s" * 43
LINKS = ("m0", "m1", "m2", "m3", "m4")


def config_of(tmp_path: Path, links: tuple[str, ...] = LINKS) -> FleetConfig:
    path = tmp_path / "links.yaml"
    path.write_text(metro_fleet_yaml(links))
    return load_config(path)


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_every_link_runs_on_exactly_one_worker_round_robin(tmp_path: Path, workers: int):
    config = config_of(tmp_path)
    shards = [[s.id for s in config.shard(i, workers).links] for i in range(workers)]
    assert sorted(link for shard in shards for link in shard) == sorted(LINKS)
    assert shards[0][0] == "m0" and all(shard[0] == LINKS[i] for i, shard in enumerate(shards))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(config.shard(i, workers).key_delivery == config.key_delivery for i in range(workers))


def test_worker_ports_are_three_in_a_row_and_a_clash_names_the_field(tmp_path: Path):
    config = config_of(tmp_path)
    ports = worker_ports(config, 2)
    base = config.runtime.worker_port_base
    assert [(p.control, p.device, p.postprocessing) for p in ports] == [(base, base + 1, base + 2), (base + 3, base + 4, base + 5)]
    clash = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, worker_port_base=config.runtime.control_port - 4))
    with pytest.raises(ConfigError, match=r"runtime\.worker_port_base.*9800"):
        worker_ports(clash, 2)
    high = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, worker_port_base=65532))
    with pytest.raises(ConfigError, match=r"runtime\.worker_port_base.*room for 2 workers"):
        worker_ports(high, 2)
    with pytest.raises(ValueError, match="more workers than the 5 link"):
        plan_workers(config, 6)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
def test_prometheus_finds_the_workers_through_file_sd(tmp_path: Path):
    """The device job has only discovered targets (the supervisor serves no device exporter), the
    post-processing job the supervisor's KME/worker series plus the workers'; promtool accepts the
    config with its target files."""
    config = config_of(tmp_path)
    monitoring = load_monitoring_config()
    targets = tmp_path / "targets"
    targets.mkdir()
    workers = [(w.name, f"127.0.0.1:{w.ports.device}", f"127.0.0.1:{w.ports.postprocessing}") for w in plan_workers(config, 2)]
    for job, groups in worker_targets(monitoring, workers).items():
        (targets / f"{job}.json").write_text(json.dumps(groups))
    rendered = prometheus_config(monitoring, local_hosts(config.runtime, None, worker_targets_dir=str(targets)), str(tmp_path / "rules/*.yml"), 5.0,
                                 alertmanager_password_file=str(tmp_path / "am-password"))
    jobs = {job["job_name"]: job for job in rendered["scrape_configs"]}
    device, pp = jobs[monitoring.jobs.device], jobs[monitoring.jobs.postprocessing]
    assert "static_configs" not in device
    assert device["file_sd_configs"] == [{"files": [f"{targets}/{monitoring.jobs.device}.json"], "refresh_interval": "30s"}]
    assert pp["static_configs"] == [{"targets": [f"127.0.0.1:{config.runtime.postprocessing_exporter_port}"]}]
    groups = json.loads((targets / f"{monitoring.jobs.device}.json").read_text())
    assert [g["labels"]["worker"] for g in groups] == ["worker-0", "worker-1"]
    (tmp_path / "am-password").write_text("x")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(rendered))
    checked = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@dataclasses.dataclass
class Sharded:
    front: ControlClient
    direct: list[ControlClient]
    fleets: list[Fleet]
    servers: list[HttpServer]
    exporters: list[ServedExporter]   # worker 0's device, post-processing, worker 1's …, then the supervisor's own


@pytest.fixture
def sharded(tmp_path: Path) -> Iterator[Sharded]:
    """Two workers (a Fleet and its control API each, on one state dir) behind a routing control API."""
    config = config_of(tmp_path, LINKS[:3])
    fleets = [Fleet(dataclasses.replace(config.shard(i, 2))) for i in range(2)]
    exporters = [[ServedExporter("device", DeviceCollector(f.snapshots), "127.0.0.1", 0),
                  ServedExporter("postprocessing", PostProcessingCollector(f.snapshots), "127.0.0.1", 0)] for f in fleets]
    own = ServedExporter("postprocessing", PostProcessingCollector(list), "127.0.0.1", 0)
    every = [e for pair in exporters for e in pair] + [own]
    for exporter in every:
        exporter.start()
    servers = [control_api.serve(f, dataclasses.replace(config.runtime, control_port=0), TOKEN, exporters={e.name: e for e in pair})
               for f, pair in zip(fleets, exporters)]
    urls = [f"http://127.0.0.1:{s.server_address[1]}" for s in servers]
    routed = ShardedFleet(config, urls, TOKEN)
    front = control_api.serve(routed, dataclasses.replace(config.runtime, control_port=0), TOKEN,
                              exporters={"device": ShardedExporter("device", routed),
                                         "postprocessing": ShardedExporter("postprocessing", routed, own)})
    servers.append(front)
    try:
        yield Sharded(ControlClient(f"http://127.0.0.1:{front.server_address[1]}", TOKEN),
                      [ControlClient(url, TOKEN) for url in urls], fleets, servers, every)
    finally:
        for server in servers:
            server.stop()
        for exporter in every:
            exporter.stop()
        for fleet in fleets:
            fleet.stop()


def test_the_supervisors_api_routes_each_link_to_its_worker(sharded: Sharded):
    front = sharded.front
    assert [link["link"] for link in front.links()] == ["m0", "m1", "m2"]
    sharded.fleets[1].run_frames(1)
    assert front.status("m1")["next_block"] == 1 and front.status("m0")["next_block"] == 0
    injected = front.inject("m1", "loss_step", {"loss_db": 3.0})
    assert injected["fault"] == "loss_step"
    assert [f["name"] for f in sharded.direct[1].status("m1")["active_faults"]] == ["loss_step"]
    assert front.clear("m1")["cleared"] == ["loss_step"]
    assert front.act("m2", "retune_intensities")["action"] == "retune_intensities"
    assert len(front.blocks("m1", 5)["blocks"]) == 1


def test_a_workers_refusal_is_passed_on_as_it_answered(sharded: Sharded):
    for call in (lambda c: c.inject("m1", "loss_step", {"loss_db": -1.0}),
                 lambda c: c.act("m1", "polish_mirrors"),
                 lambda c: c.clear("m1", "no_such_fault")):
        with pytest.raises(ApiResponseError) as routed:
            call(sharded.front)
        with pytest.raises(ApiResponseError) as direct:
            call(sharded.direct[1])
        assert (routed.value.status, routed.value.code, routed.value.message, routed.value.field) == \
            (direct.value.status, direct.value.code, direct.value.message, direct.value.field)
    with pytest.raises(ApiResponseError) as unknown:
        sharded.front.status("m9")
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_link")


def test_a_worker_that_does_not_answer_is_a_503_naming_link_and_worker(sharded: Sharded):
    sharded.servers[1].stop()   # worker 1's control API: as if the worker were restarting
    with pytest.raises(ApiResponseError) as down:
        sharded.front.status("m1")
    assert (down.value.status, down.value.code, down.value.field) == (503, "worker_unavailable", "link")
    assert "link 'm1' runs on worker 1" in down.value.message
    assert sharded.front.status("m0")["link"] == "m0"   # the other worker's links are unaffected


def test_an_exporter_kind_is_stopped_and_started_on_every_worker(sharded: Sharded):
    """The exporter-crash game day's actions on a sharded fleet: "device" is every worker's device
    exporter, "postprocessing" every worker's and the supervisor's own; the listing names the worker."""
    listed = sharded.front.exporters()
    assert sorted((e["name"], e.get("worker", "supervisor")) for e in listed) == [
        ("device", "worker-0"), ("device", "worker-1"),
        ("postprocessing", "supervisor"), ("postprocessing", "worker-0"), ("postprocessing", "worker-1")]
    assert {e["port"] for e in listed} == {e.port for e in sharded.exporters}
    assert sharded.front.stop_exporter("device") == {"name": "device", "serving": False}
    assert [e.serving for e in sharded.exporters] == [False, True, False, True, True]
    assert sharded.front.start_exporter("device") == {"name": "device", "serving": True}
    assert sharded.front.stop_exporter("postprocessing")["serving"] is False
    assert not any(e.serving for e in sharded.exporters[1::2])   # both workers' and the supervisor's own
    assert sharded.front.start_exporter("postprocessing")["serving"] is True
    assert all(e.serving for e in sharded.exporters)
    sharded.servers[0].stop()
    with pytest.raises(ApiResponseError) as down:
        sharded.front.stop_exporter("device")
    assert (down.value.status, down.value.code) == (503, "worker_unavailable") and "worker 0" in down.value.message
