"""An SAE's side of ETSI GS QKD 014 (its KME over HTTPS with its client certificate) and of SKIP
(its key provider over TLS 1.3 with its pre-shared key).

Used by ``qkdops keys fetch``, the tests and the benchmark. One keep-alive connection per client
(not thread-safe: one client per thread). Errors (``EtsiClientError``) carry the HTTP status and the
server's error message — never key material, which only the return values hold.

The SKIP client speaks TLS through tlslite-ng, a TLS implementation of its own (pure Python): CPython
before 3.13 has no client PSK at all, and the TLS 1.3 suite SKIP requires (TLS_AES_256_GCM_SHA384,
draft-cisco-skip-02 Table 1) needs a SHA-384 PSK, which OpenSSL's compatibility callback cannot
offer. So our client and our server (OpenSSL) are two independent TLS stacks meeting on the wire.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

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


class _JsonClient:
    """One keep-alive HTTPS connection exchanging JSON; subclasses open it (``_open``) and name the calls."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.host, self.port = _host_port(base_url)
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

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

    def peer_certificate(self) -> dict[str, Any] | None:
        """The server's verified certificate on the open connection (``ssl.getpeercert``), if any."""
        sock = getattr(self._conn, "sock", None)
        return sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> http.client.HTTPConnection:
        raise NotImplementedError

    def _call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        status, data = self.request(method, path, None if payload is None else json.dumps(payload).encode())
        if status != 200:
            raise EtsiClientError(status, str(data.get("message", "")), data.get("details"))
        return data



class EtsiClient(_JsonClient):
    def __init__(self, base_url: str, context: ssl.SSLContext, timeout_s: float = TIMEOUT_S) -> None:
        super().__init__(base_url, timeout_s)
        self.context = context

    # ---- ETSI 014 calls ----------------------------------------------------------------------------------
    # ETSI 014 §5.1: the SAE ID in the path is URL-encoded
    def status(self, slave: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/keys/{quote(slave, safe='')}/status")

    def enc_keys(self, slave: str, number: int = 1, size: int | None = None) -> list[tuple[str, bytes]]:
        body: dict[str, Any] = {"number": number}
        if size is not None:
            body["size"] = size
        return _keys(self._call("POST", f"/api/v1/keys/{quote(slave, safe='')}/enc_keys", body))

    def dec_keys(self, master: str, key_ids: list[str]) -> list[tuple[str, bytes]]:
        body = {"key_IDs": [{"key_ID": k} for k in key_ids]}
        return _keys(self._call("POST", f"/api/v1/keys/{quote(master, safe='')}/dec_keys", body))

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        """A GET with query parameters (the spec's GET forms of enc_keys and dec_keys)."""
        return self._call("GET", f"{path}?{urlencode(query)}" if query else path)

    def _open(self) -> http.client.HTTPConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout_s)


class SkipClient(_JsonClient):
    """A SKIP encryptor (draft-cisco-skip-02 §4): TLS 1.3, TLS_AES_256_GCM_SHA384, PSK ``identity``
    (its system ID) with ``psk``, (EC)DHE key exchange; every call a GET. Keys come back as bytes,
    key IDs as the provider's hex."""

    def __init__(self, base_url: str, identity: str, psk: bytes, timeout_s: float = TIMEOUT_S) -> None:
        super().__init__(base_url, timeout_s)
        from tlslite import HandshakeSettings
        settings = HandshakeSettings()
        settings.pskConfigs = [(identity.encode("utf-8"), psk, "sha384")]
        settings.minVersion = settings.maxVersion = (3, 4)
        settings.cipherNames = ["aes256gcm"]
        settings.psk_modes = ["psk_dhe_ke"]
        self.settings = settings

    def capabilities(self) -> dict[str, Any]:
        return self._call("GET", "/capabilities")

    def new_key(self, remote: str, size: int | None = None) -> tuple[str, bytes]:
        query = {"remoteSystemID": remote, **({"size": size} if size is not None else {})}
        return _skip_key(self._call("GET", f"/key?{urlencode(query)}"))

    def key_by_id(self, key_id: str, initiator: str) -> tuple[str, bytes]:
        return _skip_key(self._call("GET", f"/key/{quote(key_id, safe='')}?{urlencode({'remoteSystemID': initiator})}"))

    def entropy(self, bits: int | None = None) -> bytes:
        data = self._call("GET", "/entropy" + (f"?{urlencode({'minentropy': bits})}" if bits is not None else ""))
        return bytes.fromhex(data["randomStr"])

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, Any]]:
        """As ``_JsonClient.request``; a TLS failure (identity or PSK refused, a broken session) is a
        ConnectionError naming the alert."""
        from tlslite.errors import TLSError
        try:
            return super().request(method, path, body)
        except TLSError as exc:
            self.close()
            raise ConnectionError(f"TLS-PSK session with {self.host}:{self.port} failed: {exc!r}") from None

    def _open(self) -> http.client.HTTPConnection:
        from tlslite import HTTPTLSConnection
        connection: http.client.HTTPConnection = HTTPTLSConnection(self.host, self.port, timeout=self.timeout_s, settings=self.settings)
        return connection


def _host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"KME URL must be https://HOST:PORT, got {base_url!r}")
    return parts.hostname, parts.port or 443


def _skip_key(data: dict[str, Any]) -> tuple[str, bytes]:
    return str(data["keyId"]), bytes.fromhex(data["key"])


def _keys(container: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [(k["key_ID"], base64.b64decode(k["key"])) for k in container.get("keys", [])]
