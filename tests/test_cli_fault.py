"""``qkdops fault inject|clear|list`` and ``qkdops action`` against a live control API on 127.0.0.1.

These forms are a contract (game days and runbooks call them): exit 0 done, 2 the request was wrong
(the API's message names the field), 1 the API is unreachable or failed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control_api import server as control_api
from qkdops_cli.cli import main
from qkdops.config import load_config
from qkdops.control_client import API_URL_ENV
from qkdops.runtime.faults import fault_catalogue
from qkdops.runtime.fleet import Fleet
from qkdops.runtime.state import CALIBRATION_ACTIONS
from stack_helpers import free_ports, metro_fleet_yaml

TOKEN = "cli-test-token-0123456789abcdefghijklmnop"


@dataclasses.dataclass
class Stack:
    fleet: Fleet
    url: str
    config: Path


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Fleet + API on an ephemeral port; the token in the environment, as an operator would have it."""
    for name in (control_api.TOKEN_ENV, control_api.TOKEN_FILE_ENV, API_URL_ENV):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "links.yaml"
    config.write_text(metro_fleet_yaml(("metro-a",), control_port=free_ports(1)[0]), encoding="utf-8")
    fleet = Fleet(load_config(config))
    server = control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), TOKEN)
    monkeypatch.setenv(control_api.TOKEN_ENV, TOKEN)
    yield Stack(fleet, f"http://127.0.0.1:{server.server_address[1]}", config)
    server.stop()
    fleet.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def active(stack: Stack) -> list[str]:
    return [f["name"] for f in stack.fleet.status("metro-a")["active_faults"]]


def test_inject_and_clear(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "fault", "inject", "metro-a", "loss_step", "--set", "loss_db=6", "--api", stack.url)
    assert code == 0, err
    assert "metro-a: fault loss_step injected (loss_db=6)" in out and active(stack) == ["loss_step"]
    answer = run_json(capsys, "fault", "inject", "metro-a", "rng_bias", "--api", stack.url)
    assert answer["fault"] == "rng_bias" and answer["parameters"] == {"bias": 0.05}
    assert [f["name"] for f in answer["active_faults"]] == ["loss_step", "rng_bias"]

    assert run_json(capsys, "fault", "clear", "metro-a", "rng_bias", "--api", stack.url) == {"link": "metro-a", "cleared": ["rng_bias"]}
    assert run(capsys, "fault", "clear", "metro-a", "rng_bias", "--api", stack.url)[1] == "metro-a: fault rng_bias was not active\n"
    assert run(capsys, "fault", "clear", "metro-a", "--api", stack.url)[1] == "metro-a: cleared loss_step\n"
    assert run(capsys, "fault", "clear", "metro-a", "--api", stack.url)[1] == "metro-a: no fault was active\n"
    assert active(stack) == []


def test_fibre_cut_from_the_cli_stops_key_until_cleared(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "fault", "inject", "metro-a", "fiber_cut", "--set", "loss_db=120", "--api", stack.url)[0] == 0
    assert [r.secret_key_bits for r in stack.fleet.run_frames(2)] == [0, 0]
    assert run(capsys, "fault", "clear", "metro-a", "fiber_cut", "--api", stack.url)[0] == 0
    assert stack.fleet.run_frames(1)[0].secret_key_bits > 0


@pytest.mark.parametrize("action", CALIBRATION_ACTIONS)
def test_action(stack: Stack, capsys: pytest.CaptureFixture[str], action: str) -> None:
    answer = run_json(capsys, "action", "metro-a", action, "--api", stack.url)
    assert answer["action"] == action and answer["ok"] is True and {"before", "after", "message"} <= set(answer)
    code, out, _ = run(capsys, "action", "metro-a", action, "--api", stack.url)
    assert code == 0 and out.startswith(f"metro-a: {action} ok: ")


