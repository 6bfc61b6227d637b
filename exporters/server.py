"""Serving an exporter over HTTP, and rendering it to text for tests and benchmarks.

Each exporter gets its own ``CollectorRegistry`` holding only its collector: no default process,
platform or GC collectors. Both exporters live in the runtime's one process, so those series would
be duplicated across the two jobs, and the exposition must equal the metric catalogue exactly.

The app is prometheus_client's WSGI app (gzip when asked, ``?name[]=`` filtering) pinned to the
Prometheus text format 0.0.4: it is the format ``promtool check metrics`` lints in the tests, so what
is checked is what is served, and at fleet scale it renders ~40 % cheaper than OpenMetrics (see
bench/bench_exporters.py). The collectors use nothing only OpenMetrics can carry (no exemplars,
``_created`` samples, info or stateset types).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer
from prometheus_client.registry import Collector

DEVICE_PORT = 9810
POSTPROCESSING_PORT = 9811
DEFAULT_HOST = "127.0.0.1"  # local by default, like the control API; bind wider on purpose only

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


def registry_for(collector: Collector) -> CollectorRegistry:
    """A registry holding only ``collector`` (registered through its ``describe``, not a scrape)."""
    registry = CollectorRegistry()
    registry.register(collector)
    return registry


def render(collector: Collector) -> bytes:
    """``collector``'s exposition in the Prometheus text format, exactly as ``serve`` returns it."""
    return generate_latest(registry_for(collector))


def text_format_app(registry: CollectorRegistry) -> WSGIApp:
    """prometheus_client's WSGI app, answering every scrape in the text format 0.0.4."""
    app = make_wsgi_app(registry)

    def metrics(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":  # liveness without rendering a scrape
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        return app({**environ, "HTTP_ACCEPT": CONTENT_TYPE_PLAIN_0_0_4}, start_response)

    return metrics


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """A line per scrape would drown the runtime's log; Prometheus records scrape failures."""


def serve(collector: Collector, host: str = DEFAULT_HOST, port: int = DEVICE_PORT) -> tuple[ThreadingWSGIServer, threading.Thread]:
    """Serve ``collector`` on ``host:port`` (port 0: an ephemeral port, see ``server.server_port``).

    Returns the server and its daemon thread; stop with ``server.shutdown(); server.server_close()``.
    """
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("ExporterServer", (ThreadingWSGIServer,), {"address_family": family})
    server = make_server(host, port, text_format_app(registry_for(collector)), server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"exporter-{server.server_port}", daemon=True)
    thread.start()
    return server, thread
