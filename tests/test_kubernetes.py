"""The Kubernetes manifests (deploy/kubernetes/) are objects that Kubernetes' OpenAPI schemas and
prometheus-operator's CRD schemas accept; they run the sharded fleet the way `qkdops up --workers N`
does (one shard per worker, the supervisor routing to each in order, one shared state volume on one
node), carry exactly the rules Prometheus loads and scrape under the rules' job names."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import kubernetes_workloads as wl
from monitoring.alertmanager import SecretFiles, alertmanager_config
from monitoring.config import load_monitoring_config
from monitoring.kubernetes import (ALERTMANAGER_REPLICAS, DIRECTORY, PROMETHEUS_REPLICAS, pod_monitor, prometheus,
                                   prometheus_rules, service_monitors)
from monitoring.rules import RULES_DIR
from qkdops_cli import cli, generate_cmd
from qkdops_cli.stack import CONTAINER_CONFIG, WORKER_PREFIX

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / ".venv" / "k8s-schemas" / "node_modules"
OPERATOR = MODULES / "@kubernetes-models" / "prometheus-operator" / "_schemas" / "ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1"
CORE = MODULES / "kubernetes-models" / "_schemas" / "IoK8sApi"
VALIDATORS = {**{kind: f"{OPERATOR}{kind}.js" for kind in ("PrometheusRule", "ServiceMonitor", "PodMonitor", "Prometheus", "Alertmanager")},
              "StatefulSet": f"{CORE}AppsV1StatefulSet.js", "Deployment": f"{CORE}AppsV1Deployment.js",
              "Service": f"{CORE}CoreV1Service.js", "PersistentVolumeClaim": f"{CORE}CoreV1PersistentVolumeClaim.js",
              "Secret": f"{CORE}CoreV1Secret.js", "ServiceAccount": f"{CORE}CoreV1ServiceAccount.js",
              "Role": f"{CORE}RbacV1Role.js", "RoleBinding": f"{CORE}RbacV1RoleBinding.js"}
needs_schemas = pytest.mark.skipif(shutil.which("node") is None or not all(Path(v).is_file() for v in VALIDATORS.values()),
                                   reason="Kubernetes and CRD schemas not installed: `QKDOPS_SETUP_TESTS=1 bash scripts/setup.sh`")


def _manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(DIRECTORY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in _manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _schema_errors(objects: list[dict[str, Any]]) -> list[Any]:
    """Each object's validation errors from its compiled schema (empty list: valid)."""
    script = ("const objects = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
              "const kinds = " + json.dumps(VALIDATORS) + ";\n"
              "(async () => { const out = [];\n"
              "  for (const o of objects) { const { validate } = await import(kinds[o.kind]);\n"
              "    out.push(validate(o) ? [] : validate.errors); }\n"
              "  console.log(JSON.stringify(out)); })();\n")
    run = subprocess.run(["node", "-e", script], input=json.dumps(objects), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@needs_schemas
def test_every_object_passes_its_kubernetes_or_crd_schema() -> None:
    manifests = _manifests()
    assert {m["kind"] for m in manifests} == set(VALIDATORS)
    assert dict(zip([f"{m['kind']}/{m['metadata']['name']}" for m in manifests], _schema_errors(manifests))) == \
        {f"{m['kind']}/{m['metadata']['name']}": [] for m in manifests}


@needs_schemas
def test_the_schema_check_can_fail() -> None:
    config = load_monitoring_config()
    rule = prometheus_rules(config)[0]
    del rule["spec"]["groups"][0]["name"]
    monitor = service_monitors(config)[0]
    monitor["spec"]["endpoints"][0]["relabelings"][0]["action"] = "explode"
    pods = pod_monitor(config)
    pods["spec"]["podMetricsEndpoints"] = "device-metrics"
    server = prometheus(config)
    server["spec"]["replicas"] = "two"
    workers = wl.worker_statefulset()
    _container(workers)["ports"][0]["containerPort"] = "9800"
    claim = wl.claims()[0]
    claim["spec"]["accessModes"] = "ReadWriteOnce"
    errors = _schema_errors([rule, monitor, pods, server, workers, claim])
    assert {e["params"].get("missingProperty") for e in errors[0]} >= {"name"}
    assert all(errors[1:]), "an unknown relabeling action, wrong types and shapes must be refused"


def test_the_rules_are_exactly_the_ones_prometheus_loads() -> None:
    rules = {m["metadata"]["name"]: m["spec"]["groups"] for m in _manifests() if m["kind"] == "PrometheusRule"}
    loaded = {f"qkdops-{p.stem}": yaml.safe_load(p.read_text())["groups"] for p in RULES_DIR.glob("*.yml")}
    assert rules == loaded


def test_every_generated_manifest_is_current_and_no_other_is_there(capsys: pytest.CaptureFixture[str]) -> None:
    assert set(generate_cmd.ARTIFACTS["kubernetes"](load_monitoring_config())) == set(DIRECTORY.glob("*.yaml"))
    assert cli.main(["generate", "--check", "--only", "kubernetes"]) == 0, capsys.readouterr().err
    assert not [p.name for p in DIRECTORY.glob("*.yaml") if re.search(r"[&*]id\d{3}", p.read_text())], "YAML aliases in a manifest"


def _parse(argv: list[str]) -> Any:
    return cli.build_parser().parse_args(argv)


def _worker_argv(ordinal: int, tmp_path: Path) -> list[str]:
    """What the worker container's command runs in pod ``qkdops-worker-<ordinal>``: the real shell
    command, with a ``qkdops`` on PATH that prints its arguments."""
    fake = tmp_path / "qkdops"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    command = _container(_one("StatefulSet", wl.WORKER))["command"]
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "HOSTNAME": f"{wl.WORKER}-{ordinal}"}
    return json.loads(subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=30).stdout)


