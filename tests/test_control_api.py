"""Control API: a real server on 127.0.0.1 over a real fleet, stepped by hand with ``run_frames``.

Every bad request must be refused with a JSON error naming the problem, and must leave the links
stepping and producing key; the token must never come back in a response or a log record.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporters import DeviceCollector, PostProcessingCollector
from exporters.server import ServedExporter
from control_api import server as control_api
from qkdops.config import load_config
from qkdops.control_client import ApiResponseError, ControlClient
from qkdops.runtime.faults import fault_catalogue
from qkdops.runtime.fleet import Fleet
from qkdops.runtime.state import CALIBRATION_ACTIONS
from stack_helpers import metro_fleet_yaml

TOKEN = "test-token-Qw3rTy_uIoP-0123456789abcdef"
LINKS = ("metro-a", "metro-b")
CONFIG = metro_fleet_yaml(LINKS)


@pytest.fixture(autouse=True)
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(control_api.TOKEN_ENV, raising=False)
    monkeypatch.delenv(control_api.TOKEN_FILE_ENV, raising=False)


def make_fleet(tmp_path: Path, clock: Any = time.time) -> Fleet:
    path = tmp_path / "links.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return Fleet(load_config(path), clock=clock)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = make_fleet(tmp_path)
    yield fleet
    fleet.stop()


@pytest.fixture
def api(fleet: Fleet) -> Iterator[Api]:
    server = control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), TOKEN)
    yield Api(server.server_address[1])
    server.stop()
    assert not server.serving


@dataclasses.dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclasses.dataclass
class Api:
    port: int

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, token: str | None = TOKEN,
             headers: dict[str, str] | None = None) -> Reply:
        """One request on a fresh connection (5 s timeout): ``body`` as JSON, or ``raw`` bytes as they are."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token}")
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read().decode())
        finally:
            conn.close()


def keys(results: list) -> dict[str, int]:
    return {r.link: r.secret_key_bits for r in results}


def assert_still_producing_key(fleet: Fleet) -> None:
    results = fleet.run_frames(1)
    assert sorted(r.link for r in results) == sorted(LINKS)
    assert all(r.reason == "none" and r.secret_key_bits > 0 for r in results), [(r.link, r.reason) for r in results]


def assert_error(reply: Reply, status: int, code: str, *needles: str) -> dict[str, Any]:
    assert reply.status == status, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    error = reply.json["error"]
    assert error["code"] == code
    for needle in needles:
        assert needle in error["message"], error
    assert "Traceback" not in reply.text and "File \"" not in reply.text
    return error


# ---- happy paths -----------------------------------------------------------------------------------
def test_health_check_needs_no_token(api: Api) -> None:
    reply = api.call("GET", "/healthz", token=None)
    assert reply.status == 200 and reply.json == {"status": "ok"}


def test_links_status_and_catalogue(api: Api, fleet: Fleet) -> None:
    fleet.run_frames(1)
    assert api.call("GET", "/api/v1/links").json == {"links": [{"link": link, "protocol": "bb84-decoy"} for link in LINKS]}
    status = api.call("GET", "/api/v1/links/metro-a")
    assert status.status == 200
    assert status.json == json.loads(json.dumps(fleet.status("metro-a")))
    assert status.json["last_block"]["secret_key_bits"] > 0
    faults = api.call("GET", "/api/v1/faults")
    assert faults.status == 200 and faults.json == {"faults": json.loads(json.dumps(fault_catalogue()))}
    assert {f["name"]: f["fixed_by"] for f in faults.json["faults"]}["polarization_drift"] == "realign_polarization"


