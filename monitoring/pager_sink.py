"""The pager sink: a local Alertmanager webhook receiver that keeps every notification it is sent.

Alertmanager routes every page and ticket here as well as to PagerDuty, Opsgenie and the chat
receiver, so demos and tests can see what on-call would have been sent, and when, without any
external account. ``qkdops up`` runs it in-process on ``runtime.bind:runtime.pager_sink_port``.

Endpoints (JSON in and out)::

    POST /webhook/{kind}           kind: page | ticket | unrouted; body: Alertmanager webhook payload
                                   version 4 → 200 {"id", "duplicate"}; malformed → 400 naming the field
    GET  /api/v1/notifications     ?receiver= &kind= &alertname= &link= &status= &severity= &since= &after= &limit=
                                   → {"notifications": [{"id", "received_at", "kind", <payload>}], "truncated",
                                      "next_after"}
    GET  /healthz                  200 {"status": "ok", "notifications": N}

A notification matches ``alertname``, ``link``, ``status`` and ``severity`` when one of its alerts
carries all of them (an alert's ``status`` is firing or resolved); ``since`` is Unix seconds or RFC 3339
and compares with the time the sink received the notification; results are oldest first. A read returns
at most ``limit`` notifications and about ``MAX_READ_BYTES`` of them; when more matched, ``truncated``
is true and ``next_after`` is the last id returned: ask again with ``after=`` it for the next page.

Retention: the store keeps the newest ``MAX_KEPT`` notifications, at most ``MAX_KEPT_BYTES`` of bodies,
none older than ``RETAIN_S`` (30 days); older ones are deleted as new ones arrive. So neither the
disk nor a read grows without bound, whatever is posted.

Durability: each notification is committed to ``<state_dir>/pager-sink.sqlite`` (SQLite, WAL,
``synchronous=FULL``) before the 200 goes back, so one acknowledged is never lost, and one refused
is retried by Alertmanager. Alertmanager retries after a timeout even when the first attempt was
committed; the same body on the same endpoint within ``RETRY_WINDOW_S`` is that retry and is
acknowledged without a second record. Bodies are never logged, only what the notification is about.

Authentication: every request but ``GET /healthz`` needs ``Authorization: Bearer TOKEN`` (the pager
sink token, ``qkdops.credentials.PAGER_SINK_TOKEN``: ``<state_dir>/pager-sink-token`` or the file
env ``QKDOPS_PAGER_SINK_TOKEN_FILE`` names; Alertmanager sends it from ``credentials_file``); without
it, or with another, the answer is 401 ``{"error": {...}}`` with ``WWW-Authenticate: Bearer`` before
any body is read, and nothing is recorded. The token is compared in constant time and never logged.
There is no TLS: bind it to loopback (the default); in docker-compose only Alertmanager reaches it on
the compose network and the published port is on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from qkdops.http_server import HttpServer, Limits, Request, Response, Route, Service, json_response
from qkdops.json_input import JsonInputError, load_json
from qkdops.config import RuntimeSettings
from control_api.server import ApiError, bearer_authenticator, error_body
from qkdops import credentials
from qkdops.credentials import PAGER_SINK_TOKEN
from qkdops.durable import DurableStore
from qkdops.yaml_input import clip

log = logging.getLogger("monitoring.pager_sink")

KINDS = ("page", "ticket", "unrouted")  # one webhook endpoint per kind of Alertmanager receiver
DB_NAME = "pager-sink.sqlite"
STATUSES = ("firing", "resolved")
MAX_BODY_BYTES = 4 * 1024 * 1024  # Alertmanager sends whole groups (max_alerts: 0)
RETRY_WINDOW_S = 60.0  # Alertmanager's retries of one notification fall within this (backoff ≤ 1 min)
DEFAULT_LIMIT, MAX_LIMIT = 1000, 10000
MAX_READ_BYTES = 16 * 1024 * 1024       # bodies per read (at least one notification is always returned)
MAX_KEPT, MAX_KEPT_BYTES = 100_000, 256 * 1024 * 1024
RETAIN_S = 30 * 86400.0
FILTERS = ("receiver", "kind", "alertname", "link", "status", "severity", "since", "after", "limit")

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    kind TEXT NOT NULL,
    receiver TEXT NOT NULL,
    digest TEXT NOT NULL,
    body TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS notifications_digest ON notifications (digest, received_at);
CREATE INDEX IF NOT EXISTS notifications_received ON notifications (received_at);
"""
_SIZE_INDEX = "CREATE INDEX IF NOT EXISTS notifications_size ON notifications (id, size)"  # count, sum, oldest first


