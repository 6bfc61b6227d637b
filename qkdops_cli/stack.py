"""The local stack around the fleet: Prometheus and Alertmanager as supervised child processes.

``qkdops up`` runs the links, exporters, control API and pager sink in its own process and these two
servers as children (Debian's ``prometheus`` and ``prometheus-alertmanager``, installed by
``scripts/setup.sh``).

The two servers' configurations are rendered by ``monitoring.prometheus`` (scrape jobs, rule files,
Alertmanager address) and ``monitoring.alertmanager`` (routing, receivers, inhibition); this module only
writes them into the state dir and supervises the processes.

The calibration scheduler (``qkdops scheduler``, package ``calibration_jobs``) is a third child, started
by ``qkdops up`` once the control API, Prometheus and the fleet are up, with its ``--api`` and
``--prometheus`` addresses passed explicitly (its token it resolves as the CLI does: the environment
``qkdops up`` passes on, else ``<state_dir>/api-token``). Prometheus scrapes it as job
``qkd-calibration`` (compose: ``calibration:9812``); ``qkdops up --no-calibration`` leaves both the
child and the scrape job out, so Prometheus shows no target rather than a crashed one (the ticket
``QKDCalibrationSchedulerDown`` still opens after 5 m through its ``absent()`` clause, which is true:
nothing calibrates; silence it for a game day).
Shutdown stops it first — SIGTERM, ``SCHEDULER_STOP_GRACE_S``, then SIGKILL — so no calibration action
is in flight while Prometheus, the control API and the fleet go away.

Authentication (``qkdops.credentials``, docs/security.md): ``start`` creates what is missing in the
state dir — the pager sink token and the Prometheus and Alertmanager passwords (0600) — and writes
``prometheus-web.yml`` / ``alertmanager-web.yml`` (bcrypt, user ``qkdops``), which both servers get as
``--web.config.file``, so every endpoint, ``/-/ready`` included, wants basic auth; the readiness checks
log in. Prometheus sends alerts with ``basic_auth.password_file`` (Alertmanager's password file) and
Alertmanager its webhooks to the pager sink with ``http_config.authorization.credentials_file`` (the
token file). The scheduler is started with ``QKDOPS_*_FILE`` naming these files
(``credentials.client_environment``). Compose: the same rendering with ``/run/secrets/`` paths
(``COMPOSE_SECRET_FILES``).

Supervision differs by what a child is for. Prometheus and Alertmanager are *essential*: without them
nothing is measured or paged, so when one dies ``qkdops up`` stops with status 1 and the operator sees
it at once. The scheduler is not essential to key production: the links keep producing key without it
(drift accumulates over tens of minutes, and the calibration metrics and alerts make that visible).
Stopping key production because a helper died would turn a calibration outage into a key outage, so a
scheduler that dies *after* start-up is restarted with exponential backoff (1 s, 2 s, … capped at
``RESTART_BACKOFF_MAX_S``; the backoff resets once it has run ``RESTART_RESET_AFTER_S``), each exit
logged at ERROR with the tail of its log, and ``up.json`` updated with the new pid; while it is down
its Prometheus target is down and ``qkdops status`` says so. A scheduler that cannot start at all
(bad ``calibration_jobs/jobs.yaml``, exit 2; another scheduler holding ``<state_dir>/calibration.lock``,
exit 1) fails ``qkdops up`` at start-up instead, like a taken port: an operator is watching then, and a
stack that silently runs without calibration is worse than a clear error (``--no-calibration`` is the
explicit way to run without it).

High availability (``qkdops up --ha``; ``monitoring.prometheus`` says how the configs make it work): two
Prometheus replicas (``prometheus``: replica ``a`` on ``runtime.prometheus_port``, ``prometheus_b``:
replica ``b`` on ``runtime.prometheus_replica_port``), each with its own TSDB, and an Alertmanager
cluster of three peers (``alertmanager``, ``alertmanager_b``, ``alertmanager_c``) gossiping on
``runtime.alertmanager*_cluster_port``, each with its own storage and the same config. Redundancy is
the point, so one dead replica or peer does not stop the stack: it is restarted with the scheduler's
backoff while its siblings keep measuring and paging (a restarted peer rejoins the cluster and takes the
notification log from its peers, so it does not page again what they already paged). The stack stops
with status 1 only when *every* member of a kind is down at once — then nothing measures or pages, the
reason a single server is essential. Gossip has no authentication (Alertmanager's mutual TLS for it is
experimental), so the cluster ports listen on ``runtime.bind`` like every other port: keep that local.
The scheduler reads replica ``a``; while ``a`` is down its signals fall back to the control API's link
status, as they do whenever Prometheus does not answer (``calibration_jobs.signals``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import yaml

from qkdops import credentials
from exporters.postprocessing import WorkerStatus
from qkdops.config import FleetConfig, RuntimeSettings, WorkerPorts, parse_config, read_yaml, worker_ports
from qkdops.kme.pki import Pki
from qkdops.durations import format_seconds
from qkdops.http_client import Auth, StackAuth, http_url, open_url
from monitoring.alertmanager import ALERTMANAGER_PEERS, SecretFileError, alertmanager_config, peer_timeout_s, secret_files_from_env
from monitoring.config import MonitoringConfig, load_monitoring_config
from qkdops.processes import command_line, find_binary, log_tail, pid_alive
from monitoring.prometheus import PROMETHEUS_REPLICAS, RETENTION, RemoteWrite, local_hosts, prometheus_config, worker_targets
from monitoring.rules import write_rule_files

log = logging.getLogger("qkdops_cli.stack")

ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's name
SCHEDULER = "calibration_scheduler"  # its name in up.json, `qkdops up`'s listing and `qkdops status`
VICTORIA_METRICS = "victoria_metrics"   # the long-term store (`qkdops up --victoria-metrics`)
LONG_TERM_RETENTION = "1y"
SCHEDULER_READY_TIMEOUT_S = 30.0
SCHEDULER_STOP_GRACE_S = 10.0
WORKER_READY_TIMEOUT_S = 120.0   # a worker post-processes what its links' last run left before it listens
WORKER_STOP_GRACE_S = 30.0       # it finishes the blocks in hand; past this it is killed (the archive recovers them)
WORKER_PREFIX = "worker-"        # worker i's name in up.json, the logs, `qkdops status` and its `worker` label
TARGETS_DIR = "targets"          # in the state dir: the workers' file-SD target lists Prometheus reads
RESTART_BACKOFF_MAX_S = 60.0
RESTART_RESET_AFTER_S = 60.0
# docker-compose: the fleet config inside the image, derived at build time (``write_container_config``).
CONTAINER_CONFIG = "/etc/qkdops/links.yaml"
CONTAINER_BIND = "0.0.0.0"


class StackError(RuntimeError):
    """A server of the stack cannot be started; the message says which and what to do."""


def container_config(source: Path) -> str:
    """The fleet config for the containers of docker-compose: ``source`` with ``runtime.bind`` 0.0.0.0
    and an absolute ``state_dir``.

    Every service of the qkdops image must listen where the compose network reaches it, and the
    scheduler has no ``--bind`` (it serves at its config's ``runtime.bind``); the Dockerfile writes this
    once at build time from the ``links.yaml`` it copies, so the fleet cannot drift from it. Validated
    like any config (a ConfigError names the field).
    """
    raw = read_yaml(source)
    if not isinstance(raw, dict):
        parse_config(raw, source)   # raises the ConfigError that names the file
    runtime = dict(raw.get("runtime") or {})
    state_dir = Path(runtime.get("state_dir", RuntimeSettings.state_dir))
    runtime.update(bind=CONTAINER_BIND, state_dir=str(state_dir if state_dir.is_absolute() else source.resolve().parent / state_dir))
    raw = {**raw, "runtime": runtime}
    parse_config(raw, source)
    header = (f"# Derived from {source} by qkdops_cli.stack.container_config at image build: runtime.bind\n"
              f"# {CONTAINER_BIND} (reachable from the compose network; ports are published on 127.0.0.1 only) and\n"
              "# an absolute state_dir. Edit links.yaml and rebuild, not this file.\n")
    return header + yaml.safe_dump(raw, sort_keys=False)


def write_container_config(source: str | Path, target: str | Path) -> None:
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(container_config(Path(source)), encoding="utf-8")


KME_PROBE = "kme_probe"   # its name in up.json, `qkdops up`'s listing and `qkdops status`
KME_PROBE_INTERVAL_S, KME_PROBE_TIMEOUT_S = 10.0, 3.0


def kme_probe_targets(config: FleetConfig, host: str, pki_root: Path | str) -> dict[str, Any]:
    """A kme-probe config (``exporters/kme_probe.py``) watching ``config``'s own KMEs at ``host`` as an
    operator would a vendor's: for each pair of sites a link joins, the first SAE of one end probing
    its KME, with a round trip to the first SAE of the other (``pki_root``: the development PKI)."""
    pki = Pki(Path(pki_root))
    delivery = config.key_delivery
    targets: dict[tuple[str, str], dict[str, Any]] = {}
    for link in config.links:
        pair = (link.sites.alice, link.sites.bob)
        kme, peer = delivery.kme(pair[0]), delivery.kme(pair[1])
        if pair in targets or kme is None or peer is None:
            continue
        cert, key = pki.sae(kme.saes[0])
        peer_cert, peer_key = pki.sae(peer.saes[0])
        targets[pair] = {"name": f"{pair[0]}-{pair[1]}", "kme": http_url(host, kme.port, "https"), "sae": kme.saes[0],
                         "ca": str(pki.ca_cert), "cert": str(cert), "key": str(key),
                         "peer": {"sae": peer.saes[0], "kme": http_url(host, peer.port, "https"), "ca": str(pki.ca_cert),
                                  "cert": str(peer_cert), "key": str(peer_key)}}
    return {"interval_s": KME_PROBE_INTERVAL_S, "timeout_s": KME_PROBE_TIMEOUT_S, "targets": list(targets.values())}


def write_kme_probe_config(config: FleetConfig, host: str, pki_root: Path | str, target: Path | str) -> Path:
    """``kme_probe_targets`` written as YAML to ``target`` (the compose image's, or ``qkdops up``'s)."""
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Rendered by qkdops_cli.stack.kme_probe_targets from links.yaml: the fleet's own KMEs, probed over ETSI 014.\n"
    path.write_text(header + yaml.safe_dump(kme_probe_targets(config, host, pki_root), sort_keys=False), encoding="utf-8")
    return path


def kme_probe_argv(config_path: Path, rt: RuntimeSettings) -> list[str]:
    """``qkdops kme-probe`` on ``runtime.kme_probe_port``, stopping with ``qkdops up``."""
    return [sys.executable, "-m", "qkdops_cli.cli", "kme-probe", "--config", str(config_path), "--bind", rt.bind,
            "--port", str(rt.kme_probe_port), "--exit-with-parent"]


def scheduler_argv(config_path: Path, rt: RuntimeSettings) -> list[str]:
    """``qkdops scheduler`` for this runtime: addresses explicit, so it never guesses them; it exits
    with ``qkdops up`` even when that is killed with SIGKILL (no orphan holding the state lock)."""
    return [sys.executable, "-m", "qkdops_cli.cli", "scheduler", "--config", str(config_path),
            "--api", http_url(rt.bind, rt.control_port), "--prometheus", http_url(rt.bind, rt.prometheus_port),
            "--exit-with-parent"]


def worker_argv(config_path: Path, shard: int, workers: int, bind: str) -> list[str]:
    """``qkdops worker`` for shard ``shard`` of ``workers`` at the default ports for its index, stopping
    with ``qkdops up`` even when that is killed with SIGKILL."""
    return [sys.executable, "-m", "qkdops_cli.cli", "worker", "--config", str(config_path), "--shard", str(shard),
            "--workers", str(workers), "--bind", bind, "--exit-with-parent"]


@dataclass(frozen=True)
class Worker:
    """One worker of a sharded fleet as the supervisor runs it: index, ports, how many links."""

    index: int
    ports: WorkerPorts
    links: int
    bind: str

    @property
    def name(self) -> str:
        """Its name in up.json, its log file, ``qkdops status``, and its ``worker`` label on Prometheus
        targets and the supervisor's ``qkd_fleet_worker_*`` series."""
        return f"{WORKER_PREFIX}{self.index}"

    @property
    def url(self) -> str:
        """Its control API."""
        return http_url(self.bind, self.ports.control)


def plan_workers(config: FleetConfig, workers: int) -> list[Worker]:
    """The workers ``qkdops up --workers N`` runs for ``config`` (ConfigError if their ports do not fit)."""
    if workers > len(config.links):
        raise ValueError(f"--workers {workers}: more workers than the {len(config.links)} link(s) of {config.source} "
                         "(a worker would run none)")
    return [Worker(i, ports, len(config.shard(i, workers).links), config.runtime.bind)
            for i, ports in enumerate(worker_ports(config, workers))]


@dataclass
class Child:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: list[str] = field(default_factory=list)
    ready_url: str = ""
    auth: Auth | None = None  # what its readiness check presents (Prometheus and Alertmanager: basic auth)
    essential: bool = True  # its death stops the stack; otherwise it is restarted (module docstring)
    env: dict[str, str] | None = None
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    failures: int = 0  # consecutive short-lived runs: the backoff exponent
    restart_at: float | None = None  # when a dead non-essential child is due to be restarted
    group: str = ""  # HA: the kind it is a replica of; the stack stops only when every member is dead


class Stack:
    """Starts, watches and stops Prometheus, Alertmanager and the calibration scheduler for a runtime.

    ``scheduler_config``: the config file the scheduler is started with (None: no scheduler, no
    ``qkd-calibration`` scrape job); ``scheduler_bind``: the ``runtime.bind`` of that file, where it
    listens (``qkdops up --bind`` overrides only its own servers' address); ``monitoring``: the monitoring
    config the rules and configs are rendered with (default: the shipped ``monitoring.yaml``), runbook
    links moved to this runtime's ``runbook_base_url`` or its own control API; ``ha``: Prometheus and
    Alertmanager as replicas (module docstring).
    """

    def __init__(self, rt: RuntimeSettings, scheduler_config: Path | None = None, scheduler_bind: str | None = None,
                 monitoring: MonitoringConfig | None = None, long_term_store: bool = False, ha: bool = False,
                 workers: Sequence[Worker] = (), kme_probe_config: Path | None = None) -> None:
        self.rt = rt
        self.kme_probe_config = kme_probe_config
        self.ha = ha
        self.workers = tuple(workers)
        self.long_term_store = long_term_store
        self.monitoring = (monitoring or load_monitoring_config()).with_runbook_base(
            rt.runbook_base_url or http_url(rt.bind, rt.control_port))
        self.children: list[Child] = []
        self.state_dir = rt.state_dir
        self.scheduler_config = scheduler_config
        self.scheduler_bind = (scheduler_bind or rt.bind) if scheduler_config is not None else None

    @property
    def scheduler_url(self) -> str | None:
        """The scheduler's metrics endpoint, as printed and recorded in up.json."""
        if self.scheduler_bind is None:
            return None
        return f"http://{self.scheduler_bind}:{self.rt.calibration_exporter_port}/metrics"

    def start(self) -> None:
        prometheus = find_binary(("prometheus",), StackError)
        alertmanager = find_binary(ALERTMANAGER_BINARIES, StackError)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        creds = credentials.prepare_server_credentials(self.state_dir)
        auth = StackAuth(self.state_dir)
        targets = None
        if self.workers:
            targets = self.state_dir / TARGETS_DIR
            self._write_worker_targets(targets)
        hosts = local_hosts(self.rt, self.scheduler_bind, self.ha, None if targets is None else str(targets),
                            kme_probe=self.kme_probe_config is not None)
        config_path = self.state_dir / "prometheus.yml"
        rules = self.state_dir / "rules"   # rendered for this runtime: runbook links on its own base URL
        write_rule_files(self.monitoring, rules)
        remote_write = None
        if self.long_term_store:
            remote_write = RemoteWrite(f"{self.victoria_metrics_url}/api/v1/write", str(creds.victoria_metrics_password_file))
        render = functools.partial(prometheus_config, self.monitoring, hosts, str(rules / "*.yml"), self.rt.scrape_interval_s,
                                   alertmanager_password_file=str(creds.alertmanager_password_file), remote_write=remote_write)
        if not self.ha:   # --ha: each replica its own (_spawn_prometheus_replicas)
            config_path.write_text(yaml.safe_dump(render(), sort_keys=False))
        am_config_path = self.state_dir / "alertmanager.yml"
        try:
            secret_files = secret_files_from_env(os.environ)
        except SecretFileError as exc:
            raise StackError(str(exc)) from None
        am_config = alertmanager_config(self.monitoring, hosts.pager_sink, secret_files, self.rt.scrape_interval_s,
                                        sink_token_file=str(creds.pager_sink_token_file))
        am_config_path.write_text(yaml.safe_dump(am_config, sort_keys=False, width=200))
        bind = self.rt.bind
        if self.long_term_store:
            self._spawn_victoria_metrics(find_binary(("victoria-metrics",), StackError), auth.victoria_metrics)
        if self.ha:
            self._spawn_alertmanager_cluster(alertmanager, am_config_path, creds, auth.alertmanager)
            self._spawn_prometheus_replicas(prometheus, render, creds, auth.prometheus)
            return
        self._spawn("alertmanager", f"http://{bind}:{self.rt.alertmanager_port}", [
            alertmanager, f"--config.file={am_config_path}", f"--storage.path={self.state_dir / 'alertmanager'}",
            f"--web.listen-address={bind}:{self.rt.alertmanager_port}", "--cluster.listen-address=",
            f"--web.config.file={creds.alertmanager_web_config}",   # basic auth on every endpoint
            f"--web.external-url=http://{bind}:{self.rt.alertmanager_port}/"], auth=auth.alertmanager)
        self._spawn("prometheus", f"http://{bind}:{self.rt.prometheus_port}", [
            prometheus, f"--config.file={config_path}", f"--storage.tsdb.path={self.state_dir / 'prometheus'}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={bind}:{self.rt.prometheus_port}",   # no lifecycle API: /-/quit would let anyone stop it
            f"--web.config.file={creds.prometheus_web_config}",   # basic auth on every endpoint
            f"--web.external-url=http://{bind}:{self.rt.prometheus_port}/"], auth=auth.prometheus)

    def _write_worker_targets(self, directory: Path) -> None:
        """The workers' target lists, one file per job, replaced atomically (Prometheus watches them)."""
        directory.mkdir(parents=True, exist_ok=True)
        lists = worker_targets(self.monitoring, [(w.name, f"{self.rt.bind}:{w.ports.device}", f"{self.rt.bind}:{w.ports.postprocessing}")
                                                 for w in self.workers])
        for job, groups in lists.items():
            _replace_json(directory / f"{job}.json", groups)

    def start_workers(self, config_path: Path, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
        """Start every worker and wait for each one's control API; StackError (with its log) if one cannot start.

        Workers are not essential children: one that dies later is restarted with backoff while the
        others keep their links producing key (module docstring), and its restarts are published.
        """
        env = {**os.environ, **credentials.client_environment(self.state_dir), "PYTHONUNBUFFERED": "1"}
        started = [self._spawn(w.name, w.url, worker_argv(config_path, w.index, len(self.workers), self.rt.bind),
                               ready_url=f"{w.url}/healthz", essential=False, env=env) for w in self.workers]
        deadline = time.monotonic() + timeout_s
        for child in started:
            self._wait(child, deadline, timeout_s)

    def worker_status(self) -> list[WorkerStatus]:
        """Each worker as the supervisor sees it: running or not, restarts so far, how many links."""
        children = {c.name: c for c in self.children}
        return [WorkerStatus(w.name, (c := children.get(w.name)) is not None and c.process.poll() is None,
                             c.restarts if c is not None else 0, w.links) for w in self.workers]

    def _spawn_alertmanager_cluster(self, binary: str, config_path: Path, creds: credentials.ServerCredentials,
                                    auth: Auth) -> None:
        """Three Alertmanager peers, same config, each with its own storage, gossiping with the other two
        on ``runtime.bind``; not essential one by one (module docstring). Peers notify in turn,
        ``--cluster.peer-timeout`` apart (``monitoring.alertmanager.peer_timeout_s``: 15 s on the demo
        profile), and skip what the notification log says an earlier one sent."""
        rt, bind = self.rt, self.rt.bind
        timeout = format_seconds(peer_timeout_s(self.monitoring, rt.scrape_interval_s))
        ports = dict(zip(ALERTMANAGER_PEERS, ((rt.alertmanager_port, rt.alertmanager_cluster_port),
                                              (rt.alertmanager_b_port, rt.alertmanager_b_cluster_port),
                                              (rt.alertmanager_c_port, rt.alertmanager_c_cluster_port))))
        for name, (port, cluster_port) in ports.items():
            peers = [f"--cluster.peer={bind}:{other}" for peer, (_, other) in ports.items() if peer != name]
            self._spawn(name, f"http://{bind}:{port}", [
                binary, f"--config.file={config_path}", f"--storage.path={self.state_dir / name}",
                f"--web.listen-address={bind}:{port}", f"--cluster.listen-address={bind}:{cluster_port}", *peers,
                f"--cluster.peer-timeout={timeout}",
                f"--web.config.file={creds.alertmanager_web_config}", f"--web.external-url=http://{bind}:{port}/"],
                auth=auth, essential=False, group="alertmanager")

    def _spawn_prometheus_replicas(self, binary: str, render: functools.partial[dict[str, Any]],
                                   creds: credentials.ServerCredentials, auth: Auth) -> None:
        """The HA pair: the same config but for the ``replica`` label (``render(replica=…)``), each with its
        own TSDB; replica ``a`` keeps the single Prometheus's port, config file and TSDB."""
        ports = {"a": self.rt.prometheus_port, "b": self.rt.prometheus_replica_port}
        for name, replica in PROMETHEUS_REPLICAS.items():
            config_path = self.state_dir / ("prometheus.yml" if replica == "a" else f"prometheus-{replica}.yml")
            config_path.write_text(yaml.safe_dump(render(replica=replica), sort_keys=False))
            url = http_url(self.rt.bind, ports[replica])
            self._spawn(name, url, [
                binary, f"--config.file={config_path}", f"--storage.tsdb.path={self.state_dir / name}",
                f"--storage.tsdb.retention.time={RETENTION}",
                f"--web.listen-address={self.rt.bind}:{ports[replica]}",   # no lifecycle API, as for the single one
                f"--web.config.file={creds.prometheus_web_config}", f"--web.external-url={url}/"],
                auth=auth, essential=False, group="prometheus")

    @property
    def victoria_metrics_url(self) -> str:
        return http_url(self.rt.bind, self.rt.victoria_metrics_port)

    def _spawn_victoria_metrics(self, binary: str, auth: Auth) -> None:
        """The long-term store: a single VictoriaMetrics node Prometheus remote-writes every sample to.
        Basic auth on its API from the environment (``-envflag.enable``), never the command line, which
        every local user can read; ``/health`` answers without. Not essential: Prometheus keeps the
        samples in its WAL and resends them, so the store is restarted (with backoff) if it dies."""
        env = {**os.environ, "httpAuth_username": credentials.USER,
               "httpAuth_password": credentials.load_secret(credentials.VICTORIA_METRICS_PASSWORD, self.state_dir, create=False).value}
        self._spawn(VICTORIA_METRICS, self.victoria_metrics_url, [
            binary, "-envflag.enable", f"-httpListenAddr={self.rt.bind}:{self.rt.victoria_metrics_port}",
            f"-storageDataPath={self.state_dir / 'victoria-metrics'}", f"-retentionPeriod={LONG_TERM_RETENTION}",
            "-search.latencyOffset=0s",   # answer the newest samples, as Prometheus does (the default hides 30 s)
            # the HA pair writes the same series twice: one sample per scrape interval kept
            *([f"-dedup.minScrapeInterval={format_seconds(self.rt.scrape_interval_s)}"] if self.ha else [])],
            ready_url=f"{self.victoria_metrics_url}/health", essential=False, env=env, auth=auth)

    def start_scheduler(self, argv: list[str] | None = None, timeout_s: float = SCHEDULER_READY_TIMEOUT_S) -> None:
        """Start the calibration scheduler and wait for its ``/healthz``; StackError if it cannot start.

        ``argv`` defaults to ``scheduler_argv`` (tests pass a stand-in).
        """
        if self.scheduler_config is None or (url := self.scheduler_url) is None:
            raise StackError("no scheduler configured for this stack")
        argv = argv or scheduler_argv(self.scheduler_config, self.rt)
        # Unbuffered: the tail of its log, quoted when it fails, is then what it last said.
        # and the credential files this stack uses, whatever the state dir of its --config says
        env = {**os.environ, **credentials.client_environment(self.state_dir), "PYTHONUNBUFFERED": "1"}
        child = self._spawn(SCHEDULER, url, argv, ready_url=urljoin(url, "/healthz"), essential=False, env=env)
        try:
            self._wait(child, time.monotonic() + timeout_s, timeout_s)
        except StackError as exc:
            hint = {1: f" (another scheduler holding {self.state_dir / 'calibration.lock'}, or the control API not answering?)",
                    2: " (a bad configuration: the log names the file and field)"}.get(child.process.returncode or 0, "")
            raise StackError(f"{exc}{hint}; `qkdops up --no-calibration` runs the stack without it") from None

    def start_kme_probe(self, timeout_s: float = SCHEDULER_READY_TIMEOUT_S) -> None:
        """Start the kme-probe (after the KMEs listen) and wait for its ``/healthz``; StackError if it cannot start."""
        if self.kme_probe_config is None:
            raise StackError("no kme-probe configured for this stack")
        url = f"http://{self.rt.bind}:{self.rt.kme_probe_port}/metrics"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        child = self._spawn(KME_PROBE, url, kme_probe_argv(self.kme_probe_config, self.rt), ready_url=urljoin(url, "/healthz"),
                            essential=False, env=env)
        self._wait(child, time.monotonic() + timeout_s, timeout_s)

    def _spawn(self, name: str, url: str, argv: list[str], ready_url: str = "", essential: bool = True,
               env: dict[str, str] | None = None, auth: Auth | None = None, group: str = "") -> Child:
        child = Child(name, url, self._popen(name, argv, env), self.state_dir / f"{name}.log", argv,
                      ready_url or f"{url}/-/ready", auth, essential, env, group=group)
        self.children.append(child)
        return child

    def _popen(self, name: str, argv: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        with open(self.state_dir / f"{name}.log", "ab") as log_file:
            return subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait for each child's readiness endpoint, or raise StackError with the tail of its log."""
        deadline = time.monotonic() + timeout_s
        for child in self.children:
            self._wait(child, deadline, timeout_s)

    def _wait(self, child: Child, deadline: float, timeout_s: float) -> None:
        while True:
            if child.process.poll() is not None:
                raise StackError(f"{child.name} exited with status {child.process.returncode}: {log_tail(child.log_path)}")
            try:
                with open_url(child.ready_url, child.auth, timeout_s=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{child.name} not ready at {child.ready_url} after {timeout_s:g} s: {log_tail(child.log_path)}")
            time.sleep(0.2)

    def dead(self) -> Child | None:
        """An essential child that exited on its own, or a replica whose every sibling is down too (HA),
        if any: the stack must stop."""
        down = [c for c in self.children if c.process.poll() is not None]
        return next((c for c in down if c.essential or c.group and all(o in down for o in self.children if o.group == c.group)),
                    None)

    def tend(self, now: float | None = None) -> bool:
        """Restart non-essential children that exited, with backoff; True when one was restarted (new pid)."""
        now = time.monotonic() if now is None else now
        restarted = False
        for child in self.children:
            if child.essential or child.process.poll() is None:
                continue
            if child.restart_at is None:
                if now - child.started_at >= RESTART_RESET_AFTER_S:
                    child.failures = 0
                delay = min(RESTART_BACKOFF_MAX_S, 2.0 ** child.failures)
                child.failures += 1
                child.restart_at = now + delay
                log.error("%s exited with status %s; restarting it in %g s (the stack keeps running; log %s): %s",
                          child.name, child.process.returncode, delay, child.log_path, log_tail(child.log_path))
            elif now >= child.restart_at:
                child.process = self._popen(child.name, child.argv, child.env)
                child.started_at, child.restart_at = now, None
                child.restarts += 1
                log.warning("%s restarted (pid %d, restart %d)", child.name, child.process.pid, child.restarts)
                restarted = True
        return restarted

    def stop(self, grace_s: float = 10.0) -> None:
        """The scheduler first (nothing acts while the rest goes away), then the workers (finishing the
        blocks in hand), then Prometheus, Alertmanager and the long-term store."""
        first = [c for c in self.children if c.name == SCHEDULER]
        self._terminate(first, SCHEDULER_STOP_GRACE_S)
        workers = [c for c in self.children if c.name in {w.name for w in self.workers}]
        self._terminate(workers, WORKER_STOP_GRACE_S)
        peers = [c for c in self.children if c.group == "alertmanager"]
        self._terminate([c for c in self.children if c not in first and c not in workers and c not in peers], grace_s)
        # Alertmanager peers one at a time: each leaves the cluster while the others are there to take
        # the news (stopped together, the last waits out memberlist's 10-s leave timeout).
        for peer in peers:
            self._terminate([peer], grace_s)

    @staticmethod
    def _terminate(children: list[Child], grace_s: float) -> None:
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %g s of SIGTERM; killing it", child.name, grace_s)
                child.process.kill()
                child.process.wait()


def write_up_file(path: Path, endpoints: Mapping[str, str], pids: Mapping[str, int],
                  disabled: Mapping[str, str] | None = None) -> None:
    """What `qkdops status` reads: where each part of a running `qkdops up` listens, and which parts
    were left out on purpose (name → the option that did it). Replaced atomically: it is rewritten
    when a child restarts while `qkdops status` may be reading it."""
    _replace_json(path, {"endpoints": dict(endpoints), "pids": dict(pids), "disabled": dict(disabled or {})})


def _replace_json(path: Path, value: object) -> None:
    """Write ``value`` as JSON to ``path`` atomically (a temporary file beside it, then a rename): a
    reader — `qkdops status`, Prometheus's file discovery — sees the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def stop_orphans(up_file: Path, state_dir: Path, grace_s: float = 10.0, config_path: Path | None = None) -> None:
    """Stop what a killed (kill -9) `qkdops up` left running, as its ``up_file`` recorded it.

    Prometheus and Alertmanager run in sessions of their own, so that Ctrl-C reaches only `up`,
    which stops them in order; when `up` itself is killed they stay, holding their ports and the
    state directory, and the next `up` could not start. A child is stopped only if `up` is gone and
    the child's command line names ``state_dir`` or ``config_path`` (a recycled pid belongs to someone
    else). The scheduler and the workers stop by themselves when `up` is gone, but a worker finishes
    the blocks in hand first (up to ``WORKER_STOP_GRACE_S``) while holding its ports, so it is stopped
    here too.
    """
    try:
        pids = json.loads(up_file.read_text())["pids"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if pid_alive(pids.get("qkdops", 0)):
        return  # a live `up` owns them (its ports tell the new one so)
    names = (str(state_dir), *((str(config_path),) if config_path is not None else ()))
    for name, pid in pids.items():
        if name != "qkdops" and pid_alive(pid) and any(n in command_line(pid) for n in names):
            log.warning("stopping %s (pid %d), left running by a `qkdops up` that was killed", name, pid)
            with contextlib.suppress(ProcessLookupError):  # it may end on its own meanwhile
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + (WORKER_STOP_GRACE_S if name.startswith(WORKER_PREFIX) else grace_s)
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)

