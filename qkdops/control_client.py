"""A small client of the control API, for the CLI, runbooks and game days (stdlib only).

Where it connects, first found: the ``--api URL`` option, env ``QKDOPS_API_URL``, else the
``runtime.bind``/``runtime.control_port`` of the fleet config (``links.yaml`` by default), so the CLI
follows a changed port without being told. The token comes from the same places the server takes it
from (``credentials.API_TOKEN``): env ``QKDOPS_API_TOKEN``, the file named by
``QKDOPS_API_TOKEN_FILE``, else ``<state_dir>/api-token`` that ``qkdops up`` created.

The client neither follows redirects nor uses HTTP proxies from the environment: either would hand the
bearer token to another host.
"""

from __future__ import annotations

import json
import os
import urllib.error
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from qkdops.config import DEFAULT_CONFIG, RuntimeSettings, load_config
from qkdops import credentials
from qkdops.credentials import API_TOKEN, SecretValue
from qkdops.http_client import Auth, http_url, open_url

API_URL_ENV = "QKDOPS_API_URL"
DEFAULT_TIMEOUT_S = 10.0
API_PREFIX = "/api/v1"   # the control API's root (``control_api`` serves it)


class ApiUnreachable(Exception):
    """Nothing answered at the API's address (refused, timed out, name unknown, connection reset)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"control API at {url} is not reachable: is `qkdops up` running? ({reason})")
        self.url = url


class ApiResponseError(Exception):
    """The API answered with an error; ``message`` is its own (it names the field)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status, self.code, self.message, self.field = status, code, message, field

    @property
    def exit_code(self) -> int:
        """2 for a request the caller got wrong (4xx), 1 for the server's failure (5xx, nonsense)."""
        return 2 if 400 <= self.status < 500 else 1


def resolve_url(option: str | None, config: str | Path | None) -> str:
    """``--api``, else ``$QKDOPS_API_URL``, else the config's bind and control port."""
    if option:
        return checked_url(option, "--api")
    if env := os.environ.get(API_URL_ENV):
        return checked_url(env, API_URL_ENV)
    runtime = _runtime_settings(config)
    return http_url(runtime.bind, runtime.control_port)


def resolve_token(config: str | Path | None) -> SecretValue:
    """The token from env, env-named file, or the config's ``<state_dir>/api-token`` (CredentialError if none)."""
    return credentials.load_secret(API_TOKEN, _runtime_settings(config).state_dir, create=False)


def _runtime_settings(config: str | Path | None) -> RuntimeSettings:
    """The given config's runtime section; with none given, the shipped ``links.yaml`` if present."""
    if config is not None:
        return load_config(config).runtime
    if DEFAULT_CONFIG.exists():
        return load_config(DEFAULT_CONFIG).runtime
    return RuntimeSettings()


def checked_url(url: str, where: str) -> str:
    """``url`` without a trailing slash if it is a plain http(s) URL with a host; ValueError naming ``where`` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{where}: expected a URL like http://127.0.0.1:9800, got '{url}'")
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        raise ValueError(f"{where}: bad port in '{url}'") from None
    return url.rstrip("/")


class CalibrationApi(Protocol):
    """The part of the control API the calibration jobs use, with its JSON shapes: ``ControlClient``
    over HTTP, or the history's in-process fleet (``history.emulation.FleetControl``)."""

    def status(self, link: str) -> dict[str, Any]: ...

    def act(self, link: str, action: str) -> dict[str, Any]: ...

    def blocks(self, link: str, last: int) -> dict[str, Any]: ...


class ControlClient:
    """Typed calls to the control API; raises ApiUnreachable or ApiResponseError."""

    def __init__(self, url: str, token: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"ControlClient({self.url!r})"  # never the token

    def links(self) -> list[dict[str, Any]]:
        return self._call("GET", "/links")["links"]

    def status(self, link: str) -> dict[str, Any]:
        return self._call("GET", f"/links/{quote(link, safe='')}")

    def faults(self) -> list[dict[str, Any]]:
        return self._call("GET", "/faults")["faults"]

    def inject(self, link: str, fault: str, parameters: dict[str, float]) -> dict[str, Any]:
        return self._call("POST", f"/links/{quote(link, safe='')}/faults", {"fault": fault, "parameters": parameters})

    def clear(self, link: str, fault: str | None = None) -> dict[str, Any]:
        path = f"/links/{quote(link, safe='')}/faults" + (f"/{quote(fault, safe='')}" if fault else "")
        return self._call("DELETE", path)

    def act(self, link: str, action: str) -> dict[str, Any]:
        return self._call("POST", f"/links/{quote(link, safe='')}/actions/{quote(action, safe='')}")

    def blocks(self, link: str, last: int) -> dict[str, Any]:
        return self._call("GET", f"/links/{quote(link, safe='')}/blocks?last={int(last)}")

    def exporters(self) -> list[dict[str, Any]]:
        """The exporters ``qkdops up`` serves: ``[{"name", "port", "serving"}, ...]``."""
        return self._call("GET", "/exporters")["exporters"]

    def stop_exporter(self, name: str) -> dict[str, Any]:
        """Stop exporter ``name`` (its port then refuses connections); ``{"name", "serving": false}``."""
        return self._call("DELETE", f"/exporters/{quote(name, safe='')}")

    def start_exporter(self, name: str) -> dict[str, Any]:
        """Start exporter ``name`` again on its address; ``{"name", "serving": true}``."""
        return self._call("POST", f"/exporters/{quote(name, safe='')}")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json", **({"Content-Type": "application/json"} if data is not None else {})}
        auth = None if self._token is None else Auth(credentials.bearer(self._token), "control API token")
        try:
            with open_url(self.url + API_PREFIX + path, auth, self.timeout_s, data=data, method=method,
                          headers=headers) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise _error_from(exc.code, exc.read(), self.url) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            raise ApiUnreachable(self.url, getattr(reason, "strerror", None) or str(reason)) from None
        except OSError as exc:  # timeouts and resets while reading
            raise ApiUnreachable(self.url, str(exc) or type(exc).__name__) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiResponseError(status, "bad_response", f"the answer from {self.url} is not JSON: "
                                   "is it a qkdops control API?") from None


def _error_from(status: int, raw: bytes, url: str) -> ApiResponseError:
    """The API's ``{"error": {...}}``, or a message saying the answer did not come from the API."""
    try:
        error = json.loads(raw)["error"]
        return ApiResponseError(status, str(error["code"]), str(error["message"]), error.get("field"))
    except (ValueError, KeyError, TypeError):
        return ApiResponseError(status, "bad_response", f"HTTP {status} from {url} without a control API error body: "
                                "is it a qkdops control API?")
