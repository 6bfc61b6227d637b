"""The pager sink: every good notification kept across restarts (kill -9 too), bad bodies refused, filters."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitoring import pager_sink
from qkdops.config import RuntimeSettings
from stack_helpers import free_ports, wait_for


def notification(alertname: str = "QKDLinkDown", link: str = "metro-bb84", status: str = "firing", severity: str = "page",
                 receiver: str = "pager-sink-page", **annotations: str) -> dict[str, Any]:
    """A webhook payload as Alertmanager 0.25 sends it."""
    labels = {"alertname": alertname, "link": link, "severity": severity, "class": "cause"}
    return {
        "receiver": receiver, "status": status, "version": "4", "truncatedAlerts": 0,
        "groupKey": f'{{}}/{{severity="{severity}"}}:{{alertname="{alertname}", link="{link}"}}',
        "groupLabels": {"alertname": alertname, "link": link}, "commonLabels": labels,
        "commonAnnotations": annotations, "externalURL": "http://127.0.0.1:9093",
        "alerts": [{"status": status, "labels": labels, "annotations": annotations,
                    "startsAt": "2024-05-01T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2024-05-01T12:05:00Z",
                    "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": "0123456789abcdef"}],
    }


class Sink:
    def __init__(self, state_dir: Path) -> None:
        self.settings = RuntimeSettings(state_dir=state_dir, pager_sink_port=0)
        self.server = pager_sink.serve(self.settings, TOKEN)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.stop()

    def post(self, kind: str, body: bytes | dict, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return request(f"{self.url}/webhook/{kind}", "POST", data, headers)

    def notifications(self, query: str = "") -> list[dict]:
        status, body = request(f"{self.url}/api/v1/notifications{query}")
        assert status == 200, body
        return body["notifications"]


TOKEN = "pager-sink-test-token_0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def request(url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """With the sink's token unless ``headers`` say otherwise (``{"Authorization": ""}``: none at all)."""
    merged = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    req = urllib.request.Request(url, method=method, data=data, headers={k: v for k, v in merged.items() if v})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    s = Sink(tmp_path / "state")
    yield s
    s.stop()


def test_notifications_are_kept_and_filtered(sink: Sink):
    assert sink.post("page", notification()) == (200, {"id": 1, "duplicate": False})
    time.sleep(0.01)  # received_at has millisecond resolution: keep the two notifications apart
    before_ticket = time.time()
    assert sink.post("ticket", notification("QKDQBERHigh", "tf-longhaul", "resolved", "ticket", "pager-sink-ticket"))[0] == 200
    all_ = sink.notifications()
    assert [n["id"] for n in all_] == [1, 2] and [n["kind"] for n in all_] == ["page", "ticket"]
    first = all_[0]
    assert first["receiver"] == "pager-sink-page" and first["alerts"][0]["labels"]["alertname"] == "QKDLinkDown"
    assert first["received_at"].endswith("Z") and first["groupKey"].startswith("{}/")
    for query, ids in [("?receiver=pager-sink-ticket", [2]), ("?kind=page", [1]), ("?alertname=QKDLinkDown", [1]),
                       ("?link=tf-longhaul", [2]), ("?status=resolved", [2]), ("?severity=page&link=metro-bb84", [1]),
                       ("?alertname=QKDLinkDown&link=tf-longhaul", []), (f"?since={before_ticket - 0.001}", [2]),
                       ("?since=2000-01-01T00:00:00Z", [1, 2]), ("?since=2999-01-01T00:00:00%2B02:00", [])]:
        assert [n["id"] for n in sink.notifications(query)] == ids, query
    status, body = request(f"{sink.url}/api/v1/notifications?limit=1")
    assert [n["id"] for n in body["notifications"]] == [1] and body["truncated"] is True
    assert request(f"{sink.url}/healthz") == (200, {"status": "ok", "notifications": 2})