def test_each_worker_pod_runs_its_own_shard_of_as_many_as_there_are_replicas(tmp_path: Path) -> None:
    workers = _one("StatefulSet", wl.WORKER)
    replicas = workers["spec"]["replicas"]
    assert replicas == wl.WORKERS >= 2
    ports = {p["name"]: p["containerPort"] for p in _container(workers)["ports"]}
    parsed = [_parse(_worker_argv(i, tmp_path)) for i in range(replicas)]
    assert [args.shard for args in parsed] == list(range(replicas))
    for args in parsed:
        assert args.handler.__module__ == "qkdops_cli.worker_cmd"
        assert (args.workers, str(args.config)) == (replicas, CONTAINER_CONFIG)
        assert (args.control_port, args.device_port, args.postprocessing_port) == \
            (ports["control-api"], ports["device-metrics"], ports["pp-metrics"])


def test_the_supervisor_routes_to_every_worker_in_shard_order() -> None:
    workers = _one("StatefulSet", wl.WORKER)
    headless = _one("Service", workers["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= workers["spec"]["template"]["metadata"]["labels"].items()
    args = _parse(_container(_one("Deployment", wl.SUPERVISOR))["args"])
    assert args.handler.__module__ == "qkdops_cli.up_cmd" and args.no_prometheus and not args.workers
    assert str(args.config) == CONTAINER_CONFIG
    control = {p["name"]: p["port"] for p in headless["spec"]["ports"]}["control-api"]
    assert args.worker_api == [f"http://{wl.WORKER}-{i}.{headless['metadata']['name']}:{control}"
                               for i in range(workers["spec"]["replicas"])]


def test_workers_and_supervisor_share_one_read_write_once_volume_on_one_node() -> None:
    workers, supervisor = _one("StatefulSet", wl.WORKER), _one("Deployment", wl.SUPERVISOR)
    claims = {v["persistentVolumeClaim"]["claimName"] for w in (workers, supervisor)
              for v in w["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    (claim,) = claims
    assert _one("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteOnce"]
    (term,) = workers["spec"]["template"]["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= supervisor["spec"]["template"]["metadata"]["labels"].items()
    assert supervisor["spec"]["replicas"] == 1 and supervisor["spec"]["strategy"]["type"] == "Recreate"
    assert "ONE node" in (DIRECTORY / "workloads.yaml").read_text()


def test_the_scheduler_acts_through_the_supervisor_on_the_operators_prometheus() -> None:
    args = _parse(_container(_one("Deployment", wl.SCHEDULER))["args"])
    assert args.handler.__module__ == "qkdops_cli.calibration_cmd"
    control = {p["name"]: p["port"] for p in _one("Service", wl.SUPERVISOR)["spec"]["ports"]}["control-api"]
    assert args.api == f"http://{wl.SUPERVISOR}:{control}"
    assert args.prometheus == f"http://{wl.PROMETHEUS_SERVICE}:9090"


def test_secrets_are_mounted_as_the_files_their_variables_name_and_never_rendered() -> None:
    for workload in (m for m in _manifests() if m["kind"] in ("StatefulSet", "Deployment")):
        container, pod = _container(workload), workload["spec"]["template"]["spec"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        files = {e["name"]: e["value"] for e in container["env"]}
        assert set(secrets.values()) <= set(wl.SECRETS) and "qkdops-api-token" in secrets.values()
        assert files == {wl.SECRETS[s][1]: f"{mounts[volume]}/{wl.SECRETS[s][0]}" for volume, s in secrets.items()}
    assert [m["metadata"]["name"] for m in _manifests() if m["kind"] == "Secret"] == ["qkdops-alertmanager"]


def test_probes_and_resources() -> None:
    for workload in (m for m in _manifests() if m["kind"] in ("StatefulSet", "Deployment")):
        container = _container(workload)
        ports = {p["name"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/healthz" and container[probe]["httpGet"]["port"] in ports
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys() and "memory" in container["resources"]["limits"]


def test_every_scrape_job_keeps_the_name_the_rules_select_on() -> None:
    config = load_monitoring_config()
    interval = f"{config.scrape_interval_s:g}s"
    services = [m for m in _manifests() if m["kind"] == "Service"]
    monitors = [m for m in _manifests() if m["kind"] == "ServiceMonitor"]
    for monitor in monitors:
        (endpoint,) = monitor["spec"]["endpoints"]
        selected = [s for s in services if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(selected) == 1 and endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
        assert endpoint["interval"] == interval
    assert {m["spec"]["endpoints"][0]["relabelings"][0]["replacement"] for m in monitors} == \
        {config.jobs.postprocessing, config.jobs.calibration}
    (pods,) = [m for m in _manifests() if m["kind"] == "PodMonitor"]
    workers = _one("StatefulSet", wl.WORKER)
    assert pods["spec"]["selector"]["matchLabels"].items() <= workers["spec"]["template"]["metadata"]["labels"].items()
    worker_ports = {p["name"] for p in _container(workers)["ports"]}
    jobs = {}
    for endpoint in pods["spec"]["podMetricsEndpoints"]:
        assert endpoint["port"] in worker_ports and endpoint["interval"] == interval
        jobs[endpoint["port"]] = endpoint["relabelings"][0]["replacement"]
    assert jobs == {"device-metrics": config.jobs.device, "pp-metrics": config.jobs.postprocessing}


def test_worker_targets_get_the_worker_label_the_local_file_sd_gives() -> None:
    (pods,) = [m for m in _manifests() if m["kind"] == "PodMonitor"]
    for endpoint in pods["spec"]["podMetricsEndpoints"]:
        (relabel,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "worker"]
        assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_name"]
        template = re.sub(r"\$(\d)", r"\\\1", relabel["replacement"])   # Prometheus anchors the regex and expands $1
        for i in range(wl.WORKERS):
            match = re.fullmatch(relabel["regex"], f"{wl.WORKER}-{i}")
            assert match is not None and match.expand(template) == f"{WORKER_PREFIX}{i}"


def test_the_prometheus_pair_selects_every_rule_and_monitor_and_alerts_the_alertmanager_cluster() -> None:
    server, manager = _one("Prometheus", "qkdops"), _one("Alertmanager", "qkdops")
    spec = server["spec"]
    assert (spec["replicas"], spec["replicaExternalLabelName"]) == (PROMETHEUS_REPLICAS, "replica") == (2, "replica")
    for kind, selector in (("PrometheusRule", "ruleSelector"), ("PodMonitor", "podMonitorSelector"),
                           ("ServiceMonitor", "serviceMonitorSelector")):
        objects = [m for m in _manifests() if m["kind"] == kind]
        assert objects and all(spec[selector]["matchLabels"].items() <= m["metadata"]["labels"].items() for m in objects)
    (target,) = spec["alerting"]["alertmanagers"]
    assert target["name"] == "alertmanager-operated" and target["port"] == "web"   # the operator's Service of every Alertmanager
    assert manager["spec"]["replicas"] == ALERTMANAGER_REPLICAS == 3
    assert _one("ServiceAccount", spec["serviceAccountName"])


def test_alertmanager_routes_as_everywhere_else_to_the_supervisors_pager_sink() -> None:
    config = load_monitoring_config()
    manager = _one("Alertmanager", "qkdops")
    routing = yaml.safe_load(_one("Secret", manager["spec"]["configSecret"])["stringData"]["alertmanager.yaml"])
    sink_port = {p["name"]: p["port"] for p in _one("Service", wl.SUPERVISOR)["spec"]["ports"]}["pager-sink"]
    (secret,) = manager["spec"]["secrets"]
    token_file = f"/etc/alertmanager/secrets/{secret}/{wl.SECRETS[secret][0]}"   # where the operator mounts spec.secrets
    assert routing == alertmanager_config(config, f"{wl.SUPERVISOR}:{sink_port}", SecretFiles(), config.scrape_interval_s,
                                          sink_token_file=token_file)


def test_the_pods_run_the_image_as_the_dockerfile_builds_it() -> None:
    """Image name (compose's), user, and the state dir under the mounted volume: a drift here would
    start pods that cannot write their state or find their config."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert wl.IMAGE == compose["services"]["qkdops"]["image"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--uid {wl.UID} " in dockerfile
    (workdir,) = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE)   # where the image keeps links.yaml
    state_dir = Path(workdir) / (yaml.safe_load((ROOT / "links.yaml").read_text())["runtime"]["state_dir"])
    assert state_dir.is_relative_to(wl.STATE_MOUNT)
    for workload in (m for m in _manifests() if m["kind"] in ("StatefulSet", "Deployment")):
        assert _container(workload)["image"] == wl.IMAGE
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == wl.UID
        assert {"name": "state", "mountPath": wl.STATE_MOUNT} in _container(workload)["volumeMounts"]
