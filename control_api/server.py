"""The control API: an authenticated HTTP JSON interface through which tools act on a running fleet.

Game days, calibration jobs, runbooks and ``qkdops fault`` never reach into the runtime: they inject
and clear faults, run calibration actions and read link status here, and the API in turn only calls
``Fleet``'s public methods, which take the link's lock, so requests interleave safely with stepping.

Endpoints (``/api/v1``; JSON in and out)::

    GET    /healthz                                    200 {"status": "ok"}           (no token)
    GET    /runbooks/{AlertName}                       runbooks/<AlertName>.md, text/markdown (no token)
    GET    /api/v1/links                               {"links": [{"link", "protocol"}, ...]}
    GET    /api/v1/links/{link}                        Fleet.status(link)
    GET    /api/v1/faults                              {"faults": fault catalogue}
    GET    /api/v1/links/{link}/faults                 {"link", "active_faults": [...]}
    POST   /api/v1/links/{link}/faults                 {"fault": NAME, "parameters": {NAME: number}} → 201
    DELETE /api/v1/links/{link}/faults                 clear all → {"link", "cleared": [...]}
    DELETE /api/v1/links/{link}/faults/{fault}         clear one → {"link", "cleared": [...]}
    POST   /api/v1/links/{link}/actions/{action}       calibration action → CalibrationResult
    GET    /api/v1/links/{link}/blocks?last=N          last N (≤ 1000) archived blocks' class counts + nominal params
    GET    /api/v1/exporters                           {"exporters": [{"name", "port", "serving"[, "worker"]}, ...]}
    DELETE /api/v1/exporters/{exporter}                stop its HTTP server (port refuses, as if crashed) → {"name", "serving": false}
    POST   /api/v1/exporters/{exporter}                start it again on the same address → {"name", "serving": true}
    GET    /api/v1/kmes                                {"kmes": [{"name", "port", "serving"}, ...]}: kme-<site>, skip-<site>
    DELETE /api/v1/kmes/{kme}                          stop a KME's (or SKIP key provider's) listener → {"name", "serving": false}
    POST   /api/v1/kmes/{kme}                          start it again on the same address → {"name", "serving": true}

The exporters (``device``, ``postprocessing``) are those ``qkdops up`` serves in-process (on a sharded
fleet: every instance of the kind, each listed with its ``worker``, stopped and started together);
stopping one is the "exporter crash" game day, starting it the runbook's restart. The KMEs are the
sites' ETSI 014 KMEs and SKIP key providers this process serves: stopping one is a KME outage as its
SAEs (and the kme-probe) see it; the key store behind it is untouched. Both are idempotent; a start
whose port has been taken meanwhile is a 409.

Runbooks are read-only documentation that alerts link to (``runbook_url``): an on-call engineer
opens them from a pager without the API token. The name is letters and digits only, so no request
can reach a file outside the runbooks directory; anything else is a 404.

Every other request needs ``Authorization: Bearer TOKEN``. Errors are
``{"error": {"code", "message", "field"?}}``: 401 (token; with ``WWW-Authenticate: Bearer``),
404 (unknown link, fault, action, exporter, runbook or path), 400 (bad JSON, wrong type, bad parameter), 405
(method; with ``Allow``), 408 (request not sent in time), 409 (exporter's port taken), 413 (body over 64 KiB),
414 / 431 (request line / headers too large), 503 (too many connections; on a sharded fleet's
supervisor, ``worker_unavailable``: the link's worker is not answering), 500 (logged here, never detailed
to the client). On a sharded fleet (``qkdops up --workers N``) the link endpoints are answered by the
worker that runs the link (``control_api.shards``), its refusals passed on as it answered them. A bad
request never reaches the link, so the link keeps stepping and producing blocks. The serving
(limits, deadlines, HEAD, protocol errors) is the one HTTP layer's, ``qkdops.http_server``.

Token (``load_token``), first found: env ``QKDOPS_API_TOKEN``; the file named by env
``QKDOPS_API_TOKEN_FILE``; ``<state_dir>/api-token``, which the server creates (mode 0600, 256 random
bits) on first start so a fresh machine is never left open. The token is compared in constant time
and never logged or echoed; ``ApiToken``'s repr hides it.

There is no TLS: the API binds 127.0.0.1 by default; binding elsewhere logs a warning because the
token would cross the network in clear text.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from qkdlink.emulator import CalibrationResult, FaultError
from qkdops import credentials
from qkdops.control_client import API_PREFIX
from qkdops.credentials import API_TOKEN, CredentialError, SecretValue
from qkdops.credentials import TOKEN_SYNTAX as TOKEN_SYNTAX  # noqa: F401 (re-exported: RFC 6750 b64token)
from qkdops.http_server import HttpServer, Limits, Response, Route, Service, json_response
from qkdops.http_server import Request as HttpRequest
from qkdops.json_input import JsonInputError, load_json
from qkdops.assets import asset
from qkdops.config import RuntimeSettings
from qkdops.runtime.faults import FAULTS, fault_catalogue
from qkdops.control_client import ApiResponseError
from qkdops.runtime.fleet import UnknownAction, UnknownLink
from control_api.shards import WorkerUnavailable
from qkdops.yaml_input import clip

log = logging.getLogger("control_api.server")

MAX_BODY_BYTES = 64 * 1024
LIMITS = Limits(max_body_bytes=MAX_BODY_BYTES)
MAX_BLOCKS = 1000  # blocks one /blocks request may ask for
RUNBOOKS_PREFIX = "/runbooks"
RUNBOOKS_DIR = asset("runbooks")
# An alert name: the runbook's file name without .md; nothing that could leave the directory, and
# short enough that the file system never sees an over-long name.
RUNBOOK_NAME = re.compile(r"[A-Za-z0-9]{1,100}")
MARKDOWN = "text/markdown; charset=utf-8"
TOKEN_ENV = API_TOKEN.value_env
TOKEN_FILE_ENV = API_TOKEN.file_env
TOKEN_FILE_NAME = API_TOKEN.file_name
INJECT_FIELDS = ("fault", "parameters")
REDACTED = "[redacted]"


class Exporter(Protocol):
    """A server the API can stop and start: an exporter (``exporters.server.ServedExporter``; on a sharded
    fleet's supervisor ``control_api.shards.ShardedExporter``, every instance of its kind) or a KME's
    listener (``qkdops.http_server.ServedService``)."""

    name: str
    port: int

    @property
    def serving(self) -> bool: ...

    def listing(self) -> list[dict[str, Any]]: ...   # each instance: {"name", "port", "serving"[, "worker"]}

    def start(self) -> bool: ...

    def stop(self) -> bool: ...


class LinkControl(Protocol):
    """What the API acts through: the runtime's ``Fleet``, or ``ShardedFleet`` routing to the workers that run the links."""

    def link_ids(self) -> list[tuple[str, str]]: ...

    def runtime(self, link_id: str) -> object: ...   # UnknownLink when there is no such link

    def status(self, link_id: str) -> dict[str, Any]: ...

    def recent_blocks(self, link_id: str, last: int) -> dict[str, Any]: ...

    def inject(self, link_id: str, fault: str, parameters: Mapping[str, float]) -> dict[str, Any]: ...

    def clear(self, link_id: str, fault: str | None = None) -> list[str]: ...

    def act(self, link_id: str, action: str) -> CalibrationResult: ...


TokenError = CredentialError  # no usable API token; the message names where it looked, never a token value
ApiToken = SecretValue  # the bearer token and where it came from; ``repr`` leaves the value out


def token_from_environment() -> ApiToken | None:
    """The token env ``QKDOPS_API_TOKEN`` holds or env ``QKDOPS_API_TOKEN_FILE`` names; None if neither is set."""
    return credentials.from_environment(API_TOKEN)


def load_token(state_dir: Path, create: bool) -> ApiToken:
    """Token from the environment, else ``state_dir/api-token`` (created there when ``create``)."""
    return credentials.load_secret(API_TOKEN, state_dir, create)


# ---- errors ---------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error response: HTTP status, machine-readable code, message naming the field."""

    def __init__(self, status: HTTPStatus, code: str, message: str, field_name: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        message = clip(message, 600)   # messages and field names may quote the request: an answer stays short
        field_name = None if field_name is None else clip(field_name, 200)
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field_name
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


# The codes and fields of the errors the HTTP layer answers itself (see ``error_body``).
LAYER_ERRORS: Mapping[int, tuple[str, str | None]] = {
    400: ("invalid_request", None), 404: ("not_found", "path"), 405: ("method_not_allowed", "method"),
    408: ("request_timeout", "body"), 411: ("length_required", "Content-Length"), 413: ("payload_too_large", "body"),
    414: ("uri_too_long", "path"), 431: ("header_fields_too_large", "headers"), 500: ("internal", None),
    501: ("not_implemented", "method"), 503: ("unavailable", None)}


def error_body(status: HTTPStatus, message: str) -> dict[str, Any]:
    """The ``{"error": …}`` body for an error the HTTP layer answers (unknown path, method, sizes,
    deadlines), with the same codes as the API's own errors; the pager sink shares it."""
    code, field_name = LAYER_ERRORS.get(int(status), (status.phrase.lower().replace(" ", "_").replace("-", "_"), None))
    return ApiError(status, code, message, field_name).body()


def _bad(message: str, field_name: str, code: str = "invalid_request") -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, code, message, field_name)


def _unauthorized(message: str, invalid: bool, realm: str) -> ApiError:
    challenge = f'Bearer realm="{realm}"' + (', error="invalid_token"' if invalid else "")
    return ApiError(HTTPStatus.UNAUTHORIZED, "unauthorized", message, "Authorization", {"WWW-Authenticate": challenge})


def check_bearer(header: str | None, token: bytes, realm: str, what: str) -> None:
    """Raise the 401 ApiError unless ``header`` is ``Bearer <token>`` (RFC 6750); ``what`` names the
    token in the message. The control API and the pager sink both check theirs here."""
    if header is None:
        raise _unauthorized(f"missing Authorization header: expected 'Authorization: Bearer TOKEN' ({what})", False, realm)
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise _unauthorized("malformed Authorization header: expected 'Bearer TOKEN'", True, realm)
    # Headers arrive as latin-1 text; compare bytes so any input is comparable in constant time.
    if not hmac.compare_digest(presented.strip().encode("latin-1", "replace"), token):
        raise _unauthorized("invalid bearer token", True, realm)


def bearer_authenticator(token: bytes, realm: str, what: str) -> Callable[[Mapping[str, str]], Response | None]:
    """A ``Service.authenticate``: None for the right bearer token, else the 401 answer, logged
    (without the token) at INFO — every refusal is part of the audit trail."""
    def authenticate(headers: Mapping[str, str]) -> Response | None:
        try:
            check_bearer(headers.get("Authorization"), token, realm, what)
        except ApiError as exc:
            log.info("%s: refused a request: %s", realm, exc.message)
            return json_response(exc.status, exc.body(), exc.headers)
        return None
    return authenticate


def _unknown_fault(name: str, field_name: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "unknown_fault", f"{field_name}: unknown fault '{name}' (faults: {', '.join(FAULTS)})",
                    field_name)


# ---- request handling -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """What an endpoint sees: path parameters, and the JSON body read on demand (None when empty).

    Reading on demand lets an endpoint reject an unknown link (404) before judging the body.
    """

    params: Mapping[str, str]
    read_json: Callable[[], Any]
    query: Mapping[str, list[str]] = field(default_factory=dict)
    served: Mapping[str, Mapping[str, Exporter]] = field(default_factory=dict)  # kind (SERVED) → name → server


Endpoint = Callable[[LinkControl, Request], tuple[HTTPStatus, Any]]


def _links(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
    return HTTPStatus.OK, {"links": [{"link": link, "protocol": protocol} for link, protocol in fleet.link_ids()]}


def _link_status(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
    return HTTPStatus.OK, fleet.status(req.params["link"])


def _faults(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
    return HTTPStatus.OK, {"faults": fault_catalogue()}


def _active_faults(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
    link = req.params["link"]
    return HTTPStatus.OK, {"link": link, "active_faults": fleet.status(link)["active_faults"]}


def _inject(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
    link = req.params["link"]
    fleet.runtime(link)  # an unknown link is a 404 before the body is judged
    name, parameters = _inject_body(req.read_json())
    injected = fleet.inject(link, name, parameters)
    return HTTPStatus.CREATED, injected


def _inject_body(body: Any) -> tuple[str, dict[str, float]]:
    """``{"fault": NAME, "parameters": {NAME: number}}`` checked field by field, so errors name one."""
    if not isinstance(body, dict):
        raise _bad('request body must be a JSON object {"fault": NAME, "parameters": {NAME: number}}', "body")
    for key in body:
        if key not in INJECT_FIELDS:
            raise _bad(f"unexpected field '{key}' (fields: {', '.join(INJECT_FIELDS)})", str(key))
    name = body.get("fault")
    if not isinstance(name, str) or not name:
        raise _bad(f"fault: expected a fault name (string), got {_describe(name)}", "fault")
    if name not in FAULTS:
        raise _unknown_fault(name, "fault")
    raw = body.get("parameters", {})
    if not isinstance(raw, dict):
        raise _bad(f"parameters: expected an object {{NAME: number}}, got {_describe(raw)}", "parameters")
    parameters: dict[str, float] = {}
    for key, value in raw.items():
        where = f"parameters.{key}"
        if not _is_finite_number(value):
            raise _bad(f"{where}: expected a finite number, got {_describe(value)}", where, "invalid_parameter")
        try:
            FAULTS[name].validate({key: value})  # one at a time, so the error names this field
        except FaultError as exc:
            raise _bad(f"{where}: {exc}", where, "invalid_parameter") from None
        parameters[key] = float(value)
    return name, parameters


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False


def _describe(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if type(value) in kinds:
        return kinds[type(value)]
    return "a number" if _is_finite_number(value) else "a number out of range"


def _blocks(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
    """The link's last ``?last=N`` archived blocks (1 … MAX_BLOCKS, default 10): counts only."""
    link = req.params["link"]
    fleet.runtime(link)
    for key in req.query:
        if key != "last":
            raise _bad(f"unexpected query parameter '{key}' (parameters: last)", str(key))
    values = req.query.get("last", ["10"])
    if len(values) != 1 or not values[0].isdigit() or not 1 <= int(values[0]) <= MAX_BLOCKS:
        raise _bad(f"last: expected one integer from 1 to {MAX_BLOCKS}, got {', '.join(values)!r}", "last")
    return HTTPStatus.OK, fleet.recent_blocks(link, int(values[0]))


def _clear(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
    link, fault = req.params["link"], req.params.get("fault")
    fleet.runtime(link)
    if fault is not None and fault not in FAULTS:
        raise _unknown_fault(fault, "fault")
    return HTTPStatus.OK, {"link": link, "cleared": fleet.clear(link, fault)}


def _act(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
    link = req.params["link"]
    result = fleet.act(link, req.params["action"])
    return HTTPStatus.OK, {"link": link, "action": result.action, "ok": result.ok, "message": result.message,
                           "before": dict(result.before), "after": dict(result.after)}


SERVED = {"exporters": "exporter", "kmes": "kme"}   # what /api/v1/<kind> lists, stops and starts → its path parameter


def _served_listing(kind: str) -> Endpoint:
    def listing(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
        return HTTPStatus.OK, {kind: [entry for e in req.served.get(kind, {}).values() for entry in e.listing()]}
    return listing


def _one_served(kind: str, req: Request) -> Exporter:
    noun, known = SERVED[kind], req.served.get(kind, {})
    name = req.params[noun]
    if (server := known.get(name)) is None:
        raise ApiError(HTTPStatus.NOT_FOUND, f"unknown_{noun}", f"{noun}: unknown {noun} '{clip(name, 80)}' ({kind}: "
                       f"{', '.join(known) or 'none'})", noun)
    return server


def _stop_served(kind: str) -> Endpoint:
    def stop(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
        server = _one_served(kind, req)
        if server.stop():
            log.warning("%s %s stopped through the control API: its port(s) refuse connections", SERVED[kind], server.name)
        return HTTPStatus.OK, {"name": server.name, "serving": server.serving}
    return stop


def _start_served(kind: str) -> Endpoint:
    def start(fleet: LinkControl, req: Request) -> tuple[HTTPStatus, Any]:
        server, noun = _one_served(kind, req), SERVED[kind]
        try:
            started = server.start()
        except OSError as exc:
            raise ApiError(HTTPStatus.CONFLICT, f"{noun}_unavailable",
                           f"{noun}: {server.name} cannot listen on port {server.port}: {exc.strerror or exc}", noun) from None
        if started:
            log.info("%s %s started through the control API", noun, server.name)
        return HTTPStatus.OK, {"name": server.name, "serving": server.serving}
    return start


API_ROUTES: tuple[tuple[str, Mapping[str, Endpoint]], ...] = (
    (f"{API_PREFIX}/links", {"GET": _links}),
    (f"{API_PREFIX}/links/{{link}}", {"GET": _link_status}),
    (f"{API_PREFIX}/faults", {"GET": _faults}),
    (f"{API_PREFIX}/links/{{link}}/faults", {"GET": _active_faults, "POST": _inject, "DELETE": _clear}),
    (f"{API_PREFIX}/links/{{link}}/faults/{{fault}}", {"DELETE": _clear}),
    (f"{API_PREFIX}/links/{{link}}/actions/{{action}}", {"POST": _act}),
    (f"{API_PREFIX}/links/{{link}}/blocks", {"GET": _blocks}),
    *((route, methods) for kind, noun in SERVED.items() for route, methods in (
        (f"{API_PREFIX}/{kind}", {"GET": _served_listing(kind)}),
        (f"{API_PREFIX}/{kind}/{{{noun}}}", {"POST": _start_served(kind), "DELETE": _stop_served(kind)}))),
)


class ControlService:
    """The control API's routes over one fleet: authenticate, parse, call the fleet, answer JSON."""

    def __init__(self, fleet: LinkControl, token: str, runbooks_dir: Path = RUNBOOKS_DIR,
                 exporters: Mapping[str, Exporter] | None = None, kmes: Mapping[str, Exporter] | None = None) -> None:
        self.fleet = fleet
        self.token = token.encode("ascii")  # TOKEN_SYNTAX: ASCII only
        self.runbooks_dir = runbooks_dir
        # read at each request, not copied: a caller may add servers it starts after the API (the KMEs)
        self.served = {"exporters": {} if exporters is None else exporters, "kmes": {} if kmes is None else kmes}

    def service(self) -> Service:
        routes = [Route("/healthz", {"GET": self._healthz}, public=True),
                  Route(f"{RUNBOOKS_PREFIX}{{*name}}", {"GET": self._runbook}, public=True)]
        routes += [Route(path, {method: self._endpoint(endpoint) for method, endpoint in methods.items()})
                   for path, methods in API_ROUTES]
        return Service("control-api", routes, error_body, LIMITS, authenticate=bearer_authenticator(self.token, "qkdops", "the control API token"))

    def _healthz(self, request: HttpRequest) -> Response:
        return json_response(HTTPStatus.OK, {"status": "ok"})

    def _runbook(self, request: HttpRequest) -> Response:
        """``runbooks/<name>.md`` for a letters-and-digits ``name`` (percent-decoded), else 404.

        The name is checked after decoding, so ``..%2F`` and friends never reach the file system;
        the file is read per request, so an edited runbook is served at once.
        """
        name = request.params["name"].removeprefix("/")
        if RUNBOOK_NAME.fullmatch(name) is not None and (path := self.runbooks_dir / f"{name}.md").is_file():
            return Response(HTTPStatus.OK, path.read_text(encoding="utf-8").encode("utf-8"), MARKDOWN)
        return self._answer(request, ApiError(HTTPStatus.NOT_FOUND, "unknown_runbook",
                            f"no runbook named '{clip(name, 80)}' (GET {RUNBOOKS_PREFIX}/<AlertName>: an alert name, "
                            "letters and digits only)", "name"))

    def _endpoint(self, endpoint: Endpoint) -> Callable[[HttpRequest], Response]:
        def handle(request: HttpRequest) -> Response:
            try:
                req = Request(request.params, lambda: _json_body(request.body), request.query, self.served)
                try:
                    status, payload = endpoint(self.fleet, req)
                except UnknownLink as exc:
                    raise ApiError(HTTPStatus.NOT_FOUND, "unknown_link", f"link: {exc}", "link") from None
                except UnknownAction as exc:
                    raise ApiError(HTTPStatus.NOT_FOUND, "unknown_action", f"action: {exc}", "action") from None
                except FaultError as exc:  # the endpoints check first; this covers a catalogue/fleet mismatch
                    raise _bad(str(exc), "parameters", "invalid_parameter") from None
                except ApiResponseError as exc:   # a worker's refusal (sharded fleet), passed on as it answered
                    raise ApiError(_status(exc.status), exc.code, exc.message, exc.field) from None
                except WorkerUnavailable as exc:
                    raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "worker_unavailable", str(exc), "link") from None
            except ApiError as exc:
                return self._answer(request, exc)
            return self._answer(request, None, status, payload)
        return handle

    def _answer(self, request: HttpRequest, error: ApiError | None, status: HTTPStatus = HTTPStatus.OK,
                payload: Any = None) -> Response:
        """The JSON answer, logged: every change and refusal at INFO (an audit trail of who did what to
        which link), successful reads at DEBUG. Messages echo names the client sent (an unknown link or
        fault); a token pasted there by mistake is not sent back, so no answer ever carries it."""
        headers: Mapping[str, str] = {}
        if error is not None:
            status, payload, headers = error.status, error.body(), error.headers
        data = json.dumps(_json_safe(payload), allow_nan=False).encode("utf-8") + b"\n"
        data = data.replace(self.token, REDACTED.encode("ascii"))
        quiet = request.method in ("GET", "HEAD") and status < 400
        log.log(logging.DEBUG if quiet else logging.INFO, "%s \"%s %s\" %d", request.peer, request.method,
                self._redact(clip(request.path, 300)), status)
        return Response(status, data, "application/json; charset=utf-8", headers)

    def _redact(self, text: str) -> str:
        return text.replace(self.token.decode("ascii"), REDACTED)


def _status(code: int) -> HTTPStatus:
    """A worker's status code as ours; one outside HTTP's table (a broken worker) is a 502."""
    try:
        return HTTPStatus(code)
    except ValueError:
        return HTTPStatus.BAD_GATEWAY


def _json_body(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return load_json(raw)
    except JsonInputError as exc:
        raise _bad(str(exc), "body", "invalid_json") from None


def _json_safe(value: Any) -> Any:
    """Plain JSON: mappings and tuples of the fleet's records as objects and arrays, NaN/inf as null."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def serve(fleet: LinkControl, settings: RuntimeSettings, token: str, runbooks_dir: Path = RUNBOOKS_DIR,
          exporters: Mapping[str, Exporter] | None = None, kmes: Mapping[str, Exporter] | None = None) -> HttpServer:
    """Start the control API on ``settings.bind:settings.control_port``; stop with ``server.stop()``.

    Port 0 picks a free port (tests); ``server.server_port`` tells which. Runbooks are served from
    ``runbooks_dir`` (the repository's ``runbooks/``); ``exporters`` (name → exporter) are the ones
    ``/api/v1/exporters`` lists, stops and starts (none: an empty list), ``kmes`` the KME listeners
    ``/api/v1/kmes`` does. OSError if the port is taken.
    """
    credentials.checked(API_TOKEN, token, "the token passed to serve()")
    host = settings.bind
    server = HttpServer(ControlService(fleet, token, runbooks_dir, exporters, kmes).service(), host, settings.control_port)
    if not _is_loopback(host):
        log.warning("control API listens on %s, not loopback: the bearer token crosses the network in clear text "
                    "(no TLS); put it behind a TLS proxy or bind 127.0.0.1", host)
    log.info("control API listening on http://%s:%d%s", *server.server_address, API_PREFIX)
    return server


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
