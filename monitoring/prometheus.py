"""Prometheus's configuration: scrape jobs (their names are what rules and dashboards select on),
rule files and the Alertmanager it sends to, for the local stack (local addresses) and for
docker-compose (``prometheus/prometheus.yml``: service names and ``/run/secrets/`` paths; a test keeps
it current), so the two cannot drift apart.

High availability, the standard way (``qkdops up --ha``; compose always): two identical replicas
scrape the same targets and evaluate the same rules, told apart only by the external label
``replica`` (``a``, ``b``). Each sends every alert to every Alertmanager peer of the cluster, with
``replica`` dropped first (``alert_relabel_configs``), so both replicas' alerts are one alert to the
cluster, which notifies it once. It is dropped from what leaves by ``remote_write`` too
(``write_relabel_configs``, applied after the external labels), so both replicas write the same series
and the long-term store, deduplicating at the scrape interval (``-dedup.minScrapeInterval``), keeps one
sample per interval of the pair (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from qkdops import credentials
from monitoring.config import MonitoringConfig
from qkdops.assets import CHECKOUT
from qkdops.config import RuntimeSettings

REPO = CHECKOUT   # the compose files are rendered into the checkout
COMPOSE_PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"   # replica a
# The HA pair's processes (their names in `qkdops up`'s up.json and listing) → their `replica` label.
PROMETHEUS_REPLICAS = {"prometheus": "a", "prometheus_b": "b"}
# How long Prometheus keeps samples (--storage.tsdb.retention.time; Prometheus' own default is 15d):
# an SLO's 30-day window and five days' margin, and the most `qkdops history` backfills. Beyond, the
# long-term store.
RETENTION_DAYS = 35
RETENTION = f"{RETENTION_DAYS}d"
REPLICAS = tuple(PROMETHEUS_REPLICAS.values())
COMPOSE_PROMETHEUS_CONFIGS = {"a": COMPOSE_PROMETHEUS_CONFIG, "b": REPO / "prometheus" / "prometheus-b.yml"}


@dataclass(frozen=True)
class Hosts:
    """Addresses Prometheus uses to reach each service (local processes, or compose services)."""

    device: str | None   # None: no exporter of this kind outside the workers (a sharded fleet's supervisor)
    postprocessing: str
    alertmanager: str
    pager_sink: str
    calibration: str | None = None  # the calibration scheduler's metrics; None: not run (no scrape job)
    alertmanager_peers: tuple[str, ...] = ()  # the other peers of an Alertmanager cluster (HA); alerts go to all
    # A sharded fleet's workers: the directory of the file-SD target lists ``<job>.json`` that
    # ``qkdops up --workers N`` writes (``worker_targets``); None: the fleet runs in one process ...
    worker_targets_dir: str | None = None
    # ... or its workers at fixed addresses (compose services): (worker name, device, post-processing)
    workers: tuple[tuple[str, str, str], ...] = ()
    kme_probe: str | None = None    # the kme-probe's metrics (the KMEs seen over ETSI 014); None: not run


def local_hosts(rt: RuntimeSettings, calibration_bind: str | None = None, ha: bool = False,
                worker_targets_dir: str | None = None, kme_probe: bool = False) -> Hosts:
    """Local addresses; ``calibration_bind``: where the scheduler listens (None: it is not run);
    ``ha``: the Alertmanager cluster's other two peers too (``qkdops up --ha``); ``worker_targets_dir``:
    a sharded fleet's target lists (its supervisor serves no device exporter); ``kme_probe``: the
    kme-probe runs (on ``runtime.kme_probe_port``)."""
    peers = (f"{rt.bind}:{rt.alertmanager_b_port}", f"{rt.bind}:{rt.alertmanager_c_port}") if ha else ()
    return Hosts(None if worker_targets_dir else f"{rt.bind}:{rt.device_exporter_port}", f"{rt.bind}:{rt.postprocessing_exporter_port}",
                 f"{rt.bind}:{rt.alertmanager_port}", f"{rt.bind}:{rt.pager_sink_port}",
                 None if calibration_bind is None else f"{calibration_bind}:{rt.calibration_exporter_port}", peers, worker_targets_dir,
                 kme_probe=f"{rt.bind}:{rt.kme_probe_port}" if kme_probe else None)


def worker_targets(monitoring: MonitoringConfig, workers: Sequence[tuple[str, str, str]]) -> dict[str, list[dict[str, Any]]]:
    """Target groups by job for a sharded fleet's workers (worker name, device exporter address,
    post-processing exporter address) — a file-SD list (file name ``<job>.json``) or static configs:
    one group per worker, labelled ``worker`` so its targets' ``up`` says which worker is down."""
    if not workers:
        return {}
    return {monitoring.jobs.device: [{"targets": [device], "labels": {"worker": name}} for name, device, _ in workers],
            monitoring.jobs.postprocessing: [{"targets": [pp], "labels": {"worker": name}} for name, _, pp in workers]}


@dataclass(frozen=True)
class RemoteWrite:
    """Where Prometheus copies every sample for the long term (VictoriaMetrics' Prometheus remote-write
    endpoint), with basic auth (user ``qkdops``, the password read from ``password_file``)."""

    url: str
    password_file: str


