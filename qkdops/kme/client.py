"""An SAE's side of ETSI GS QKD 014: calls its KME over HTTPS with its client certificate.

Used by ``qkdops keys fetch``, the tests and the benchmark. One keep-alive connection per client
(not thread-safe: one client per thread). Errors (``EtsiClientError``) carry the HTTP status and the
KME's Error message — never key material, which only the return values hold.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

TIMEOUT_S = 10.0


class EtsiClientError(RuntimeError):
    def __init__(self, status: int, message: str, details: list[Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.details = status, message, details or []


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    return context


class EtsiClient:
    def __init__(self, base_url: str, context: ssl.SSLContext, timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"KME URL must be https://HOST:PORT, got {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 443
        self.context, self.timeout_s = context, timeout_s
        self._conn: http.client.HTTPSConnection | None = None

    # ---- ETSI 014 calls ----------------------------------------------------------------------------------
    def status(self, slave: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/keys/{slave}/status")

    def enc_keys(self, slave: str, number: int = 1, size: int | None = None) -> list[tuple[str, bytes]]:
        body: dict[str, Any] = {"number": number}
        if size is not None:
            body["size"] = size
        return _keys(self._call("POST", f"/api/v1/keys/{slave}/enc_keys", body))

    def dec_keys(self, master: str, key_ids: list[str]) -> list[tuple[str, bytes]]:
        body = {"key_IDs": [{"key_ID": k} for k in key_ids]}
        return _keys(self._call("POST", f"/api/v1/keys/{master}/dec_keys", body))

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        """A GET with query parameters (the spec's GET forms of enc_keys and dec_keys)."""
        return self._call("GET", f"{path}?{urlencode(query)}" if query else path)

    # ---- transport ------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
        """Raw exchange (status, decoded JSON); reconnects once if a kept-alive connection was closed."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, (json.loads(data) if data else {})
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise
            except http.client.IncompleteRead as exc:  # the KME died mid-answer: never retried (keys may be spent)
                self.close()
                raise ConnectionResetError(f"the KME closed the connection {len(exc.partial)} bytes into its answer") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout_s)
        return self._conn

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        status, data = self.request(method, path, None if payload is None else json.dumps(payload).encode())
        if status != 200:
            raise EtsiClientError(status, str(data.get("message", "")), data.get("details"))
        return data


def _keys(container: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(k["key_ID"], base64.b64decode(k["key"])) for k in container.get("keys", [])]
