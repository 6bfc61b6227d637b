"""dashboards.render: key on-call panels to PNG, against a stub Prometheus (fast) and the real stack (slow)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from dashboards.render import KEY_PANELS, PNG_SIGNATURE, RenderError, main, parse_duration, render_panels
from qkdops import credentials
from stack_helpers import FAST_LINK, RunningStack, e2e_profile, wait_for

ROOT = Path(__file__).resolve().parent.parent
START, END, STEP = 1_700_000_000.0, 1_700_000_600.0, 10.0


class StubPrometheus:
    """Canned /api/v1/query_range matrices; records every query; ``fail_on`` substrings answer 400."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.authorizations: set[str | None] = set()   # every Authorization header it was sent
        self.fail_on: str | None = None
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query))
                stub.authorizations.add(self.headers.get("Authorization"))
                if url.path == "/api/v1/status/config":
                    return self.reply(200, {"status": "success", "data": {"yaml": "global:\n  scrape_interval: 1s\n"}})
                if url.path != "/api/v1/query_range":
                    return self.reply(404, {"status": "error", "error": "not found"})
                query = params["query"]
                stub.queries.append(query)
                if stub.fail_on and stub.fail_on in query:
                    return self.reply(400, {"status": "error", "errorType": "bad_data", "error": "parse error: boom"})
                start, end, step = float(params["start"]), float(params["end"]), float(params["step"])
                return self.reply(200, {"status": "success", "data": {"resultType": "matrix",
                                                                      "result": stub.matrix(query, start, end, step)}})

            def reply(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def matrix(query: str, start: float, end: float, step: float) -> list[dict]:
        times = [start + i * step for i in range(int((end - start) // step) + 1)]
        cut = (start + 200, start + 300)  # the "incident"
        if query.startswith("ALERTS"):
            return [{"metric": {"__name__": "ALERTS", "alertname": "QKDLinkDown", "link": "demo", "alertstate": "firing"},
                     "values": [[t, "1"] for t in times if cut[0] <= t <= cut[1]]}]
        if "qkd_phase_locked" in query:  # not on a BB84 link: the panel's A target is empty
            return []
        if "qber" in query and "threshold" not in query:
            return [{"metric": {"link": "demo", "basis": basis}, "values": [[t, str(0.02 if basis == "Z" else 0.025)]
                                                                            for t in times if not cut[0] <= t <= cut[1]]}
                    for basis in ("X", "Z")]
        if "reason" in query:
            return [{"metric": {"reason": "qber_too_high"}, "values": [[t, "2" if cut[0] <= t <= cut[1] else "0"] for t in times]}]
        return [{"metric": {"link": "demo"}, "values": [[t, str(0.0 if cut[0] <= t <= cut[1] else 1000.0)] for t in times]}]

    def __enter__(self) -> StubPrometheus:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus() -> Iterator[StubPrometheus]:
    with StubPrometheus() as stub:
        yield stub


def assert_png(path: Path) -> Image.Image:
    assert path.exists() and path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = Image.open(path)
    image.load()
    return image


def test_render_oncall_panels_to_png(prometheus, tmp_path):
    out = render_panels(prometheus.url, "oncall", "demo", START, END, tmp_path / "sub" / "oncall.png", step_s=STEP)
    assert out == tmp_path / "sub" / "oncall.png"
    image = assert_png(out)
    assert image.width >= 1200 and image.height >= 1000
    panels = json.loads(image.text["qkdops:panels"])
    assert panels == [*KEY_PANELS["oncall"], "Firing alerts for demo"]
    assert int(image.text["qkdops:axes"]) == len(KEY_PANELS["oncall"]) + 1 == 8
    # every query was a substituted range query, and the alert shading was asked for this link only
    assert prometheus.queries and not any("$" in q for q in prometheus.queries)
    assert 'qkd_link:qber:ratio_rate5m{link="demo"}' in prometheus.queries
    assert 'sum(rate(qkd_secret_key_bits_total{link="demo"}[11s]))' in prometheus.queries  # max(10 s + 1 s, 4 × 1 s)
    assert 'ALERTS{link="demo", alertstate="firing"}' in prometheus.queries
    assert not any("Firing alerts" in q or "table" in q for q in prometheus.queries)


def test_a_failing_query_names_its_panel(prometheus, tmp_path):
    prometheus.fail_on = "qkd_dark_count_rate_hertz"
    with pytest.raises(RenderError, match=r"panel 'Dark counts vs nominal' target A: .*parse error: boom"):
        render_panels(prometheus.url, "oncall", "demo", START, END, tmp_path / "x.png", step_s=STEP)
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(RenderError, match="no dashboard 'nope'"):
        render_panels(prometheus.url, "nope", "demo", START, END, tmp_path / "x.png")


def test_unreachable_prometheus_is_a_clear_error(tmp_path):
    with pytest.raises(RenderError, match="panel 'Secret key rate vs target'"):
        render_panels("http://127.0.0.1:9", "oncall", "demo", START, END, tmp_path / "x.png")


def test_cli(prometheus, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli.png"
    # Prometheus's basic auth: the password from the file the variable names (else <state_dir>/prometheus-password)
    monkeypatch.setenv("QKDOPS_PROMETHEUS_PASSWORD_FILE", str(tmp_path / "missing"))
    assert main(["--prometheus", prometheus.url, "--link", "demo", "--since", "10m", "--out", str(out)]) == 1
    assert str(tmp_path / "missing") in capsys.readouterr().err and not prometheus.queries
    (tmp_path / "password").write_text("stub-password\n")
    (tmp_path / "password").chmod(0o600)
    monkeypatch.setenv("QKDOPS_PROMETHEUS_PASSWORD_FILE", str(tmp_path / "password"))
    assert main(["--prometheus", prometheus.url, "--link", "demo", "--dashboard", "oncall", "--since", "10m",
                 "--out", str(out)]) == 0
    assert_png(out)
    assert capsys.readouterr().out.strip() == str(out)
    assert prometheus.authorizations == {credentials.basic("qkdops", "stub-password")}
    prometheus.fail_on = "ALERTS"
    assert main(["--prometheus", prometheus.url, "--link", "demo", "--since", "1m", "--out", str(out)]) == 1
    assert "ALERTS" in capsys.readouterr().err
    assert parse_duration("1m30s") == 90 and parse_duration("2h") == 7200 and parse_duration("45") == 45
    with pytest.raises(ValueError):
        parse_duration("10 minutes")


def demo_incident(tmp_path: Path, out: Path, cut_s: float = 25.0, after_s: float = 20.0) -> Path:
    """Key on e2e-fast, a fibre cut for ``cut_s``, recovery for ``after_s``; render the on-call dashboard over it all."""
    stack = RunningStack(e2e_profile(tmp_path, [FAST_LINK]))
    link = FAST_LINK["id"]
    try:
        stack.wait_up(60)
        wait_for(lambda: stack.by_link(f'increase(qkd_secret_key_bits_total{{link="{link}"}}[3s]) > 0'), 45,
                 f"key on {link}", stack)
        start = time.time() - 5
        time.sleep(15)  # a healthy baseline before the cut
        stack.api("POST", f"/api/v1/links/{link}/faults", {"fault": "fiber_cut"})
        time.sleep(cut_s)
        stack.api("DELETE", f"/api/v1/links/{link}/faults/fiber_cut")
        time.sleep(after_s)
        end = time.time()
        return render_panels(stack.url("prometheus_port"), "oncall", link, start, end, out, step_s=2.0, auth=stack.auth.prometheus)
    finally:
        stack.stop()


@pytest.mark.slow
def test_render_a_real_fibre_cut(tmp_path):
    began = time.monotonic()
    out = demo_incident(tmp_path, tmp_path / "incident.png")
    image = assert_png(out)
    assert int(image.text["qkdops:axes"]) == 8
    assert time.monotonic() - began < 150
    if os.environ.get("QKDOPS_WRITE_DEMO_PNG"):  # refresh the README picture: QKDOPS_WRITE_DEMO_PNG=1 pytest -k fibre_cut
        shutil.copyfile(out, ROOT / "docs" / "oncall-demo-incident.png")
