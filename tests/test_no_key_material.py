"""No key material in any metric, log line, trace or error: scan everything the runtime emits."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kme_harness import kme_rig

from exporters import DeviceCollector, PostProcessingCollector, render
from control_api import server as control_api
from qkdops.kme.client import EtsiClientError

FORMS = (bytes.hex, lambda b: b.hex().upper(), lambda b: base64.b64encode(b).decode(), lambda b: base64.urlsafe_b64encode(b).decode(),
         lambda b: b.decode("latin-1"))


def _request(url: str, token: str, method: str = "GET", body: bytes | None = None) -> str:
    request = urllib.request.Request(url, method=method, data=body, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()
    except urllib.error.HTTPError as err:
        return err.read().decode()


def test_keys_appear_only_in_the_key_stores_and_in_the_saes_answers(tmp_path: Path, caplog):
    """Distilled keys sit in the buffer and the KME stores; SAEs get theirs in ETSI and SKIP answers.
    Nothing else — metrics, logs (DEBUG included), spans, control-API answers, KME and key-provider
    error objects, client exceptions — carries a single 16-byte window of any of them, in hex, base64
    or raw form."""
    caplog.set_level(logging.DEBUG)
    spans = InMemorySpanExporter()
    token = "t" * 40
    texts: list[str] = []
    with kme_rig(tmp_path, frames=4, span_exporter=spans) as rig:
        fleet = rig.fleet
        server = control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), token)
        base = f"http://127.0.0.1:{server.server_port}/api/v1"
        try:
            fleet.inject("bb84-a", "classical_channel_outage", {})
            fleet.run_frames(2)
            fleet.clear("bb84-a")
            fleet.inject("bb84-a", "key_handoff_failure", {})
            fleet.run_frames(2)
            fleet.clear("bb84-a")
            fleet.run_frames(2)
            master, slave, mallory = rig.client("sae-a"), rig.client("sae-b"), rig.client("sae-mallory")
            delivered = master.enc_keys("sae-b", 16) + master.enc_keys("sae-b", 4, size=1024)
            ids = [k for k, _ in delivered]
            for attempt in (lambda: mallory.dec_keys("sae-a", ids[:2]), lambda: slave.dec_keys("sae-a", [*ids[:1], ids[0]]),
                            lambda: master.enc_keys("sae-b", 10 ** 6)):
                try:
                    attempt()
                except EtsiClientError as exc:
                    texts += [str(exc), json.dumps(exc.details)]
            texts += [json.dumps(master.request("GET", f"/api/v1/keys/sae-b/dec_keys?key_ID={ids[0]}")[1])]
            slave.dec_keys("sae-a", ids)
            skip_a, skip_b, skip_mallory = rig.skip_client("sae-a"), rig.skip_client("sae-b"), rig.skip_client("sae-mallory")
            skip_keys = [skip_a.new_key("sae-b", 512) for _ in range(3)]
            delivered += [(key_id, key) for key_id, key in skip_keys]
            texts += [json.dumps(skip_mallory.request("GET", f"/key/{skip_keys[0][0]}?remoteSystemID=sae-a")[1]),
                      json.dumps(skip_a.request("GET", "/key?remoteSystemID=sae-b&size=99999")[1])]
            texts += [json.dumps(skip_b.key_by_id(key_id, "sae-a")[0]) for key_id, _ in skip_keys]
            texts += [render(DeviceCollector(fleet.snapshots)).decode(),
                      render(PostProcessingCollector(fleet.snapshots, fleet.kme_stats.snapshot)).decode()]
            texts += [_request(f"{base}/links/bb84-a", token), _request(f"{base}/links/nope", token),
                      _request(f"{base}/links/bb84-a/faults", token, "POST", b'{"fault": "fiber_cut", "parameters": {"x": 1}}'),
                      _request(f"{base}/links/bb84-a/faults", token, "POST", b"{not json"),
                      _request(f"{base}/links", "wrong-token")]
        finally:
            server.stop()
        state = fleet.config.runtime.state_dir
    texts += [json.dumps(s.to_json()) for s in spans.get_finished_spans()]
    texts += [record.getMessage() for record in caplog.records]
    with sqlite3.connect(state / "kme.sqlite") as kme:
        stored = [bytes(m) for (m,) in kme.execute("SELECT data FROM material UNION ALL SELECT material FROM pending")]
    keys = [k for _, k in delivered] + stored
    assert len(stored) >= 3 and all(len(k) >= 16 for k in keys)
    corpus = "\n".join(texts)
    assert len(spans.get_finished_spans()) > 20 and "qkd_kme_keys_served_total" in corpus
    assert "not issued by sae-a to sae-mallory" in corpus
    assert any("SAE sae-b POST dec_keys" in record.getMessage() for record in caplog.records)
    for key in keys:
        for form in FORMS:
            for offset in range(0, len(key) - 16, max(1, len(key) // 8)):
                assert form(key[offset:offset + 16])[:20] not in corpus
