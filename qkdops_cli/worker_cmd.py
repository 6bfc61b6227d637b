"""``qkdops worker``: one shard of a sharded fleet — its links, their exporters and its control API.

``qkdops up --workers N`` starts N of these (docker-compose and Kubernetes run them as services or
pods) and keeps the rest itself: the KMEs, the pager sink, the routing control API, Prometheus,
Alertmanager and the scheduler. Worker ``--shard I`` of ``--workers N`` runs ``FleetConfig.shard(I,
N)``: every N-th link of the config from the I-th. It opens the state dir's archive, key buffer and
KME store — the same files as every other worker and the supervisor's KMEs (SQLite, one
transaction per change across processes) — so a restarted worker resumes its links from the
archive: blocks archived but not post-processed are post-processed first, block numbering and
buffered keys carry on, nothing is handed off twice.

Ports: by default worker I listens on ``runtime.worker_port_base`` + 3I (control API), + 3I + 1
(device exporter) and + 3I + 2 (post-processing exporter); a container, alone in its network
namespace, passes the usual ports explicitly. The control API takes the stack's token (``qkdops up``
creates it before starting workers). With ``--exit-with-parent`` it stops when the process that
started it is gone (a ``qkdops up`` killed with SIGKILL leaves no orphan stepping links). SIGTERM or
SIGINT stops it cleanly (exit 0); a bad config or a taken port exits 2 or 1 with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from control_api import server as control_api
from exporters import DeviceCollector, PostProcessingCollector
from exporters.server import ServedExporter
from qkdops.config import DEFAULT_CONFIG, load_config, worker_ports
from qkdops.http_server import HttpServer
from qkdops.processes import run_until_stopped, stop_on_signals
from qkdops.runtime.fleet import Fleet

log = logging.getLogger("qkdops.worker")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run one shard of the fleet (started by `qkdops up --workers N`)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="links.yaml (default: the shipped fleet)")
    p.add_argument("--shard", type=int, required=True, help="this worker's index, 0 … N-1")
    p.add_argument("--workers", type=int, required=True, help="N, the number of workers the links are split over")
    p.add_argument("--bind", help="address for its exporters and control API (default: runtime.bind)")
    for name in ("control", "device", "postprocessing"):
        p.add_argument(f"--{name}-port", type=int, help=f"its {name} port (default: from runtime.worker_port_base)")
    p.add_argument("--exit-with-parent", action="store_true", help="stop when the process that started it is gone")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config)
    if not 0 <= args.shard < args.workers:
        raise ValueError(f"--shard: expected 0 … {args.workers - 1} (--workers {args.workers}), got {args.shard}")
    ports = worker_ports(config, args.workers)[args.shard]
    ports = dataclasses.replace(ports, **{k: v for k in ("control", "device", "postprocessing")
                                          if (v := getattr(args, f"{k}_port")) is not None})
    rt = dataclasses.replace(config.runtime, bind=args.bind or config.runtime.bind, control_port=ports.control)
    shard = dataclasses.replace(config.shard(args.shard, args.workers), runtime=rt)
    name = f"worker {args.shard}/{args.workers}"
    token = control_api.load_token(rt.state_dir, create=False)
    stop = stop_on_signals()
    fleet = Fleet(shard, key_store_refresh_s=rt.scrape_interval_s)   # the KMEs run in the supervisor
    exporters: dict[str, ServedExporter] = {}
    server: HttpServer | None = None
    try:
        for key, collector, port in (("device", DeviceCollector(fleet.snapshots), ports.device),
                                     ("postprocessing", PostProcessingCollector(fleet.snapshots), ports.postprocessing)):
            exporters[key] = ServedExporter(key, collector, rt.bind, port)
            exporters[key].start()
        server = control_api.serve(fleet, rt, token.value, exporters=exporters)
        fleet.start()
        log.info("%s: %d link(s) (%s); control API :%d, device exporter :%d, post-processing exporter :%d", name,
                 len(shard.links), ", ".join(s.id for s in shard.links), ports.control, ports.device, ports.postprocessing)
        if (parent := run_until_stopped(stop, args.exit_with_parent)) is not None:
            log.warning("%s: the process that started it (pid %d) is gone; stopping", name, parent)
    except OSError as exc:
        print(f"qkdops worker: {name} cannot listen on {rt.bind}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
        for exporter in exporters.values():
            exporter.stop()
        fleet.stop()
        log.info("%s: stopped", name)
    return 0
