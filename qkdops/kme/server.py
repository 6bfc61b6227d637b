"""The sites' KMEs on HTTPS with mutual TLS, and their SKIP key providers on TLS-PSK: two listeners
per site, in the runtime's process, on one key store.

Served by the one HTTP layer (``qkdops.http_server``): limits, deadlines, 404/405/413/414/431 and the
rest, every one answered with an ETSI Error object (``{"message"}``). A client must present a
certificate issued by the PKI's CA (``pki.py``); the handshake runs on the event loop, bounded by
the layer's deadline, so a stalled client holds no thread. The verified certificate's common name
is the calling SAE's ID, handed to ``etsi.KMEService`` with the request; the SAE ID in the path is
URL-decoded first (ETSI GS QKD 014 defines it URL-encoded). Every answer — refusals included — is
counted in ``KMEStats`` per call and status. Logs name the SAE, the call, the status and the number
of keys — never a key, a request body or a response body.

Beside each KME, the site's SKIP key provider (``skip.py``, IETF draft-cisco-skip-02) on
``spec.skip_port``: the same layer, no certificate, TLS 1.2/1.3 with each SAE's pre-shared key from
the PKI directory (``psk.py``); the caller is the PSK identity that authenticated. Its requests are
counted in the same ``KMEStats`` with ``api="skip"`` (the KME's with ``api="etsi014"``).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Protocol

from qkdops.config import FleetConfig, KMESpec
from qkdops.http_server import Limits, Request, Response, Route, Service, ServedService, json_response
from qkdops.kme.etsi import MAX_BODY_BYTES, KMEService, kme_id
from qkdops.kme.pki import Pki, read_psk
from qkdops.kme.psk import PskKeys
from qkdops.kme.skip import SkipService, skip_id
from qkdops.kme.stats import KMEStats
from qkdops.kme.store import KeyPoolStore, open_key_pool

log = logging.getLogger("qkdops.kme")
CALLS = {"status": ("GET",), "enc_keys": ("GET", "POST"), "dec_keys": ("GET", "POST")}
ETSI_API, SKIP_API = "etsi014", "skip"   # the ``api`` label of the request metrics
SKIP_ROUTES = {"capabilities": "/capabilities", "key": "/key", "key_by_id": "/key/{key_id}", "entropy": "/entropy"}


class KeySource(Protocol):
    """What a KME serves from: the configuration, the sites' key pool, where requests are counted, and
    a hook run after a pool changes (the runtime's ``Fleet`` is one; the KMEs stay below the runtime)."""

    config: FleetConfig
    key_pool: KeyPoolStore
    kme_stats: KMEStats

    def refresh_key_stores(self, link_id: str) -> None: ...


class SharedKeyPool:
    """The KMEs' key source when the links run in other processes (``qkdops up --workers N``): the
    state dir's KME store, which the workers hand keys into and these KMEs serve from (SQLite
    transactions across processes keep every key served once). The store figures each link publishes
    are re-read by its worker (``Fleet(key_store_refresh_s=…)``), so a KME call here has nothing to
    refresh."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.key_pool = open_key_pool(config)
        self.kme_stats = KMEStats()

    def refresh_key_stores(self, link_id: str) -> None:
        """Nothing: the owning worker re-reads its links' figures (class docstring)."""

    def close(self) -> None:
        self.key_pool.close()


class _HandshakeLogged(ssl.SSLObject):
    """The event loop's TLS object for one connection, logging a refused handshake: asyncio drops
    those silently (an ``ssl.SSLError`` is an ``OSError``), and a KME's operator must see an SAE whose
    certificate (or PSK) is refused. ``listener`` is set per listener (``server_context``, ``skip_context``)."""

    listener = ""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise                          # the handshake is still under way
        except ssl.SSLError as exc:
            log.info("%s: TLS handshake refused: %s", self.listener, exc.reason or type(exc).__name__)
            raise


def _logged(listener: str) -> type[ssl.SSLObject]:
    return type("Handshake", (_HandshakeLogged,), {"listener": listener})


def server_context(pki: Pki, site: str) -> ssl.SSLContext:
    """TLS ≥ 1.2, the KME's certificate, client certificates required and checked against the CA."""
    cert, key = pki.kme(site)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sslobject_class = _logged(kme_id(site))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(pki.ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def etsi_error(status: HTTPStatus, message: str) -> dict[str, Any]:
    """ETSI GS QKD 014 clause 6.4's Error object, for the errors the HTTP layer answers itself."""
    return {"message": message}


def kme_service(service: KMEService, context: ssl.SSLContext, stats: KMEStats) -> Service:
    """The HTTP routes of one site's KME, each handing the request to ``service``."""
    site = service.site

    def call(name: str) -> Any:
        def handle(request: Request) -> Response:
            caller = _common_name(request.peer_cert)
            if request.method == "HEAD" and name != "status":
                return _head_refused(name, CALLS[name])
            method = "GET" if request.method == "HEAD" else request.method
            answer = service.answer(method, name, request.params["sae"], request.query_string, request.body or None, caller)
            keys = len(answer.body.get("keys", ())) if answer.status == HTTPStatus.OK else 0
            log.log(logging.DEBUG if answer.status == HTTPStatus.OK and name == "status" else logging.INFO,
                    "%s: SAE %s %s %s → %d%s", kme_id(site), caller, method, name, int(answer.status),
                    f" ({keys} key(s))" if keys else "")
            return json_response(answer.status, answer.body)
        return handle

    routes = [Route(f"/api/v1/keys/{{sae}}/{name}", {m: call(name) for m in methods}, name) for name, methods in CALLS.items()]
    return Service(kme_id(site), routes, etsi_error, Limits(max_body_bytes=MAX_BODY_BYTES), ssl_context=context,
                   observe=lambda route, status, seconds: stats.request(site, ETSI_API, route, status, seconds))


def skip_context(pki: Pki, spec: KMESpec) -> ssl.SSLContext:
    """TLS-PSK (``psk.py``) with the pre-shared keys of the site's SAEs, read from the PKI directory."""
    keys = {sae: read_psk(pki.skip_psk(sae)) for sae in spec.saes}
    return PskKeys(keys, skip_id(spec.site)).context(_logged(skip_id(spec.site)))


def skip_service(service: SkipService, context: ssl.SSLContext, stats: KMEStats) -> Service:
    """The HTTP routes of one site's SKIP key provider (draft-cisco-skip-02 Table 2: GET only)."""
    site = service.site

    def call(name: str) -> Any:
        def handle(request: Request) -> Response:
            caller = request.psk_identity
            if request.method == "HEAD" and name in ("key", "key_by_id"):
                return _head_refused(name, ("GET",))
            answer = service.answer("GET" if request.method == "HEAD" else request.method, name,
                                    request.params.get("key_id"), request.query_string, caller)
            keyed = answer.status == HTTPStatus.OK and name in ("key", "key_by_id")
            log.log(logging.INFO if keyed or answer.status != HTTPStatus.OK else logging.DEBUG,
                    "%s: system %s %s → %d%s", skip_id(site), caller, name, int(answer.status), " (1 key)" if keyed else "")
            return json_response(answer.status, answer.body)
        return handle

    routes = [Route(path, {"GET": call(name)}, name) for name, path in SKIP_ROUTES.items()]
    return Service(skip_id(site), routes, etsi_error, Limits(max_body_bytes=0), ssl_context=context,
                   observe=lambda route, status, seconds: stats.request(site, SKIP_API, route, status, seconds))


def _head_refused(call: str, allowed: tuple[str, ...]) -> Response:
    """HEAD on a call that hands out key: a GET there takes keys from the store, so a HEAD — a GET whose
    answer is dropped — would lose them. Refused (405, ``Allow`` without HEAD), nothing taken."""
    message = f"HEAD is not allowed on {call}: it would take keys and drop them (use {' or '.join(allowed)})"
    return json_response(HTTPStatus.METHOD_NOT_ALLOWED, {"message": message}, {"Allow": ", ".join(allowed)})


def _common_name(cert: dict[str, Any] | None) -> str | None:
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def serve_kme(source: KeySource, spec: KMESpec, pki: Pki) -> ServedService:
    """Start the HTTPS listener of one site's KME on ``runtime.bind:spec.port`` (0: any free port;
    tests), serving the source's key pool; the control API may stop and start it. OSError if the port
    is taken."""
    config = source.config
    service = KMEService(spec.site, config.key_delivery, config.links, source.key_pool, source.refresh_key_stores)
    server = ServedService(kme_id(spec.site), kme_service(service, server_context(pki, spec.site), source.kme_stats),
                           config.runtime.bind, spec.port)
    server.start()
    log.info("%s listening on https://%s:%d/api/v1/keys/ (ETSI GS QKD 014, mutual TLS)", kme_id(spec.site),
             *server.server_address)
    return server


def serve_skip(source: KeySource, spec: KMESpec, pki: Pki) -> ServedService:
    """Start the TLS-PSK listener of one site's SKIP key provider on ``runtime.bind:spec.skip_port``
    (0: any free port), serving the source's key pool; the control API may stop and start it. OSError
    if the port is taken."""
    config = source.config
    service = SkipService(spec.site, config.key_delivery, config.links, source.key_pool, source.refresh_key_stores)
    server = ServedService(skip_id(spec.site), skip_service(service, skip_context(pki, spec), source.kme_stats),
                           config.runtime.bind, spec.skip_port)
    server.start()
    log.info("%s listening on https://%s:%d/ (SKIP, draft-cisco-skip-02, TLS-PSK)", skip_id(spec.site), *server.server_address)
    return server


def serve_kmes(source: KeySource, pki: Pki, skip: bool = False) -> dict[str, ServedService]:
    """Every configured KME by site (see ``serve_kme``) — or, with ``skip``, every SKIP key provider
    (``serve_skip``); none left listening if one cannot start."""
    started: dict[str, ServedService] = {}
    try:
        for spec in source.config.key_delivery.kmes:
            started[spec.site] = (serve_skip if skip else serve_kme)(source, spec, pki)
    except BaseException:
        shutdown_kmes(started.values())
        raise
    return started


def shutdown_kmes(servers: Iterable[ServedService], timeout_s: float = 5.0) -> None:
    for server in servers:
        server.stop(timeout_s)
