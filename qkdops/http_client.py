"""The one way our clients talk to Prometheus, Alertmanager and the pager sink: credentials attached.

Prometheus and Alertmanager want HTTP basic auth (user ``qkdops``) and the pager sink a bearer
token (``qkdops.credentials``); ``StackAuth(state_dir)`` reads each from the stack's state dir (or
the file its env variable names) the first time it is needed, and ``get_json``/``open_url`` attach it.
Nothing else builds an ``Authorization`` header for these services.

Like the control API's client, these requests neither follow redirects nor use proxies from the
environment: either would hand the credentials to another host.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdops import credentials
from qkdops.credentials import ALERTMANAGER_PASSWORD, PAGER_SINK_TOKEN, PROMETHEUS_PASSWORD, USER

DEFAULT_TIMEOUT_S = 5.0
# A wildcard bind accepts connections on loopback; connect there.
WILDCARD_BINDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def http_url(bind: str, port: int, scheme: str = "http") -> str:
    """Where a client connects to a server bound at ``bind`` (a wildcard bind accepts on loopback)."""
    host = WILDCARD_BINDS.get(bind, bind)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class Auth:
    """An ``Authorization`` header value and where its secret came from; ``repr`` leaves the value out."""

    header: str = field(repr=False)
    source: str


class StackAuth:
    """Credentials for the stack's HTTP services, read once each from ``state_dir`` (or env-named files).

    A missing file is a ``credentials.CredentialError`` naming it, raised when that service is first used.
    """

    def __init__(self, state_dir: Path, environ: Mapping[str, str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self._environ = environ
        self._cache: dict[str, Auth] = {}

    def __repr__(self) -> str:
        return f"StackAuth({str(self.state_dir)!r})"

    @property
    def prometheus(self) -> Auth:
        return self._basic(PROMETHEUS_PASSWORD)

    @property
    def alertmanager(self) -> Auth:
        return self._basic(ALERTMANAGER_PASSWORD)

    @property
    def victoria_metrics(self) -> Auth:
        return self._basic(credentials.VICTORIA_METRICS_PASSWORD)

    @property
    def pager_sink(self) -> Auth:
        if PAGER_SINK_TOKEN.file_name not in self._cache:
            token = credentials.load_secret(PAGER_SINK_TOKEN, self.state_dir, create=False, environ=self._environ)
            self._cache[PAGER_SINK_TOKEN.file_name] = Auth(credentials.bearer(token.value), token.source)
        return self._cache[PAGER_SINK_TOKEN.file_name]

    def _basic(self, secret: credentials.Secret) -> Auth:
        if secret.file_name not in self._cache:
            password = credentials.load_secret(secret, self.state_dir, create=False, environ=self._environ)
            self._cache[secret.file_name] = Auth(credentials.basic(USER, password.value), password.source)
        return self._cache[secret.file_name]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # following would send the credentials elsewhere


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


def build_request(url: str, auth: Auth | None, query: Mapping[str, Any] | None = None, data: bytes | None = None,
                  method: str | None = None, headers: Mapping[str, str] | None = None) -> urllib.request.Request:
    """A request for ``url`` (``query`` url-encoded, lists repeated) with ``auth``'s header attached."""
    full = f"{url}?{urllib.parse.urlencode(query, doseq=True)}" if query else url
    request = urllib.request.Request(full, data=data, method=method, headers=dict(headers or {}))
    if auth is not None:
        request.add_header("Authorization", auth.header)
    return request


def open_url(url: str | urllib.request.Request, auth: Auth | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
             **kwargs: Any) -> Any:
    """``urlopen`` with ``auth`` attached (a context manager; ``urllib.error.HTTPError`` on 4xx/5xx)."""
    request = url if isinstance(url, urllib.request.Request) else build_request(url, auth, **kwargs)
    if isinstance(url, urllib.request.Request) and auth is not None:
        request.add_header("Authorization", auth.header)
    return _OPENER.open(request, timeout=timeout_s)


def get_json(url: str, auth: Auth | None, timeout_s: float = DEFAULT_TIMEOUT_S, **query: Any) -> Any:
    """GET ``url?query`` with ``auth`` and decode the JSON answer."""
    with open_url(url, auth, timeout_s, query=query) as response:
        return json.loads(response.read())


class PrometheusUnreachable(OSError):
    """Nothing answered at Prometheus's address (refused, timed out, name unknown)."""


class PrometheusQueryError(ValueError):
    """Prometheus answered, with an error (HTTP status and its own ``error`` text, clipped)."""


class PrometheusClient:
    """The one client of Prometheus's HTTP API (https://prometheus.io/docs/prometheus/latest/querying/api/):
    instant and range queries and any other GET, each returning the answer's ``data``; ``auth``: the
    basic auth it wants (``StackAuth(state_dir).prometheus``). Errors are ``PrometheusUnreachable``
    (an OSError: worth retrying) or ``PrometheusQueryError`` (a ValueError: the query or the answer)."""

    def __init__(self, url: str, auth: Auth | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url, self.auth, self.timeout_s = url.rstrip("/"), auth, timeout_s

    def __repr__(self) -> str:
        return f"PrometheusClient({self.url!r})"

    def query(self, expr: str, at: float | None = None) -> dict[str, Any]:
        """An instant query, now or at Unix time ``at`` (a backfilled past)."""
        if at is None:
            return self.get("/api/v1/query", query=expr)
        return self.get("/api/v1/query", query=expr, time=f"{at:.3f}")

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> dict[str, Any]:
        return self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step_s:g}")

    def get(self, path: str, timeout_s: float | None = None, **params: Any) -> dict[str, Any]:
        try:
            with open_url(f"{self.url}{path}", self.auth, timeout_s or self.timeout_s, query=params,
                          headers={"Accept": "application/json"}) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:   # Prometheus explains a bad query in a JSON 400/422 body
            with exc:
                raw = exc.read()[:2000]
            try:
                detail = json.loads(raw).get("error") or raw.decode("utf-8", "replace")
            except (ValueError, AttributeError):
                detail = raw.decode("utf-8", "replace")
            raise PrometheusQueryError(f"Prometheus at {self.url} answered HTTP {exc.code}: {str(detail)[:300]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise PrometheusUnreachable(f"Prometheus at {self.url} is not reachable "
                                        f"({getattr(exc, 'reason', None) or exc})") from None
        except ValueError as exc:
            raise PrometheusQueryError(f"Prometheus at {self.url} answered something that is not JSON: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise PrometheusQueryError(f"Prometheus at {self.url}: {error or 'an answer without status success'}")
        return body["data"]