def _bad(message: str, field_name: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "invalid_request", message, field_name)


# ---- the payload ------------------------------------------------------------------------------------
def parse_notification(raw: bytes) -> dict[str, Any]:
    """An Alertmanager webhook payload (version 4), checked field by field so an error names one."""
    try:
        payload = load_json(raw)
    except JsonInputError as exc:
        raise _bad(str(exc), "body") from None
    body = _object(payload, "body")
    if body.get("version") != "4":
        raise _bad(f"version: expected \"4\" (Alertmanager webhook payload version 4), got {_describe(body.get('version'))}",
                   "version")
    for key in ("receiver", "groupKey"):
        _string(body.get(key), key)
    _status(body.get("status"), "status")
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        if key in body:
            _labels(body[key], key)
    if "externalURL" in body:
        _string(body["externalURL"], "externalURL", empty_ok=True)
    if "truncatedAlerts" in body and not (isinstance(body["truncatedAlerts"], int) and not isinstance(body["truncatedAlerts"], bool)
                                          and body["truncatedAlerts"] >= 0):
        raise _bad(f"truncatedAlerts: expected a whole number ≥ 0, got {_describe(body['truncatedAlerts'])}", "truncatedAlerts")
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise _bad(f"alerts: expected a non-empty array of alerts, got {_describe(alerts)}", "alerts")
    for i, item in enumerate(alerts):
        where = f"alerts[{i}]"
        alert = _object(item, where)
        _status(alert.get("status"), f"{where}.status")
        labels = _labels(alert.get("labels"), f"{where}.labels")
        if not labels.get("alertname"):
            raise _bad(f"{where}.labels.alertname: expected the alert's name", f"{where}.labels.alertname")
        if "annotations" in alert:
            _labels(alert["annotations"], f"{where}.annotations")
        for key in ("startsAt", "endsAt"):
            _string(alert.get(key), f"{where}.{key}")
        for key in ("fingerprint", "generatorURL"):
            if key in alert:
                _string(alert[key], f"{where}.{key}", empty_ok=True)
    return body


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where}: expected an object, got {_describe(value)}", where)
    return value


def _string(value: Any, where: str, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or not (value or empty_ok):
        raise _bad(f"{where}: expected a{'' if empty_ok else ' non-empty'} string, got {_describe(value)}", where)
    return value


def _status(value: Any, where: str) -> None:
    if value not in STATUSES:
        raise _bad(f"{where}: expected firing or resolved, got {_describe(value)}", where)


def _labels(value: Any, where: str) -> dict[str, str]:
    labels = _object(value, where)
    for key, item in labels.items():
        if not isinstance(item, str):
            raise _bad(f"{where}.{key}: expected a string, got {_describe(item)}", f"{where}.{key}")
    return labels


def _describe(value: Any) -> str:
    """The JSON type of what was sent, never the value itself (it could be anything, and long)."""
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "nothing"}
    if type(value) in kinds:
        return kinds[type(value)]
    return "a number"


# ---- the store --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """Filters of ``GET /api/v1/notifications``; None: any."""

    receiver: str | None = None
    kind: str | None = None
    alertname: str | None = None
    link: str | None = None
    status: str | None = None
    severity: str | None = None
    since: float = 0.0
    after: int = 0
    limit: int = DEFAULT_LIMIT


