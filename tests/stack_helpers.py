"""Running `qkdops up` as a real process for end-to-end tests: free ports, a test profile, queries.

Every wait is bounded; `RunningStack.stop` always runs (SIGINT, then SIGKILL of the whole process
group) so no server outlives its test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from qkdops import credentials
from qkdops.config import DEFAULT_CONFIG
from qkdops.http_client import PrometheusClient, StackAuth, open_url

# A 10 km link whose post-processing block is one 1-s frame, so a fault shows within a scrape or two.
# Its ~10 Mbit of sifted key a second is more than a post-processing thread reconciles and hashes
# in real time on a test machine, and the alerting tests need its timing, not its bits: model engine.
FAST_LINK = {
    "id": "e2e-fast", "protocol": "bb84-decoy", "preset": "lim2014", "sites": {"alice": "a", "bob": "b"},
    "distance_km": 10, "detector": {"dead_time_s": 1.0e-8},
    "source": {"key_basis_probability": 0.7, "p_mu": 0.6, "p_nu": 0.3}, "block_pulses": 1.0e9, "seed": 9,
    "postprocessing": {"engine": "model"},
}
# The same link at a 100 MHz pulse rate, on the bits engine: 1-s blocks of ~1 Mbit of sifted key that
# both ends really reconcile, verify and hash (~0.2 s of CPU a block).
BITS_LINK = {**FAST_LINK, "id": "e2e-bits", "repetition_rate_hz": 1.0e8, "block_pulses": 1.0e8,
             "postprocessing": {"engine": "bits"}}


# `qkdops up --ha`'s extra ports (qkdops.config.RuntimeSettings): free ones, so a test stack never gossips with another
HA_PORTS = ("prometheus_replica_port", "alertmanager_b_port", "alertmanager_c_port", "alertmanager_cluster_port",
            "alertmanager_b_cluster_port", "alertmanager_c_cluster_port")


def free_ports(n: int) -> list[int]:
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def e2e_profile(directory: Path, extra_links: list[dict] | None = None, scrape_interval_s: float = 1.0) -> Path:
    """The shipped fleet (plus ``extra_links``) on free ports (KMEs too: SAE ``sae-<site>`` each),
    state in ``directory``, fast scrapes."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["links"].extend(extra_links or [])
    sites = list(dict.fromkeys(link["sites"][end] for link in raw["links"] for end in ("alice", "bob")))
    # one call, so no two ports coincide (two calls may each get a port the other just released)
    control, device, pp, prom, am, sink, calibration, vm, probe, *rest = free_ports(9 + len(HA_PORTS) + 2 * len(sites))
    raw["runtime"].update(state_dir=str(directory / "state"), control_port=control, device_exporter_port=device,
                          postprocessing_exporter_port=pp, prometheus_port=prom, alertmanager_port=am,
                          pager_sink_port=sink, calibration_exporter_port=calibration, victoria_metrics_port=vm,
                          kme_probe_port=probe,
                          scrape_interval_s=scrape_interval_s, **dict(zip(HA_PORTS, rest)))
    kme_ports = rest[len(HA_PORTS):len(HA_PORTS) + len(sites)]
    skip_ports = rest[len(HA_PORTS) + len(sites):]
    raw["key_delivery"] = {"kmes": [{"site": site, "port": port, "skip_port": skip, "saes": [f"sae-{site}"]}
                                    for site, port, skip in zip(sites, kme_ports, skip_ports)]}
    path = directory / "links.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def kme_profile(directory: Path, saes: dict[str, list[str]]) -> Path:
    """FAST_LINK (sites a, b) alone on free ports, on the bits engine at BITS_LINK's pulse rate, with a
    KME per site serving ``saes[site]``: the runtime and its KMEs, for key-delivery tests run with
    ``--no-prometheus``."""
    control, device, pp, prom, am, sink, calibration, probe, kme_a, kme_b, skip_a, skip_b = free_ports(12)
    raw = {"runtime": {"state_dir": str(directory / "state"), "control_port": control, "device_exporter_port": device,
                       "postprocessing_exporter_port": pp, "prometheus_port": prom, "alertmanager_port": am,
                       "pager_sink_port": sink, "calibration_exporter_port": calibration, "kme_probe_port": probe},
           "links": [{**BITS_LINK, "id": FAST_LINK["id"]}],
           "key_delivery": {"kmes": [{"site": "a", "port": kme_a, "skip_port": skip_a, "saes": saes["a"]},
                                     {"site": "b", "port": kme_b, "skip_port": skip_b, "saes": saes["b"]}]}}
    path = directory / "links.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class RunningStack:
    def __init__(self, config_path: Path, *extra_args: str) -> None:
        self.config_path = config_path
        raw = yaml.safe_load(config_path.read_text())["runtime"]
        self.state_dir = Path(raw["state_dir"])
        # Prometheus, Alertmanager and pager sink credentials, as every client reads them: from the state dir
        self.auth = StackAuth(self.state_dir, environ={})
        self.ports = {k: raw[k] for k in ("control_port", "device_exporter_port", "postprocessing_exporter_port",
                                          "prometheus_port", "alertmanager_port", "pager_sink_port",
                                          "calibration_exporter_port", "victoria_metrics_port", "kme_probe_port", *HA_PORTS) if k in raw}
        self.log = open(config_path.parent / "qkdops-up.log", "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "qkdops_cli.cli", "up", "--config", str(config_path), *extra_args],
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_up(self, timeout_s: float = 60.0) -> None:
        """Until this process (not a killed predecessor) has written up.json."""
        def written() -> bool:
            path = self.state_dir / "up.json"
            return path.exists() and json.loads(path.read_text())["pids"]["qkdops"] == self.process.pid
        wait_for(written, timeout_s, "qkdops up to write up.json", self)

    def url(self, port_key: str) -> str:
        return f"http://127.0.0.1:{self.ports[port_key]}"

    def prometheus(self, query: str) -> list[dict[str, Any]]:
        data = urllib.parse.urlencode({"query": query}).encode()
        with open_url(f"{self.url('prometheus_port')}/api/v1/query", self.auth.prometheus, data=data) as response:
            return json.loads(response.read())["data"]["result"]

    def by_link(self, query: str) -> dict[str, float]:
        return {r["metric"].get("link", ""): float(r["value"][1]) for r in self.prometheus(query)}

    def notifications(self, **filters: str | float) -> list[dict[str, Any]]:
        """What the pager sink recorded, filtered as its API filters (alertname, link, status, since…)."""
        with open_url(f"{self.url('pager_sink_port')}/api/v1/notifications", self.auth.pager_sink, query=filters) as response:
            return json.loads(response.read())["notifications"]

    def api(self, method: str, path: str, body: dict | None = None) -> Any:
        token = (self.state_dir / "api-token").read_text().strip()
        request = urllib.request.Request(f"{self.url('control_port')}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def get_json(self, port_key: str, path: str, **query: Any) -> Any:
        """GET from Prometheus, Alertmanager, VictoriaMetrics or the pager sink with its credentials."""
        auth = {"prometheus_port": self.auth.prometheus, "alertmanager_port": self.auth.alertmanager,
                "victoria_metrics_port": self.auth.victoria_metrics, "pager_sink_port": self.auth.pager_sink,
                "prometheus_replica_port": self.auth.prometheus,
                **{key: self.auth.alertmanager for key in ("alertmanager_b_port", "alertmanager_c_port")}}[port_key]
        with open_url(f"{self.url(port_key)}{path}", auth, query=query) as response:
            return json.loads(response.read())

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()
        return self.process.returncode

    def output(self) -> str:
        return (self.config_path.parent / "qkdops-up.log").read_text(errors="replace")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, stack: RunningStack | None = None,
             interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if stack is not None and stack.process.poll() is not None:
            raise AssertionError(f"qkdops up exited ({stack.process.returncode}) waiting for {what}:\n{stack.output()[-3000:]}")
        try:
            if value := predicate():
                return value
        except (OSError, ValueError, KeyError) as exc:
            last_error = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last error: {last_error})")


def metro_fleet_yaml(links: tuple[str, ...], control_port: int | None = None) -> str:
    """25 km BB84 links whose 10 s frame is one 1e10-pulse block: ``run_frames(1)`` closes a block each.
    On the model engine: 44 Mbit of sifted key a block would cost seconds of reconciliation and
    hashing per ``run_frames`` in tests that exercise the control surface, not post-processing."""
    port = f"\n  control_port: {control_port}" if control_port is not None else ""
    entries = "".join(f"""
  - id: {link}
    protocol: bb84-decoy
    preset: lim2014
    sites: {{alice: north, bob: south}}
    distance_km: 25
    repetition_rate_hz: 1.0e+9
    block_pulses: 1.0e+10
    seed: {seed}
    postprocessing: {{engine: model}}
""" for seed, link in enumerate(links, start=1))
    return f"runtime:\n  state_dir: state\n  frame_seconds: 10.0{port}\nlinks:{entries}"


def run_history(directory: Path, days: float, incidents: str, *options: str, timeout_s: float = 900) -> tuple[Path, str]:
    """``qkdops history --days DAYS`` of the shipped fleet with state in ``directory / "state"`` and the
    incident plan ``incidents`` (YAML text): (state dir, its summary on stdout); a failure fails the test."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["runtime"]["state_dir"] = str(directory / "state")
    (fleet := directory / "links.yaml").write_text(yaml.safe_dump(config))
    (plan := directory / "plan.yaml").write_text(incidents)
    done = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "history", "--days", str(days), "--fleet", str(fleet),
                           "--incidents", str(plan), *options], cwd=DEFAULT_CONFIG.parent, capture_output=True, text=True,
                          timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    return directory / "state", done.stdout


@contextmanager
def prometheus_on_state(state: Path, directory: Path) -> Iterator[PrometheusClient]:
    """A real Prometheus (loopback, free port, the stack's basic auth) serving ``state``'s data dir — a
    ``qkdops history`` backfill — until the block ends; it scrapes nothing."""
    (port,) = free_ports(1)
    (config := directory / "prometheus-on-state.yml").write_text("global: {scrape_interval: 1m}\n")
    creds = credentials.prepare_server_credentials(state)   # as `qkdops up` would: basic auth
    prometheus = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={state / 'prometheus'}",
                                   f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=35d",
                                   f"--web.config.file={creds.prometheus_web_config}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = PrometheusClient(f"http://127.0.0.1:{port}", StackAuth(state).prometheus, timeout_s=120.0)

    def ready() -> bool:
        try:
            return bool(client.query("vector(1)")["result"])
        except OSError:
            return False
    try:
        wait_for(ready, 60.0, "Prometheus on the backfilled data dir")
        yield client
    finally:
        prometheus.terminate()
        prometheus.wait(30)