def test_inject_then_clear_round_trip(api: Api, fleet: Fleet) -> None:
    reply = api.call("POST", "/api/v1/links/metro-a/faults", {"fault": "loss_step", "parameters": {"loss_db": 6}})
    assert reply.status == 201
    assert reply.json == {"link": "metro-a", "fault": "loss_step", "parameters": {"loss_db": 6.0},
                          "active_faults": [{"name": "loss_step", "parameters": {"loss_db": 6.0}, "injected_at_s": 0.0}]}
    # parameters not given take their defaults
    assert api.call("POST", "/api/v1/links/metro-a/faults", {"fault": "rng_bias"}).json["parameters"] == {"bias": 0.05}
    active = api.call("GET", "/api/v1/links/metro-a/faults").json["active_faults"]
    assert [f["name"] for f in active] == ["loss_step", "rng_bias"]
    assert [f["name"] for f in fleet.status("metro-a")["active_faults"]] == ["loss_step", "rng_bias"]
    assert fleet.status("metro-b")["active_faults"] == []

    assert api.call("DELETE", "/api/v1/links/metro-a/faults/rng_bias").json == {"link": "metro-a", "cleared": ["rng_bias"]}
    assert api.call("DELETE", "/api/v1/links/metro-a/faults/rng_bias").json == {"link": "metro-a", "cleared": []}
    assert api.call("DELETE", "/api/v1/links/metro-a/faults").json == {"link": "metro-a", "cleared": ["loss_step"]}
    assert fleet.status("metro-a")["active_faults"] == []


def test_loss_step_through_the_api_cuts_detections_by_its_loss(api: Api, fleet: Fleet) -> None:
    fleet.run_frames(1)
    before = fleet.status("metro-a")["telemetry"]["detection_rate_hz"]
    api.call("POST", "/api/v1/links/metro-a/faults", {"fault": "loss_step", "parameters": {"loss_db": 10}})
    fleet.run_frames(1)
    after = fleet.status("metro-a")["telemetry"]["detection_rate_hz"]
    assert after == pytest.approx(before / 10, rel=0.05)


def test_fibre_cut_through_the_api_stops_key_and_clearing_restores_it(api: Api, fleet: Fleet) -> None:
    assert all(bits > 0 for bits in keys(fleet.run_frames(1)).values())
    assert api.call("POST", "/api/v1/links/metro-a/faults", {"fault": "fiber_cut"}).status == 201
    for _ in range(2):
        cut = keys(fleet.run_frames(1))
        assert cut["metro-a"] == 0 and cut["metro-b"] > 0
    status = api.call("GET", "/api/v1/links/metro-a").json
    assert status["last_block"]["reason"] != "none" and status["last_block"]["secret_key_bits"] == 0
    assert status["telemetry"]["detection_rate_hz"] < 1e-3 * api.call("GET", "/api/v1/links/metro-b").json["telemetry"]["detection_rate_hz"]
    assert api.call("DELETE", "/api/v1/links/metro-a/faults/fiber_cut").json["cleared"] == ["fiber_cut"]
    restored = keys(fleet.run_frames(1))
    assert restored["metro-a"] > 0.5 * restored["metro-b"]


@pytest.mark.parametrize("action", CALIBRATION_ACTIONS)
def test_calibration_actions(api: Api, fleet: Fleet, action: str) -> None:
    fleet.run_frames(1)
    reply = api.call("POST", f"/api/v1/links/metro-a/actions/{action}")
    assert reply.status == 200, reply.text
    body = reply.json
    assert set(body) == {"link", "action", "ok", "message", "before", "after"}
    assert body["link"] == "metro-a" and body["action"] == action and isinstance(body["ok"], bool) and body["message"]
    assert all(isinstance(v, (int, float)) or v is None for v in (*body["before"].values(), *body["after"].values()))
    assert_still_producing_key(fleet)


def test_blocks_endpoint_serves_the_archived_counts_for_window_estimation(api: Api, fleet: Fleet) -> None:
    fleet.run_frames(3)
    reply = api.call("GET", "/api/v1/links/metro-a/blocks?last=2")
    assert reply.status == 200, reply.text
    body = reply.json
    archived = list(fleet.archive.blocks("metro-a"))[-2:]
    assert [b["index"] for b in body["blocks"]] == [b.index for b in archived]
    first = body["blocks"][0]
    assert {(c["intensity"], c["basis"]): (c["sent"], c["detected"], c["errors"]) for c in first["counts"]} == \
        {k: tuple(v) for k, v in archived[0].counts.items()}
    assert set(first) == {"index", "start_timestamp", "end_timestamp", "pulses", "classical_channel_up", "counts"}, \
        "counts only: no single-photon truth, no key"
    assert body["protocol"] == "bb84-decoy" and body["nominal"]["epsilon_sec"] > 0
    assert len(api.call("GET", "/api/v1/links/metro-a/blocks").json["blocks"]) == 3  # default last=10, 3 archived