def test_failed_calibration_exits_1(stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A runbook step must notice that the action ran and did not fix the link."""
    from qkdlink.emulator import CalibrationResult

    monkeypatch.setattr(stack.fleet, "act", lambda link, action: CalibrationResult(action, False, "beyond the hold range",
                                                                                   {"phase_error_rad": 3.0}, {"phase_error_rad": 3.0}))
    code, out, _ = run(capsys, "action", "metro-a", "relock_phase", "--api", stack.url)
    assert code == 1 and "relock_phase FAILED: beyond the hold range" in out and "phase_error_rad: 3 -> 3" in out


def test_fault_list_from_the_api(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    listing = run_json(capsys, "fault", "list", "--api", stack.url)
    assert listing["source"] == "api" and listing["api"] == stack.url
    assert listing["faults"] == json.loads(json.dumps(fault_catalogue()))
    code, out, _ = run(capsys, "fault", "list", "--api", stack.url)
    assert code == 0 and out.startswith(f"fault catalogue from the control API at {stack.url}")
    assert "polarization_drift:" in out and "[fixed by: realign_polarization]" in out
    assert "loss_db" in out and "default 100 dB" in out and "range [20, 300] dB" in out
    assert "classical_channel_outage:" in out and "(no parameters)" in out


def test_fault_list_falls_back_to_the_local_catalogue_and_says_so(capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(control_api.TOKEN_ENV, TOKEN)
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    listing = run_json(capsys, "fault", "list", "--api", url)
    assert listing["source"] == "local" and "not reachable" in listing["note"]
    assert [f["name"] for f in listing["faults"]] == [f["name"] for f in fault_catalogue()]
    code, out, _ = run(capsys, "fault", "list", "--api", url)
    assert code == 0 and out.startswith("fault catalogue of this installation (control API at") and "fiber_cut:" in out


@pytest.mark.parametrize(("argv", "needles"), [
    (("fault", "inject", "nowhere", "fiber_cut"), ("link", "nowhere", "metro-a", "HTTP 404")),
    (("fault", "inject", "metro-a", "meteor_strike"), ("fault", "meteor_strike", "HTTP 404")),
    (("fault", "inject", "metro-a", "loss_step", "--set", "loss_db=999"), ("parameters.loss_db", "<= 60", "HTTP 400")),
    (("fault", "inject", "metro-a", "loss_step", "--set", "volume=3"), ("parameters.volume", "HTTP 400")),
    (("fault", "inject", "metro-a", "loss_step", "--set", "loss_db=lots"), ("--set loss_db", "number")),
    (("fault", "inject", "metro-a", "loss_step", "--set", "loss_db"), ("--set", "NAME=VALUE")),
    (("fault", "clear", "nowhere"), ("nowhere", "HTTP 404")),
    (("fault", "clear", "metro-a", "meteor_strike"), ("meteor_strike", "HTTP 404")),
    (("action", "metro-a", "reboot"), ("action", "reboot", "relock_phase", "HTTP 404")),
])
def test_refused_requests_exit_2_with_the_apis_message(stack: Stack, capsys: pytest.CaptureFixture[str],
                                                       argv: tuple[str, ...], needles: tuple[str, ...]) -> None:
    code, out, err = run(capsys, *argv, "--api", stack.url)
    assert code == 2 and out == ""
    assert err.startswith("qkdops ") and ": error: " in err and err.count("\n") == 1
    for needle in needles:
        assert needle in err
    assert active(stack) == []
    assert stack.fleet.run_frames(1)[0].secret_key_bits > 0


def test_wrong_token_exits_2_and_is_not_printed(stack: Stack, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(control_api.TOKEN_ENV, "not-the-token-abcdef")
    code, out, err = run(capsys, "fault", "inject", "metro-a", "fiber_cut", "--api", stack.url)
    assert code == 2 and "invalid bearer token" in err and "HTTP 401" in err
    assert "not-the-token" not in out + err and TOKEN not in out + err
    assert active(stack) == []


def test_unreachable_api_exits_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(control_api.TOKEN_ENV, TOKEN)
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    for argv in (("fault", "inject", "metro-a", "fiber_cut"), ("fault", "clear", "metro-a"), ("action", "metro-a", "relock_phase")):
        code, _, err = run(capsys, *argv, "--api", url)
        assert code == 1
        assert f"control API at {url} is not reachable: is `qkdops up` running?" in err


def test_server_error_exits_1(stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(link: str, action: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(stack.fleet, "act", broken)
    code, _, err = run(capsys, "action", "metro-a", "relock_phase", "--api", stack.url)
    assert code == 1 and "HTTP 500" in err and "boom" not in err


def test_url_from_environment_and_token_from_named_file(stack: Stack, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token_file = tmp_path / "operator-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    monkeypatch.delenv(control_api.TOKEN_ENV)
    monkeypatch.setenv(control_api.TOKEN_FILE_ENV, str(token_file))
    monkeypatch.setenv(API_URL_ENV, stack.url)
    assert run_json(capsys, "fault", "inject", "metro-a", "loss_step")["fault"] == "loss_step"
    assert active(stack) == ["loss_step"]


def test_url_and_generated_token_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """What an operator on the box types: no --api, no token in the env; `qkdops up`'s token file is used."""
    for name in (control_api.TOKEN_ENV, control_api.TOKEN_FILE_ENV, API_URL_ENV):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "links.yaml"
    config.write_text(metro_fleet_yaml(("metro-a",), control_port=free_ports(1)[0]), encoding="utf-8")
    fleet = Fleet(load_config(config))
    token = control_api.load_token(fleet.config.runtime.state_dir, create=True)
    server = control_api.serve(fleet, fleet.config.runtime, token.value)
    try:
        assert run_json(capsys, "action", "metro-a", "retune_intensities", "--config", str(config))["ok"] is True
        assert run_json(capsys, "fault", "list", "--config", str(config))["source"] == "api"
    finally:
        server.stop()
        fleet.stop()
    code, _, err = run(capsys, "fault", "clear", "metro-a", "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in err


def test_missing_token_exits_2_naming_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (control_api.TOKEN_ENV, control_api.TOKEN_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "links.yaml"
    config.write_text(metro_fleet_yaml(("metro-a",), control_port=free_ports(1)[0]), encoding="utf-8")
    code, _, err = run(capsys, "fault", "clear", "metro-a", "--config", str(config))
    assert code == 2 and control_api.TOKEN_ENV in err and str(tmp_path / "state" / "api-token") in err


@pytest.mark.parametrize("url", ["127.0.0.1:9800", "ftp://127.0.0.1:9800", "http://127.0.0.1:port"])
def test_bad_api_url_exits_2_naming_the_option(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv(control_api.TOKEN_ENV, TOKEN)
    code, _, err = run(capsys, "fault", "clear", "metro-a", "--api", url)
    assert code == 2 and "--api" in err
