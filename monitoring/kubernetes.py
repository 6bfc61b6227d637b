"""Kubernetes manifests for a prometheus-operator cluster (``deploy/kubernetes/``, by ``qkdops
generate``): the qkdops workloads and the same rules, scrape jobs and alert routing as the local stack
and compose, as the operator's custom resources.

* ``prometheus-rules.yaml`` — a ``PrometheusRule`` per rule file Prometheus loads (``monitoring.rules``:
  the alert and recording rules rendered with the monitoring config, and the SLO rules), groups unchanged.
* ``workloads.yaml`` — the sharded fleet: worker StatefulSet, supervisor and scheduler Deployments,
  their Services and volume claims (``monitoring.kubernetes_workloads``, which says why one node).
* ``scrape.yaml`` — a ``PodMonitor`` for the workers' device and post-processing exporters and
  ``ServiceMonitor``s for the supervisor's post-processing exporter (the KMEs' request series) and the
  scheduler, at the monitoring config's interval under its job names: the operator would otherwise
  name the job after the monitor or Service, and every rule and dashboard selects ``up{job=…}`` by
  those names. A worker's targets get ``worker="worker-<ordinal>"``, the label the local stack's file
  service discovery gives them, so ``QKDFleetWorker…`` alerts and dashboards read the same.
* ``prometheus.yaml`` — a ``Prometheus`` HA pair (``replica`` external label, so a long-term store
  deduplicates them) selecting every rule and monitor above by ``app.kubernetes.io/part-of: qkdops``
  and alerting an ``Alertmanager`` cluster of three, whose routing is ``monitoring.alertmanager``'s,
  sending to the supervisor's pager sink with its token; and the ServiceAccount and Role the pair
  discovers its targets with.

tests/test_kubernetes.py validates every object against the operator's CRD schemas and Kubernetes'
OpenAPI schemas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from monitoring import kubernetes_workloads as wl
from monitoring.alertmanager import SecretFiles, alertmanager_config
from monitoring.config import MonitoringConfig
from monitoring.prometheus import RETENTION
from monitoring.rules import render_rule_files
from qkdops.assets import CHECKOUT

DIRECTORY = CHECKOUT / "deploy" / "kubernetes"
PART_OF = wl.PART_OF
SELECTOR = {"matchLabels": dict(PART_OF)}
NAME = "qkdops"   # of the Prometheus and Alertmanager resources
PROMETHEUS_REPLICAS = 2
ALERTMANAGER_REPLICAS = 3
ALERTMANAGER_CONFIG = "qkdops-alertmanager"   # the Secret holding alertmanager.yaml (no credential in it: file paths)
PAGER_SINK_SECRET = "qkdops-pager-sink-token"
# where the operator mounts an Alertmanager's spec.secrets
PAGER_SINK_TOKEN_FILE = f"/etc/alertmanager/secrets/{PAGER_SINK_SECRET}/{wl.SECRETS[PAGER_SINK_SECRET][0]}"
PROMETHEUS_ACCOUNT = "qkdops-prometheus"
# The operator's CRD takes a volume claim template's apiVersion/kind as free strings and ignores them; the
# models the tests validate with insist on these two, so they are set to what both accept.
EMBEDDED_CLAIM = {"apiVersion": "monitoring.coreos.com/v1", "kind": "EmbeddedPersistentVolumeClaim"}


class _Dumper(yaml.SafeDumper):
    """Writes a shared object out at each use: anchors and aliases (``&id001``) are valid YAML but
    hard to read in a manifest, and not every tool that reads manifests resolves them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def prometheus_rules(config: MonitoringConfig) -> list[dict[str, Any]]:
    """One PrometheusRule per rule file, named after it (``qkd-alerts.yml`` → ``qkdops-qkd-alerts``)."""
    return [{"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
             "metadata": {"name": f"qkdops-{Path(name).stem}", "labels": dict(PART_OF)},
             "spec": {"groups": yaml.safe_load(text)["groups"]}}
            for name, text in render_rule_files(config).items()]


def _endpoint(port: str, job: str, interval: str, *extra: dict[str, Any]) -> dict[str, Any]:
    return {"port": port, "path": "/metrics", "interval": interval, "scheme": "http",
            "relabelings": [{"action": "replace", "targetLabel": "job", "replacement": job}, *extra]}


def service_monitors(config: MonitoringConfig) -> list[dict[str, Any]]:
    """The supervisor's post-processing exporter and the scheduler, each a ServiceMonitor named and
    ``job``-labelled after its scrape job, selecting its Service by component."""
    interval = f"{config.scrape_interval_s:g}s"
    jobs = ((config.jobs.postprocessing, "runtime", "pp-metrics"), (config.jobs.calibration, "calibration", "calibration-metrics"))
    return [{"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
             "metadata": {"name": job, "labels": dict(PART_OF)},
             "spec": {"selector": {"matchLabels": {**PART_OF, "app.kubernetes.io/component": component}},
                      "endpoints": [_endpoint(port, job, interval)]}}
            for job, component, port in jobs]


