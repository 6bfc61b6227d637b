"""``qkdops status``: is the local stack up, and what are the links doing?

Reads ``<state_dir>/up.json`` written by ``qkdops up``, probes every endpoint (control API, pager
sink and calibration scheduler ``/healthz``, exporters ``/metrics``, Prometheus and Alertmanager
``/-/ready`` (every replica and peer of ``qkdops up --ha``), with the basic auth ``qkdops up`` generated in the state dir, the KMEs' HTTPS
listeners) and, when the control API answers, prints each link's last
block and how much key waits for hand-off and sits in its two KME stores. Parts left out on purpose
(``qkdops up --no-calibration``) are listed as ``off`` with the option and do not count as down. Exit 0
when everything started answers, 1 when something does not (a scheduler waiting to be restarted
included), 3 when the stack is not running.
"""

from __future__ import annotations

import argparse
import json
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from qkdops.config import DEFAULT_CONFIG, load_config
from qkdops.credentials import CredentialError
from qkdops.http_client import Auth, StackAuth, open_url
from qkdops.processes import pid_alive
from monitoring.alertmanager import ALERTMANAGER_PEERS
from monitoring.prometheus import PROMETHEUS_REPLICAS
from qkdops_cli.stack import SCHEDULER, WORKER_PREFIX
from qkdops_cli.up_cmd import UP_FILE

# Resolved against each recorded URL: "" probes it as is, an absolute path replaces its path.
# Every Prometheus replica and Alertmanager peer (`qkdops up --ha`) is listed and probed on its own.
PROBES = {"control_api": "/healthz", "device_exporter": "", "postprocessing_exporter": "", "pager_sink": "/healthz",
          **dict.fromkeys((*PROMETHEUS_REPLICAS, *ALERTMANAGER_PEERS), "/-/ready"), SCHEDULER: "/healthz"}
# Endpoints whose probe needs credentials (StackAuth's attribute); the others' probes are open.
AUTHENTICATED = {**dict.fromkeys(PROMETHEUS_REPLICAS, "prometheus"), **dict.fromkeys(ALERTMANAGER_PEERS, "alertmanager")}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="what of the local stack is up", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    up_file = config.runtime.state_dir / UP_FILE
    if not up_file.exists():
        print(json.dumps({"running": False}) if args.json else f"qkdops is not running ({up_file} not found)")
        return 3
    recorded = json.loads(up_file.read_text())
    if not pid_alive(recorded["pids"].get("qkdops", 0)):
        print(json.dumps({"running": False, "stale": str(up_file)}) if args.json
              else f"qkdops is not running ({up_file} is left from a process that died)")
        return 3
    auth = StackAuth(config.runtime.state_dir)
    rows = {name: _probe(probe_url(name, url), _auth(auth, name)) for name, url in recorded["endpoints"].items()}
    disabled = recorded.get("disabled", {})
    links = _links(recorded["endpoints"].get("control_api"), config.runtime.state_dir) if rows.get("control_api") else []
    if args.json:
        print(json.dumps({"running": True, "endpoints": {n: {"url": recorded["endpoints"][n], "up": ok}
                                                         for n, ok in rows.items()},
                          "disabled": disabled, "links": links}, indent=2))
    else:
        for name, ok in rows.items():
            print(f"{name:<24} {'up' if ok else 'DOWN':<5} {recorded['endpoints'][name]}")
        for name, option in disabled.items():
            print(f"{name:<24} {'off':<5} ({option})")
        for link in links:
            if link.get("unavailable"):
                print(f"link {link['link']:<18} {link['protocol']:<11} UNAVAILABLE (its worker is not answering)")
                continue
            last = link.get("last_block") or {}
            print(f"link {link['link']:<18} {link['protocol']:<11} next block {link['next_block']:<6} "
                  f"last: {last.get('reason', '-')}, {last.get('secret_key_bits', 0)} key bits, "
                  f"faults: {', '.join(f['name'] for f in link['active_faults']) or 'none'}")
            delivery = link.get("key_delivery") or {}
            stores = ", ".join(f"{site} {level['available_bytes'] + level['pending_bytes']} B"
                               for site, level in (delivery.get("stores") or {}).items())
            print(f"  {'':<18} key to hand off {delivery.get('buffered_bits', 0) // 8} B; KME stores: {stores or '-'}")
    return 0 if all(rows.values()) else 1


def probe_url(name: str, url: str) -> str:
    """What to probe for a recorded endpoint (the scheduler's is recorded as its /metrics URL; a
    sharded fleet's worker as its control API, whose /healthz answers once its links step)."""
    return urljoin(url, "/healthz" if name.startswith(WORKER_PREFIX) else PROBES.get(name, ""))


def _auth(auth: StackAuth, name: str) -> Auth | None:
    """The credentials a probe of ``name`` presents; None when it needs none or they cannot be read
    (the probe then answers 401: DOWN, which is what a client without them would see)."""
    try:
        return getattr(auth, AUTHENTICATED[name]) if name in AUTHENTICATED else None
    except CredentialError:
        return None


def _probe(url: str, auth: Auth | None = None) -> bool:
    """HTTP endpoints answer 200; a KME (HTTPS, client certificate required) is up when it accepts a
    connection — this command holds no SAE certificate, and needs none to see a listener."""
    try:
        if url.startswith("https://"):
            parts = urlsplit(url)
            with socket.create_connection((parts.hostname, parts.port or 443), timeout=2):
                return True
        with open_url(url, auth, timeout_s=2) as response:
            return response.status == 200
    except OSError:
        return False


def _links(api_url: str | None, state_dir: Path) -> list[dict]:
    """Each link's status through the control API (token as the CLI finds it)."""
    from control_api.server import TokenError, load_token

    try:
        token = load_token(state_dir, create=False).value
    except TokenError:
        return []
    try:
        listed = _get(f"{api_url}/api/v1/links", token)["links"]
    except (OSError, ValueError, KeyError):
        return []
    out = []
    for item in listed:   # one link unanswered (its worker restarting) leaves the others listed
        try:
            out.append(_get(f"{api_url}/api/v1/links/{item['link']}", token))
        except (OSError, ValueError, KeyError):
            out.append({"link": item["link"], "protocol": item["protocol"], "unavailable": True})
    return out


def _get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=2) as response:
        return json.loads(response.read())
