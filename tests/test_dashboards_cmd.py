"""``qkdops dashboards check/push/render`` against a stub Grafana speaking the endpoints grafana-client calls."""

from __future__ import annotations

import copy
import importlib.util
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qkdops import credentials
from qkdops_cli import dashboards_cmd
from qkdops_cli.cli import main
from stack_helpers import metro_fleet_yaml

TOKEN = "glsa_test-secret-token-0123456789"
UIDS = ["qkdops-executive", "qkdops-oncall", "qkdops-debug", "qkdops-slo"]


class StubGrafana:
    """In-memory folders and dashboards; every endpoint but /api/health needs ``Authorization: Bearer TOKEN``."""

    def __init__(self) -> None:
        self.folders: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}  # uid -> {"dashboard": ..., "meta": ...}
        self.writes: list[tuple[str, str]] = []  # (path, message) of every state-changing request
        self.auth_headers: list[str] = []
        self.lock = threading.Lock()
        self.next_id = 1
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                header = self.headers.get("Authorization", "")
                stub.auth_headers.append(header)
                if header != f"Bearer {TOKEN}":
                    self._send(401, {"message": "invalid API key"})
                    return False
                return True

            def do_GET(self) -> None:
                if self.path == "/api/health":
                    return self._send(200, {"database": "ok", "version": "11.2.0", "commit": "stub"})
                if not self._authorised():
                    return
                with stub.lock:
                    if self.path == "/api/folders":
                        return self._send(200, list(stub.folders.values()))
                    if self.path.startswith("/api/folders/"):
                        folder = stub.folders.get(self.path.rsplit("/", 1)[1])
                        return self._send(200, folder) if folder else self._send(404, {"message": "folder not found"})
                    if self.path.startswith("/api/dashboards/uid/"):
                        got = stub.dashboards.get(self.path.rsplit("/", 1)[1])
                        if got is None:
                            return self._send(404, {"message": "Dashboard not found"})
                        return self._send(200, got)
                self._send(404, {"message": "not found"})

            def do_POST(self) -> None:
                if not self._authorised():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub.lock:
                    if self.path == "/api/folders":
                        uid = body.get("uid")
                        if uid in stub.folders:
                            return self._send(409, {"message": "a folder with the same uid already exists"})
                        stub.folders[uid] = {"id": stub.next_id, "uid": uid, "title": body["title"], "version": 1}
                        stub.next_id += 1
                        stub.writes.append((self.path, body["title"]))
                        return self._send(200, stub.folders[uid])
                    if self.path == "/api/dashboards/db":
                        d = copy.deepcopy(body["dashboard"])
                        uid = d["uid"]
                        old = stub.dashboards.get(uid)
                        if old is not None and not body.get("overwrite"):
                            return self._send(412, {"message": "version-mismatch", "status": "version-mismatch"})
                        if body.get("folderUid") and body["folderUid"] not in stub.folders:
                            return self._send(400, {"message": "folder not found"})
                        d["id"] = old["dashboard"]["id"] if old else stub.next_id
                        d["version"] = old["dashboard"]["version"] + 1 if old else 1
                        stub.next_id += 1
                        stub.dashboards[uid] = {"dashboard": d, "meta": {"folderUid": body.get("folderUid", ""),
                                                                           "version": d["version"]}}
                        stub.writes.append((self.path, body.get("message", "")))
                        return self._send(200, {"id": d["id"], "uid": uid, "status": "success",
                                                "version": d["version"], "url": f"/d/{uid}"})
                self._send(404, {"message": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> StubGrafana:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def grafana(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubGrafana]:
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    with StubGrafana() as stub:
        yield stub


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict | None, str]:
    code = main(["dashboards", *argv])
    captured = capsys.readouterr()
    body = json.loads(captured.out) if "--json" in argv and captured.out.strip() else None
    return code, body, captured.out + captured.err


def statuses(body: dict) -> dict[str, str]:
    return {row["uid"]: row["status"] for row in body["dashboards"]}


def test_check_on_an_empty_grafana_reports_every_dashboard_missing(grafana, capsys):
    code, body, _ = run(capsys, "check", "--url", grafana.url, "--json")
    assert code == 1 and body["drift"] is True
    assert statuses(body) == dict.fromkeys(UIDS, "missing")
    assert body["grafana"] == {"database": "ok", "version": "11.2.0"}
    assert all(h == f"Bearer {TOKEN}" for h in grafana.auth_headers)


def test_push_then_check_is_all_current(grafana, capsys):
    code, body, _ = run(capsys, "push", "--url", grafana.url, "--json")
    assert code == 0
    assert statuses(body) == {"folder:qkdops": "created", **dict.fromkeys(UIDS, "created")}
    assert grafana.folders["qkdops"]["title"] == "QKD"
    assert {v["meta"]["folderUid"] for v in grafana.dashboards.values()} == {"qkdops"}
    assert all(msg.startswith("qkdops dashboards push:") for path, msg in grafana.writes if path.endswith("/db"))
    code, body, out = run(capsys, "check", "--url", grafana.url, "--json")
    assert code == 0 and body["drift"] is False
    assert statuses(body) == dict.fromkeys(UIDS, "current")
    code, _, out = run(capsys, "check", "--url", grafana.url)
    assert code == 0 and "qkdops-oncall" in out and "current" in out


def test_push_is_idempotent(grafana, capsys):
    assert run(capsys, "push", "--url", grafana.url)[0] == 0
    writes, versions = len(grafana.writes), {u: d["dashboard"]["version"] for u, d in grafana.dashboards.items()}
    code, body, _ = run(capsys, "push", "--url", grafana.url, "--json")
    assert code == 0
    assert statuses(body) == {"folder:qkdops": "unchanged", **dict.fromkeys(UIDS, "unchanged")}
    assert len(grafana.writes) == writes
    assert {u: d["dashboard"]["version"] for u, d in grafana.dashboards.items()} == versions


def test_modified_dashboard_is_drift_and_push_repairs_it(grafana, capsys):
    assert run(capsys, "push", "--url", grafana.url)[0] == 0
    stored = grafana.dashboards["qkdops-oncall"]["dashboard"]
    stored["panels"][0]["title"] = "edited in the UI"
    stored["iteration"] = 123456  # Grafana-managed fields alone are not drift
    grafana.dashboards["qkdops-slo"]["dashboard"]["version"] = 99
    code, body, _ = run(capsys, "check", "--url", grafana.url, "--json")
    assert code == 1 and body["drift"] is True
    assert statuses(body) == {**dict.fromkeys(UIDS, "current"), "qkdops-oncall": "differs"}
    row = next(r for r in body["dashboards"] if r["uid"] == "qkdops-oncall")
    assert row["fields"] == ["panels"]
    code, _, out = run(capsys, "check", "--url", grafana.url)
    assert code == 1 and "qkdops-oncall" in out and "differs (panels)" in out
    code, body, _ = run(capsys, "push", "--url", grafana.url, "--json")
    assert code == 0 and statuses(body)["qkdops-oncall"] == "updated"
    assert statuses(body)["qkdops-slo"] == "unchanged"
    assert grafana.dashboards["qkdops-oncall"]["dashboard"]["version"] == 2
    assert run(capsys, "check", "--url", grafana.url)[0] == 0


def test_deleted_dashboard_is_reported_missing(grafana, capsys):
    assert run(capsys, "push", "--url", grafana.url)[0] == 0
    del grafana.dashboards["qkdops-debug"]
    code, body, _ = run(capsys, "check", "--url", grafana.url, "--json")
    assert code == 1
    assert statuses(body) == {**dict.fromkeys(UIDS, "current"), "qkdops-debug": "missing"}


def test_selected_variable_values_are_not_drift():
    committed = dashboards_cmd.load_dashboards()[1]
    stored = copy.deepcopy(committed)
    for variable in stored["templating"]["list"]:
        variable["current"] = {"text": "tf-a", "value": "tf-a"}
    stored.update(id=7, version=3, iteration=1)
    assert dashboards_cmd.compare(committed, stored) == ("current", [])
    stored["templating"]["list"][0]["name"] = "renamed"
    assert dashboards_cmd.compare(committed, stored) == ("differs", ["templating"])


@pytest.mark.parametrize("action", ["check", "push"])
def test_wrong_token_is_exit_2_without_the_token(grafana, capsys, monkeypatch, tmp_path, action):
    wrong = "glsa_wrong-token-must-not-appear"
    token_file = tmp_path / "token"
    token_file.write_text(wrong + "\n")
    code, _, out = run(capsys, action, "--url", grafana.url, "--token-file", str(token_file), "--json")
    assert code == 2
    assert "rejected the token (HTTP 401)" in out
    assert wrong not in out and TOKEN not in out
    assert f"Bearer {wrong}" in grafana.auth_headers  # the file's token was sent, stripped
    assert not grafana.writes


def test_missing_token_and_bad_url_are_exit_2(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    code, _, out = run(capsys, "check", "--url", "http://127.0.0.1:1")
    assert code == 2 and "--token-file" in out and "GRAFANA_TOKEN" in out
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, _, out = run(capsys, "check", "--url", "http://127.0.0.1:1", "--token-file", str(empty))
    assert code == 2 and "--token-file" in out and "empty" in out
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    code, _, out = run(capsys, "check", "--url", "grafana:3000")
    assert code == 2 and "--url" in out
    code, _, out = run(capsys, "push", "--url", "http://admin:hunter2@127.0.0.1:3000")
    assert code == 2 and "--url" in out and "hunter2" not in out and TOKEN not in out


def test_unreachable_grafana_is_exit_1(capsys, monkeypatch):
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for action in ("check", "push"):
        code, _, out = run(capsys, action, "--url", f"http://127.0.0.1:{port}", "--timeout", "2")
        assert code == 1
        assert "unreachable" in out and TOKEN not in out


def test_render_rejects_bad_input_naming_the_option(capsys, tmp_path):
    code, _, out = run(capsys, "render", "--prometheus", "http://127.0.0.1:1", "--link", "bb84-a",
                       "--since", "fifteen", "--out", str(tmp_path / "x.png"))
    assert code == 2 and "--since" in out
    assert dashboards_cmd.parse_since("15m") == 900 and dashboards_cmd.parse_since("2h") == 7200


@pytest.mark.skipif(importlib.util.find_spec("dashboards.render") is None,
                    reason="dashboards.render (render_panels) is not present yet; written concurrently")
def test_render_calls_render_panels_with_the_window(capsys, monkeypatch, tmp_path):
    import dashboards.render

    calls = []

    def fake(prometheus_url, dashboard, link, start, end, out, step_s=5.0, auth=None):
        calls.append((prometheus_url, dashboard, link, start, end, out, step_s))
        assert auth is not None and auth.header.startswith("Basic ")  # read from the config's state dir
        Path(out).write_bytes(b"\x89PNG")
        return Path(out)

    monkeypatch.setattr(dashboards.render, "render_panels", fake)
    out_file = tmp_path / "oncall.png"
    config = tmp_path / "links.yaml"
    config.write_text(metro_fleet_yaml(("bb84-a",)))
    credentials.prepare_server_credentials(tmp_path / "state", environ={})
    code, _, out = run(capsys, "render", "--prometheus", "http://prom:9090", "--link", "bb84-a",
                       "--since", "15m", "--config", str(config), "--out", str(out_file))
    assert code == 0 and str(out_file) in out
    (url, dash, link, start, end, path, step), = calls
    assert (url, dash, link, path, step) == ("http://prom:9090", "oncall", "bb84-a", out_file, 5.0)
    assert end - start == pytest.approx(900)