def pod_monitor(config: MonitoringConfig) -> dict[str, Any]:
    """The workers' two exporters, under the device and post-processing job names, each target
    labelled ``worker="worker-<ordinal>"`` from its pod name."""
    interval = f"{config.scrape_interval_s:g}s"
    worker = {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_name"], "regex": f"{wl.WORKER}-([0-9]+)",
              "targetLabel": "worker", "replacement": f"{wl.WORKER_LABEL_PREFIX}$1"}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": wl.WORKER, "labels": dict(PART_OF)},
            "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": wl.WORKER}},
                     "podMetricsEndpoints": [_endpoint("device-metrics", config.jobs.device, interval, worker),
                                             _endpoint("pp-metrics", config.jobs.postprocessing, interval, worker)]}}


def prometheus_access() -> list[dict[str, Any]]:
    """What the Prometheus pods discover their targets with: read access to this namespace's pods,
    Services and endpoints (the operator's own account does not lend them its rights)."""
    meta = {"name": PROMETHEUS_ACCOUNT, "labels": dict(PART_OF)}
    return [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
             "rules": [{"apiGroups": [""], "resources": ["pods", "services", "endpoints"], "verbs": ["get", "list", "watch"]},
                       {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PROMETHEUS_ACCOUNT},
             "subjects": [{"kind": "ServiceAccount", "name": PROMETHEUS_ACCOUNT}]}]


def prometheus(config: MonitoringConfig) -> dict[str, Any]:
    """The HA pair: both replicas scrape and evaluate everything and both alert (Alertmanager
    deduplicates); ``replica`` tells their series apart for a deduplicating long-term store."""
    interval = f"{config.scrape_interval_s:g}s"
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus", "metadata": {"name": NAME, "labels": dict(PART_OF)},
            "spec": {"replicas": PROMETHEUS_REPLICAS, "replicaExternalLabelName": "replica", "externalLabels": {"stack": "qkdops"},
                     "serviceAccountName": PROMETHEUS_ACCOUNT, "scrapeInterval": interval, "evaluationInterval": interval,
                     "retention": RETENTION,
                     "ruleSelector": SELECTOR, "podMonitorSelector": SELECTOR, "serviceMonitorSelector": SELECTOR,
                     "alerting": {"alertmanagers": [{"name": "alertmanager-operated", "port": "web", "apiVersion": "v2"}]},
                     "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
                     "storage": {"volumeClaimTemplate": {**EMBEDDED_CLAIM,
                                                         "spec": {"accessModes": ["ReadWriteOnce"],
                                                                  "resources": {"requests": {"storage": "20Gi"}}}}}}}


def alertmanager() -> dict[str, Any]:
    """Three Alertmanagers, clustered by the operator (a notification goes out once)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "Alertmanager", "metadata": {"name": NAME, "labels": dict(PART_OF)},
            "spec": {"replicas": ALERTMANAGER_REPLICAS, "configSecret": ALERTMANAGER_CONFIG, "secrets": [PAGER_SINK_SECRET],
                     "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}}}


def alertmanager_config_secret(config: MonitoringConfig) -> dict[str, Any]:
    """``monitoring.alertmanager``'s routing, inhibition and pager-sink receivers (at the supervisor's
    Service, with the token file the Alertmanager resource mounts). External pagers need key files
    this layout does not mount yet, so only the sink receives here."""
    pager_sink = f"{wl.SUPERVISOR}:{wl.supervisor_ports(wl.fleet())['pager-sink']}"
    routing = alertmanager_config(config, pager_sink, SecretFiles(), config.scrape_interval_s, sink_token_file=PAGER_SINK_TOKEN_FILE)
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": ALERTMANAGER_CONFIG, "labels": dict(PART_OF)},
            "type": "Opaque", "stringData": {"alertmanager.yaml": yaml.dump(routing, Dumper=_Dumper, sort_keys=False, width=200)}}


HEADER = ("# Rendered by `qkdops generate` (monitoring/kubernetes.py) from the rules, monitoring.yaml and links.yaml:\n"
          "# do not edit. Apply with kubectl apply -f deploy/kubernetes/ on a cluster running prometheus-operator\n"
          "# (README.md, Deployment: Kubernetes).\n")
WORKLOADS_NOTE = (
    "#\n"
    "# LIMIT: the whole fleet runs on ONE node. The workers and the supervisor share one state volume\n"
    "# (block archive, key buffer, KME key store: SQLite files written by several processes), which is a\n"
    "# ReadWriteOnce claim, and the workers require pod affinity to the supervisor's node. Do not switch it\n"
    "# to a ReadWriteMany (NFS-like) volume to spread the pods: SQLite's locking does not work over network\n"
    "# file systems and the key store would corrupt.\n"
    "# Secrets referenced, created by you beforehand: qkdops-api-token (key api-token), qkdops-pager-sink-token\n"
    "# (key pager-sink-token), qkdops-prometheus-password (key prometheus-password).\n")


def render(config: MonitoringConfig) -> dict[Path, str]:
    """File → multi-document YAML of every manifest."""
    def documents(objects: list[dict[str, Any]], note: str = "") -> str:
        return HEADER + note + yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    return {DIRECTORY / "prometheus-rules.yaml": documents(prometheus_rules(config)),
            DIRECTORY / "workloads.yaml": documents(wl.workloads(), WORKLOADS_NOTE),
            DIRECTORY / "scrape.yaml": documents([pod_monitor(config), *service_monitors(config)]),
            DIRECTORY / "prometheus.yaml": documents([*prometheus_access(), prometheus(config), alertmanager(),
                                                      alertmanager_config_secret(config)])}
