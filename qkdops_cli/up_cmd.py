"""``qkdops up``: the whole local stack in the foreground, no Docker.

Starts, in this process, the emulated links (real time), the device exporter, the post-processing
exporter, the control API, the sites' key management entities (ETSI GS QKD 014 over mutual TLS;
the development PKI under ``<state_dir>/pki`` is created on first run) and the pager sink (where Alertmanager also sends every notification); as
children, a real Prometheus scraping the exporters and a real Alertmanager (configured with
``monitoring.alertmanager.alertmanager_config``; pager keys: see ``alertmanager/secrets/README.md``), and, once
those and the fleet are up, the calibration scheduler (``qkdops scheduler``, scraped as job
``qkd-calibration``). Prints where each listens, writes ``<state_dir>/up.json`` for ``qkdops status``,
and on Ctrl-C/SIGTERM stops everything (the scheduler first, then Prometheus and Alertmanager, then
the servers, then the fleet, whose archive, key buffer, KME store and pager sink are durable at every write).
The control API can stop and start either exporter (``/api/v1/exporters``: the "exporter crash"
game day); stopping the stack works whether an exporter is stopped or not.

Authentication: the control API and the pager sink want bearer tokens, Prometheus and Alertmanager
basic auth; every credential is generated on first start in the state dir (``qkdops.credentials``;
``qkdops credentials --rotate`` replaces them, then restart).

If Prometheus or Alertmanager dies, the stack stops with status 1. If the scheduler dies it is
restarted with backoff and key production goes on (``qkdops_cli.stack`` says why); if it cannot start
at all, nothing starts. With Prometheus, a kme-probe (``qkdops kme-probe``) watches the stack's own
KMEs over ETSI 014, restarted like the scheduler if it dies; ``--no-kme-probe`` leaves it out.
``--no-calibration`` runs without the scheduler (game days, manual operation);
``--no-prometheus`` implies it (the scheduler reads the Prometheus this command would start;
docker-compose runs it as its own service). ``--victoria-metrics`` adds the long-term store: a single
VictoriaMetrics node (``runtime.victoria_metrics_port``, basic auth) that Prometheus remote-writes
every sample to, restarted with backoff if it dies (Prometheus resends from its WAL).

``--workers N`` runs the links in N ``qkdops worker`` processes instead (``worker_cmd``; restarted with
backoff if they die, found by Prometheus through file service discovery): this process then serves
the KMEs from the shared store, the pager sink, a post-processing exporter of the KMEs' requests and
the workers' state, and a control API that routes each link to its worker (``control_api.shards``).
``--worker-api URL …`` routes to workers an orchestrator runs (compose, Kubernetes) instead of
starting any.

``--ha`` runs monitoring highly available: two Prometheus replicas (``runtime.prometheus_port`` and
``runtime.prometheus_replica_port``) and a cluster of three Alertmanagers (``runtime.alertmanager_port``,
``alertmanager_b_port``, ``alertmanager_c_port``; gossip on the ``*_cluster_port`` fields). A dead
replica or peer is restarted with backoff and the stack keeps running; it stops only when every
replica (or every peer) is down at once (``qkdops_cli.stack``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TypeVar

from exporters import DeviceCollector, PostProcessingCollector
from exporters.server import ServedExporter
from qkdops import credentials
from control_api import server as control_api
from monitoring import pager_sink
from monitoring.config import DEFAULT_PATH as DEFAULT_MONITORING
from monitoring.config import MonitoringConfig, load_monitoring_config
from qkdops.config import DEFAULT_CONFIG, FleetConfig, finite_float, load_config
from qkdops.control_client import checked_url
from qkdops.http_server import HttpServer, raise_open_file_limit
from qkdops.kme.etsi import kme_id
from qkdops.kme.pki import Pki, init_pki
from qkdops.kme.server import serve_kme, serve_skip
from qkdops.kme.skip import skip_id
from qkdops.processes import UP_FILE
from qkdops.runtime.fleet import Fleet
from control_api.server import Exporter, LinkControl
from control_api.shards import ShardedExporter, ShardedFleet
from qkdops.kme.server import KeySource, SharedKeyPool
from history.tsdb import HistoryError, HistoryInputError
from qkdops_cli import history_cmd
from qkdops_cli.stack import KME_PROBE, SCHEDULER, WORKER_PREFIX, Stack, StackError, plan_workers, stop_orphans, write_kme_probe_config, write_up_file

log = logging.getLogger("qkdops.up")
T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run the local stack: links, exporters, control API, Prometheus, Alertmanager",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="links.yaml (default: the shipped fleet)")
    p.add_argument("--bind", help="address for the exporters and control API (default: runtime.bind)")
    p.add_argument("--monitoring", type=Path, default=DEFAULT_MONITORING, metavar="FILE",
                   help="monitoring config the rules and Prometheus/Alertmanager configs are rendered with "
                        "(default: the shipped monitoring.yaml)")
    p.add_argument("--no-prometheus", action="store_true",
                   help="do not start Prometheus and Alertmanager (docker-compose runs its own); implies --no-calibration")
    p.add_argument("--no-calibration", action="store_true",
                   help="do not start the calibration scheduler (game days, manual operation: drift is then "
                        "only corrected by `qkdops action`)")
    p.add_argument("--no-kme-probe", action="store_true",
                   help="do not start the kme-probe on this stack's KMEs (its round trips take one key per pair of sites "
                        "every 10 s; key-accounting tests and benchmarks leave it out)")
    p.add_argument("--victoria-metrics", action="store_true",
                   help="also run VictoriaMetrics as the long-term store Prometheus remote-writes to (runtime.victoria_metrics_port)")
    p.add_argument("--ha", action="store_true",
                   help="two Prometheus replicas and a three-peer Alertmanager cluster; one dead replica is restarted, "
                        "not fatal (runtime.prometheus_replica_port, runtime.alertmanager_*_port)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="run the links in N worker processes (`qkdops worker`, restarted if they die), each with its own "
                        "exporters found by Prometheus through file service discovery; this process keeps the KMEs, the "
                        "pager sink and the control API, which routes each link's requests to its worker (default: 0, "
                        "every link in this process)")
    p.add_argument("--worker-api", action="append", default=[], metavar="URL",
                   help="a worker started elsewhere (`qkdops worker`: compose services, Kubernetes pods), by its control API, "
                        "in shard order, once per worker: this process runs no links and routes to them; needs --no-prometheus "
                        "(the orchestrator's Prometheus scrapes the workers) and excludes --workers")
    p.add_argument("--duration", type=finite_float, default=0.0, help="stop after this many seconds (0: run until stopped)")
    p.add_argument("--history", type=finite_float, default=0.0, metavar="DAYS",
                   help="on a first start (Prometheus holds no data yet), backfill this many days of emulated past first "
                        "(`qkdops history`), emulated up to the moment the stack starts")
    history_cmd.add_options(p, fleet_option=False)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    monitoring = load_monitoring_config(args.monitoring)
    scheduler_bind = config.runtime.bind  # the scheduler reads the file, so --bind does not move it
    if args.bind:
        config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, bind=args.bind))
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    disabled = ({SCHEDULER: "--no-prometheus"} if args.no_prometheus else
                {SCHEDULER: "--no-calibration"} if args.no_calibration else {})
    if args.no_kme_probe:
        disabled[KME_PROBE] = "--no-kme-probe"
    if args.victoria_metrics and args.no_prometheus:
        raise ValueError("--victoria-metrics stores what this command's Prometheus scrapes: it cannot go with --no-prometheus")
    if args.workers < 0:
        raise ValueError(f"--workers: expected 0 (one process) or more, got {args.workers}")
    if args.worker_api and (args.workers or not args.no_prometheus):
        raise ValueError("--worker-api routes to workers an orchestrator runs and scrapes: it goes with --no-prometheus, not with --workers")
    worker_urls = [checked_url(url, "--worker-api") for url in args.worker_api]
    if len(worker_urls) > len(config.links):
        raise ValueError(f"--worker-api: {len(worker_urls)} workers for the {len(config.links)} link(s) of {config.source}")
    if args.ha and args.no_prometheus:
        raise ValueError("--ha replicates this command's Prometheus and Alertmanager: it cannot go with --no-prometheus")
    if args.history:
        if args.no_prometheus:
            raise ValueError("--history backfills this command's Prometheus: it cannot go with --no-prometheus")
        if history_cmd.has_blocks(config):
            log.info("--history: skipped, the local Prometheus already holds data (%s)", config.runtime.state_dir / "prometheus")
        else:
            try:
                result = history_cmd.run_history(config, argparse.Namespace(**{**vars(args), "days": args.history}), time.time(),
                                                 extend_to=True)
            except HistoryInputError as exc:
                raise ValueError(str(exc)) from None
            except HistoryError as exc:
                print(f"qkdops up: --history: {exc}", file=sys.stderr)
                return 1
            log.info("%s", result.summary())
    return _run(config, not args.no_prometheus, stopping, args.duration, disabled, scheduler_bind, monitoring, args.victoria_metrics,
                args.ha, args.workers, worker_urls)


def _run(config: FleetConfig, with_servers: bool, stopping: threading.Event, duration_s: float,
         disabled: dict[str, str] | None = None, scheduler_bind: str | None = None, monitoring: MonitoringConfig | None = None,
         long_term_store: bool = False, ha: bool = False, workers: int = 0, worker_urls: Sequence[str] = ()) -> int:
    """``disabled``: parts left out on purpose (name → the option that did it), for up.json and the listing;
    ``monitoring``: what the stack's rules and configs are rendered with (default: the shipped one);
    ``ha``: replicated Prometheus and Alertmanager (``--ha``); ``workers``: how many worker processes this
    process starts to run the links (0: it runs them itself, unless ``worker_urls`` names workers run
    elsewhere, by their control APIs in shard order)."""
    rt = config.runtime
    rt.state_dir.mkdir(parents=True, exist_ok=True)
    raise_open_file_limit()   # every port may hold up to Limits.max_connections
    disabled = dict(disabled or {})
    if not with_servers:
        disabled.setdefault(SCHEDULER, "--no-prometheus")
        disabled.setdefault(KME_PROBE, "--no-prometheus")
    with_scheduler = SCHEDULER not in disabled
    planned = plan_workers(config, workers) if workers else []
    stop_orphans(rt.state_dir / UP_FILE, rt.state_dir, config_path=config.source.resolve())
    token = control_api.load_token(rt.state_dir, create=True)   # before any worker, which takes it from the state dir
    fleet: Fleet | None = None
    keys: SharedKeyPool | None = None
    # with Prometheus, a kme-probe watches this stack's own KMEs over ETSI 014 as it would a vendor's
    probe_config = (write_kme_probe_config(config, rt.bind, rt.state_dir / "pki", rt.state_dir / "kme-probe.yaml")
                    if KME_PROBE not in disabled else None)
    stack = Stack(rt, config.source.resolve() if with_scheduler else None, scheduler_bind, monitoring, long_term_store, ha, planned,
                  kme_probe_config=probe_config)
    if planned or worker_urls:   # the links run in the workers; this process serves the KMEs and routes the control API
        keys = SharedKeyPool(config)
        links: LinkControl = ShardedFleet(config, [w.url for w in planned] or worker_urls, token.value)
        key_source: KeySource = keys
        collectors = [("postprocessing", "post-processing exporter (KMEs, workers)",
                       PostProcessingCollector(list, keys.kme_stats.snapshot, stack.worker_status if planned else None),
                       rt.postprocessing_exporter_port)]
    else:
        fleet = Fleet(config)
        links = key_source = fleet
        collectors = [("device", "device exporter", DeviceCollector(fleet.snapshots), rt.device_exporter_port),
                      ("postprocessing", "post-processing exporter", PostProcessingCollector(fleet.snapshots, fleet.kme_stats.snapshot),
                       rt.postprocessing_exporter_port)]
    servers: list[HttpServer] = []
    exporters: dict[str, Exporter] = {}  # control API name → exporter (every instance of a kind, on a sharded fleet)
    kme_listeners: dict[str, Exporter] = {}   # kme-<site>, skip-<site>: what /api/v1/kmes stops and starts
    served: dict[str, ServedExporter] = {}   # the ones this process serves; stopped after the control API
    status = 0
    try:
        for key, name, collector, port in collectors:
            exporter = ServedExporter(key, collector, rt.bind, port)
            _listen(name, rt.bind, port, exporter.start)
            exporters[key] = served[key] = exporter
        if isinstance(links, ShardedFleet):   # the control API stops and starts every instance of a kind
            exporters.update({kind: ShardedExporter(kind, links, served.get(kind)) for kind in ("device", "postprocessing")})
        servers.append(_listen("control API", rt.bind, rt.control_port,
                               lambda: control_api.serve(links, rt, token.value, exporters=exporters, kmes=kme_listeners)))
        sink_token = credentials.load_secret(credentials.PAGER_SINK_TOKEN, rt.state_dir, create=True)
        servers.append(_listen("pager sink", rt.bind, rt.pager_sink_port, lambda: pager_sink.serve(rt, sink_token.value)))
        pki = Pki(rt.state_dir / "pki")
        if issued := init_pki(pki, config.key_delivery):
            log.info("development PKI: issued %d certificate/key file(s) under %s", len(issued), pki.root)
        for spec in config.key_delivery.kmes:
            for name, port, serve in ((kme_id(spec.site), spec.port, serve_kme), (skip_id(spec.site), spec.skip_port, serve_skip)):
                kme_listeners[name] = _listen(name, rt.bind, port, lambda s=spec, serve=serve: serve(key_source, s, pki))
        if with_servers:
            stack.start()
            stack.wait_ready()
            if probe_config is not None:
                stack.start_kme_probe()   # the KMEs listen already
        if fleet is not None:
            fleet.start()
        elif planned:
            stack.start_workers(config.source.resolve())
        if with_scheduler:
            stack.start_scheduler()  # after the control API, Prometheus and the fleet: it acts on them
        endpoints = {
            "control_api": f"http://{rt.bind}:{rt.control_port}",
            **{f"{key}_exporter": f"http://{rt.bind}:{exporter.port}/metrics" for key, exporter in served.items()},
            "pager_sink": f"http://{rt.bind}:{rt.pager_sink_port}",
            **{kme_id(k.site): f"https://{rt.bind}:{k.port}/api/v1/keys" for k in config.key_delivery.kmes},
            **{skip_id(k.site): f"https://{rt.bind}:{k.skip_port}/" for k in config.key_delivery.kmes},
            **{child.name: child.url for child in stack.children},
            **{f"{WORKER_PREFIX}{i}": url for i, url in enumerate(worker_urls)},   # run elsewhere: probed, not supervised
        }

        def record() -> None:
            write_up_file(rt.state_dir / UP_FILE, endpoints,
                          {"qkdops": os.getpid(), **{c.name: c.process.pid for c in stack.children}}, disabled)

        record()
        print(f"qkdops up: {len(config.links)} links from {config.source}"
              + (f" over {len(planned) or len(worker_urls)} workers" if planned or worker_urls else ""), flush=True)
        for name, url in endpoints.items():
            print(f"  {name:<24} {url}", flush=True)
        for name, option in disabled.items():
            print(f"  {name:<24} off ({option})", flush=True)
        print(f"  {'state':<24} {rt.state_dir}  (control API token: {token.source})", flush=True)
        print("Ctrl-C stops everything.", flush=True)
        started = time.monotonic()
        while not stopping.wait(0.5):
            if (dead := stack.dead()) is not None:
                log.error("%s exited with status %s%s; stopping the stack (log: %s)", dead.name, dead.process.returncode,
                          f" and every other {dead.group} replica is down too" if dead.group else "", dead.log_path)
                status = 1
                break
            if stack.tend():
                record()  # the restarted child's pid
            if duration_s and time.monotonic() - started >= duration_s:
                break
    except StackError as exc:
        print(f"qkdops up: error: {exc}", file=sys.stderr)
        status = 1
    finally:
        stack.stop()
        for server in reversed(servers):
            server.stop()
        for exporter in [*served.values(), *kme_listeners.values()]:  # after the control API, which could start one again
            exporter.stop()
        if fleet is not None:
            fleet.stop()
        if keys is not None:
            keys.close()
        (rt.state_dir / UP_FILE).unlink(missing_ok=True)
        print("qkdops up: stopped", flush=True)
    return status


def _listen(name: str, host: str, port: int, start: Callable[[], T]) -> T:
    """Start a server; a port already taken becomes a StackError that says so."""
    try:
        return start()
    except OSError as exc:
        raise StackError(f"{name} cannot listen on {host}:{port}: {exc.strerror} (another `qkdops up`?)") from None
