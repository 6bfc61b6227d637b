"""`qkdops up --ha` and compose HA, without starting servers: both replicas' configs and the cluster's
config pass promtool and amtool, the replicas differ only in the ``replica`` label (dropped from alerts),
each server gets its own storage and the right peers, and one dead replica is not the stack's end."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring.alertmanager import ALERTMANAGER_PEERS, PEER_TIMEOUT_S, SecretFiles, alertmanager_config, peer_timeout_s
from monitoring.config import load_monitoring_config
from monitoring.prometheus import COMPOSE_PROMETHEUS_CONFIGS, PROMETHEUS_REPLICAS, local_hosts, prometheus_config
from monitoring.rules import write_rule_files
from qkdops.config import ConfigError, DEFAULT_CONFIG, RuntimeSettings, parse_config
from qkdops_cli import stack as stack_module
from qkdops_cli.stack import Stack

RT = RuntimeSettings()


def _render(tmp_path: Path, replica: str | None) -> Path:
    rules = tmp_path / "rules"
    write_rule_files(load_monitoring_config(), rules)
    password = tmp_path / "alertmanager-password"
    password.write_text("secret\n")
    config = prometheus_config(load_monitoring_config(), local_hosts(RT, "127.0.0.1", ha=True), str(rules / "*.yml"), 1.0,
                               alertmanager_password_file=str(password), replica=replica)
    path = tmp_path / f"prometheus-{replica}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed: `bash scripts/setup.sh`")
def test_both_replica_configs_and_the_compose_pair_pass_promtool(tmp_path: Path):
    paths = [_render(tmp_path, replica) for replica in PROMETHEUS_REPLICAS.values()]
    for path in paths:
        result = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    # compose's pair names files that exist only in the containers: syntax and semantics without them
    for path in COMPOSE_PROMETHEUS_CONFIGS.values():
        result = subprocess.run(["promtool", "check", "config", "--syntax-only", str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    a, b = (yaml.safe_load(p.read_text()) for p in paths)
    assert a["global"]["external_labels"] == {"stack": "qkdops", "replica": "a"}
    assert b["global"]["external_labels"] == {"stack": "qkdops", "replica": "b"}
    assert {**a, "global": None} == {**b, "global": None}
    assert a["alerting"]["alert_relabel_configs"] == [{"action": "labeldrop", "regex": "replica"}]
    targets = a["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == [f"127.0.0.1:{port}" for port in (RT.alertmanager_port, RT.alertmanager_b_port, RT.alertmanager_c_port)]
    # the long-term store gets the same series from both (write relabelling follows the external labels)
    for path in COMPOSE_PROMETHEUS_CONFIGS.values():
        assert yaml.safe_load(path.read_text())["remote_write"][0]["write_relabel_configs"] == [{"action": "labeldrop", "regex": "replica"}]


def test_without_ha_the_single_prometheus_is_configured_as_before(tmp_path: Path):
    single = yaml.safe_load(_render(tmp_path, None).read_text())
    assert single["global"]["external_labels"] == {"stack": "qkdops"} and "alert_relabel_configs" not in single["alerting"]
    plain = prometheus_config(load_monitoring_config(), local_hosts(RT, "127.0.0.1"), "rules/*.yml", 1.0, alertmanager_password_file="/p")
    assert plain["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [f"127.0.0.1:{RT.alertmanager_port}"]
    with pytest.raises(ValueError, match="replica 'c'"):
        prometheus_config(load_monitoring_config(), local_hosts(RT), "r", 1.0, alertmanager_password_file="/p", replica="c")


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed: `bash scripts/setup.sh`")
def test_the_cluster_config_passes_amtool(tmp_path: Path):
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(alertmanager_config(load_monitoring_config(), "127.0.0.1:9820", SecretFiles(), 1.0,
                                                       sink_token_file=str(tmp_path / "token"))))
    result = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


class _Process:
    """Stands in for a child's Popen: a pid and whether it has exited."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        return self.returncode


def _ha_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    pids = iter(range(1000, 2000))
    monkeypatch.setattr(Stack, "_popen", lambda self, name, argv, env: _Process(next(pids)))
    rt = RuntimeSettings(state_dir=tmp_path / "state")
    rt.state_dir.mkdir()
    stack = Stack(rt, ha=True)
    creds = stack_module.credentials.prepare_server_credentials(rt.state_dir)
    auth = stack_module.StackAuth(rt.state_dir)
    stack._spawn_alertmanager_cluster("alertmanager", rt.state_dir / "alertmanager.yml", creds, auth.alertmanager)
    render = stack_module.functools.partial(prometheus_config, load_monitoring_config(), local_hosts(rt, None, ha=True), "r/*.yml", 1.0,
                                            alertmanager_password_file="/p")
    stack._spawn_prometheus_replicas("prometheus", render, creds, auth.prometheus)
    return stack


