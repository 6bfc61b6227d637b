"""The sites' KMEs on HTTPS with mutual TLS: one listener per site, in the runtime's process.

A client must present a certificate issued by the PKI's CA (``pki.py``); the handshake runs in the
request's own thread (a stalled client cannot block the listener) and a refused handshake is
logged, not answered. The verified certificate's common name is the calling SAE's ID, handed to
``etsi.KMEService`` with the request. Logs name the SAE, the call, the status and the number of
keys — never a key, a request body or a response body.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from qkdops.config import KMESpec
from qkdops.http_response import respond
from qkdops.kme.etsi import MAX_BODY_BYTES, KMEService, kme_id
from qkdops.kme.pki import Pki
from qkdops.kme.stats import KMEStats
from qkdops.runtime.fleet import Fleet

log = logging.getLogger("qkdops.kme")
REQUEST_TIMEOUT_S = 10.0


def server_context(pki: Pki, site: str) -> ssl.SSLContext:
    """TLS ≥ 1.2, the KME's certificate, client certificates required and checked against the CA."""
    cert, key = pki.kme(site)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(pki.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class KMEServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: KMEService, context: ssl.SSLContext, stats: KMEStats) -> None:
        self.service, self.context, self.stats = service, context, stats
        super().__init__(address, KMEHandler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A refused handshake or a client gone mid-request: one line, no traceback."""
        log.info("%s: %s: connection dropped (%s)", kme_id(self.service.site), client_address[0], type(sys.exc_info()[1]).__name__)


class KMEServer6(KMEServer):
    address_family = socket.AF_INET6


class KMEHandler(BaseHTTPRequestHandler):
    server: KMEServer
    server_version = "qkdops-kme/1"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    # Headers and body leave as separate TLS records; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms a request on Linux, bench/bench_kme.py), so keep-alive SAEs would crawl.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        self.request.settimeout(REQUEST_TIMEOUT_S)
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            log.info("%s: TLS handshake refused for %s: %s", kme_id(self.server.service.site), self.client_address[0],
                     getattr(exc, "reason", None) or type(exc).__name__)
            raise
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET  # noqa: N815

    def _handle(self) -> None:
        started = time.perf_counter()
        caller = _common_name(self.connection.getpeercert())
        service = self.server.service
        body: bytes | None = None
        length = self.headers.get("Content-Length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                size = -1
            if not 0 <= size <= MAX_BODY_BYTES:
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if size > MAX_BODY_BYTES else HTTPStatus.BAD_REQUEST,
                           {"message": f"Content-Length must be 0 … {MAX_BODY_BYTES} bytes"}, "other", caller, started, close=True)
                return
            try:
                body = self.rfile.read(size)
            except TimeoutError:
                self._send(HTTPStatus.REQUEST_TIMEOUT, {"message": f"body not received within {REQUEST_TIMEOUT_S:g} s"}, "other",
                           caller, started, close=True)
                return
        try:
            answer = service.handle(self.command, self.path, body, caller)
        except Exception:   # a bug must still get an answer (and a count), not a dropped connection
            log.exception("%s: %s request from SAE %s failed", kme_id(service.site), self.command, caller)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"message": "internal error: the KME could not answer; see its log"},
                       "other", caller, started, close=True)
            return
        self._send(answer.status, answer.body, answer.call, caller, started)

    def _send(self, status: HTTPStatus, body: dict[str, Any], call: str, caller: str | None, started: float,
              close: bool = False) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Connection": "close"} if close else {}
        if close:
            self.close_connection = True
        site = self.server.service.site
        # counted before the answer leaves, so a client that got it also sees it counted
        self.server.stats.request(site, call, int(status), time.perf_counter() - started)
        respond(self, status, data, "application/json", headers)
        keys = len(body.get("keys", ())) if status == HTTPStatus.OK else 0
        log.log(logging.DEBUG if status == HTTPStatus.OK and call == "status" else logging.INFO,
                "%s: SAE %s %s %s → %d%s", kme_id(site), caller, self.command, call, int(status),
                f" ({keys} key(s))" if keys else "")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        """Protocol-level events only (the request line may carry key IDs, never keys)."""
        log.debug("%s: %s %s", kme_id(self.server.service.site), self.client_address[0], format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Every answered request is logged by ``_send``, with the SAE and without the path."""


def _common_name(cert: dict[str, Any] | None) -> str | None:
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def serve_kme(fleet: Fleet, spec: KMESpec, pki: Pki) -> tuple[KMEServer, threading.Thread]:
    """Start the HTTPS listener of one site's KME on ``runtime.bind:spec.port`` (0: any free port;
    tests), serving the fleet's key store. OSError if the port is taken."""
    config = fleet.config
    host = config.runtime.bind
    service = KMEService(spec.site, config.key_delivery, config.links, fleet.key_pool, fleet.refresh_key_stores)
    server_class = KMEServer6 if ":" in host else KMEServer
    server = server_class((host, spec.port), service, server_context(pki, spec.site), fleet.kme_stats)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name=f"qkdops-{kme_id(spec.site)}", daemon=True)
    thread.start()
    log.info("%s listening on https://%s:%d/api/v1/keys/ (ETSI GS QKD 014, mutual TLS)", kme_id(spec.site),
             *server.server_address[:2])
    return server, thread


def serve_kmes(fleet: Fleet, pki: Pki) -> list[tuple[KMEServer, threading.Thread]]:
    """Every configured KME (see ``serve_kme``); none left listening if one cannot start."""
    started: list[tuple[KMEServer, threading.Thread]] = []
    try:
        for spec in fleet.config.key_delivery.kmes:
            started.append(serve_kme(fleet, spec, pki))
    except BaseException:
        shutdown_kmes(started)
        raise
    return started


def shutdown_kmes(servers: Sequence[tuple[KMEServer, threading.Thread]], timeout_s: float = 5.0) -> None:
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout_s)
