"""No key material in any metric, log line, trace or error: scan everything the runtime emits."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporters import DeviceCollector, PostProcessingCollector, render
from qkdops import control_api
from qkdops.config import load_config
from qkdops.runtime.fleet import Fleet
from qkdops.runtime.keystore import KeyStore

FORMS = (bytes.hex, lambda b: base64.b64encode(b).decode(), lambda b: base64.urlsafe_b64encode(b).decode(),
         lambda b: b.decode("latin-1"))


def _request(url: str, token: str, method: str = "GET", body: bytes | None = None) -> str:
    request = urllib.request.Request(url, method=method, data=body, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()
    except urllib.error.HTTPError as err:
        return err.read().decode()


def test_keys_appear_only_in_the_key_store(fleet_config_path: Path, caplog):
    caplog.set_level(logging.DEBUG)
    config = load_config(fleet_config_path)
    spans = InMemorySpanExporter()
    fleet = Fleet(config, span_exporter=spans)
    token = "t" * 40
    server, thread = control_api.serve(fleet, dataclasses.replace(config.runtime, control_port=0), token)
    base = f"http://127.0.0.1:{server.server_port}/api/v1"
    try:
        fleet.run_frames(4)
        fleet.inject("bb84-a", "classical_channel_outage", {})
        fleet.run_frames(2)
        fleet.clear("bb84-a")
        fleet.run_frames(2)
        texts = [render(DeviceCollector(fleet.snapshots)).decode(), render(PostProcessingCollector(fleet.snapshots)).decode()]
        texts += [_request(f"{base}/links/bb84-a", token), _request(f"{base}/links/nope", token),
                  _request(f"{base}/links/bb84-a/faults", token, "POST", b'{"fault": "fiber_cut", "parameters": {"x": 1}}'),
                  _request(f"{base}/links/bb84-a/faults", token, "POST", b"{not json"),
                  _request(f"{base}/links", "wrong-token")]
    finally:
        control_api.shutdown(server, thread)
        fleet.stop()
    texts += [json.dumps(s.to_json()) for s in spans.get_finished_spans()]
    texts += [record.getMessage() for record in caplog.records]
    store = KeyStore(config.runtime.state_dir / "keys.sqlite", config.runtime.key_store_capacity_bits)
    keys = [material for link in ("bb84-a", "mdi-a", "tf-a") for _, material in store.take(link, 2 ** 62)]
    store.close()
    assert len(keys) >= 3 and all(len(k) >= 16 for k in keys)
    corpus = "\n".join(texts)
    assert len(spans.get_finished_spans()) > 20 and "qkd_secret_key_bits_total" in corpus
    for key in keys:
        for form in FORMS:
            for offset in range(0, len(key) - 16, max(1, len(key) // 8)):
                assert form(key[offset:offset + 16])[:20] not in corpus