class NotificationStore(DurableStore):
    """Append-only within the retention limits, thread-safe (notifications are rare)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA)
        with self._lock:
            if "size" not in {row[1] for row in self._db.execute("PRAGMA table_info(notifications)")}:  # a store from before
                self._db.execute("ALTER TABLE notifications ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
                self._db.execute("UPDATE notifications SET size = length(CAST(body AS BLOB))")
            self._db.execute(_SIZE_INDEX)

    def record(self, kind: str, payload: Mapping[str, Any], raw: bytes, now: float | None = None) -> tuple[int, bool]:
        """Commit one notification (and the retention that makes room for it); (id, False), or (id of the
        first, True) for a retry of it."""
        now = time.time() if now is None else now
        digest = hashlib.sha256(kind.encode() + b"\0" + raw).hexdigest()
        body = json.dumps(payload, separators=(",", ":"))
        with self._lock:
            row = self._db.execute("SELECT id FROM notifications WHERE digest = ? AND received_at >= ? ORDER BY id LIMIT 1",
                                   (digest, now - RETRY_WINDOW_S)).fetchone()
            if row is not None:
                return row[0], True
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute("INSERT INTO notifications (received_at, kind, receiver, digest, body, size) "
                                          "VALUES (?, ?, ?, ?, ?, ?)",
                                          (now, kind, payload["receiver"], digest, body, len(body.encode())))
                self._retain(now)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return int(cursor.lastrowid or 0), False

    def _retain(self, now: float) -> None:
        """Delete what is past the age, count or size limits, oldest first (the newest is always kept)."""
        self._db.execute("DELETE FROM notifications WHERE received_at < ?", (now - RETAIN_S,))
        count, total = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM notifications").fetchone()
        if count <= MAX_KEPT and total <= MAX_KEPT_BYTES:
            return
        last = None
        for nid, size in self._db.execute("SELECT id, size FROM notifications ORDER BY id"):
            if (count <= MAX_KEPT and total <= MAX_KEPT_BYTES) or count == 1:
                break
            count, total, last = count - 1, total - size, nid
        if last is not None:
            self._db.execute("DELETE FROM notifications WHERE id <= ?", (last,))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM notifications").fetchone()[0])

    def query(self, q: Query) -> tuple[list[dict[str, Any]], bool]:
        """Matching notifications oldest first — at most ``q.limit`` of them and about MAX_READ_BYTES of bodies —
        and whether more matched."""
        alert_filters = [(f"json_extract(a.value, '$.{path}')", value) for path, value in
                         (("labels.alertname", q.alertname), ("labels.link", q.link), ("status", q.status),
                          ("labels.severity", q.severity)) if value is not None]
        where = ["received_at >= ?", "id > ?"]
        args: list[Any] = [q.since, q.after]
        for column, value in (("receiver", q.receiver), ("kind", q.kind)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if alert_filters:
            where.append("EXISTS (SELECT 1 FROM json_each(n.body, '$.alerts') a WHERE "
                         + " AND ".join(f"{expr} = ?" for expr, _ in alert_filters) + ")")
            args.extend(value for _, value in alert_filters)
        sql = f"SELECT id, received_at, kind, body FROM notifications n WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        out: list[dict[str, Any]] = []
        read = 0
        truncated = False
        with self._lock:
            for nid, received, kind, body in self._db.execute(sql, (*args, q.limit + 1)):
                if len(out) == q.limit or (out and read + len(body) > MAX_READ_BYTES):
                    truncated = True
                    break
                read += len(body)
                out.append({"id": nid, "received_at": _rfc3339(received), "kind": kind, **json.loads(body)})
        return out, truncated


def _rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_query(raw_query: str) -> Query:
    """The query string of ``GET /api/v1/notifications``; an unknown or repeated parameter is a 400."""
    params = parse_qs(raw_query, keep_blank_values=True)
    values: dict[str, Any] = {}
    for name, given in params.items():
        if name not in FILTERS:
            raise _bad(f"unknown query parameter '{name}' (parameters: {', '.join(FILTERS)})", name)
        if len(given) != 1:
            raise _bad(f"{name}: give it once", name)
        values[name] = given[0]
    if "kind" in values and values["kind"] not in KINDS:
        raise _bad(f"kind: expected one of {', '.join(KINDS)}", "kind")
    if "status" in values and values["status"] not in STATUSES:
        raise _bad("status: expected firing or resolved", "status")
    if "since" in values:
        values["since"] = _since(values["since"])
    if "after" in values:
        text = values["after"]
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            raise _bad("after: expected a notification id (a whole number ≥ 0)", "after")
        values["after"] = int(text)
    if "limit" in values:
        text = values["limit"]
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise _bad(f"limit: expected a whole number from 1 to {MAX_LIMIT}", "limit")
        values["limit"] = int(text)
    return Query(**values)


def _since(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise _bad("since: expected Unix seconds or an RFC 3339 time (2024-05-01T12:00:00Z)", "since") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise _bad("since: expected a finite number of Unix seconds", "since")
    return value


# ---- the server -------------------------------------------------------------------------------------
class SinkService:
    """The sink's routes over one store (see the module docstring)."""

    def __init__(self, store: NotificationStore, token: str) -> None:
        self.store = store
        self.token = token.encode("ascii")  # credentials.TOKEN_SYNTAX: ASCII only

    def service(self) -> Service:
        return Service("pager-sink", (
            Route("/healthz", {"GET": self._healthz}, public=True),
            Route("/api/v1/notifications", {"GET": self._notifications}),
            Route("/webhook/{kind}", {"POST": self._receive}),
        ), error_body, Limits(max_body_bytes=MAX_BODY_BYTES),
            authenticate=bearer_authenticator(self.token, "qkdops-pager-sink", "the pager sink token"))

    def _healthz(self, request: Request) -> Response:
        return json_response(HTTPStatus.OK, {"status": "ok", "notifications": self.store.count()})

    def _notifications(self, request: Request) -> Response:
        try:
            notifications, truncated = self.store.query(parse_query(request.query_string))
        except ApiError as exc:
            return json_response(exc.status, exc.body(), exc.headers)
        return json_response(HTTPStatus.OK, {"notifications": notifications, "truncated": truncated,
                                             "next_after": notifications[-1]["id"] if truncated else None})

    def _receive(self, request: Request) -> Response:
        kind = request.params["kind"]
        try:
            if kind not in KINDS:
                raise ApiError(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint /webhook/{clip(kind, 80)} "
                               f"(POST /webhook/{{{'|'.join(KINDS)}}})", "path")
            payload = parse_notification(request.body)
        except ApiError as exc:
            log.warning("pager sink: refused a notification on /webhook/%s: %s", clip(kind, 80), exc.message)
            return json_response(exc.status, exc.body(), exc.headers)
        nid, duplicate = self.store.record(kind, payload, request.body)
        alerts = payload["alerts"]
        log.info("pager sink: %s %s notification #%d for %s, %d alert(s): %s", "retried" if duplicate else "recorded",
                 kind, nid, payload["receiver"], len(alerts),
                 ", ".join(f"{a['labels']['alertname']}{{link={a['labels'].get('link', '')}}} {a['status']}" for a in alerts[:5]))
        return json_response(HTTPStatus.OK, {"id": nid, "duplicate": duplicate})


class SinkServer(HttpServer):
    """The sink's HTTP server; ``stop`` closes the store too."""

    def __init__(self, store: NotificationStore, host: str, port: int, token: str) -> None:
        self.store = store
        super().__init__(SinkService(store, token).service(), host, port)

    def stop(self, timeout_s: float = 5.0) -> None:
        super().stop(timeout_s)
        self.store.close()


def serve(settings: RuntimeSettings, token: str) -> SinkServer:
    """Start the sink on ``settings.bind:settings.pager_sink_port`` (0: any free port), accepting
    ``token`` as its bearer token (``credentials.load_secret(PAGER_SINK_TOKEN, ...)``).

    Stop with ``server.stop()``, which also closes the store. OSError if the port is taken.
    """
    credentials.checked(PAGER_SINK_TOKEN, token, "the token passed to serve()")
    store = NotificationStore(settings.state_dir / DB_NAME)
    host = settings.bind
    try:
        server = SinkServer(store, host, settings.pager_sink_port, token)
    except OSError:
        store.close()
        raise
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("pager sink listens on %s, not loopback: the token crosses the network in clear text", host)
    log.info("pager sink listening on http://%s:%d (store %s)", *server.server_address, store.path)
    return server