@pytest.mark.parametrize("query, field", [("last=0", "last"), ("last=abc", "last"), ("last=1001", "last"),
                                          ("last=1&last=2", "last"), ("first=1", "first")])
def test_blocks_endpoint_rejects_bad_queries_naming_the_parameter(api: Api, query: str, field: str) -> None:
    error = assert_error(api.call("GET", f"/api/v1/links/metro-a/blocks?{query}"), 400, "invalid_request")
    assert error["field"] == field


def test_realignment_through_the_api_fixes_polarization_drift(api: Api, fleet: Fleet) -> None:
    api.call("POST", "/api/v1/links/metro-a/faults", {"fault": "polarization_drift", "parameters": {"rate_rad_per_s": 0.01}})
    fleet.run_frames(3)
    drifted = fleet.status("metro-a")["telemetry"]["polarization_drift_rad"]
    assert abs(drifted) > 0.2
    result = api.call("POST", "/api/v1/links/metro-a/actions/realign_polarization").json
    assert result["ok"] and result["before"]["polarization_drift_rad"] == pytest.approx(drifted)
    assert abs(result["after"]["polarization_drift_rad"]) < 0.05


# ---- errors ----------------------------------------------------------------------------------------
INJECT = "/api/v1/links/metro-a/faults"
BAD_REQUESTS = [
    # (method, path, json body | raw bytes, status, code, field, words the message must contain)
    ("GET", "/api/v1/links/nowhere", None, 404, "unknown_link", "link", ("nowhere", "metro-a")),
    ("POST", "/api/v1/links/nowhere/faults", {"fault": "fiber_cut"}, 404, "unknown_link", "link", ("nowhere",)),
    ("DELETE", "/api/v1/links/nowhere/faults", None, 404, "unknown_link", "link", ("nowhere",)),
    ("POST", "/api/v1/links/nowhere/actions/relock_phase", None, 404, "unknown_link", "link", ("nowhere",)),
    ("POST", INJECT, {"fault": "meteor_strike"}, 404, "unknown_fault", "fault", ("meteor_strike", "fiber_cut")),
    ("DELETE", "/api/v1/links/metro-a/faults/meteor_strike", None, 404, "unknown_fault", "fault", ("meteor_strike",)),
    ("POST", "/api/v1/links/metro-a/actions/reboot", None, 404, "unknown_action", "action", ("reboot", "relock_phase")),
    ("GET", "/api/v2/links", None, 404, "not_found", "path", ("/api/v2/links",)),
    ("POST", INJECT, b"{not json", 400, "invalid_json", "body", ("not valid JSON",)),
    ("POST", INJECT, b"\xff\xfe", 400, "invalid_json", "body", ("UTF-8",)),
    ("POST", INJECT, b'{"fault": "loss_step", "parameters": {"loss_db": NaN}}', 400, "invalid_json", "body", ("NaN",)),
    ("POST", INJECT, b"[" * 50_000, 400, "invalid_json", "body", ("not valid JSON",)),
    ("POST", INJECT, b"", 400, "invalid_request", "body", ("JSON object",)),
    ("POST", INJECT, ["fiber_cut"], 400, "invalid_request", "body", ("JSON object",)),
    ("POST", INJECT, {"parameters": {}}, 400, "invalid_request", "fault", ("fault",)),
    ("POST", INJECT, {"fault": 7}, 400, "invalid_request", "fault", ("fault", "a number")),
    ("POST", INJECT, {"fault": "loss_step", "severity": "high"}, 400, "invalid_request", "severity", ("severity",)),
    ("POST", INJECT, {"fault": "loss_step", "parameters": [3]}, 400, "invalid_request", "parameters", ("parameters", "an array")),
    ("POST", INJECT, {"fault": "loss_step", "parameters": {"loss_db": "3"}}, 400, "invalid_parameter", "parameters.loss_db",
     ("parameters.loss_db", "a string")),
    ("POST", INJECT, {"fault": "loss_step", "parameters": {"loss_db": True}}, 400, "invalid_parameter", "parameters.loss_db",
     ("a boolean",)),
    ("POST", INJECT, {"fault": "loss_step", "parameters": {"loss_db": None}}, 400, "invalid_parameter", "parameters.loss_db",
     ("null",)),
    ("POST", INJECT, b'{"fault": "loss_step", "parameters": {"loss_db": 1e999}}', 400, "invalid_parameter", "parameters.loss_db",
     ("out of range",)),
    ("POST", INJECT, b'{"fault": "loss_step", "parameters": {"loss_db": 1' + b"0" * 400 + b"}}", 400, "invalid_parameter",
     "parameters.loss_db", ("out of range",)),
    ("POST", INJECT, {"fault": "loss_step", "parameters": {"loss_db": 999}}, 400, "invalid_parameter", "parameters.loss_db",
     ("loss_db", "<= 60")),
    ("POST", INJECT, {"fault": "loss_step", "parameters": {"volume": 3}}, 400, "invalid_parameter", "parameters.volume",
     ("volume", "loss_db")),
    ("PUT", "/api/v1/links", {"links": []}, 405, "method_not_allowed", "method", ("PUT", "GET")),
    ("DELETE", "/api/v1/faults", None, 405, "method_not_allowed", "method", ("DELETE",)),
    ("GET", "/api/v1/links/metro-a/actions/relock_phase", None, 405, "method_not_allowed", "method", ("POST",)),
    ("POST", "/healthz", None, 405, "method_not_allowed", "method", ("GET",)),
    ("POST", INJECT, b" " * (64 * 1024 + 1), 413, "payload_too_large", "body", ("65537", "65536")),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "field", "needles"), BAD_REQUESTS,
                         ids=[f"{m} {p} {s}-{c}" for m, p, _, s, c, *_ in BAD_REQUESTS])