def test_a_retry_is_acknowledged_once_and_a_repeat_later_is_a_new_record(sink: Sink, monkeypatch):
    body = json.dumps(notification()).encode()
    assert sink.post("page", body) == (200, {"id": 1, "duplicate": False})
    assert sink.post("page", body) == (200, {"id": 1, "duplicate": True})  # Alertmanager retrying after a timeout
    assert sink.post("ticket", body)[1] == {"id": 2, "duplicate": False}  # another endpoint: another notification
    later = time.time() + pager_sink.RETRY_WINDOW_S + 1
    monkeypatch.setattr(pager_sink.time, "time", lambda: later)
    assert sink.post("page", body)[1] == {"id": 3, "duplicate": False}  # a repeat_interval re-send
    assert len(sink.notifications()) == 3


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "body"),
    (b"\xff\xfe", "body"),
    (b"[]", "body"),
    (b'{"version": "4", "status": "firing", "receiver": "r", "groupKey": "k", "alerts": [{}], "x": NaN}', "body"),
    ({**notification(), "version": 4}, "version"),
    ({**notification(), "version": "3"}, "version"),
    ({k: v for k, v in notification().items() if k != "receiver"}, "receiver"),
    ({**notification(), "status": "pending"}, "status"),
    ({**notification(), "alerts": []}, "alerts"),
    ({**notification(), "commonLabels": {"link": 3}}, "commonLabels.link"),
    ({**notification(), "truncatedAlerts": -1}, "truncatedAlerts"),
    ({**notification(), "alerts": [{**notification()["alerts"][0], "labels": {"link": "a"}}]}, "alerts[0].labels.alertname"),
    ({**notification(), "alerts": [{**notification()["alerts"][0], "status": None}]}, "alerts[0].status"),
    ({**notification(), "alerts": [{**notification()["alerts"][0], "startsAt": 17}]}, "alerts[0].startsAt"),
    ({**notification(), "alerts": [notification()["alerts"][0], "x"]}, "alerts[1]"),
])
def test_a_malformed_body_is_a_400_naming_the_field_and_nothing_is_recorded(sink: Sink, body, field):
    status, answer = sink.post("page", body)
    assert status == 400 and answer["error"]["field"] == field, answer
    assert sink.post("page", notification())[0] == 200  # the next good one is kept
    assert len(sink.notifications()) == 1


def test_protocol_errors_are_json_too(sink: Sink):
    assert request(f"{sink.url}/webhook/sms", "POST", b"{}")[0] == 404
    status, body = request(f"{sink.url}/webhook/page")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    assert request(f"{sink.url}/api/v1/notifications", "POST", b"{}")[0] == 405
    for query, field in [("?alert=x", "alert"), ("?since=yesterday", "since"), ("?limit=0", "limit"), ("?status=ok", "status"),
                         ("?kind=sms", "kind"), ("?link=a&link=b", "link")]:
        status, body = request(f"{sink.url}/api/v1/notifications{query}")
        assert status == 400 and body["error"]["field"] == field, query
    big = b" " * (pager_sink.MAX_BODY_BYTES + 1)
    assert sink.post("page", big)[0] == 413
    assert sink.notifications() == []


