"""Serving an exporter over HTTP, and rendering it to text for tests and benchmarks.

An exporter is anything with ``render(names) -> bytes`` (``Exposition``): the two link exporters and
the calibration scheduler's, each writing its catalogue families straight into the Prometheus text
format 0.0.4 (``exporters.catalogue.Families``). No default process, platform or GC series: both link
exporters live in the runtime's one process, so those would be duplicated across the two jobs, and
the exposition must equal the metric catalogue exactly.

``GET /metrics`` serves the text format 0.0.4 whatever the scraper's ``Accept`` says: it is the format
``promtool check metrics`` lints in the tests, so what is checked is what is served. The collectors
use nothing only OpenMetrics can carry (no exemplars, ``_created`` samples, info or stateset types).
``?name[]=`` restricts the scrape to those samples, as prometheus_client's own servers do; gzip
(level 1) when the client accepts it. ``GET /healthz`` answers without rendering. Served by the one
HTTP layer (``qkdops.http_server``): limits, deadlines and JSON errors as on every qkdops port; a
scrape renders on a worker thread, not the event loop.

``ServedExporter`` owns one exporter's server so it can be stopped and started again on the same
address: stopped, its port refuses connections as a crashed exporter process's would (the
"exporter crash" game day; the control API's ``/api/v1/exporters``).
"""

from __future__ import annotations

import gzip
from http import HTTPStatus

from collections.abc import Collection
from typing import Protocol

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from qkdops.http_server import HttpServer, Limits, Request, Response, Route, Service, ServedService

DEVICE_PORT = 9810
POSTPROCESSING_PORT = 9811
DEFAULT_HOST = "127.0.0.1"  # local by default, like the control API; bind wider on purpose only


class Exposition(Protocol):
    """What an exporter serves: its families in the text format 0.0.4 (``names``: only those samples)."""

    def render(self, names: Collection[str] | None = None) -> bytes: ...


def render(exposition: Exposition) -> bytes:
    """``exposition`` in the Prometheus text format, exactly as ``serve`` returns it."""
    return exposition.render()


GZIP_MIN_BYTES = 1024   # smaller scrapes are not worth compressing
# zlib level 1: a 1,000-link scrape is ~10 MB of text; level 6 spent more CPU on it than rendering did,
# and the payload is only ~1.3× larger (bench/bench_exporters.py, docs/benchmarks.md).
GZIP_LEVEL = 1


def exporter_service(name: str, exposition: Exposition) -> Service:
    """``/metrics`` and ``/healthz`` for ``exposition`` (see the module docstring)."""

    def metrics(request: Request) -> Response:
        names = request.query.get("name[]")
        data = exposition.render(set(names) if names else None)
        headers = {}
        if len(data) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("Accept-Encoding", ""):
            data, headers = gzip.compress(data, compresslevel=GZIP_LEVEL), {"Content-Encoding": "gzip"}
        return Response(HTTPStatus.OK, data, CONTENT_TYPE_PLAIN_0_0_4, headers)

    def healthz(request: Request) -> Response:
        return Response(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")

    # Scrapes carry no body; a few workers keep one slow render from holding up the next scraper.
    return Service(f"{name}-exporter", (Route("/metrics", {"GET": metrics}), Route("/healthz", {"GET": healthz})),
                   limits=Limits(max_body_bytes=0, workers=4))


def serve(exposition: Exposition, host: str = DEFAULT_HOST, port: int = DEVICE_PORT, name: str = "exporter") -> HttpServer:
    """Serve ``exposition`` on ``host:port`` (port 0: an ephemeral port, see ``server.server_port``).

    Stop with ``server.stop()``; OSError when the port is taken.
    """
    return HttpServer(exporter_service(name, exposition), host, port)


class ServedExporter(ServedService):
    """One exporter's HTTP server, which can be stopped and started again on the same ``host:port``
    (``qkdops.http_server.ServedService``): the "exporter crash" game day and its restart."""

    def __init__(self, name: str, exposition: Exposition, host: str = DEFAULT_HOST, port: int = DEVICE_PORT) -> None:
        super().__init__(name, exporter_service(name, exposition), host, port)
