"""The Kubernetes manifests (deploy/kubernetes/) are prometheus-operator resources that its CRD schemas
accept, carrying exactly the rules Prometheus loads and scraping under the rules' job names."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.config import load_monitoring_config
from monitoring.kubernetes import DIRECTORY, SERVICES, prometheus_rules, service_monitors
from monitoring.rules import RULES_DIR

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / ".venv" / "k8s-schemas" / "node_modules" / "@kubernetes-models" / "prometheus-operator" / "_schemas"
VALIDATORS = {"PrometheusRule": "ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1PrometheusRule.js",
              "ServiceMonitor": "ComGithubPrometheusOperatorPrometheusOperatorPkgApisMonitoringV1ServiceMonitor.js"}
needs_schemas = pytest.mark.skipif(shutil.which("node") is None or not SCHEMAS.is_dir(),
                                   reason="CRD schemas not installed: `QKDOPS_SETUP_TESTS=1 bash scripts/setup.sh`")


def _manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(DIRECTORY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _schema_errors(objects: list[dict[str, Any]]) -> list[Any]:
    """Each object's validation errors from the operator's compiled CRD schema (empty list: valid)."""
    script = ("const objects = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
              "const kinds = " + json.dumps({k: str(SCHEMAS / v) for k, v in VALIDATORS.items()}) + ";\n"
              "(async () => { const out = [];\n"
              "  for (const o of objects) { const { validate } = await import(kinds[o.kind]);\n"
              "    out.push(validate(o) ? [] : validate.errors); }\n"
              "  console.log(JSON.stringify(out)); })();\n")
    run = subprocess.run(["node", "-e", script], input=json.dumps(objects), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@needs_schemas
def test_every_operator_resource_passes_its_crd_schema() -> None:
    resources = [m for m in _manifests() if m["kind"] in VALIDATORS]
    assert {m["kind"] for m in resources} == set(VALIDATORS)
    assert _schema_errors(resources) == [[] for _ in resources]


@needs_schemas
def test_the_schema_check_can_fail() -> None:
    rule = prometheus_rules(load_monitoring_config())[0]
    del rule["spec"]["groups"][0]["name"]
    rule["spec"]["groups"][0]["rules"][0]["expr"] = 3.5
    monitor = service_monitors(load_monitoring_config())[0]
    monitor["spec"]["endpoints"][0]["relabelings"][0]["action"] = "explode"
    errors = _schema_errors([rule, monitor])
    assert {e["params"].get("missingProperty") for e in errors[0]} >= {"name"}
    assert errors[1], "an unknown relabeling action must be refused"


def test_the_rules_are_exactly_the_ones_prometheus_loads() -> None:
    rules = {m["metadata"]["name"]: m["spec"]["groups"] for m in _manifests() if m["kind"] == "PrometheusRule"}
    loaded = {f"qkdops-{p.stem}": yaml.safe_load(p.read_text())["groups"] for p in RULES_DIR.glob("*.yml")}
    assert rules == loaded


def test_every_scrape_job_keeps_the_name_the_rules_select_on() -> None:
    config = load_monitoring_config()
    monitors = [m for m in _manifests() if m["kind"] == "ServiceMonitor"]
    jobs = {e["relabelings"][0]["replacement"] for m in monitors for e in m["spec"]["endpoints"]}
    assert jobs == {config.jobs.device, config.jobs.postprocessing, config.jobs.calibration}
    services = {m["metadata"]["name"]: m for m in _manifests() if m["kind"] == "Service"}
    for monitor in monitors:
        (endpoint,) = monitor["spec"]["endpoints"]
        selected = [s for s in services.values()
                    if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(selected) == 1 and endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
        assert endpoint["interval"] == f"{config.scrape_interval_s:g}s"
    assert set(services) == set(SERVICES)
