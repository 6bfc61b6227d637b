"""Game-day scenario files: valid Chaos Toolkit experiments whose qkdops block agrees with what they do."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gameday.scenario import SCENARIOS_DIR, ScenarioError, load, load_all, names, plan


def test_every_shipped_scenario_loads_and_plans():
    scenarios = load_all("all")
    assert [s.name for s in scenarios] == names() and scenarios
    for s in scenarios:
        text = plan(s)
        assert text.startswith(f"{s.name}: ") and f"fault {s.fault}" in text and "[rollbacks]" in text
        assert "[always] clear every fault of the link" in text


def _fiber_cut() -> dict[str, Any]:
    return yaml.safe_load((SCENARIOS_DIR / "fiber-cut.yaml").read_text())


def _qkdops(raw: dict[str, Any]) -> dict[str, Any]:
    return next(e for e in raw["extensions"] if e["name"] == "qkdops")


def _method(raw: dict[str, Any], func: str) -> dict[str, Any]:
    return next(a for a in raw["method"] if a["provider"]["func"] == func)["provider"]["arguments"]


@pytest.mark.parametrize(("mutate", "field", "expected"), [
    (lambda r: _qkdops(r).update(fault="fibre_cut"), "extensions[qkdops].fault", "unknown fault 'fibre_cut'"),
    (lambda r: _qkdops(r).update(parameters={"loss_db": -1}), "extensions[qkdops].fault", "loss_db"),
    (lambda r: _qkdops(r)["expect"].update(pages=["QKDLinkGone"]), "extensions[qkdops].expect.pages", "no alert named"),
    (lambda r: _qkdops(r)["expect"].update(pages=["QKDQBERHigh"]), "extensions[qkdops].expect.pages", "ticket alert, not a page"),
    (lambda r: _qkdops(r)["expect"].update(silent=["QKDFiberCut"]), "extensions[qkdops].expect", "both expected and silent"),
    (lambda r: _qkdops(r)["expect"].update(tickets=["QKDLinkDown"]), "extensions[qkdops].expect.tickets", "page alert, not a ticket"),
    (lambda r: _qkdops(r).update(recovery="hope"), "extensions[qkdops].recovery", "automatic, runbook"),
    (lambda r: _qkdops(r).update(limits={"detect_s": 30}), "extensions[qkdops].limits.recover_s", "required field is missing"),
    (lambda r: _qkdops(r).update(limits={"detect_s": 30, "recover_s": 120, "run_s": 100}), "extensions[qkdops].limits",
     "<= run_s"),
    (lambda r: _qkdops(r).update(link="relay-mdi"), "method", "exactly one inject_fault of fiber_cut on relay-mdi"),
    (lambda r: _method(r, "inject_fault").update(parameters={"loss_db": 50}), "method", "declared parameters"),
    (lambda r: r.update(rollbacks=[]), "rollbacks", "clear_fault of every fault"),
    (lambda r: _method(r, "inject_fault").update(parameters={"loss_db": "1e2"}), "method[cut the fibre].parameters.loss_db",
     "expected a number (YAML reads 1e-10 as text: write 1.0e-10), got '1e2' (a string)"),
    (lambda r: _method(r, "recovered").update(timeout_s=1000), "extensions[qkdops].limits.run_s", "may wait"),
    (lambda r: _qkdops(r).update(limits={"detect_s": 30, "recover_s": 120, "run_s": float("inf")}),
     "extensions[qkdops].limits.run_s", "expected a finite number, got inf"),
    (lambda r: _qkdops(r).update(limits={"detect_s": float("nan"), "recover_s": 120, "run_s": 600}),
     "extensions[qkdops].limits.detect_s", "expected a finite number, got nan"),
    (lambda r: _method(r, "recovered").update(timeout_s=float("nan")), "method[", "timeout_s: expected seconds in [0, 86400], got nan"),
    (lambda r: _method(r, "recovered").update(timeout_s="forever"), "method[", "timeout_s: expected seconds"),
    (lambda r: r["method"][0]["provider"].update(module="os", func="system", arguments={"command": "true"}), "method[",
     "only the qkdops extension's python providers"),
    (lambda r: r.pop("method"), "experiment", "not a valid Chaos Toolkit experiment"),
    (lambda r: r.update(extensions=[]), "extensions", "exactly one extension named 'qkdops'"),
])
def test_a_scenario_that_says_one_thing_and_does_another_is_refused(tmp_path: Path, mutate, field: str, expected: str):
    _assert_refused(tmp_path, _fiber_cut(), mutate, field, expected)


def _assert_refused(tmp_path: Path, raw: dict[str, Any], mutate, field: str, expected: str) -> None:
    raw = copy.deepcopy(raw)
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ScenarioError) as err:
        load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {field}") and expected in message, message


def _exporter_crash() -> dict[str, Any]:
    return yaml.safe_load((SCENARIOS_DIR / "exporter-crash.yaml").read_text())


@pytest.mark.parametrize(("mutate", "field", "expected"), [
    (lambda r: _qkdops(r).update(parameters={"exporter": "kme"}), "extensions[qkdops].parameters", "one of device, postprocessing"),
    (lambda r: _method(r, "stop_exporter").update(name="postprocessing"), "method", "exactly one stop_exporter(name=device)"),
    (lambda r: r.update(rollbacks=[a for a in r["rollbacks"] if a["provider"]["func"] != "start_exporter"]), "rollbacks",
     "start_exporter(name=device)"),
    (lambda r: r["method"].insert(0, {"type": "action", "name": "also cut", "provider": {
        "type": "python", "module": "gameday.chaosqkd.actions", "func": "inject_fault",
        "arguments": {"link": "metro-bb84", "fault": "fiber_cut"}}}), "method", "no other fault"),
])
def test_a_stack_fault_scenario_must_inject_and_undo_exactly_its_fault(tmp_path: Path, mutate, field: str, expected: str):
    _assert_refused(tmp_path, _exporter_crash(), mutate, field, expected)


def test_plan_touches_nothing_and_bad_names_exit_2():
    listing = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "gameday", "plan", "all"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and all(f"{name}: " in listing.stdout for name in names())
    unknown = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "gameday", "plan", "backhoe"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown scenario 'backhoe'" in unknown.stderr and "fiber-cut" in unknown.stderr


def _replica_crash() -> dict[str, Any]:
    return yaml.safe_load((SCENARIOS_DIR / "prometheus-crash.yaml").read_text())


def test_the_ha_scenarios_crash_one_replica_during_a_fibre_cut_and_wait_for_its_restart():
    for name, replica in (("prometheus-crash", "prometheus"), ("alertmanager-crash", "alertmanager")):
        (s,) = load_all(name)
        assert (s.fault, dict(s.parameters), s.during, s.pages) == ("monitoring_replica_crash", {"replica": replica}, "fiber_cut",
                                                                   ("QKDFiberCut",))
        funcs = [a["provider"]["func"] for a in s.experiment["method"]]
        assert funcs[:2] == ["inject_fault", "kill_monitoring_replica"] and "await_monitoring_replica" in funcs
        assert s.stack_fault is not None and s.stack_fault.check == "ha_replica"
        assert "during fiber_cut" in plan(s)


@pytest.mark.parametrize(("mutate", "field", "expected"), [
    (lambda r: _qkdops(r).update(parameters={"replica": "grafana"}), "extensions[qkdops].parameters",
     "one of prometheus, prometheus_b, alertmanager, alertmanager_b, alertmanager_c"),
    (lambda r: _qkdops(r).update(during={"fault": "fibre_cut"}), "extensions[qkdops].during.fault", "unknown fault 'fibre_cut'"),
    (lambda r: _qkdops(r).update(during={"fault": "loss_step", "parameters": {"loss_db": 3}}), "method",
     "inject_fault of loss_step on metro-bb84"),
    (lambda r: _qkdops(r).pop("during"), "method", "no other fault"),
    (lambda r: r["method"].insert(0, r["method"].pop(1)), "method", "first exactly one inject_fault of fiber_cut"),
    (lambda r: _method(r, "kill_monitoring_replica").update(name="prometheus_b"), "method",
     "exactly one kill_monitoring_replica(name=prometheus) after the inject_fault of fiber_cut"),
    (lambda r: r.update(rollbacks=[a for a in r["rollbacks"] if a["provider"]["func"] != "await_monitoring_replica"]), "rollbacks",
     "await_monitoring_replica(name=prometheus)"),
])
def test_a_replica_crash_scenario_must_inject_its_link_fault_first_then_exactly_its_crash(tmp_path: Path, mutate, field: str,
                                                                                          expected: str):
    _assert_refused(tmp_path, _replica_crash(), mutate, field, expected)


def test_only_a_stack_fault_strikes_during_a_link_fault(tmp_path: Path):
    _assert_refused(tmp_path, _fiber_cut(), lambda r: _qkdops(r).update(during={"fault": "fiber_cut"}), "extensions[qkdops].during",
                    "only a fault of the stack")


def test_a_scenario_may_name_itself_and_two_files_cannot_claim_one_name(tmp_path: Path):
    """alertmanager-crash lives in cluster-peer-crash.yaml (an alertmanager*.yaml is taken for an
    Alertmanager config by tools that check those); a bad or doubled name is refused."""
    assert "alertmanager-crash" in names() and "cluster-peer-crash" not in names()
    assert not any(p.name.startswith("alertmanager") for p in SCENARIOS_DIR.glob("*.yaml"))
    raw = _replica_crash()
    for stem in ("one", "two"):
        (tmp_path / f"{stem}.yaml").write_text(yaml.safe_dump(raw))
    _qkdops(raw)["scenario"] = "one"
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ScenarioError, match="scenario name 'one' is also"):
        names(tmp_path)
    _qkdops(raw)["scenario"] = "Not A Name"
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ScenarioError, match=r"extensions\[qkdops\]\.scenario"):
        load(tmp_path / "two.yaml")
