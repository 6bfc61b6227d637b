"""Writing one HTTP response from a ``BaseHTTPRequestHandler``: the part the control API and the
pager sink share (length-delimited body, no caching, no MIME sniffing, HEAD without a body)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

log = logging.getLogger("qkdops.http")


def respond(handler: BaseHTTPRequestHandler, status: HTTPStatus, data: bytes, content_type: str,
            headers: Mapping[str, str] | None = None) -> None:
    """Send ``data``; a client that hung up is logged at DEBUG, not raised: nothing broke here."""
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
    except OSError as exc:
        log.debug("%s: client went away before the response: %s", type(handler).__name__, exc)
