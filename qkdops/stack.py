"""The local stack around the fleet: Prometheus and Alertmanager as supervised child processes.

``qkdops up`` runs the links, exporters and control API in its own process and these two servers
as children (Debian's ``prometheus`` and ``prometheus-alertmanager``, installed by
``scripts/setup.sh``). The Prometheus configuration is rendered here from the fleet config, so the
local stack and ``prometheus/prometheus.yml`` (the docker-compose variant, rendered by the same
function with service names; a test keeps it current) cannot drift apart.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qkdops.config import RuntimeSettings

REPO = Path(__file__).resolve().parent.parent
ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"
RULES_DIR = REPO / "alert_rules"
COMPOSE_PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's name
INSTALL_HINT = "run `bash scripts/setup.sh` (installs Debian's prometheus and prometheus-alertmanager)"


class StackError(RuntimeError):
    """A server of the stack cannot be started; the message says which and what to do."""


@dataclass(frozen=True)
class Hosts:
    """Addresses Prometheus uses to reach each service (local processes, or compose services)."""

    device: str
    postprocessing: str
    alertmanager: str


def local_hosts(rt: RuntimeSettings) -> Hosts:
    return Hosts(f"{rt.bind}:{rt.device_exporter_port}", f"{rt.bind}:{rt.postprocessing_exporter_port}",
                 f"{rt.bind}:{rt.alertmanager_port}")


COMPOSE_HOSTS = Hosts("qkdops:9810", "qkdops:9811", "alertmanager:9093")


def prometheus_config(hosts: Hosts, rule_glob: str, scrape_interval_s: float) -> dict[str, Any]:
    """Scrape both exporters (job names are what rules and dashboards select on), send alerts."""
    interval = f"{scrape_interval_s:g}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "external_labels": {"stack": "qkdops"}},
        "rule_files": [rule_glob],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [hosts.alertmanager]}]}]},
        "scrape_configs": [
            {"job_name": "qkd-device", "static_configs": [{"targets": [hosts.device]}]},
            {"job_name": "qkd-postprocessing", "static_configs": [{"targets": [hosts.postprocessing]}]},
        ],
    }


def render_compose_prometheus_config() -> str:
    header = ("# Rendered by qkdops.stack.prometheus_config for docker-compose (service names);\n"
              "# `qkdops up` renders the same with local addresses. Do not edit: a test keeps it current.\n")
    return header + yaml.safe_dump(prometheus_config(COMPOSE_HOSTS, "/etc/prometheus/rules/*.yml", 5.0), sort_keys=False)


def find_binary(names: tuple[str, ...]) -> str:
    for name in names:
        if (path := shutil.which(name)) is not None:
            return path
    raise StackError(f"{' or '.join(names)} not found on PATH: {INSTALL_HINT}")


@dataclass
class Child:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


class Stack:
    """Starts, watches and stops Prometheus and Alertmanager for a runtime."""

    def __init__(self, rt: RuntimeSettings) -> None:
        self.rt = rt
        self.children: list[Child] = []
        self.state_dir = rt.state_dir

    def start(self) -> None:
        prometheus = find_binary(("prometheus",))
        alertmanager = find_binary(ALERTMANAGER_BINARIES)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.state_dir / "prometheus.yml"
        config = prometheus_config(local_hosts(self.rt), str(RULES_DIR / "*.yml"), self.rt.scrape_interval_s)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        bind = self.rt.bind
        self._spawn("alertmanager", f"http://{bind}:{self.rt.alertmanager_port}", [
            alertmanager, f"--config.file={ALERTMANAGER_CONFIG}", f"--storage.path={self.state_dir / 'alertmanager'}",
            f"--web.listen-address={bind}:{self.rt.alertmanager_port}", "--cluster.listen-address=",
            f"--web.external-url=http://{bind}:{self.rt.alertmanager_port}/"])
        self._spawn("prometheus", f"http://{bind}:{self.rt.prometheus_port}", [
            prometheus, f"--config.file={config_path}", f"--storage.tsdb.path={self.state_dir / 'prometheus'}",
            f"--web.listen-address={bind}:{self.rt.prometheus_port}", "--web.enable-lifecycle",
            f"--web.external-url=http://{bind}:{self.rt.prometheus_port}/"])

    def _spawn(self, name: str, url: str, argv: list[str]) -> None:
        log_path = self.state_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.children.append(Child(name, url, process, log_path))

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait for each child's /-/ready, or raise StackError with the tail of its log."""
        import urllib.request

        deadline = time.monotonic() + timeout_s
        for child in self.children:
            while True:
                if child.process.poll() is not None:
                    raise StackError(f"{child.name} exited with status {child.process.returncode}: "
                                     f"{_tail(child.log_path)}")
                try:
                    with urllib.request.urlopen(f"{child.url}/-/ready", timeout=1) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise StackError(f"{child.name} not ready at {child.url} after {timeout_s:g} s: {_tail(child.log_path)}")
                time.sleep(0.2)

    def dead(self) -> Child | None:
        """A child that exited on its own, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, grace_s: float = 10.0) -> None:
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


def write_up_file(path: Path, endpoints: Mapping[str, str], pids: Mapping[str, int]) -> None:
    """What `qkdops status` reads: where each part of a running `qkdops up` listens."""
    path.write_text(json.dumps({"endpoints": dict(endpoints), "pids": dict(pids)}, indent=2))


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
