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
    GET    /api/v1/exporters                           {"exporters": [{"name", "port", "serving"}, ...]}
    DELETE /api/v1/exporters/{exporter}                stop its HTTP server (port refuses, as if crashed) → {"name", "serving": false}
    POST   /api/v1/exporters/{exporter}                start it again on the same address → {"name", "serving": true}

The exporters (``device``, ``postprocessing``) are those ``qkdops up`` serves in-process; stopping
one is the "exporter crash" game day, starting it the runbook's restart. Both are idempotent; a
start whose port has been taken meanwhile is a 409.

Runbooks are read-only documentation that alerts link to (``runbook_url``): an on-call engineer
opens them from a pager without the API token. The name is letters and digits only, so no request
can reach a file outside the runbooks directory; anything else is a 404.

Every other request needs ``Authorization: Bearer TOKEN``. Errors are
``{"error": {"code", "message", "field"?}}``: 401 (token; with ``WWW-Authenticate: Bearer``),
404 (unknown link, fault, action, exporter, runbook or path), 400 (bad JSON, wrong type, bad parameter), 405
(method; with ``Allow``), 408 (body not sent in time), 409 (exporter's port taken), 411 (chunked body), 413 (body
over 64 KiB), 500
(logged here, never detailed to the client). A bad request never reaches the link, so the link keeps
stepping and producing blocks.

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
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from qkdlink.emulator import FAULTS, FaultError
from qkdops import credentials
from qkdops.credentials import API_TOKEN, CredentialError, SecretValue
from qkdops.credentials import TOKEN_SYNTAX as TOKEN_SYNTAX  # noqa: F401 (re-exported: RFC 6750 b64token)
from qkdops.http_response import respond
from qkdops.json_input import JsonInputError, load_json
from qkdops.config import RuntimeSettings
from qkdops.runtime.fleet import Fleet, UnknownAction, UnknownLink, fault_catalogue
from qkdops.yaml_input import clip

log = logging.getLogger("qkdops.control_api")

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = 64 * 1024
MAX_BLOCKS = 1000  # blocks one /blocks request may ask for
# An over-long or unauthenticated body is read and dropped (up to this much) before the error
# response, so the client, still sending, reads the response instead of a connection reset.
MAX_DRAIN_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0  # a stalled client frees its handler thread after this
RUNBOOKS_PREFIX = "/runbooks"
RUNBOOKS_DIR = Path(__file__).resolve().parent.parent / "runbooks"
# An alert name: the runbook's file name without .md; nothing that could leave the directory, and
# short enough that the file system never sees an over-long name.
RUNBOOK_NAME = re.compile(r"[A-Za-z0-9]{1,100}")
MARKDOWN = "text/markdown; charset=utf-8"
TOKEN_ENV = API_TOKEN.value_env
TOKEN_FILE_ENV = API_TOKEN.file_env
TOKEN_FILE_NAME = API_TOKEN.file_name
INJECT_FIELDS = ("fault", "parameters")
REDACTED = "[redacted]"
CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes '²'


class Exporter(Protocol):
    """An exporter the API can stop and start (``exporters.server.ServedExporter``)."""

    name: str
    port: int

    @property
    def serving(self) -> bool: ...

    def start(self) -> bool: ...

    def stop(self) -> bool: ...


TokenError = CredentialError  # no usable API token; the message names where it looked, never a token value
ApiToken = SecretValue  # the bearer token and where it came from; ``repr`` leaves the value out


def token_from_environment() -> ApiToken | None:
    """The token env ``QKDOPS_API_TOKEN`` holds or env ``QKDOPS_API_TOKEN_FILE`` names; None if neither is set."""
    return credentials.from_environment(API_TOKEN)


def load_token(state_dir: Path, create: bool) -> ApiToken:
    """Token from the environment, else ``state_dir/api-token`` (created there when ``create``)."""
    return credentials.load_secret(API_TOKEN, state_dir, create)


def _checked(value: str, where: str) -> str:
    return credentials._checked(API_TOKEN, value, where)


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


@dataclass(frozen=True)
class Document:
    """A non-JSON response body (a runbook), sent as is with its content type."""

    text: str
    content_type: str


def _bad(message: str, field_name: str, code: str = "invalid_request") -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, code, message, field_name)


def _unauthorized(message: str, invalid: bool) -> ApiError:
    challenge = 'Bearer realm="qkdops", error="invalid_token"' if invalid else 'Bearer realm="qkdops"'
    return ApiError(HTTPStatus.UNAUTHORIZED, "unauthorized", message, "Authorization", {"WWW-Authenticate": challenge})


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
    exporters: Mapping[str, Exporter] = field(default_factory=dict)  # name → the exporter served in-process


