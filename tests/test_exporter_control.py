"""The exporter-crash game day's actions against `qkdops up` (in this process, without Prometheus):
stopping the device exporter closes its port, starting it serves /metrics again, and the stack
still shuts down cleanly with an exporter left stopped."""

from __future__ import annotations

import http.client
import threading
from pathlib import Path

import pytest

from gameday.chaosqkd import actions
from control_api import server as control_api
from qkdops_cli import up_cmd
from qkdops.config import load_config
from stack_helpers import e2e_profile, wait_for


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(control_api.TOKEN_ENV, raising=False)
    monkeypatch.delenv(control_api.TOKEN_FILE_ENV, raising=False)


def scrape(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().status
    finally:
        conn.close()


def test_gameday_actions_crash_and_restart_an_exporter_of_a_running_stack(tmp_path: Path) -> None:
    path = e2e_profile(tmp_path)
    config = load_config(path)
    rt = config.runtime
    stopping = threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(up_cmd._run(config, False, stopping, 0.0)), daemon=True)
    runner.start()
    configuration = {"qkdops_config": str(path)}
    try:
        wait_for(lambda: (rt.state_dir / up_cmd.UP_FILE).exists(), 60, "up.json")
        assert scrape(rt.device_exporter_port) == 200

        crashed = actions.stop_exporter("device", configuration)
        assert crashed["name"] == "device" and crashed["serving"] is False and isinstance(crashed["injected_at"], float)
        with pytest.raises(ConnectionRefusedError):
            scrape(rt.device_exporter_port)
        assert scrape(rt.postprocessing_exporter_port) == 200

        restarted = actions.start_exporter("device", configuration)
        assert restarted["serving"] is True and restarted["started_at"] >= crashed["injected_at"]
        assert scrape(rt.device_exporter_port) == 200

        actions.stop_exporter("postprocessing", configuration)  # left stopped: shutdown must not hang on it
    finally:
        stopping.set()
        runner.join(30)
    assert not runner.is_alive() and result == [0]
    assert not (rt.state_dir / up_cmd.UP_FILE).exists()
    for port in (rt.device_exporter_port, rt.postprocessing_exporter_port, rt.control_port):
        with pytest.raises(ConnectionRefusedError):
            scrape(port)