def test_bodies_are_never_logged(sink: Sink, caplog):
    caplog.set_level(logging.DEBUG, logger="monitoring.pager_sink")
    marker = "do-not-log-3f9a"
    sink.post("page", notification(description=marker))
    sink.post("page", {**notification(description=marker), "status": "bogus"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "QKDLinkDown" in text and "refused" in text and marker not in text


def test_restart_keeps_every_notification(tmp_path: Path):
    first = Sink(tmp_path / "state")
    try:
        for i in range(5):
            assert first.post("page", notification(link=f"l{i}"))[0] == 200
    finally:
        first.stop()
    second = Sink(tmp_path / "state")
    try:
        assert [n["alerts"][0]["labels"]["link"] for n in second.notifications()] == [f"l{i}" for i in range(5)]
        assert second.post("page", notification(link="l5"))[1]["id"] == 6
    finally:
        second.stop()


def test_kill_9_loses_no_acknowledged_notification(tmp_path: Path):
    port = free_ports(1)[0]
    state = tmp_path / "state"
    code = ("import time; from pathlib import Path; from monitoring import pager_sink; from qkdops.config import RuntimeSettings; "
            f"pager_sink.serve(RuntimeSettings(state_dir=Path({str(state)!r}), pager_sink_port={port}), {TOKEN!r}); time.sleep(60)")
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: request(f"{url}/healthz")[0] == 200, 20, "the sink subprocess")
        acknowledged = [request(f"{url}/webhook/page", "POST", json.dumps(notification(link=f"k{i}")).encode())[1]["id"] for i in range(20)]
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    after = Sink(state)
    try:
        assert [n["id"] for n in after.notifications()] == acknowledged
    finally:
        after.stop()


def test_up_serves_it_on_the_runtime_port(tmp_path: Path):
    port = free_ports(1)[0]
    server = pager_sink.serve(dataclasses.replace(RuntimeSettings(), state_dir=tmp_path, pager_sink_port=port), TOKEN)
    try:
        assert server.server_address[:2] == ("127.0.0.1", port)
        assert (tmp_path / pager_sink.DB_NAME).exists()
    finally:
        server.stop()


def test_reads_come_in_pages_bounded_in_count_and_bytes(sink: Sink, monkeypatch):
    for i in range(5):
        assert sink.post("page", notification(link=f"link-{i}"))[0] == 200
    status, body = request(f"{sink.url}/api/v1/notifications?limit=2")
    assert [n["id"] for n in body["notifications"]] == [1, 2] and body["truncated"] and body["next_after"] == 2
    status, body = request(f"{sink.url}/api/v1/notifications?limit=2&after=4")
    assert [n["id"] for n in body["notifications"]] == [5] and not body["truncated"] and body["next_after"] is None
    one = len(json.dumps(notification(link="link-0"), separators=(",", ":")))
    monkeypatch.setattr(pager_sink, "MAX_READ_BYTES", 2 * one + 10)          # two bodies fit, the third does not
    status, body = request(f"{sink.url}/api/v1/notifications")
    assert [n["id"] for n in body["notifications"]] == [1, 2] and body["truncated"] and body["next_after"] == 2
    monkeypatch.setattr(pager_sink, "MAX_READ_BYTES", 1)                      # a page always holds at least one
    assert [n["id"] for n in request(f"{sink.url}/api/v1/notifications?after=2")[1]["notifications"]] == [3]
    for bad in ("after=-1", "after=x", "after=1&after=2", "after=" + "9" * 30):
        assert request(f"{sink.url}/api/v1/notifications?{bad}")[0] == 400, bad


def test_retention_bounds_the_store_by_count_bytes_and_age(tmp_path: Path, monkeypatch):
    store = pager_sink.NotificationStore(tmp_path / "sink.sqlite")
    raw = json.dumps(notification()).encode()
    monkeypatch.setattr(pager_sink, "MAX_KEPT", 3)
    for i in range(5):
        store.record("page", notification(link=f"l{i}"), raw + bytes([i]), now=1000.0 + i)
    assert [n["id"] for n in store.query(pager_sink.Query())[0]] == [3, 4, 5]       # the newest three
    size = len(json.dumps(notification(link="l0"), separators=(",", ":")))
    monkeypatch.setattr(pager_sink, "MAX_KEPT_BYTES", 2 * size)
    store.record("page", notification(link="l5"), raw + b"5", now=1005.0)
    assert [n["id"] for n in store.query(pager_sink.Query())[0]] == [5, 6]
    monkeypatch.setattr(pager_sink, "MAX_KEPT_BYTES", 1)
    store.record("page", notification(link="l6"), raw + b"6", now=1006.0)
    assert [n["id"] for n in store.query(pager_sink.Query())[0]] == [7]             # the newest is always kept
    store.record("page", notification(link="l7"), raw + b"7", now=1006.0 + pager_sink.RETAIN_S + 1)
    assert store.count() == 1                                                        # older than 30 days: gone
    store.close()


def test_a_store_from_before_retention_is_upgraded_in_place(tmp_path: Path):
    path = tmp_path / "sink.sqlite"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE notifications (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at REAL NOT NULL, "
                     "kind TEXT NOT NULL, receiver TEXT NOT NULL, digest TEXT NOT NULL, body TEXT NOT NULL);")
    db.execute("INSERT INTO notifications (received_at, kind, receiver, digest, body) VALUES (?, 'page', 'r', 'd', ?)",
               (time.time(), json.dumps(notification())))
    db.commit()
    db.close()
    store = pager_sink.NotificationStore(path)
    assert [n["id"] for n in store.query(pager_sink.Query())[0]] == [1]
    assert store.record("page", notification(link="x"), b"x")[0] == 2
    store.close()


@pytest.mark.parametrize("authorization", ["", "Bearer wrong-token", "Basic cWtkb3BzOng=", "Bearer", TOKEN + "x"])
def test_writes_and_reads_need_the_bearer_token(tmp_path: Path, authorization: str):
    """Unauthenticated webhooks and reads are refused (401, WWW-Authenticate, nothing recorded); /healthz stays open."""
    sink = Sink(tmp_path)
    try:
        headers = {"Authorization": authorization}
        req = urllib.request.Request(f"{sink.url}/webhook/page", method="POST", data=json.dumps(notification()).encode(),
                                     headers={k: v for k, v in {"Content-Type": "application/json", **headers}.items() if v})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        with refused.value as answer:
            assert answer.code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer")
            error = json.loads(answer.read())["error"]
        assert error["code"] == "unauthorized" and error["field"] == "Authorization" and TOKEN not in json.dumps(error)
        assert request(f"{sink.url}/api/v1/notifications", headers=headers)[0] == 401
        assert request(f"{sink.url}/api/v1/notifications?limit=x", headers=headers)[0] == 401  # before any parsing
        assert request(f"{sink.url}/healthz", headers=headers) == (200, {"status": "ok", "notifications": 0})
        assert sink.notifications() == []
    finally:
        sink.stop()


def test_the_token_authenticates(tmp_path: Path):
    sink = Sink(tmp_path)
    try:
        assert sink.post("page", notification(link="l1"))[0] == 200
        assert [n["alerts"][0]["labels"]["link"] for n in sink.notifications()] == ["l1"]
    finally:
        sink.stop()


@pytest.mark.parametrize("token", ["", "two words"])
def test_serve_refuses_an_unusable_token(tmp_path: Path, token: str):
    with pytest.raises(ValueError, match="token"):
        pager_sink.serve(RuntimeSettings(state_dir=tmp_path, pager_sink_port=0), token)