Endpoint = Callable[[Fleet, Request], tuple[HTTPStatus, Any]]


def _links(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
    return HTTPStatus.OK, {"links": [{"link": link, "protocol": protocol} for link, protocol in fleet.link_ids()]}


def _link_status(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
    return HTTPStatus.OK, fleet.status(req.params["link"])


def _faults(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
    return HTTPStatus.OK, {"faults": fault_catalogue()}


def _active_faults(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
    link = req.params["link"]
    return HTTPStatus.OK, {"link": link, "active_faults": fleet.status(link)["active_faults"]}


def _inject(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
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


def _blocks(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
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


def _clear(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
    link, fault = req.params["link"], req.params.get("fault")
    fleet.runtime(link)
    if fault is not None and fault not in FAULTS:
        raise _unknown_fault(fault, "fault")
    return HTTPStatus.OK, {"link": link, "cleared": fleet.clear(link, fault)}


def _act(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
    link = req.params["link"]
    result = fleet.act(link, req.params["action"])
    return HTTPStatus.OK, {"link": link, "action": result.action, "ok": result.ok, "message": result.message,
                           "before": dict(result.before), "after": dict(result.after)}


def _exporters(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
    return HTTPStatus.OK, {"exporters": [{"name": e.name, "port": e.port, "serving": e.serving}
                                         for e in req.exporters.values()]}


def _exporter(req: Request) -> Exporter:
    name = req.params["exporter"]
    if (exporter := req.exporters.get(name)) is None:
        raise ApiError(HTTPStatus.NOT_FOUND, "unknown_exporter",
                       f"exporter: unknown exporter '{name}' (exporters: {', '.join(req.exporters) or 'none'})", "exporter")
    return exporter


def _stop_exporter(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
    exporter = _exporter(req)
    if exporter.stop():
        log.warning("exporter %s stopped through the control API: port %d refuses connections", exporter.name, exporter.port)
    return HTTPStatus.OK, {"name": exporter.name, "serving": exporter.serving}


def _start_exporter(fleet: Fleet, req: Request) -> tuple[HTTPStatus, Any]:
    exporter = _exporter(req)
    try:
        started = exporter.start()
    except OSError as exc:
        raise ApiError(HTTPStatus.CONFLICT, "exporter_unavailable",
                       f"exporter: {exporter.name} cannot listen on port {exporter.port}: {exc.strerror or exc}",
                       "exporter") from None
    if started:
        log.info("exporter %s started through the control API on port %d", exporter.name, exporter.port)
    return HTTPStatus.OK, {"name": exporter.name, "serving": exporter.serving}


_SEGMENT = r"([^/]+)"
ROUTES: tuple[tuple[re.Pattern[str], tuple[str, ...], Mapping[str, Endpoint]], ...] = tuple(
    (re.compile(f"^{pattern}$"), names, handlers) for pattern, names, handlers in (
        (f"{API_PREFIX}/links", (), {"GET": _links}),
        (f"{API_PREFIX}/links/{_SEGMENT}", ("link",), {"GET": _link_status}),
        (f"{API_PREFIX}/faults", (), {"GET": _faults}),
        (f"{API_PREFIX}/links/{_SEGMENT}/faults", ("link",), {"GET": _active_faults, "POST": _inject, "DELETE": _clear}),
        (f"{API_PREFIX}/links/{_SEGMENT}/faults/{_SEGMENT}", ("link", "fault"), {"DELETE": _clear}),
        (f"{API_PREFIX}/links/{_SEGMENT}/actions/{_SEGMENT}", ("link", "action"), {"POST": _act}),
        (f"{API_PREFIX}/links/{_SEGMENT}/blocks", ("link",), {"GET": _blocks}),
        (f"{API_PREFIX}/exporters", (), {"GET": _exporters}),
        (f"{API_PREFIX}/exporters/{_SEGMENT}", ("exporter",), {"POST": _start_exporter, "DELETE": _stop_exporter}),
    ))


class ControlServer(ThreadingHTTPServer):
    """The HTTP server, holding the fleet and exporters it controls and the token it accepts."""

    daemon_threads = True  # a hung client must not keep the process from exiting

    def __init__(self, address: tuple[str, int], fleet: Fleet, token: str, runbooks_dir: Path = RUNBOOKS_DIR,
                 exporters: Mapping[str, Exporter] | None = None) -> None:
        self.fleet = fleet
        self.token = token.encode("ascii")  # TOKEN_SYNTAX: ASCII only
        self.runbooks_dir = runbooks_dir
        self.exporters = dict(exporters or {})
        super().__init__(address, ControlHandler)


class ControlServer6(ControlServer):
    address_family = socket.AF_INET6


class ControlHandler(BaseHTTPRequestHandler):
    """One request: authenticate, route, parse, call the fleet, answer JSON (errors too)."""

    server: ControlServer
    server_version = "qkdops-control/1"
    sys_version = ""  # don't advertise the Python version
    timeout = REQUEST_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle()

    do_POST = do_DELETE = do_PUT = do_PATCH = do_HEAD = do_OPTIONS = do_GET  # noqa: N815

    def _handle(self) -> None:
        self._body_read = False
        headers: Mapping[str, str] = {}
        try:
            status, payload = self._dispatch()
        except ApiError as exc:
            status, payload, headers = exc.status, exc.body(), exc.headers
        except Exception:  # the client learns only that it failed; the log has the traceback (no body)
            log.exception("control API: %s %s failed", self.command, self._redact(urlsplit(self.path).path))
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            payload = {"error": {"code": "internal", "message": "internal error in the control API; see the runtime's log"}}
        self._discard_body()
        self._send(status, payload, headers)

    def _dispatch(self) -> tuple[HTTPStatus, Any]:
        path = urlsplit(self.path).path
        route = path.rstrip("/") or "/"
        if route == "/healthz":
            self._require_method(path, ("GET",))
            return HTTPStatus.OK, {"status": "ok"}
        if route == RUNBOOKS_PREFIX or route.startswith(RUNBOOKS_PREFIX + "/"):
            self._require_method(path, ("GET", "HEAD"))
            return HTTPStatus.OK, self._runbook(route[len(RUNBOOKS_PREFIX) + 1:])
        self._authenticate()
        length = self._content_length()
        for pattern, names, handlers in ROUTES:
            if (match := pattern.match(route)) is None:
                continue
            self._require_method(path, tuple(handlers))
            params = dict(zip(names, (unquote(g) for g in match.groups())))
            try:
                query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
                request = Request(params, lambda: self._json_body(length), query, self.server.exporters)
                return handlers[self.command](self.server.fleet, request)
            except UnknownLink as exc:
                raise ApiError(HTTPStatus.NOT_FOUND, "unknown_link", f"link: {exc}", "link") from None
            except UnknownAction as exc:
                raise ApiError(HTTPStatus.NOT_FOUND, "unknown_action", f"action: {exc}", "action") from None
            except FaultError as exc:  # the endpoints check first; this covers a catalogue/fleet mismatch
                raise _bad(str(exc), "parameters", "invalid_parameter") from None
        raise ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint {path} (API root: {API_PREFIX})", "path")

    def _runbook(self, segment: str) -> Document:
        """``runbooks/<name>.md`` for a letters-and-digits ``name`` (percent-decoded), else 404.

        The name is checked after decoding, so ``..%2F`` and friends never reach the file system;
        the file is read per request, so an edited runbook is served at once.
        """
        name = unquote(segment)
        if RUNBOOK_NAME.fullmatch(name) is not None and (path := self.server.runbooks_dir / f"{name}.md").is_file():
            return Document(path.read_text(encoding="utf-8"), MARKDOWN)
        shown = name if len(name) <= 80 else name[:80] + "…"
        raise ApiError(HTTPStatus.NOT_FOUND, "unknown_runbook",
                       f"no runbook named '{shown}' (GET {RUNBOOKS_PREFIX}/<AlertName>: an alert name, "
                       "letters and digits only)", "name")

    def _require_method(self, path: str, methods: tuple[str, ...]) -> None:
        if self.command not in methods:
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed",
                           f"method {self.command} not allowed on {path} (allowed: {', '.join(methods)})",
                           "method", {"Allow": ", ".join(methods)})

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization")
        if header is None:
            raise _unauthorized("missing Authorization header: expected 'Authorization: Bearer TOKEN'", invalid=False)
        scheme, _, presented = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise _unauthorized("malformed Authorization header: expected 'Bearer TOKEN'", invalid=True)
        # Headers arrive as latin-1 text; compare bytes so any input is comparable in constant time.
        if not hmac.compare_digest(presented.strip().encode("latin-1", "replace"), self.server.token):
            raise _unauthorized("invalid bearer token", invalid=True)

    def _content_length(self) -> int:
        """The declared body size, refused (413) over the limit before a byte of it is read."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "length_required", "send the body with Content-Length, not chunked",
                           "Content-Length")
        if (length := self._declared_length()) is None:
            raise _bad("Content-Length must be a whole number of bytes", "Content-Length")
        if length > MAX_BODY_BYTES:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large",
                           f"request body of {length} bytes is over the limit of {MAX_BODY_BYTES} bytes", "body")
        return length

    def _declared_length(self) -> int | None:
        """Content-Length (0 when absent), or None when it is not plain ASCII digits."""
        text = self.headers.get("Content-Length", "0").strip()
        return int(text) if CONTENT_LENGTH.fullmatch(text) else None

    def _json_body(self, length: int) -> Any:
        try:
            raw = self.rfile.read(length) if length else b""
        except TimeoutError:
            raise ApiError(HTTPStatus.REQUEST_TIMEOUT, "request_timeout",
                           f"request body not received within {self.timeout:g} s", "body") from None
        finally:
            self._body_read = True
        if not raw.strip():
            return None
        try:
            return load_json(raw)
        except JsonInputError as exc:
            raise _bad(str(exc), "body", "invalid_json") from None

    def _discard_body(self) -> None:
        """Read an unread request body (bounded) before answering.

        Closing a socket with unread input makes the kernel reset the connection, and a client still
        sending would see the reset instead of our response.
        """
        if self._body_read:
            return
        self._body_read = True
        length = self._declared_length()
        if length is not None and 0 < length <= MAX_DRAIN_BYTES:
            try:
                self.rfile.read(length)
            except OSError:
                pass  # the client went away or stalled; the response write will tell

    def _send(self, status: HTTPStatus, payload: Any, headers: Mapping[str, str]) -> None:
        if isinstance(payload, Document):
            data, content_type = payload.text.encode("utf-8"), payload.content_type
        else:
            data = json.dumps(_json_safe(payload), allow_nan=False).encode("utf-8") + b"\n"
            content_type = "application/json; charset=utf-8"
        # Messages echo names the client sent (an unknown link or fault); a token pasted there by
        # mistake is not sent back, so no response ever carries it.
        data = data.replace(self.server.token, REDACTED.encode("ascii"))
        respond(self, status, data, content_type, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (malformed request line, unsupported method, huge headers) as JSON too."""
        status = HTTPStatus(code)
        self.close_connection = True
        self.log_error("code %d, message %s", code, message)
        self._body_read = True  # nothing trustworthy to drain from a request we could not parse
        self._send(status, {"error": {"code": status.phrase.lower().replace(" ", "_").replace("-", "_"),
                                      "message": message or status.phrase}}, {"Connection": "close"})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Access log, request line and status only (no headers, no body).

        Every change and every refusal at INFO, an audit trail of who did what to which link;
        successful reads (status polling) at DEBUG, so they don't drown it.
        """
        quiet = self.command == "GET" and isinstance(code, int) and code < 400
        log.log(logging.DEBUG if quiet else logging.INFO, "%s \"%s\" %s", self.address_string(),
                self._redact(self.requestline), code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        """Protocol-level events (timeouts, unparseable requests) go to logging, not stderr."""
        log.info("%s %s", self.address_string(), self._redact(format % args))

    def _redact(self, text: str) -> str:
        return text.replace(self.server.token.decode("ascii"), REDACTED)


def _json_safe(value: Any) -> Any:
    """Plain JSON: mappings and tuples of the fleet's records as objects and arrays, NaN/inf as null."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def serve(fleet: Fleet, settings: RuntimeSettings, token: str, runbooks_dir: Path = RUNBOOKS_DIR,
          exporters: Mapping[str, Exporter] | None = None) -> tuple[ControlServer, threading.Thread]:
    """Start the control API on ``settings.bind:settings.control_port`` in a daemon thread.

    Port 0 picks a free port (tests); ``server.server_address`` tells which. Stop with ``shutdown``.
    Runbooks are served from ``runbooks_dir`` (the repository's ``runbooks/``); ``exporters`` (name →
    exporter) are the ones ``/api/v1/exporters`` lists, stops and starts (none: an empty list).
    """
    _checked(token, "the token passed to serve()")
    host = settings.bind
    server_class = ControlServer6 if ":" in host else ControlServer
    server = server_class((host, settings.control_port), fleet, token, runbooks_dir, exporters)
    if not _is_loopback(host):
        log.warning("control API listens on %s, not loopback: the bearer token crosses the network in clear text "
                    "(no TLS); put it behind a TLS proxy or bind 127.0.0.1", host)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="qkdops-control-api", daemon=True)
    thread.start()
    log.info("control API listening on http://%s:%d%s", *server.server_address[:2], API_PREFIX)
    return server, thread


def shutdown(server: ControlServer, thread: threading.Thread, timeout_s: float = 5.0) -> None:
    """Stop accepting requests, close the socket and wait for the serving thread."""
    server.shutdown()
    server.server_close()
    thread.join(timeout_s)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