def test_bad_requests_get_json_errors_naming_the_problem_and_links_keep_running(
        api: Api, fleet: Fleet, method: str, path: str, body: Any, status: int, code: str, field: str,
        needles: tuple[str, ...]) -> None:
    reply = api.call(method, path, raw=body) if isinstance(body, bytes) else api.call(method, path, body)
    error = assert_error(reply, status, code, *needles)
    assert error["field"] == field
    if status == 405:
        assert reply.headers["Allow"]
    assert all(fleet.status(link)["active_faults"] == [] for link in LINKS)
    assert_still_producing_key(fleet)


@pytest.mark.parametrize(("headers", "token", "invalid"), [
    ({}, None, False),
    ({}, "wrong-token", True),
    ({}, TOKEN + "x", True),
    ({}, TOKEN[:-1], True),
    ({"Authorization": f"Basic {TOKEN}"}, None, True),
    ({"Authorization": "Bearer"}, None, True),
    ({"Authorization": "Bearer t\u00e9st"}, None, True),
])
def test_missing_or_wrong_token_is_401_with_a_bearer_challenge(api: Api, fleet: Fleet, headers: dict[str, str],
                                                               token: str | None, invalid: bool) -> None:
    for method, path, body in (("GET", "/api/v1/links", None), ("GET", "/api/v1/links/nowhere", None),
                               ("POST", INJECT, {"fault": "fiber_cut"}),
                               ("POST", "/api/v1/links/metro-a/actions/relock_phase", None)):
        reply = api.call(method, path, body, token=token, headers=headers)
        error = assert_error(reply, 401, "unauthorized", "Authorization" if not invalid else "")
        assert error["field"] == "Authorization"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert ('error="invalid_token"' in reply.headers["WWW-Authenticate"]) == invalid
    assert all(fleet.status(link)["active_faults"] == [] for link in LINKS)
    assert_still_producing_key(fleet)


def test_oversized_unauthenticated_body_is_refused_before_it_is_judged(api: Api, fleet: Fleet) -> None:
    reply = api.call("POST", INJECT, raw=b"x" * (200 * 1024), token=None)
    assert_error(reply, 401, "unauthorized")
    assert_error(api.call("POST", INJECT, raw=b"x" * (200 * 1024)), 413, "payload_too_large")
    assert_still_producing_key(fleet)


def test_protocol_level_errors_are_json_too(api: Api, fleet: Fleet) -> None:
    assert_error(api.call("BREW", "/api/v1/links"), 501, "not_implemented")
    assert_error(api.call("POST", INJECT, headers={"Transfer-Encoding": "chunked"}, raw=b"0\r\n\r\n"), 411, "length_required")
    for length in ("-1", "\u00b2", "9" * 5000):   # refused by the parser, before any route: no field to name
        assert_error(api.call("GET", "/api/v1/links", headers={"Content-Length": length}), 400, "invalid_request")
    assert_still_producing_key(fleet)