# docker-compose runs the fleet sharded: services qkdops-worker-0 … run the links (`qkdops worker`), the
# qkdops service the KMEs, the pager sink and the routing control API (`qkdops up --worker-api …`).
COMPOSE_WORKERS = 2
COMPOSE_HOSTS = Hosts(None, "qkdops:9811", "alertmanager:9093", "qkdops:9820", "calibration:9812",
                      ("alertmanager-b:9093", "alertmanager-c:9093"),
                      workers=tuple((f"worker-{i}", f"qkdops-worker-{i}:9810", f"qkdops-worker-{i}:9811") for i in range(COMPOSE_WORKERS)),
                      kme_probe="kme-probe:9813")
# docker-compose's `secrets:` (files written by `qkdops credentials --compose-dir compose-secrets`), as the
# containers see them.
COMPOSE_SECRET_FILES = {name: f"/run/secrets/{name}" for name in (
    *(secret.file_name for secret in credentials.STACK_SECRETS),
    credentials.PROMETHEUS_WEB_CONFIG, credentials.ALERTMANAGER_WEB_CONFIG, credentials.VMAUTH_CONFIG)}
# The compose long-term store: the VictoriaMetrics cluster behind vmauth (docker-compose.yml).
COMPOSE_REMOTE_WRITE = RemoteWrite("http://vmauth:8427/api/v1/write", COMPOSE_SECRET_FILES[credentials.VICTORIA_METRICS_PASSWORD.file_name])


def prometheus_config(monitoring: MonitoringConfig, hosts: Hosts, rule_glob: str, scrape_interval_s: float, *,
                      alertmanager_password_file: str, remote_write: RemoteWrite | None = None,
                      replica: str | None = None) -> dict[str, Any]:
    """Scrape both exporters, the calibration scheduler and the kme-probe under the monitoring config's job names
    (what rules and dashboards select on) — a sharded fleet's workers found through the target lists
    in ``hosts.worker_targets_dir`` (re-read when they change) or at ``hosts.workers`` — send alerts to
    Alertmanager (every peer of ``hosts``) with basic auth (its password read from
    ``alertmanager_password_file`` at each reload), and with ``remote_write`` copy every sample to the
    long-term store. ``replica`` (one of ``REPLICAS``): this is one of an HA pair — external label
    ``replica``, dropped from the alerts it sends (module docstring); None: the single Prometheus,
    configured as before HA existed."""
    if replica is not None and replica not in REPLICAS:
        raise ValueError(f"replica {replica!r}: expected one of {', '.join(REPLICAS)}")
    interval = f"{scrape_interval_s:g}s"
    jobs = [(monitoring.jobs.device, hosts.device), (monitoring.jobs.postprocessing, hosts.postprocessing)]
    if hosts.calibration is not None:
        jobs.append((monitoring.jobs.calibration, hosts.calibration))
    if hosts.kme_probe is not None:
        jobs.append((monitoring.jobs.kme_probe, hosts.kme_probe))
    discovered = (monitoring.jobs.device, monitoring.jobs.postprocessing) if hosts.worker_targets_dir else ()
    static_workers = worker_targets(monitoring, hosts.workers)

    def static(job: str, target: str | None) -> list[dict[str, Any]]:
        return ([{"targets": [target]}] if target else []) + static_workers.get(job, [])
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "external_labels": {"stack": "qkdops", **({"replica": replica} if replica else {})}},
        "rule_files": [rule_glob],
        "alerting": {**({"alert_relabel_configs": [{"action": "labeldrop", "regex": "replica"}]} if replica else {}),
                     "alertmanagers": [{"basic_auth": {"username": credentials.USER, "password_file": alertmanager_password_file},
                                        "static_configs": [{"targets": [hosts.alertmanager, *hosts.alertmanager_peers]}]}]},
        "scrape_configs": [{"job_name": job, **({"static_configs": groups} if (groups := static(job, target)) else {}),
                            **({"file_sd_configs": [{"files": [f"{hosts.worker_targets_dir}/{job}.json"], "refresh_interval": "30s"}]}
                               if job in discovered else {})}
                           for job, target in jobs],
        **({"remote_write": [{"url": remote_write.url, "basic_auth": {"username": credentials.USER,
                                                                       "password_file": remote_write.password_file},
                              # write relabelling comes after the external labels: both replicas then send
                              # the same series, which the store deduplicates to one sample per interval
                              **({"write_relabel_configs": [{"action": "labeldrop", "regex": "replica"}]} if replica else {})}]}
           if remote_write else {}),
    }


def render_compose_prometheus_config(monitoring: MonitoringConfig, replica: str = "a") -> str:
    """Replica ``replica`` of compose's HA pair (service ``prometheus``: a, ``prometheus-b``: b)."""
    header = (f"# Rendered by monitoring.prometheus.prometheus_config for docker-compose (service names), HA replica {replica};\n"
              "# `qkdops up` renders the same with local addresses. Do not edit: a test keeps it current.\n")
    return header + yaml.safe_dump(prometheus_config(monitoring, COMPOSE_HOSTS, "/etc/prometheus/rules/*.yml", monitoring.scrape_interval_s,
                                                     alertmanager_password_file=COMPOSE_SECRET_FILES["alertmanager-password"],
                                                     remote_write=COMPOSE_REMOTE_WRITE, replica=replica),
                                   sort_keys=False)
