"""Kubernetes manifests for a prometheus-operator cluster: the same rules and scrape jobs as the local
stack and compose, as the operator's custom resources (``deploy/kubernetes/``, by ``qkdops generate``).

* ``PrometheusRule``: one per rule file Prometheus loads (``monitoring.rules``: the alert and
  recording rules rendered with the monitoring config, and the SLO rules), groups unchanged.
* ``Service`` + ``ServiceMonitor``: the qkdops exporters (device, post-processing) and the calibration
  scheduler's metrics, scraped at the monitoring config's interval under its job names — a
  ServiceMonitor's job label would otherwise be the Service's name, and every rule and dashboard
  selects ``up{job=…}`` by those names.

Every object carries ``app.kubernetes.io/part-of: qkdops``; a Prometheus custom resource selects them
with ``ruleSelector`` / ``serviceMonitorSelector`` on that label. tests/test_kubernetes.py validates
them against the operator's CRD schemas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from monitoring.config import MonitoringConfig
from monitoring.rules import render_rule_files
from qkdops.assets import CHECKOUT
from qkdops.config import RuntimeSettings

DIRECTORY = CHECKOUT / "deploy" / "kubernetes"
PART_OF = {"app.kubernetes.io/part-of": "qkdops"}
_RT = RuntimeSettings()   # the image's ports are links.yaml's defaults, as in compose
# Service → (component label, its named ports: name → port); the scrape endpoints are the *-metrics ports
SERVICES = {
    "qkdops": ("runtime", {"control-api": _RT.control_port, "device-metrics": _RT.device_exporter_port,
                           "pp-metrics": _RT.postprocessing_exporter_port, "pager-sink": _RT.pager_sink_port}),
    "qkdops-calibration": ("calibration", {"calibration-metrics": _RT.calibration_exporter_port}),
}


def prometheus_rules(config: MonitoringConfig) -> list[dict[str, Any]]:
    """One PrometheusRule per rule file, named after it (``qkd-alerts.yml`` → ``qkdops-qkd-alerts``)."""
    return [{"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
             "metadata": {"name": f"qkdops-{Path(name).stem}", "labels": dict(PART_OF)},
             "spec": {"groups": yaml.safe_load(text)["groups"]}}
            for name, text in render_rule_files(config).items()]


def services() -> list[dict[str, Any]]:
    """The Services the ServiceMonitors select (the pods are the qkdops image's, as in compose)."""
    return [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": name, "labels": {**PART_OF, "app.kubernetes.io/component": component}},
             "spec": {"selector": {"app.kubernetes.io/name": name},
                      "ports": [{"name": port_name, "port": port, "targetPort": port} for port_name, port in ports.items()]}}
            for name, (component, ports) in SERVICES.items()]


def service_monitors(config: MonitoringConfig) -> list[dict[str, Any]]:
    """A ServiceMonitor per scrape job, its ``job`` label set to the monitoring config's job name."""
    interval = f"{config.scrape_interval_s:g}s"
    jobs = ((config.jobs.device, "qkdops", "device-metrics"), (config.jobs.postprocessing, "qkdops", "pp-metrics"),
            (config.jobs.calibration, "qkdops-calibration", "calibration-metrics"))
    return [{"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
             "metadata": {"name": job, "labels": dict(PART_OF)},
             "spec": {"selector": {"matchLabels": {**PART_OF, "app.kubernetes.io/component": SERVICES[service][0]}},
                      "endpoints": [{"port": port, "path": "/metrics", "interval": interval, "scheme": "http",
                                     "relabelings": [{"action": "replace", "targetLabel": "job", "replacement": job}]}]}}
            for job, service, port in jobs]


def render(config: MonitoringConfig) -> dict[Path, str]:
    """File → multi-document YAML of every manifest."""
    header = ("# Rendered by `qkdops generate` (monitoring/kubernetes.py) from the rules and monitoring.yaml:\n"
              "# do not edit. Apply with kubectl apply -f deploy/kubernetes/ on a cluster running prometheus-operator.\n")

    def documents(objects: list[dict[str, Any]]) -> str:
        return header + yaml.safe_dump_all(objects, sort_keys=False, width=10_000, allow_unicode=True)
    return {DIRECTORY / "prometheus-rules.yaml": documents(prometheus_rules(config)),
            DIRECTORY / "scrape.yaml": documents([*services(), *service_monitors(config)])}
