"""The one HTTP layer (qkdops/http_server.py) on a small service: what every qkdops port promises
whatever a client sends — routing, sizes, deadlines, auth before the body, JSON errors, bounded
connections and threads. Raw sockets, so malformed and stalled requests are really sent."""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkdops.http_server import OTHER_ROUTE, HttpServer, Limits, Request, Response, Route, Service, json_response, raise_open_file_limit

DEADLINE_S = 0.6
SECRET = "s3cr3t-token-value"


class Rig:
    def __init__(self, **limits: object) -> None:
        self.observed: list[tuple[str, int]] = []
        self.bodies: list[bytes] = []
        self.started = threading.Event()

        def echo(req: Request) -> Response:
            self.bodies.append(req.body)
            return json_response(HTTPStatus.OK, {"params": dict(req.params), "query": req.query, "body": len(req.body)})

        def boom(req: Request) -> Response:
            raise RuntimeError(f"internal detail {SECRET}")

        def authenticate(headers: object) -> Response | None:
            ok = headers.get("Authorization") == "Bearer good"  # type: ignore[attr-defined]
            return None if ok else json_response(HTTPStatus.UNAUTHORIZED, {"error": {"code": "unauthorized"}})

        self.service = Service("test", [
            Route("/items/{item}", {"GET": echo, "POST": echo}, "items", public=True),
            Route("/items/{item}/parts/{part}", {"DELETE": echo}, "parts", public=True),
            Route("/docs{*rest}", {"GET": echo}, "docs", public=True),
            Route("/private", {"POST": echo}, "private"),
            Route("/boom", {"GET": boom}, "boom", public=True),
        ], limits=Limits(**{"deadline_s": DEADLINE_S, "max_body_bytes": 1000, **limits}),  # type: ignore[arg-type]
            authenticate=authenticate, observe=lambda route, status, seconds: self.observed.append((route, status)))
        self.server = HttpServer(self.service, "127.0.0.1", 0)
        self.port = self.server.server_port

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def raw(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send ``data`` on a new connection, read until the server closes or one answer is complete."""
        with self.connect() as conn:
            conn.sendall(data)
            return read_answer(conn)


def read_answer(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an answer: {buffer!r}")
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def get(path: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n".encode()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.server.stop()


def assert_json_error(answer: tuple[int, dict[str, str], bytes], status: int) -> dict:
    code, headers, body = answer
    assert code == status, body
    assert headers["content-type"].startswith("application/json") and "cache-control" in headers
    error = json.loads(body)["error"]
    assert error["message"] and SECRET not in body.decode() and "Traceback" not in body.decode()
    return error


def test_path_parameters_are_url_decoded_and_a_slash_inside_one_cannot_forge_a_segment(rig: Rig) -> None:
    code, _, body = rig.raw(get("/items/sae%20one%2Fx?q=1&q=2"))
    assert code == 200 and json.loads(body)["params"] == {"item": "sae one/x"} and json.loads(body)["query"] == {"q": ["1", "2"]}
    code, _, body = rig.raw(get("/items/a/parts/b%2Fc", method="DELETE"))
    assert code == 200 and json.loads(body)["params"] == {"item": "a", "part": "b/c"}
    assert rig.raw(get("/items/a/"))[0] == 200                      # a trailing slash is ignored
    assert json.loads(rig.raw(get("/docs/../../etc/passwd"))[2])["params"] == {"rest": "/../../etc/passwd"}


def test_unknown_paths_and_methods_get_json_404_405_with_allow_and_501(rig: Rig) -> None:
    assert_json_error(rig.raw(get("/nothing/here")), 404)
    assert ("other", 404) in rig.observed
    code, headers, _ = rig.raw(get("/items/x", method="PUT"))
    assert code == 405 and headers["allow"] == "GET, POST, HEAD"
    assert_json_error(rig.raw(get("/items/x", method="BREW")), 501)
    assert_json_error(rig.raw(b"\x16\x03\x01 hello\r\n\r\n"), 400)   # TLS (or garbage) on a plain port


def test_head_is_get_without_the_body(rig: Rig) -> None:
    full = rig.raw(get("/items/x"))
    with rig.connect() as conn:
        conn.sendall(get("/items/x", method="HEAD"))
        time.sleep(0.2)
        data = conn.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest == b""
    assert f"Content-Length: {len(full[2])}".encode() in head


def test_oversized_request_line_headers_and_body_are_refused_with_their_status(rig: Rig) -> None:
    assert_json_error(rig.raw(get("/items/" + "a" * 9000)), 414)
    assert_json_error(rig.raw(get("/items/x", f"X-Big: {'b' * 9000}{SECRET}\r\n")), 431)
    assert_json_error(rig.raw(get("/items/x", "".join(f"X-{i}: y\r\n" for i in range(150)))), 431)
    # refused on its Content-Length: the answer comes before (and without) the body
    with rig.connect() as conn:
        conn.sendall(b"POST /items/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5000000\r\n\r\n")
        assert_json_error(read_answer(conn), 413)
    assert_json_error(rig.raw(b"POST /items/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 411)
    assert rig.bodies == []


def test_a_body_within_the_limit_reaches_the_handler_whole(rig: Rig) -> None:
    body = b"x" * 1000
    code, _, answer = rig.raw(b"POST /items/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + body)
    assert code == 200 and json.loads(answer)["body"] == 1000 and rig.bodies == [body]


def test_a_stalled_body_gets_408_and_stalled_headers_are_cut_at_the_deadline(rig: Rig) -> None:
    with rig.connect() as conn:
        conn.sendall(b"POST /items/x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n{")
        began = time.monotonic()
        assert_json_error(read_answer(conn), 408)
        assert DEADLINE_S * 0.8 <= time.monotonic() - began < DEADLINE_S + 3
    with rig.connect() as conn:
        conn.sendall(b"GET /items/x HTTP/1.1\r\nHo")
        began = time.monotonic()
        assert conn.recv(100) == b""     # closed by the server, not waited on for ever
        assert time.monotonic() - began < DEADLINE_S + 3


def test_authentication_comes_before_the_body_is_read(rig: Rig) -> None:
    with rig.connect() as conn:   # the declared body is never sent: the 401 must not wait for it
        conn.sendall(b"POST /private HTTP/1.1\r\nHost: h\r\nContent-Length: 900\r\n\r\n")
        began = time.monotonic()
        assert read_answer(conn)[0] == 401 and time.monotonic() - began < DEADLINE_S
    body = b"{}"
    code, _, _ = rig.raw(b"POST /private HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer good\r\nContent-Length: 2\r\n"
                         b"Connection: close\r\n\r\n" + body)
    assert code == 200 and rig.bodies == [body]


def test_a_handler_exception_is_a_generic_500_observed_under_its_route(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    error = assert_json_error(rig.raw(get("/boom")), 500)
    assert "see its log" in error["message"]
    assert ("boom", 500) in rig.observed
    assert any(r.exc_info for r in caplog.records if "GET /boom failed" in r.getMessage())
    assert rig.raw(get("/items/x"))[0] == 200                        # still serving


def test_connections_over_the_cap_are_answered_503_not_left_to_time_out() -> None:
    rig = Rig(max_connections=3)
    held = [rig.connect() for _ in range(3)]
    try:
        for conn in held:
            conn.sendall(b"GET /items/x HTTP/1.1\r\nHost: h\r\n\r\n")
            assert read_answer(conn)[0] == 200          # open, kept alive
        with rig.connect() as extra:
            code, headers, body = read_answer(extra)
        assert code == 503 and headers["retry-after"] == "1" and json.loads(body)["error"]["message"]
        assert (OTHER_ROUTE, 503) in rig.observed
    finally:
        for conn in held:
            conn.close()
        rig.server.stop()


def test_slow_clients_hold_no_threads_and_a_normal_client_is_still_served(rig: Rig) -> None:
    threads = threading.active_count()
    slow = [rig.connect() for _ in range(100)]
    try:
        for conn in slow:
            conn.sendall(b"GET /items/x HTT")
        for _ in range(5):
            assert rig.raw(get("/items/x"))[0] == 200
        assert threading.active_count() <= threads + rig.service.limits.workers
    finally:
        for conn in slow:
            conn.close()


def test_limits_refuse_nonsense_and_equal_line_and_field_limits() -> None:
    for bad in ({"backlog": 5}, {"workers": 0}, {"deadline_s": 0.0}, {"max_line_bytes": 8190, "max_field_bytes": 8190}):
        with pytest.raises(ValueError):
            Limits(**bad)  # type: ignore[arg-type]


def test_stop_refuses_new_connections_and_a_taken_port_is_an_oserror(rig: Rig) -> None:
    with pytest.raises(OSError):
        HttpServer(rig.service, "127.0.0.1", rig.port)
    rig.server.stop()
    rig.server.stop()   # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", rig.port), timeout=2)
    again = HttpServer(rig.service, "127.0.0.1", rig.port)   # the same port at once (SO_REUSEADDR)
    try:
        assert again.server_port == rig.port
    finally:
        again.stop()


# ---- fuzzing the parser and the router with whole requests ------------------------------------------------
_TOKENS = st.sampled_from(["GET", "POST", "HEAD", "DELETE", "BREW", "get", "G\x00T", "", " ", "/", "/items/", "/items/x",
                           "/private", "/docs/..", "%2F", "%", "%zz", "?", "?a=%ff", "#", "\t", "\xff", "HTTP/1.1",
                           "HTTP/9.9", "Content-Length: ", "Transfer-Encoding: chunked", "Authorization: Bearer good",
                           "Host: h", ":", "\r\n", "\n", "\r", "-1", "99999999999999999999", "0", "3"])
_REQUESTS = st.lists(st.one_of(_TOKENS, st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))),
                     max_size=25).map(lambda parts: " ".join(parts).encode("latin-1", "replace") + b"\r\n\r\n")


@settings(max_examples=int(os.environ.get("QKDOPS_FUZZ_EXAMPLES", "0")) or 120, deadline=None,
          derandomize=not os.environ.get("QKDOPS_FUZZ_EXAMPLES"), suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=_REQUESTS)
def test_any_bytes_get_a_json_answer_or_a_close_never_a_500(rig: Rig, request: bytes) -> None:
    with rig.connect() as conn:
        conn.settimeout(DEADLINE_S + 5)
        conn.sendall(request)
        try:
            code, headers, body = read_answer(conn)
        except (ConnectionError, TimeoutError):
            code = None    # a request the server is still waiting on is cut at the deadline: a close
    if code is not None:
        assert code != 500 and headers["content-type"].startswith(("application/json", "text/")), (request, code)
        if code >= 400:
            assert json.loads(body)["error"]["message"]
    assert all(status != 500 for _, status in rig.observed)


def test_the_open_file_limit_is_lifted_within_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit = raise_open_file_limit(4096)
        assert limit == resource.getrlimit(resource.RLIMIT_NOFILE)[0] == min(4096, hard)
        assert raise_open_file_limit(512) == limit          # never lowered
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
