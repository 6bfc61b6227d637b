"""`qkdops up` / `qkdops status` failure modes: clear messages, exit codes, nothing left running."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stack_helpers import RunningStack, e2e_profile


def _up(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qkdops.cli", "up", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_a_taken_port_is_named_and_nothing_starts(tmp_path: Path):
    config = e2e_profile(tmp_path)
    port = yaml.safe_load(config.read_text())["runtime"]["device_exporter_port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = _up(config, "--no-prometheus")
    assert result.returncode == 1
    assert f"device exporter cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "state" / "up.json").exists()


def test_missing_prometheus_says_how_to_install_it(tmp_path: Path):
    config = e2e_profile(tmp_path)
    result = _up(config, env={**os.environ, "PATH": str(tmp_path / "empty-bin")})
    assert result.returncode == 1
    assert "prometheus not found on PATH" in result.stderr and "scripts/setup.sh" in result.stderr


def test_status_reports_not_running_then_every_endpoint_and_link(tmp_path: Path):
    config = e2e_profile(tmp_path)
    status = [sys.executable, "-m", "qkdops.cli", "status", "--config", str(config)]
    assert subprocess.run(status, capture_output=True, text=True, timeout=30).returncode == 3
    stack = RunningStack(config, "--no-prometheus", "--duration", "30")
    try:
        stack.wait_up(30)
        result = subprocess.run(status, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout
        assert "control_api" in result.stdout and "link metro-bb84" in result.stdout
        assert any(line.split()[:2] == ["pager_sink", "up"] for line in result.stdout.splitlines()), result.stdout
    finally:
        assert stack.stop() == 0
    assert subprocess.run(status, capture_output=True, text=True, timeout=30).returncode == 3


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Prometheus not installed: `bash scripts/setup.sh`")
def test_a_missing_pager_key_file_is_named_and_nothing_starts(tmp_path: Path):
    config = e2e_profile(tmp_path)
    missing = tmp_path / "no-such-routing-key"
    result = _up(config, env={**os.environ, "QKDOPS_PAGERDUTY_ROUTING_KEY_FILE": str(missing)})
    assert result.returncode == 1
    assert f"QKDOPS_PAGERDUTY_ROUTING_KEY_FILE names {missing}, which cannot be read" in result.stderr
    assert not (tmp_path / "state" / "up.json").exists()
