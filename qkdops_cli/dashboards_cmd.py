"""``qkdops dashboards``: check, push and render the committed qkdops dashboards for an existing Grafana.

Contract:
``qkdops dashboards check --url URL [--token-file F] [--json]`` checks Grafana's health (/api/health), then
fetches every committed dashboard (dashboards/*.json) by uid and reports it ``current``, ``differs`` (its
title, panels or templating differ from the committed JSON; Grafana-managed fields such as id, version,
iteration and the selected variable values are ignored) or ``missing``. Exit 0 when all are current, 1 on
drift or when Grafana is unreachable, 2 on bad input or a rejected token (HTTP 401/403).

``qkdops dashboards push --url URL [--token-file F] [--json]`` ensures the folder "QKD" (uid ``qkdops``)
exists and upserts every dashboard that is not current by uid (overwrite, with a message); it reports
created/updated/unchanged per uid. Running it twice changes nothing the second time.

The API token comes from ``--token-file`` or the environment variable GRAFANA_TOKEN; it is never printed.

``qkdops dashboards render --prometheus URL --link LINK [--dashboard oncall] [--since 15m] [--config links.yaml] --out FILE.png``
draws the key panels of a dashboard from Prometheus data (``dashboards.render``), with the basic auth
``qkdops up`` generated in the config's state dir (``<state_dir>/prometheus-password``, or the file env
``QKDOPS_PROMETHEUS_PASSWORD_FILE`` names).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import dashboards
from qkdops.config import DEFAULT_CONFIG, finite_float, load_config
from qkdops.http_client import StackAuth

DIRECTORY = Path(dashboards.__file__).resolve().parent
DASHBOARD_NAMES = ("executive", "oncall", "debug", "slo")
FOLDER_UID = "qkdops"
FOLDER_TITLE = "QKD"
TOKEN_ENV = "GRAFANA_TOKEN"
COMPARED_FIELDS = ("title", "panels", "templating")
# Per-variable fields Grafana (or a user saving the dashboard) changes without changing the dashboard.
VARIABLE_STATE_FIELDS = ("current", "options")

CURRENT, DIFFERS, MISSING = "current", "differs", "missing"


class Unreachable(Exception):
    """Grafana did not answer (connection refused, timeout, 5xx): a runtime failure, exit 1."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboards", help="check/push the qkdops dashboards against a Grafana, render panels",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (("check", "report drift of the committed dashboards in a Grafana (exit 1 on drift)"),
                       ("push", "create the QKD folder and upsert the committed dashboards by uid")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("--url", required=True, help="Grafana base URL, e.g. http://grafana:3000")
        a.add_argument("--token-file", metavar="F",
                       help=f"file holding a Grafana API/service-account token (default: ${TOKEN_ENV})")
        a.add_argument("--timeout", type=finite_float, default=5.0, help="seconds per request (default 5)")
        a.add_argument("--json", action="store_true", help="print one JSON object")
        a.set_defaults(handler=run)
    r = actions.add_parser("render", help="render the key panels of a dashboard to PNG from Prometheus data")
    r.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL")
    r.add_argument("--link", required=True, help="link id, e.g. bb84-a")
    r.add_argument("--dashboard", default="oncall", choices=DASHBOARD_NAMES)
    r.add_argument("--since", default="15m", help="window ending now: N followed by s, m, h or d (default 15m)")
    r.add_argument("--step", type=finite_float, default=5.0, help="query step in seconds (default 5)")
    r.add_argument("--out", required=True, metavar="FILE.png")
    r.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                   help="links.yaml whose state dir holds Prometheus's basic-auth password (default: the shipped one)")
    r.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "render":
        return _render(args)
    url = _check_url(args.url)
    token = read_token(args.token_file)
    try:
        api = _api(url, token, args.timeout)
        health = grafana_health(api)
        if args.action == "check":
            report = check(api, load_dashboards())
        else:
            report = push(api, load_dashboards())
    except Unreachable as exc:
        print(f"qkdops dashboards {args.action}: Grafana at {_redact(url)} is unreachable: {exc}", file=sys.stderr)
        return 1
    drift = any(r["status"] != CURRENT for r in report) if args.action == "check" else False
    if args.json:
        print(json.dumps({"url": _redact(url), "grafana": health, "dashboards": report,
                          **({"drift": drift} if args.action == "check" else {})}, indent=2))
    else:
        print(f"Grafana {_redact(url)}: {health.get('database', '?')}, version {health.get('version', '?')}")
        for r in report:
            extra = f" ({', '.join(r['fields'])})" if r.get("fields") else ""
            print(f"  {r['uid']:<20} {r['status']}{extra}")
    return 1 if drift else 0


# -- input ------------------------------------------------------------------------------------------


