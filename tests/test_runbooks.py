"""Runbooks (``runbooks/<AlertName>.md``) against the alert rules, and the control API serving them.

A test fails if an alert of any rule file (generated ones included) lacks a runbook, a runbook lacks
an alert, an alert lacks an annotation or a contract label, or a runbook lacks a section, names a
metric no exporter or recording rule provides, or tells the on-call to run an action or clear a
fault that does not exist.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporters.catalogue import CATALOGUE
from qkdops.runtime.faults import FAULTS
from control_api import server as control_api
from monitoring.config import load_monitoring_config
from monitoring.rules import write_rule_files
from qkdops.config import load_config
from qkdops.runtime.fleet import Fleet
from qkdops.runtime.state import CALIBRATION_ACTIONS

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "alert_rules"
RUNBOOKS_DIR = REPO / "runbooks"
MONITORING = load_monitoring_config()
RUNBOOK_BASE_URL = MONITORING.runbook_base_url   # the committed rules' base; deployments render their own
RUNBOOK_URL = RUNBOOK_BASE_URL + "/runbooks/{}"
SECTIONS = ("Meaning", "Impact", "Confirm", "Likely causes", "Mitigation", "Escalation", "Verify recovery")
ANNOTATIONS = ("summary", "description", "runbook_url")
METRIC = re.compile(r"\b(?:qkd_link:[a-z0-9_:]+|slo:[a-z0-9_:]+|qkd_[a-z0-9_]+)")
PROMQL_BLOCK = re.compile(r"```promql\n(.*?)```", re.S)
ACTION = re.compile(r"qkdops action [A-Za-z0-9_-]+ ([A-Za-z_]+)")
FAULT_CLEAR = re.compile(r"qkdops fault clear [A-Za-z0-9_-]+ ([A-Za-z_]+)")
TOKEN = "runbook-test-token-0123456789"


def rules() -> list[dict[str, Any]]:
    """Every alerting rule Prometheus loads: alert_rules/*.y*ml not named *test* (qkd-slos.yml too)."""
    return [rule for path in sorted(RULES_DIR.glob("*.y*ml")) if "test" not in path.name
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for path in sorted(RULES_DIR.glob("*.y*ml")) if "test" not in path.name
            for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "record" in rule}


def runbooks() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(RUNBOOKS_DIR.glob("*.md")) if p.name != "README.md"}


def sections(text: str) -> dict[str, str]:
    """``## Heading`` → its text up to the next heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


# ---- rules ↔ runbooks -----------------------------------------------------------------------------
def test_every_alert_has_a_runbook_and_every_runbook_an_alert() -> None:
    alerts = {rule["alert"] for rule in rules()}
    assert alerts, "no alert rules found"
    assert sorted(alerts - set(runbooks())) == [], "alerts without runbooks/<AlertName>.md"
    assert sorted(set(runbooks()) - alerts) == [], "runbooks without an alert of that name"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: f"{r['alert']}{r.get('labels', {}).get('tier', '')}")
def test_alert_has_annotations_contract_labels_and_its_own_runbook_url(rule: dict[str, Any]) -> None:
    annotations, labels = rule.get("annotations", {}), rule.get("labels", {})
    for name in ANNOTATIONS:
        assert str(annotations.get(name, "")).strip(), f"{rule['alert']}: annotation {name} missing or empty"
    assert labels.get("severity") in ("page", "ticket"), f"{rule['alert']}: severity {labels.get('severity')!r}"
    assert labels.get("class") in ("cause", "symptom"), f"{rule['alert']}: class {labels.get('class')!r}"
    assert annotations["runbook_url"] == RUNBOOK_URL.format(rule["alert"])
    assert "$labels" in annotations["description"] and "$value" in annotations["description"], \
        f"{rule['alert']}: the description must name the link (or target) and show the value"


def test_runbook_index_lists_every_runbook() -> None:
    index = (RUNBOOKS_DIR / "README.md").read_text(encoding="utf-8")
    assert [name for name in runbooks() if f"({name}.md)" not in index] == []


# ---- runbook content ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(runbooks()))
def test_runbook_has_every_section_and_promql_to_confirm(name: str) -> None:
    text = runbooks()[name]
    assert text.startswith(f"# {name}\n"), "first line: '# <AlertName>'"
    found = sections(text)
    assert [s for s in SECTIONS if not found.get(s, "").strip()] == [], "missing or empty sections"
    assert PROMQL_BLOCK.search(found["Confirm"]), "Confirm needs a ```promql block"
    assert "qkdops " in found["Mitigation"], "Mitigation names the qkdops command that acts"


@pytest.mark.parametrize("name", sorted(runbooks()))
def test_runbook_promql_uses_only_real_metric_names(name: str) -> None:
    known = set(CATALOGUE.metrics) | recorded_names()
    for metric, spec in CATALOGUE.metrics.items():  # histograms are queried through their series
        if spec.type == "histogram":
            known |= {f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
    used = {m for block in PROMQL_BLOCK.findall(runbooks()[name]) for m in METRIC.findall(block)}
    assert sorted(used - known) == []


@pytest.mark.parametrize("name", sorted(runbooks()))
def test_runbook_commands_name_real_actions_and_faults(name: str) -> None:
    text = runbooks()[name]
    assert sorted(set(ACTION.findall(text)) - set(CALIBRATION_ACTIONS) - {"ACTION"}) == []
    assert sorted(set(FAULT_CLEAR.findall(text)) - set(FAULTS) - {"FAULT"}) == []


# ---- served by the control API ------------------------------------------------------------------
CONFIG = """
runtime:
  state_dir: state
links:
  - id: metro
    protocol: bb84-decoy
    preset: lim2014
    sites: {alice: north, bob: south}
    distance_km: 25
    seed: 1
"""


@dataclasses.dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    """A raw request: the path goes out exactly as written (no client-side normalisation of '..')."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    directory = tmp_path_factory.mktemp("fleet")
    (directory / "links.yaml").write_text(CONFIG, encoding="utf-8")
    fleet = Fleet(load_config(directory / "links.yaml"), clock=time.time)
    yield fleet
    fleet.stop()


@pytest.fixture(scope="module")
def port(fleet: Fleet) -> Iterator[int]:
    server = control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), TOKEN)
    yield server.server_address[1]
    server.stop()
    assert not server.serving


@pytest.mark.parametrize("name", sorted(runbooks()))
def test_every_runbook_is_served_as_markdown_without_a_token(port: int, name: str) -> None:
    reply = _request(port, "GET", f"/runbooks/{name}")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert reply.body == (RUNBOOKS_DIR / f"{name}.md").read_bytes()


def test_head_gives_the_length_without_the_body(port: int) -> None:
    reply = _request(port, "HEAD", "/runbooks/QKDLinkDown")
    assert reply.status == 200 and reply.body == b""
    assert int(reply.headers["Content-Length"]) == len((RUNBOOKS_DIR / "QKDLinkDown.md").read_bytes())


def test_a_percent_encoded_alert_name_is_decoded(port: int) -> None:
    assert _request(port, "GET", "/runbooks/QKD%4CinkDown").body == (RUNBOOKS_DIR / "QKDLinkDown.md").read_bytes()


@pytest.mark.parametrize("path", [
    "/runbooks/QKDNoSuchAlert",            # unknown alert
    "/runbooks/QKDLinkDown.md",            # the file name is not the alert name
    "/runbooks/../README",                 # traversal, raw
    "/runbooks/..%2F..%2Fpyproject",       # traversal, encoded
    "/runbooks/..%2fREADME",
    "/runbooks/%2e%2e",
    "/runbooks/QKD-LinkDown",
    "/runbooks/QKDLinkDown%00",
    "/runbooks/" + "A" * 5000,
    "/runbooks/",
    "/runbooks",
])
def test_unknown_or_path_traversing_names_are_a_json_404(port: int, path: str) -> None:
    reply = _request(port, "GET", path)
    assert reply.status == 404
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    error = reply.json()["error"]
    assert error["code"] == "unknown_runbook" and error["field"] == "name"
    assert len(error["message"]) < 300  # a long name is not echoed back whole


def test_runbooks_are_read_only(port: int) -> None:
    reply = _request(port, "POST", "/runbooks/QKDLinkDown")
    assert reply.status == 405 and reply.headers["Allow"] == "GET, HEAD"


def test_the_api_still_needs_the_token(port: int) -> None:
    assert _request(port, "GET", "/api/v1/links").status == 401
    assert _request(port, "GET", "/api/v1/links", {"Authorization": f"Bearer {TOKEN}"}).status == 200


def test_only_files_inside_the_runbooks_directory_are_reachable(fleet: Fleet, tmp_path: Path) -> None:
    """A server on another runbooks directory serves its files, never a sibling of the directory."""
    books = tmp_path / "books"
    books.mkdir()
    (books / "QKDExample.md").write_text("# QKDExample\n", encoding="utf-8")
    (tmp_path / "Secret.md").write_text("not a runbook\n", encoding="utf-8")
    server = control_api.serve(fleet, dataclasses.replace(fleet.config.runtime, control_port=0), TOKEN,
                                       runbooks_dir=books)
    try:
        port = server.server_address[1]
        assert _request(port, "GET", "/runbooks/QKDExample").body == b"# QKDExample\n"
        for path in ("/runbooks/Secret", "/runbooks/..%2FSecret", "/runbooks/../Secret", "/runbooks/%2E%2E%2FSecret"):
            assert _request(port, "GET", path).status == 404, path
    finally:
        server.stop()


def test_a_deployment_renders_the_rules_with_its_own_runbook_base(tmp_path: Path) -> None:
    """``runtime.runbook_base_url`` (or the control API's own address): every runbook link moves to it,
    nothing else in the rules changes, and a rule file gone from the source is gone from the copy."""
    target = tmp_path / "rules"
    target.mkdir()
    (target / "removed.yml").write_text("groups: []\n")
    written = write_rule_files(MONITORING.with_runbook_base("https://noc.example:8443/qkd/"), target)
    assert {p.name for p in written} == {p.name for p in RULES_DIR.glob("*.yml")} == {p.name for p in target.glob("*.yml")}
    for path in written:
        original = (RULES_DIR / path.name).read_text()
        text = path.read_text()
        assert RUNBOOK_BASE_URL not in text
        assert text.count("https://noc.example:8443/qkd/runbooks/") == original.count(f"{RUNBOOK_BASE_URL}/runbooks/")
        assert text.replace("https://noc.example:8443/qkd/runbooks/", f"{RUNBOOK_BASE_URL}/runbooks/") == original
    assert len(rules()) == sum(p.read_text().count("runbook_url: https://noc.example:8443/qkd/runbooks/")
                                      + p.read_text().count("runbook_url: 'https://noc.example:8443/qkd/runbooks/")
                                      + p.read_text().count('runbook_url: "https://noc.example:8443/qkd/runbooks/') for p in written)
