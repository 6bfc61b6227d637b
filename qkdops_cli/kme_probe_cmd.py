"""``qkdops kme-probe``: watch ETSI GS QKD 014 KMEs — any vendor's — as their applications see them.

Contract::

    qkdops kme-probe --config kme-probe.yaml [--bind HOST] [--port 9813] [--exit-with-parent]
    qkdops kme-probe --config kme-probe.yaml --once

Serves ``qkd_kme_probe_*`` on ``http://HOST:PORT/metrics`` (``exporters/kme_probe.py``; every target
probed each ``interval_s`` of the config), until SIGINT or SIGTERM. ``--once`` probes every target
once, prints the exposition and exits 0 when every target is up (and its round trip agreed), 1
otherwise. Exit 2 on a bad config (the message names the file and field), 1 when the port is taken.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from exporters.kme_probe import DEFAULT_PORT, KmeProbe, load_probe_config
from exporters.server import DEFAULT_HOST, ServedExporter
from qkdops.processes import run_until_stopped, stop_on_signals

log = logging.getLogger("qkdops.kme_probe")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kme-probe", help="blackbox exporter of ETSI GS QKD 014 KMEs (any vendor's)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True, help="the probe config: targets, interval_s, timeout_s")
    p.add_argument("--bind", default=DEFAULT_HOST, help=f"address to serve /metrics on (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve /metrics on (default {DEFAULT_PORT})")
    p.add_argument("--once", action="store_true", help="probe every target once, print the exposition, exit")
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)   # a child of `qkdops up`
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_probe_config(args.config)
    probe = KmeProbe(config)
    if args.once:
        results = [probe.probe(target) for target in config.targets]
        sys.stdout.write(probe.render().decode())
        return 0 if all(r.up and r.keys_match is not False for r in results) else 1
    stop = stop_on_signals()
    exporter = ServedExporter("kme_probe", probe, args.bind, args.port)
    try:
        exporter.start()
    except OSError as exc:
        print(f"qkdops kme-probe: cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    probe.start()
    log.info("kme-probe: %d target(s) every %g s; http://%s:%d/metrics", len(config.targets), config.interval_s,
             args.bind, exporter.port)
    try:
        if (parent := run_until_stopped(stop, args.exit_with_parent)) is not None:
            log.warning("kme-probe: the process that started it (pid %d) is gone; stopping", parent)
    finally:
        probe.stop()
        exporter.stop()
    return 0