def _check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"--url must be an http(s) URL with a host, got '{_redact(url)}'")
    try:
        _ = parsed.port  # raises on a malformed port
    except ValueError:
        raise ValueError(f"--url has a malformed port: '{_redact(url)}'") from None
    if parsed.username or parsed.password:
        raise ValueError(f"--url must not carry credentials; use --token-file or ${TOKEN_ENV}")
    return url.rstrip("/")


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.username or parsed.password:
        return parsed._replace(netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")).geturl()
    return url


def read_token(token_file: str | None) -> str:
    """The token from --token-file, else $GRAFANA_TOKEN; the messages never contain it."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"--token-file {token_file}: cannot read ({exc.strerror})") from None
        if not token:
            raise ValueError(f"--token-file {token_file} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ValueError(f"--token-file is required (or set {TOKEN_ENV})")
    return token


def load_dashboards(directory: Path = DIRECTORY) -> list[dict[str, Any]]:
    """The committed dashboards, in DASHBOARD_NAMES order."""
    return [json.loads((directory / f"{name}.json").read_text(encoding="utf-8")) for name in DASHBOARD_NAMES]


# -- Grafana ----------------------------------------------------------------------------------------


def _api(url: str, token: str, timeout: float):
    from grafana_client import GrafanaApi, TokenAuth

    return GrafanaApi.from_url(url, credential=TokenAuth(token), timeout=timeout)


def _call(fn, *args, **kwargs):
    """Call grafana-client; map its failures onto exit codes (None for 404, ValueError for auth, Unreachable)."""
    import niquests.exceptions
    from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaServerError, GrafanaTimeoutError

    try:
        return fn(*args, **kwargs)
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return None
        if exc.status_code in (401, 403):
            raise ValueError(f"Grafana rejected the token (HTTP {exc.status_code}): check --token-file or "
                             f"{TOKEN_ENV} and that the token has the Editor role") from None
        raise ValueError(f"Grafana refused the request (HTTP {exc.status_code}): {_message(exc)}") from None
    except (GrafanaServerError, GrafanaTimeoutError) as exc:
        raise Unreachable(_message(exc)) from None
    except GrafanaException as exc:  # transport failures wrapped by grafana-client
        raise Unreachable(_message(exc)) from None
    except niquests.exceptions.RequestException as exc:  # connection refused, DNS, TLS
        raise Unreachable(type(exc).__name__) from None


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", "") or exc).splitlines()[0][:200]


def grafana_health(api) -> dict[str, Any]:
    """GET /api/health through grafana-client (unauthenticated in Grafana)."""
    health = _call(api.client.GET, "/health")
    if not isinstance(health, dict):
        raise Unreachable("/api/health did not answer with JSON")
    if health.get("database") not in (None, "ok"):
        raise Unreachable(f"/api/health reports database {health.get('database')!r}")
    return {k: health[k] for k in ("database", "version") if k in health}


def normalise(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The compared part of a dashboard, without Grafana-managed state."""
    out = {k: copy.deepcopy(dashboard.get(k)) for k in COMPARED_FIELDS}
    for variable in (out.get("templating") or {}).get("list", []) or []:
        for key in VARIABLE_STATE_FIELDS:
            variable.pop(key, None)
    return out


def compare(committed: dict[str, Any], stored: dict[str, Any] | None) -> tuple[str, list[str]]:
    """(status, differing fields) of the stored dashboard against the committed one."""
    if stored is None:
        return MISSING, []
    a, b = normalise(committed), normalise(stored)
    fields = [k for k in COMPARED_FIELDS if a[k] != b[k]]
    return (DIFFERS if fields else CURRENT), fields


def check(api, committed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    report = []
    for d in committed:
        got = _call(api.dashboard.get_dashboard, d["uid"])
        status, fields = compare(d, (got or {}).get("dashboard"))
        row: dict[str, Any] = {"uid": d["uid"], "title": d["title"], "status": status}
        if fields:
            row["fields"] = fields
        report.append(row)
    return report


def ensure_folder(api) -> str:
    """Create the folder uid qkdops "QKD" (or retitle it); returns created, updated or unchanged."""
    folder = _call(api.folder.get_folder, FOLDER_UID)
    if folder is None:
        _call(api.folder.create_folder, FOLDER_TITLE, uid=FOLDER_UID)
        return "created"
    if folder.get("title") != FOLDER_TITLE:
        _call(api.folder.update_folder, FOLDER_UID, title=FOLDER_TITLE, overwrite=True)
        return "updated"
    return "unchanged"


def push(api, committed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Upsert every dashboard that is missing, differs or sits outside the folder; idempotent."""
    report = [{"uid": f"folder:{FOLDER_UID}", "title": FOLDER_TITLE, "status": ensure_folder(api)}]
    for d in committed:
        got = _call(api.dashboard.get_dashboard, d["uid"])
        status, fields = compare(d, (got or {}).get("dashboard"))
        in_folder = ((got or {}).get("meta") or {}).get("folderUid") == FOLDER_UID
        row: dict[str, Any] = {"uid": d["uid"], "title": d["title"]}
        if status == CURRENT and in_folder:
            row["status"] = "unchanged"
        else:
            reason = "created" if status == MISSING else ("updated: " + ", ".join(fields or ["folder"]))
            payload = {k: v for k, v in d.items() if k not in ("id", "version")}
            _call(api.dashboard.update_dashboard, {"dashboard": payload, "folderUid": FOLDER_UID, "overwrite": True,
                                                   "message": f"qkdops dashboards push: {reason}"})
            row["status"] = "created" if status == MISSING else "updated"
            if fields:
                row["fields"] = fields
        report.append(row)
    return report


# -- render -----------------------------------------------------------------------------------------


def parse_since(text: str) -> float:
    """``15m`` → 900 seconds (units s, m, h, d)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--since must be a positive number followed by s, m, h or d, got '{text}'")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _render(args: argparse.Namespace) -> int:
    window = parse_since(args.since)
    if args.step <= 0:
        raise ValueError(f"--step must be positive, got {args.step}")
    if not args.out.lower().endswith(".png"):
        raise ValueError(f"--out must name a .png file, got '{args.out}'")
    try:
        from dashboards.render import render_panels
    except ImportError as exc:
        print(f"qkdops dashboards render: dashboards.render is not available: {exc}", file=sys.stderr)
        return 1
    auth = StackAuth(load_config(args.config).runtime.state_dir).prometheus  # CredentialError names the file
    end = time.time()
    try:
        out = render_panels(args.prometheus, args.dashboard, args.link, end - window, end, Path(args.out),
                            step_s=args.step, auth=auth)
    except (OSError, RuntimeError) as exc:  # Prometheus unreachable or answering errors
        print(f"qkdops dashboards render: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
