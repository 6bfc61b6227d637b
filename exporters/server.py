"""Serving an exporter over HTTP, and rendering it to text for tests and benchmarks.

Each exporter gets its own ``CollectorRegistry`` holding only its collector: no default process,
platform or GC collectors. Both exporters live in the runtime's one process, so those series would
be duplicated across the two jobs, and the exposition must equal the metric catalogue exactly.

The app is prometheus_client's WSGI app (gzip when asked, ``?name[]=`` filtering) pinned to the
Prometheus text format 0.0.4: it is the format ``promtool check metrics`` lints in the tests, so what
is checked is what is served, and at fleet scale it renders ~40 % cheaper than OpenMetrics (see
bench/bench_exporters.py). The collectors use nothing only OpenMetrics can carry (no exemplars,
``_created`` samples, info or stateset types).

``ServedExporter`` owns one exporter's server so it can be stopped and started again on the same
address: stopped, its port refuses connections as a crashed exporter process's would (the
"exporter crash" game day; the control API's ``/api/v1/exporters``).
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
    return _serve_app(text_format_app(registry_for(collector)), host, port)


def _serve_app(app: WSGIApp, host: str, port: int) -> tuple[ThreadingWSGIServer, threading.Thread]:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("ExporterServer", (ThreadingWSGIServer,), {"address_family": family})
    server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name=f"exporter-{server.server_port}", daemon=True)
    thread.start()
    return server, thread


class ServedExporter:
    """One exporter's HTTP server, which can be stopped and started again on the same ``host:port``.

    ``start`` and ``stop`` are idempotent and thread-safe (the control API calls them from its request
    threads); each returns whether it changed anything. ``start`` raises OSError when the port is
    taken. Port 0 picks a free port on the first start and keeps it for every restart.
    """

    def __init__(self, name: str, collector: Collector, host: str = DEFAULT_HOST, port: int = DEVICE_PORT) -> None:
        self.name, self.host, self.port = name, host, port
        self._app = text_format_app(registry_for(collector))
        self._lock = threading.Lock()
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ServedExporter({self.name!r}, {self.host}:{self.port}, serving={self.serving})"

    @property
    def serving(self) -> bool:
        return self._server is not None

    def start(self) -> bool:
        with self._lock:
            if self._server is not None:
                return False
            self._server, self._thread = _serve_app(self._app, self.host, self.port)
            self.port = self._server.server_port
            return True

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Close the listening socket (new connections are refused) and wait for the serving thread."""
        with self._lock:
            if self._server is None or self._thread is None:
                return False
            server, thread, self._server, self._thread = self._server, self._thread, None, None
            server.shutdown()
            server.server_close()
            thread.join(timeout_s)
            return True
