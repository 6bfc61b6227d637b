"""Property-based tests (hypothesis) of every parser that reads operator or network input (links.yaml, SLO
specs, calibration jobs, game-day scenarios; the pager sink's webhook and query, the KMEs' ETSI 014
requests, the control API's fault injection): whatever
it is given, it answers with the value or with its documented error — never another exception, never
a 500, never an error message that echoes a huge value. Bounded: a fixed number of examples each,
derandomised, so CI runs the same cases in a few seconds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kme_harness import kme_config

from calibration_jobs.config import DEFAULT_JOBS_FILE, parse_jobs_config
from gameday.scenario import SCENARIOS_DIR, ScenarioError, alert_severities, load
from monitoring import pager_sink
from qkdops.config import ConfigError, load_config
from control_api.server import ApiError
from qkdops.kme.etsi import KMEService
from qkdops.kme.skip import CALLS as SKIP_CALLS
from qkdops.kme.skip import SkipService
from qkdops.kme.store import KeyPoolStore
from monitoring.config import load_monitoring_config
from monitoring.slo import SpecError, parse_spec
from qkdops.yaml_input import load_file

ROOT = Path(__file__).resolve().parent.parent
# QKDOPS_FUZZ_EXAMPLES=N runs N random examples per test instead of CI's fixed 150 (a deeper search, on demand)
DEEP = int(os.environ.get("QKDOPS_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=DEEP or 150, deadline=None, derandomize=not DEEP,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MAX_MESSAGE = 2_000   # an error names the field and a short excerpt, whatever was sent

# JSON-like values: what YAML and JSON documents can hold, non-finite floats and odd strings included
scalars = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True, allow_infinity=True) \
    | st.text(max_size=40) | st.text(min_size=5_000, max_size=6_000, alphabet="ab")
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                      max_leaves=12)

SLO_VALUES = load_monitoring_config().values()   # the shipped spec's [[ runbook_base_url ]]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys and indices) to a value inside ``node``, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for key, item in node.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out += _paths(item, (*prefix, i))
    return out


def _replace(node: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[path[0]] = _replace(node[path[0]], path[1:], value)
    return copy


def _mutated(data: st.DataObject, document: Any) -> Any:
    """``document`` with one value (anywhere) replaced by an arbitrary one."""
    path = data.draw(st.sampled_from(_paths(document)), label="path")
    return _replace(document, path, data.draw(values, label="value"))


def _dump(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


# ---- operator input: links.yaml, SLO specs, calibration jobs, game-day scenarios ---------------------

@pytest.fixture(scope="module")
def fleet_document(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    config = kme_config(tmp_path_factory.mktemp("fuzz"))
    return config.source, load_file(config.source)


@FUZZ
@given(data=st.data())
def test_links_yaml_with_any_value_anywhere_loads_or_names_the_file(fleet_document, data):
    source, document = fleet_document
    path = source.with_name("fuzzed.yaml")
    path.write_text(_dump(_mutated(data, document)))
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)) and len(str(exc)) < MAX_MESSAGE


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_as_links_yaml_loads_or_names_the_file(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzzed-text.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(path) in str(exc) and len(str(exc)) < MAX_MESSAGE


@FUZZ
@given(data=st.data())
def test_slo_specs_with_any_value_anywhere_parse_or_raise_a_spec_error(data):
    document = load_file(ROOT / "slo" / "qkd.yaml")
    try:
        parse_spec(_dump(_mutated(data, document)), "slo/fuzzed.yaml", SLO_VALUES)
    except SpecError as exc:
        assert "slo/fuzzed.yaml" in str(exc) and len(str(exc)) < MAX_MESSAGE


@FUZZ
@given(data=st.data())
def test_calibration_jobs_with_any_value_anywhere_parse_or_name_the_field(data):
    try:
        parse_jobs_config(_mutated(data, load_file(DEFAULT_JOBS_FILE)), Path("jobs-fuzzed.yaml"))
    except ConfigError as exc:
        assert str(exc).startswith("jobs-fuzzed.yaml") and len(str(exc)) < MAX_MESSAGE


SEVERITIES = alert_severities()


@FUZZ
@given(data=st.data())
def test_game_day_scenarios_with_any_value_anywhere_load_or_raise_a_scenario_error(tmp_path_factory, data):
    name = data.draw(st.sampled_from(sorted(p.name for p in SCENARIOS_DIR.glob("*.yaml"))), label="scenario")
    path = tmp_path_factory.getbasetemp() / "fuzzed-scenario.yaml"
    path.write_text(_dump(_mutated(data, load_file(SCENARIOS_DIR / name))))
    try:
        load(path, SEVERITIES)
    except ScenarioError as exc:
        assert len(str(exc)) < MAX_MESSAGE


# ---- network input: the pager sink's webhook and query, the KMEs' ETSI 014 requests -------------------

def _webhook() -> dict[str, Any]:
    labels = {"alertname": "QKDLinkDown", "link": "metro-bb84", "severity": "page"}
    return {"receiver": "pager-sink-page", "status": "firing", "version": "4", "groupKey": "{}:{}", "groupLabels": labels,
            "commonLabels": labels, "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093", "truncatedAlerts": 0,
            "alerts": [{"status": "firing", "labels": labels, "annotations": {}, "startsAt": "2024-05-01T12:00:00Z",
                        "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "0123"}]}


@FUZZ
@given(data=st.data())
def test_webhook_payloads_with_any_value_anywhere_parse_or_are_a_400(data):
    raw = json.dumps(_mutated(data, _webhook()), allow_nan=True).encode()
    try:
        pager_sink.parse_notification(raw)
    except ApiError as exc:
        assert exc.status == 400 and len(exc.message) < MAX_MESSAGE


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_as_a_webhook_payload_parse_or_are_a_400(raw):
    try:
        pager_sink.parse_notification(raw)
    except ApiError as exc:
        assert exc.status == 400 and len(exc.message) < MAX_MESSAGE


@FUZZ
@given(query=st.text(max_size=120))
def test_any_notification_query_parses_or_is_a_400(query):
    try:
        pager_sink.parse_query(query)
    except ApiError as exc:
        assert exc.status == 400 and len(exc.message) < MAX_MESSAGE


@pytest.fixture(scope="module")
def kme(tmp_path_factory: pytest.TempPathFactory) -> KMEService:
    directory = tmp_path_factory.mktemp("kme")
    config = kme_config(directory)
    store = KeyPoolStore(directory / "kme.sqlite", capacity_bytes=10 ** 6)
    store.accept("bb84-a", 0, dict.fromkeys(("a", "b"), bytes(range(256)) * 16))
    return KMEService("a", config.key_delivery, config.links, store)


ETSI_STATUSES = {200, 400, 401, 404, 405, 503}
segment = st.sampled_from(["sae-a", "sae-b", "sae-a2", "sae-mallory", "", "..", "%2F", "sae-b%00"]) | st.text(max_size=20)
targets = st.builds(lambda sae, call, query: f"/api/v1/keys/{sae}/{call}{query}", segment,
                    st.sampled_from(["status", "enc_keys", "dec_keys", "x"]),
                    st.sampled_from(["", "?number=2", "?size=256", "?key_ID=00000000-0000-4000-8000-000000000000"])
                    | st.text(max_size=40).map(lambda t: "?" + t)) | st.text(max_size=60)


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]), target=targets,
       body=st.none() | st.binary(max_size=200) | values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
       caller=st.sampled_from(["sae-a", "sae-a2", "sae-b", "sae-mallory", "nobody"]) | st.none())
def test_any_etsi_request_is_answered_with_a_status_and_an_error_object(kme, method, target, body, caller):
    answer = kme.handle(method, target, body, caller)
    assert int(answer.status) in ETSI_STATUSES
    assert isinstance(answer.body, dict)
    if answer.status != 200:
        assert isinstance(answer.body.get("message"), str) and len(json.dumps(answer.body)) < MAX_MESSAGE


@pytest.fixture(scope="module")
def skip(kme: KMEService) -> SkipService:
    return SkipService("a", kme.delivery, kme.links, kme.store)


SKIP_STATUSES = {200, 400, 405, 503}   # (404: the HTTP layer, for a path outside draft-cisco-skip Table 2)
skip_queries = (st.sampled_from(["", "remoteSystemID=sae-b", "remoteSystemID=sae-a&size=128", "size=99999999999",
                                 "minentropy=64", "remoteSystemID=sae-b&remoteSystemID=x"])
                | st.text(max_size=40) | st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=3)
                .map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)))


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "HEAD", "DELETE"]), call=st.sampled_from(sorted(SKIP_CALLS)),
       key_id=st.none() | st.text(max_size=40) | st.sampled_from(["0" * 32, "F" * 32, "g" * 32]), query=skip_queries,
       caller=st.sampled_from(["sae-a", "sae-a2", "sae-b", "nobody"]) | st.none())
def test_any_skip_request_is_answered_with_a_draft_status_and_a_message(skip, method, call, key_id, query, caller):
    answer = skip.answer(method, call, key_id, query, caller)
    assert int(answer.status) in SKIP_STATUSES and isinstance(answer.body, dict)
    if answer.status != 200:
        assert set(answer.body) == {"message"} and len(json.dumps(answer.body)) < MAX_MESSAGE


def _inject_request() -> dict[str, Any]:
    return {"fault": "fiber_cut", "parameters": {"loss_db": 40.0}}


@FUZZ
@given(data=st.data())
def test_fault_injection_bodies_with_any_value_anywhere_parse_or_are_a_400_or_404(data):
    from control_api.server import _inject_body
    try:
        _inject_body(_mutated(data, _inject_request()))
    except ApiError as exc:
        assert exc.status in (400, 404) and len(json.dumps(exc.body())) < MAX_MESSAGE