def test_stalled_body_times_out_with_408(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control_api, "LIMITS", dataclasses.replace(control_api.LIMITS, deadline_s=0.5))
    server = control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), TOKEN)
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
            conn.sendall(f"POST {INJECT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{".encode())
            reply = conn.makefile("rb").read().decode()
    finally:
        server.stop()
    assert reply.startswith("HTTP/1.1 408") and '"code": "request_timeout"' in reply and "0.5 s" in reply
    assert_still_producing_key(fleet)


def test_server_error_is_logged_not_shown(api: Api, fleet: Fleet, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    def broken(link_id: str) -> dict:
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr(fleet, "status", broken)
    with caplog.at_level(logging.INFO, logger="qkdops"):
        reply = api.call("GET", "/api/v1/links/metro-a")
    assert_error(reply, 500, "internal")
    assert "internal detail" not in reply.text
    failures = [r for r in caplog.records if r.exc_info and "GET /api/v1/links/metro-a failed" in r.getMessage()]
    assert len(failures) == 1
    monkeypatch.undo()
    assert_still_producing_key(fleet)


def test_bad_requests_while_the_fleet_runs_in_real_time(tmp_path: Path) -> None:
    """Threads hammer the API with bad and good requests while the fleet's own thread steps the links."""
    ticks = itertools.count()
    fleet = make_fleet(tmp_path, clock=lambda: 10.0 * next(ticks))  # every tick makes one frame due
    server = control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), TOKEN)
    api = Api(server.server_address[1])
    fleet.start(interval_s=0.01)
    try:
        statuses: list[int] = []

        def client() -> None:
            for _ in range(10):
                statuses.append(api.call("POST", INJECT, {"fault": "loss_step", "parameters": {"loss_db": -1}}).status)
                statuses.append(api.call("POST", INJECT, raw=b"{", token="nope").status)
                statuses.append(api.call("GET", "/api/v1/links/metro-b").status)

        workers = [threading.Thread(target=client) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=30)
        assert sorted(set(statuses)) == [200, 400, 401] and len(statuses) == 120
        start = fleet.status("metro-a")["next_block"]
        deadline = time.monotonic() + 10
        while fleet.status("metro-a")["next_block"] < start + 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        last = fleet.status("metro-a")["last_block"]
        assert fleet.status("metro-a")["next_block"] >= start + 3 and last["secret_key_bits"] > 0
    finally:
        server.stop()
        fleet.stop()


# ---- the token -------------------------------------------------------------------------------------
def test_token_never_appears_in_a_response_or_a_log_record(api: Api, fleet: Fleet, caplog: pytest.LogCaptureFixture) -> None:
    replies = []
    with caplog.at_level(logging.DEBUG):
        for token in (TOKEN, TOKEN + "x", TOKEN[:8], None):
            for method, path, body in (("GET", "/healthz", None), ("GET", "/api/v1/links", None),
                                       ("GET", "/api/v1/links/metro-a", None), ("GET", "/api/v1/faults", None),
                                       ("POST", INJECT, {"fault": "loss_step", "parameters": {"loss_db": 1}}),
                                       ("POST", INJECT, {"fault": "loss_step", "parameters": {"loss_db": 100}}),
                                       ("POST", INJECT, {"fault": TOKEN}),
                                       ("POST", "/api/v1/links/metro-a/actions/retune_intensities", None),
                                       ("DELETE", INJECT, None), ("GET", "/api/v1/nothing", None)):
                replies.append(api.call(method, path, body, token=token))
        fleet.run_frames(1)
    assert {r.status for r in replies} >= {200, 201, 400, 401, 404}
    # a token pasted where a name goes comes back redacted: the server never repeats it
    assert any(r.status == 404 and "unknown fault '[redacted]'" in r.text for r in replies)
    secrets = (TOKEN, TOKEN[:16], TOKEN[-16:])
    for reply in replies:
        assert not any(s in reply.text or s in str(reply.headers) for s in secrets)
    records = [r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
               for r in caplog.records]
    assert any("POST /api/v1/links/metro-a/faults" in m for m in records)  # the access log is there
    assert not any(s in m for m in records for s in secrets)