def test_each_peer_gossips_with_the_other_two_and_each_server_keeps_its_own_storage(tmp_path: Path, monkeypatch):
    stack = _ha_stack(tmp_path, monkeypatch)
    rt = stack.rt
    assert [c.name for c in stack.children] == [*ALERTMANAGER_PEERS, *PROMETHEUS_REPLICAS]
    cluster = {"alertmanager": rt.alertmanager_cluster_port, "alertmanager_b": rt.alertmanager_b_cluster_port,
               "alertmanager_c": rt.alertmanager_c_cluster_port}
    for child in stack.children:
        assert not child.essential and child.group in ("prometheus", "alertmanager"), child.name
        flag = "--storage.path=" if child.group == "alertmanager" else "--storage.tsdb.path="
        assert f"{flag}{rt.state_dir / child.name}" in child.argv, child.name
        if child.group == "alertmanager":
            assert f"--cluster.listen-address=127.0.0.1:{cluster[child.name]}" in child.argv
            assert "--cluster.peer-timeout=15s" in child.argv   # the default scrape interval: Alertmanager's default
            assert sorted(a for a in child.argv if a.startswith("--cluster.peer=")) == \
                sorted(f"--cluster.peer=127.0.0.1:{port}" for name, port in cluster.items() if name != child.name)
    a, b = (yaml.safe_load((rt.state_dir / name).read_text()) for name in ("prometheus.yml", "prometheus-b.yml"))
    assert (a["global"]["external_labels"]["replica"], b["global"]["external_labels"]["replica"]) == ("a", "b")
    assert stack.children[3].url == f"http://127.0.0.1:{rt.prometheus_port}" and stack.children[4].url == \
        f"http://127.0.0.1:{rt.prometheus_replica_port}"


def test_one_dead_replica_is_restarted_and_the_stack_stops_only_when_every_one_of_a_kind_is_down(tmp_path: Path, monkeypatch):
    stack = _ha_stack(tmp_path, monkeypatch)
    by_name = {c.name: c for c in stack.children}
    by_name["prometheus"].process.returncode = -9
    by_name["alertmanager_b"].process.returncode = -9
    by_name["alertmanager_c"].process.returncode = -9
    assert stack.dead() is None   # a survivor of each kind measures and pages
    old = by_name["prometheus"].process.pid
    stack.tend(now=0.0)           # each dead one is due in 1 s
    assert stack.tend(now=1.5) and by_name["prometheus"].process.pid != old and by_name["prometheus"].restarts == 1
    by_name["prometheus_b"].process.returncode = -9
    assert stack.dead() is None   # replica a is back
    by_name["prometheus"].process.returncode = -9
    assert stack.dead() is not None and stack.dead().group == "prometheus"   # nothing measures any more: stop


def test_the_ha_ports_are_ports_and_distinct_from_every_other():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    defaults = parse_config(raw, DEFAULT_CONFIG).runtime
    assert (defaults.prometheus_replica_port, defaults.alertmanager_b_port, defaults.alertmanager_c_port) == (9091, 9095, 9096)
    for field, value, expected in (("alertmanager_c_cluster_port", RT.prometheus_port, "distinct"),
                                   ("prometheus_replica_port", 0, "runtime.prometheus_replica_port")):
        bad = {**raw, "runtime": {**raw["runtime"], field: value}}
        with pytest.raises(ConfigError, match=expected):
            parse_config(bad, DEFAULT_CONFIG)


def test_the_last_peer_has_waited_its_turn_before_the_group_can_send_anything_new():
    """Else a resolution sent by the first peer during the last one's wait makes it page again."""
    monitoring = load_monitoring_config()
    shortest = min(t.group_interval for t in monitoring.timing.values())   # at the 5-s reference interval
    for interval_s in (0.5, 1.0, 5.0, 30.0):
        timeout = peer_timeout_s(monitoring, interval_s)
        assert 0 < timeout <= PEER_TIMEOUT_S
        assert (len(ALERTMANAGER_PEERS) - 1) * timeout <= shortest * interval_s / 5.0 / 2, interval_s
    assert peer_timeout_s(monitoring, monitoring.scrape_interval_s) == PEER_TIMEOUT_S   # compose's peers run the default
