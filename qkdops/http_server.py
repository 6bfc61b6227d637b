"""The one HTTP serving layer behind every port qkdops listens on: control API, pager sink, the
sites' KMEs (mutual TLS) and the exporters.

Built on aiohttp's low-level server (``aiohttp.web.Server``): the request parser, keep-alive and TLS
are aiohttp's; what every port must guarantee whatever a client does is here, once:

- **Connections**: at most ``Limits.max_connections`` open at once; one more is answered 503 and
  closed (not left in the kernel's queue to time out). Listen backlog ``Limits.backlog`` (≥ 128).
- **Deadline**: the request line and headers must arrive within ``deadline_s`` of the connection
  opening or of the previous answer (an idle keep-alive connection is closed then too, and a
  TLS handshake gets as long); the body within ``deadline_s`` after the headers, else 408. A
  client that sends one byte every few seconds holds a coroutine, never a thread.
- **Sizes**: request line ≤ ``max_line_bytes`` (414), each header ≤ ``max_field_bytes`` and at most
  ``max_headers`` of them (431), body ≤ the service's ``max_body_bytes`` (413, refused on its
  Content-Length before a byte of it is read; a chunked body, whose size nobody knows up front, 411).
- **Auth before body**: a service's ``authenticate`` vets the headers before the body is read, so
  an unauthenticated client cannot make a server read (or wait for) anything.
- **Routing**: path templates with ``{name}`` segments, matched on the percent-encoded path and
  URL-decoded afterwards (ETSI GS QKD 014 SAE IDs are URL-encoded; ``%2F`` cannot forge a segment);
  a trailing slash is ignored; 404 for no route, 405 with ``Allow`` for a method the route lacks;
  HEAD wherever GET, answered with GET's headers and no body.
- **Errors**: every error, the parser's included, is answered with the service's own JSON error
  body (``Service.error``: the control API's ``{"error": …}``, the KMEs' ETSI Error object) and
  never quotes what the client sent; an exception in a handler is logged with its traceback and
  answered 500 with a generic message.
- **Threads**: one event-loop thread per server, and handlers (blocking code: SQLite, the fleet's
  locks, rendering a scrape) on a pool of at most ``workers`` threads, so threads are bounded by
  configuration, not by clients.

Handlers are plain functions ``Request → Response``: the services stay synchronous and testable
without sockets, and know nothing of aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong

log = logging.getLogger("qkdops.http")

JSON = "application/json; charset=utf-8"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})  # others: 501
LINGER_S = 2.0  # how long an unread body is read and dropped after the answer, before the connection closes
OTHER_ROUTE = "other"  # the route name observed for requests that matched none (and protocol errors)


@dataclass(frozen=True)
class Limits:
    """What one client may hold or send (see the module docstring)."""

    deadline_s: float = 10.0
    max_body_bytes: int = 64 * 1024
    max_connections: int = 1024
    workers: int = 8
    backlog: int = 1024
    max_line_bytes: int = 8000      # ≠ max_field_bytes: see ``HttpServer.protocol_error``
    max_field_bytes: int = 8190
    max_headers: int = 100

    def __post_init__(self) -> None:
        if (self.backlog < 128 or self.max_connections < 1 or self.workers < 1 or not self.deadline_s > 0
                or self.max_line_bytes == self.max_field_bytes):
            raise ValueError(f"HTTP limits out of range: {self}")


@dataclass(frozen=True)
class Request:
    """One request as a handler sees it: the whole body already received (``b""`` when none)."""

    method: str
    path: str                            # percent-decoded, for messages and logs
    params: Mapping[str, str]            # the route's ``{name}`` segments, percent-decoded
    query_string: str                    # raw, as sent (services parse it strictly themselves)
    headers: Mapping[str, str]           # case-insensitive
    body: bytes
    peer: str
    peer_cert: Mapping[str, Any] | None = None   # a verified TLS client certificate (``ssl.getpeercert``)
    psk_identity: str | None = None              # the TLS pre-shared key's identity the client proved (qkdops.kme.psk)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string, keep_blank_values=True)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    close: bool = False                  # close the connection after this answer


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None, close: bool = False) -> Response:
    """``payload`` as JSON (NaN and infinities refused: they are not JSON)."""
    return Response(int(status), json.dumps(payload, allow_nan=False).encode("utf-8") + b"\n", JSON, dict(headers or {}),
                    close)


def error_object(status: HTTPStatus, message: str) -> dict[str, Any]:
    """qkdops's JSON error body, ``{"error": {"code", "message"}}`` (the code is the status phrase in
    snake case); services that name the offending field add ``field`` themselves."""
    return {"error": {"code": status.phrase.lower().replace(" ", "_").replace("-", "_"), "message": message}}


Handler = Callable[[Request], Response]
ErrorBody = Callable[[HTTPStatus, str], Any]   # status, message → the service's JSON error object


@dataclass(frozen=True)
class Route:
    """``path``: a template such as ``/api/v1/links/{link}/faults``; ``name``: the route's label in
    ``Service.observe`` (default: the template)."""

    path: str
    methods: Mapping[str, Handler]
    name: str = ""
    public: bool = False   # True: no ``Service.authenticate`` (health checks, documentation)

    def pattern(self) -> re.Pattern[str]:
        """``{name}`` is one segment; ``{*name}`` (last) the rest of the path, slashes and all."""
        parts = re.split(r"\{(\*?[A-Za-z_][A-Za-z0-9_]*)\}", self.path)
        regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p[1:]}>.*)" if p.startswith("*") else f"(?P<{p}>[^/]+)"
                        for i, p in enumerate(parts))
        return re.compile(f"^{regex}$")


@dataclass(frozen=True)
class Service:
    """What a port serves. ``authenticate(headers)`` vets every request to a route that is not
    public before its body is read (None: let it in; a Response: the refusal, sent as is).
    ``observe(route name, status, seconds)`` is called for every answer sent, errors and refusals
    included (route ``OTHER_ROUTE`` when none matched), before it leaves."""

    name: str
    routes: Sequence[Route]
    error: ErrorBody = error_object
    limits: Limits = Limits()
    ssl_context: ssl.SSLContext | None = None
    authenticate: Callable[[Mapping[str, str]], Response | None] | None = None
    observe: Callable[[str, int, float], None] | None = None


def _status_message(status: HTTPStatus, limits: Limits) -> str:
    return {
        HTTPStatus.BAD_REQUEST: "malformed HTTP request",
        HTTPStatus.REQUEST_TIMEOUT: f"request not received within {limits.deadline_s:g} s",
        HTTPStatus.REQUEST_URI_TOO_LONG: f"request line over {limits.max_line_bytes} bytes",
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
            f"request headers too large (at most {limits.max_headers} fields of {limits.max_field_bytes} bytes)",
        HTTPStatus.SERVICE_UNAVAILABLE: f"too many connections (limit {limits.max_connections}); retry shortly",
    }.get(status, status.phrase)


class _Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = [(route, route.pattern()) for route in routes]

    def match(self, raw_path: str) -> tuple[Route, dict[str, str]] | None:
        path = raw_path.rstrip("/") or "/"
        for route, pattern in self._routes:
            if (m := pattern.match(path)) is not None:
                return route, {k: unquote(v, errors="replace") for k, v in m.groupdict().items()}
        return None


def raise_open_file_limit(wanted: int = 65536) -> int:
    """Lift this process's soft limit on open files towards ``wanted`` (never above the hard limit),
    so several ports' connection caps (``Limits.max_connections`` each) fit: a common default soft
    limit of 1,024 would make ``accept`` fail under a crowd long before any cap. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class HttpServer:
    """``service`` on ``host:port`` (port 0: any free port, see ``server_port``), started at once.

    ``OSError`` when the address cannot be bound (port taken): raised here, in the caller's thread.
    ``stop`` closes the listener (the port refuses connections), ends open connections and waits
    for the loop thread; it is idempotent.
    """

    def __init__(self, service: Service, host: str, port: int) -> None:
        self.service = service
        self.limits = limits = service.limits
        self._router = _Router(service.routes)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self._sock = socket.create_server((host, port), family=family, backlog=limits.backlog)
        self.server_address: tuple[str, int] = self._sock.getsockname()[:2]
        self.server_port = self.server_address[1]
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix=f"qkdops-{service.name}-worker")
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self._ready = threading.Event()
        self._stopped = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"qkdops-{service.name}", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            self._pool.shutdown(wait=False)
            raise self._failure

    @property
    def serving(self) -> bool:
        return not self._stopped

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout_s)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- the loop thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 (handed to the constructor, which raises it)
            self._failure = exc
            self._sock.close()
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _start(self) -> None:
        limits = self.limits
        # aiohttp's connection manager; the connections themselves are made by ``protocol`` below
        # (the cap, and parser errors answered in the service's JSON), with these settings
        self._web = web.Server(self._handle)
        protocol_args = {"keepalive_timeout": limits.deadline_s, "max_line_size": limits.max_line_bytes,
                         "max_field_size": limits.max_field_bytes, "max_headers": limits.max_headers,
                         "lingering_time": min(LINGER_S, limits.deadline_s), "access_log": None}
        refusal = self._refusal_bytes()

        def protocol() -> asyncio.BaseProtocol:
            if len(self._web.connections) >= limits.max_connections:
                self._observe(OTHER_ROUTE, HTTPStatus.SERVICE_UNAVAILABLE, 0.0)
                return _Refuse(refusal)
            return _Protocol(self._web, self, loop=self._loop, **protocol_args)

        self._server = await self._loop.create_server(
            protocol, sock=self._sock, ssl=self.service.ssl_context, backlog=limits.backlog,
            ssl_handshake_timeout=limits.deadline_s if self.service.ssl_context else None)

    async def _shutdown(self) -> None:
        self._server.close()
        await self._web.shutdown(1.0)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """A refused TLS handshake or a client gone mid-request: one line, no traceback."""
        exc = context.get("exception")
        peer = None
        if (transport := context.get("transport")) is not None:
            peer = transport.get_extra_info("peername")
        reason = getattr(exc, "reason", None) or (type(exc).__name__ if exc else context.get("message"))
        log.info("%s: connection from %s dropped: %s", self.service.name, peer[0] if peer else "?", reason)

    def _refusal_bytes(self) -> bytes:
        status = HTTPStatus.SERVICE_UNAVAILABLE
        body = json.dumps(self.service.error(status, _status_message(status, self.limits))).encode() + b"\n"
        return (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {JSON}\r\nContent-Length: {len(body)}\r\n"
                "Retry-After: 1\r\nConnection: close\r\n\r\n").encode() + body

    # ---- one request -------------------------------------------------------------------------------------
    def _error(self, status: HTTPStatus, message: str | None = None, headers: Mapping[str, str] | None = None,
               close: bool = False) -> Response:
        return json_response(status, self.service.error(status, message or _status_message(status, self.limits)),
                             headers, close)

    def _observe(self, route: str, status: int, seconds: float) -> None:
        if self.service.observe is not None:
            self.service.observe(route, int(status), seconds)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        matched = self._router.match(request.raw_path.partition("?")[0])
        route_name = OTHER_ROUTE if matched is None else matched[0].name or matched[0].path
        try:
            response = await self._answer(request, matched)
        except Exception:  # a bug must still get an answer, not a dropped connection
            log.exception("%s: %s %s failed", self.service.name, request.method, request.path)
            response = self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error in {self.service.name}; see its log",
                                   close=True)
        self._observe(route_name, response.status, time.perf_counter() - started)
        return self._to_aiohttp(response)

    async def _answer(self, request: web.BaseRequest, matched: tuple[Route, dict[str, str]] | None) -> Response:
        if matched is None:
            return self._error(HTTPStatus.NOT_FOUND, f"no endpoint {_shown(request.path)}")
        route, params = matched
        method = request.method
        if method not in METHODS:
            return self._error(HTTPStatus.NOT_IMPLEMENTED, f"method {_shown(method, 20)} is not implemented")
        handler = route.methods.get(method) or (route.methods.get("GET") if method == "HEAD" else None)
        if handler is None:
            allowed = list(route.methods) + (["HEAD"] if "GET" in route.methods and "HEAD" not in route.methods else [])
            return self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"method {_shown(method, 20)} not allowed on "
                               f"{_shown(request.path)} (allowed: {', '.join(allowed)})", {"Allow": ", ".join(allowed)})
        if not route.public and self.service.authenticate is not None:
            if (refusal := self.service.authenticate(request.headers)) is not None:
                return refusal
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        req = Request(method, request.path, params, request.query_string, request.headers, body,
                      request.remote or "?", ssl_object.getpeercert() if ssl_object is not None else None,
                      getattr(ssl_object, "psk_identity", None))
        return await self._loop.run_in_executor(self._pool, handler, req)

    async def _body(self, request: web.BaseRequest) -> bytes | Response:
        limit, length = self.limits.max_body_bytes, request.content_length
        if "Transfer-Encoding" in request.headers:   # a body's size is declared up front, so it can be refused up front
            return self._error(HTTPStatus.LENGTH_REQUIRED, "send the body with Content-Length, not chunked")
        if not length:
            return b""
        if length > limit:
            # not closed at once: aiohttp reads and drops what follows for ``LINGER_S``, so a client
            # still sending reads this answer instead of a connection reset
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"request body of {length} bytes is over the limit of {limit} bytes")
        try:
            async with asyncio.timeout(self.limits.deadline_s):
                return await request.content.readexactly(length)
        except TimeoutError:
            return self._error(HTTPStatus.REQUEST_TIMEOUT, f"request body not received within {self.limits.deadline_s:g} s",
                               close=True)
        except asyncio.IncompleteReadError:   # the client hung up mid-body; nobody is left to read an answer
            return self._error(HTTPStatus.BAD_REQUEST, "request body cut short", close=True)

    def _to_aiohttp(self, response: Response) -> web.Response:
        headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Server": f"qkdops-{self.service.name}",
                   **response.headers, "Content-Type": response.content_type}
        out = web.Response(status=response.status, body=response.body, headers=headers)
        if response.close:
            out.force_close()
        return out

    @staticmethod
    def _looks_like_a_method(exc: BadHttpMethod) -> bool:
        """A well-formed method the parser does not know (``BREW``) is 501, garbage 400 (RFC 9110 9.1)."""
        quoted = re.search(r"b'([A-Z]{1,20}) ", str(exc))   # the parser quotes the request line it refused
        return quoted is not None

    def protocol_error(self, exc: BaseException | None, status: int) -> web.Response:
        """The answer to a request the parser refused (see ``_Protocol.handle_error``)."""
        if isinstance(exc, LineTooLong):  # the parser names only the limit it hit: hence two different limits
            status = (HTTPStatus.REQUEST_URI_TOO_LONG if exc.args[1:2] == (self.limits.max_line_bytes,)
                      else HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        elif isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower():
            status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        elif isinstance(exc, BadHttpMethod) and self._looks_like_a_method(exc):
            status = HTTPStatus.NOT_IMPLEMENTED
        status = HTTPStatus(status) if status in HTTPStatus._value2member_map_ else HTTPStatus.BAD_REQUEST
        if status == HTTPStatus.INTERNAL_SERVER_ERROR:
            log.error("%s: request failed in the HTTP layer", self.service.name, exc_info=exc)
        else:
            log.info("%s: refused an unparseable request (%d %s)", self.service.name, status, type(exc).__name__)
        self._observe(OTHER_ROUTE, status, 0.0)
        return self._to_aiohttp(self._error(status, close=True))


def _shown(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class _Protocol(web.RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses in the service's JSON."""

    def __init__(self, manager: web.Server, owner: HttpServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._owner = owner

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:   # part of an answer left already: the connection is broken
            raise ConnectionError("answer already under way")
        return self._owner.protocol_error(exc, status)


class _Refuse(asyncio.Protocol):
    """One connection over the limit: a 503 (with the service's error body) and close."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Answer, then close a moment later: closing with the client's request unread would reset the
        connection, and the client would see the reset instead of the 503."""
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(1.0, transport.close)

    def data_received(self, data: bytes) -> None:
        """The request is not read: it is refused whatever it says."""


class ServedService:
    """One service's HTTP server that can be stopped and started again on the same ``host:port``: an
    exporter or a KME the control API takes down (its port then refuses connections, as a crashed
    process's would) and brings back.

    ``start`` and ``stop`` are idempotent and thread-safe (the control API calls them from its request
    threads); each returns whether it changed anything. ``start`` raises OSError when the port is
    taken. Port 0 picks a free port on the first start and keeps it for every restart.
    """

    def __init__(self, name: str, service: Service, host: str, port: int) -> None:
        self.name, self.host, self.port = name, host, port
        self._service = service
        self._lock = threading.Lock()
        self._server: HttpServer | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.host}:{self.port}, serving={self.serving})"

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def server_address(self) -> tuple[str, int]:
        return self.host, self.port

    def listing(self) -> list[dict[str, Any]]:
        """What the control API lists for it: one instance, here."""
        return [{"name": self.name, "port": self.port, "serving": self.serving}]

    def start(self) -> bool:
        with self._lock:
            if self._server is not None:
                return False
            self._server = HttpServer(self._service, self.host, self.port)
            self.port = self._server.server_port
            return True

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Close the listening socket (new connections are refused) and wait for the serving thread."""
        with self._lock:
            if self._server is None:
                return False
            server, self._server = self._server, None
            server.stop(timeout_s)
            return True