def test_token_from_environment_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    named = tmp_path / "token-file"
    named.write_text("from-the-named-file\n")
    named.chmod(0o600)
    monkeypatch.setenv(control_api.TOKEN_ENV, "from-the-environment")
    monkeypatch.setenv(control_api.TOKEN_FILE_ENV, str(named))
    token = control_api.load_token(tmp_path / "state", create=True)
    assert token.value == "from-the-environment" and control_api.TOKEN_ENV in token.source
    assert "from-the-environment" not in repr(token)
    assert not (tmp_path / "state" / "api-token").exists()
    monkeypatch.delenv(control_api.TOKEN_ENV)
    token = control_api.load_token(tmp_path / "state", create=True)
    assert token.value == "from-the-named-file" and str(named) in token.source
    assert not (tmp_path / "state" / "api-token").exists()


def test_token_file_generated_on_first_start_with_mode_0600(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(control_api.TokenError, match="api-token"):
        control_api.load_token(state, create=False)  # a client does not invent one
    first = control_api.load_token(state, create=True)
    path = state / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.value) >= 43 and control_api.TOKEN_SYNTAX.match(first.value)  # 32 random bytes, url-safe
    assert control_api.load_token(state, create=True) == first == control_api.load_token(state, create=False)
    assert control_api.load_token(tmp_path / "other", create=True).value != first.value


def test_generated_token_authenticates(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path)
    token = control_api.load_token(fleet.config.runtime.state_dir, create=True)
    server = control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), token.value)
    try:
        api = Api(server.server_address[1])
        assert api.call("GET", "/api/v1/links", token=token.value).status == 200
        assert api.call("GET", "/api/v1/links").status == 401
    finally:
        server.stop()
        fleet.stop()


def test_loose_token_file_permissions_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "api-token").write_text("secret-value-1234\n")
    os.chmod(tmp_path / "api-token", 0o644)
    with caplog.at_level(logging.WARNING, logger="control_api.server"):
        assert control_api.load_token(tmp_path, create=False).value == "secret-value-1234"
    assert "chmod 600" in caplog.text and "secret-value" not in caplog.text


@pytest.mark.parametrize(("variable", "value", "needle"), [
    (control_api.TOKEN_ENV, "", "empty"),
    (control_api.TOKEN_ENV, "two words", "cannot carry"),
    (control_api.TOKEN_FILE_ENV, "", "empty"),
    (control_api.TOKEN_FILE_ENV, "/nonexistent/token", "/nonexistent/token"),
])
def test_unusable_token_sources_fail_without_echoing_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               variable: str, value: str, needle: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(control_api.TokenError, match=needle) as info:
        control_api.load_token(tmp_path, create=True)
    assert variable in str(info.value)
    assert "two words" not in str(info.value)


def test_serve_refuses_an_empty_token(fleet: Fleet) -> None:
    with pytest.raises(control_api.TokenError):
        control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), "")


# ---- exporters: stop (a crash, as the exporter-crash game day causes it) and start (the restart) ----
@dataclasses.dataclass
class ExporterStack:
    api: Api
    exporters: dict[str, ServedExporter]


@pytest.fixture
def exporter_stack(fleet: Fleet) -> Iterator[ExporterStack]:
    exporters = {"device": ServedExporter("device", DeviceCollector(fleet.snapshots), "127.0.0.1", 0),
                 "postprocessing": ServedExporter("postprocessing", PostProcessingCollector(fleet.snapshots), "127.0.0.1", 0)}
    for exporter in exporters.values():
        exporter.start()
    server = control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), TOKEN,
                                       exporters=exporters)
    yield ExporterStack(Api(server.server_address[1]), exporters)
    server.stop()
    for exporter in exporters.values():
        exporter.stop()
        exporter.stop()  # idempotent, as `qkdops up` relies on when one was left stopped


def scrape(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_stopped_exporter_refuses_connections_and_starts_again_on_its_port(exporter_stack: ExporterStack, fleet: Fleet) -> None:
    api, device_port = exporter_stack.api, exporter_stack.exporters["device"].port
    pp_port = exporter_stack.exporters["postprocessing"].port
    listed = api.call("GET", "/api/v1/exporters")
    assert listed.status == 200 and listed.json == {"exporters": [{"name": "device", "port": device_port, "serving": True},
                                                                  {"name": "postprocessing", "port": pp_port, "serving": True}]}
    assert scrape(device_port)[0] == 200

    for _ in range(2):  # idempotent
        stopped = api.call("DELETE", "/api/v1/exporters/device")
        assert stopped.status == 200 and stopped.json == {"name": "device", "serving": False}
    with pytest.raises(ConnectionRefusedError):
        scrape(device_port)
    assert [e["serving"] for e in api.call("GET", "/api/v1/exporters").json["exporters"]] == [False, True]
    assert scrape(pp_port)[0] == 200  # the other exporter is untouched
    assert_still_producing_key(fleet)  # and so are the links

    for _ in range(2):
        started = api.call("POST", "/api/v1/exporters/device")
        assert started.status == 200 and started.json == {"name": "device", "serving": True}
    status, text = scrape(device_port)
    assert status == 200 and 'qkd_link_info{' in text and 'link="metro-a"' in text
    assert [e["serving"] for e in api.call("GET", "/api/v1/exporters").json["exporters"]] == [True, True]


def test_unknown_exporter_is_404_naming_it(exporter_stack: ExporterStack) -> None:
    for method in ("DELETE", "POST"):
        error = assert_error(exporter_stack.api.call(method, "/api/v1/exporters/calibration"), 404, "unknown_exporter",
                             "'calibration'", "device, postprocessing")
        assert error["field"] == "exporter"
    assert_error(exporter_stack.api.call("GET", "/api/v1/exporters/device"), 405, "method_not_allowed", "POST, DELETE")
    assert all(e.serving for e in exporter_stack.exporters.values())


def test_exporter_routes_need_the_token(exporter_stack: ExporterStack) -> None:
    for method, path in (("GET", "/api/v1/exporters"), ("DELETE", "/api/v1/exporters/device"),
                         ("POST", "/api/v1/exporters/device")):
        for token in (None, "wrong-token"):
            error = assert_error(exporter_stack.api.call(method, path, token=token), 401, "unauthorized")
            assert error["field"] == "Authorization"
    assert exporter_stack.exporters["device"].serving and scrape(exporter_stack.exporters["device"].port)[0] == 200


def test_restart_on_a_port_taken_meanwhile_is_409_and_works_once_free(exporter_stack: ExporterStack) -> None:
    api, port = exporter_stack.api, exporter_stack.exporters["device"].port
    assert api.call("DELETE", "/api/v1/exporters/device").status == 200
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        error = assert_error(api.call("POST", "/api/v1/exporters/device"), 409, "exporter_unavailable", f"port {port}")
        assert error["field"] == "exporter"
    assert api.call("POST", "/api/v1/exporters/device").json == {"name": "device", "serving": True}
    assert scrape(port)[0] == 200


def test_client_lists_stops_and_starts_exporters(exporter_stack: ExporterStack) -> None:
    client = ControlClient(f"http://127.0.0.1:{exporter_stack.api.port}", TOKEN)
    assert [e["name"] for e in client.exporters()] == ["device", "postprocessing"]
    assert client.stop_exporter("postprocessing") == {"name": "postprocessing", "serving": False}
    assert not exporter_stack.exporters["postprocessing"].serving
    assert client.start_exporter("postprocessing") == {"name": "postprocessing", "serving": True}
    with pytest.raises(ApiResponseError) as err:
        client.stop_exporter("nope")
    assert err.value.status == 404 and err.value.field == "exporter"


def test_without_exporters_the_list_is_empty(api: Api) -> None:
    assert api.call("GET", "/api/v1/exporters").json == {"exporters": []}
    assert_error(api.call("DELETE", "/api/v1/exporters/device"), 404, "unknown_exporter", "(exporters: none)")


def test_without_kme_listeners_the_kme_list_is_empty_and_a_name_is_404(api: Api) -> None:
    assert api.call("GET", "/api/v1/kmes").json == {"kmes": []}
    for method in ("DELETE", "POST"):
        error = assert_error(api.call(method, "/api/v1/kmes/kme-north"), 404, "unknown_kme", "'kme-north'", "(kmes: none)")
        assert error["field"] == "kme"
