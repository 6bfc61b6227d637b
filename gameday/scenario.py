"""A game-day scenario: a Chaos Toolkit experiment file with a ``qkdops`` extension block.

The experiment (steady-state hypothesis, method, rollbacks) is what Chaos Toolkit's engine runs; the
extension block is what the run is judged against::

    extensions:
      - name: qkdops
        link: metro-bb84                 # the link the fault is injected on
        fault: fiber_cut                 # a fault of `qkdops fault list`, or of the stack (STACK_FAULTS)
        parameters: {}                   # its parameters (others take their defaults)
        expect:
          pages: [QKDFiberCut]           # must be delivered to the pager sink as pages
          tickets: []                    # must be delivered to the pager sink as tickets
          silent: [QKDLinkDown, …]       # must not notify at all (inhibited, or not this fault's)
        recovery: runbook                # runbook (a human's action in the method) | automatic (a calibration job)
        limits: {detect_s: 30, recover_s: 180, run_s: 420}

``load`` checks both halves and that they agree — the method injects exactly the declared fault on
the declared link (a stack fault: exactly its action, undone again in the rollbacks), every waiting
probe is bounded within ``run_s``, and the rollbacks clear the link's faults — so a scenario cannot
claim one thing and do another. Errors name the file and field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ChaosException
from chaoslib.experiment import ensure_experiment_is_valid

from monitoring.rules import RULES_DIR
from qkdlink.emulator import FaultError
from qkdops.runtime.faults import fault_spec
from qkdops.yaml_input import YamlInputError, clip, excerpt, load_file

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"

EXTENSION = "qkdops"
MAX_RUN_S = 86400.0
"""A game day is bounded in time: a day at most (the shipped ones run 10–20 minutes)."""
RECOVERY = ("automatic", "runbook")
MODULES = ("gameday.chaosqkd.actions", "gameday.chaosqkd.probes")


@dataclass(frozen=True)
class StackFault:
    """A fault of the stack rather than of a link: the action (gameday.chaosqkd.actions) that injects
    it, the one that undoes it, and the single parameter both take (passed as ``name``)."""

    inject: str
    undo: str
    parameter: str
    choices: tuple[str, ...]


STACK_FAULTS: Mapping[str, StackFault] = {
    "exporter_crash": StackFault("stop_exporter", "start_exporter", "exporter", ("device", "postprocessing")),
}
INJECTORS = ("inject_fault", *(f.inject for f in STACK_FAULTS.values()))


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class Limits:
    detect_s: float
    recover_s: float
    run_s: float


@dataclass(frozen=True)
class Scenario:
    name: str                       # the file's stem: `qkdops gameday run fiber-cut`
    path: Path
    experiment: dict[str, Any]      # the Chaos Toolkit experiment, as loaded
    link: str
    fault: str
    parameters: Mapping[str, Any]
    pages: tuple[str, ...]
    tickets: tuple[str, ...]
    silent: tuple[str, ...]
    recovery: str
    limits: Limits

    @property
    def title(self) -> str:
        return str(self.experiment["title"])

    @property
    def stack_fault(self) -> StackFault | None:
        return STACK_FAULTS.get(self.fault)

    @property
    def expected(self) -> tuple[tuple[str, str], ...]:
        """(kind, alertname) of every notification the run must see."""
        return (*(("page", a) for a in self.pages), *(("ticket", a) for a in self.tickets))


def alert_severities(rules_dir: Path = RULES_DIR) -> dict[str, str]:
    """Every alert the rules define → its severity."""
    out: dict[str, str] = {}
    for path in sorted(rules_dir.glob("*.yml")):
        for group in (load_file(path) or {}).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    out[rule["alert"]] = rule.get("labels", {}).get("severity", "")
    return out


def names(directory: Path = SCENARIOS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_all(selector: str, directory: Path = SCENARIOS_DIR) -> list[Scenario]:
    """``all`` or one scenario name (a file stem), or ScenarioError listing the known ones."""
    known = names(directory)
    if selector == "all":
        return [load(directory / f"{name}.yaml") for name in known]
    if selector not in known:
        raise ScenarioError(f"unknown scenario '{selector}' (scenarios: {', '.join(known)}, or all)")
    return [load(directory / f"{selector}.yaml")]


def load(path: Path, severities: Mapping[str, str] | None = None) -> Scenario:
    """The scenario in ``path``, validated; ScenarioError naming the file and the part that is wrong."""
    def fail(where: str, message: str) -> ScenarioError:   # parts of both may come from the file: bounded
        return ScenarioError(f"{path}: {clip(where, 200)}: {clip(message, 600)}")

    try:
        experiment = load_file(path)
    except YamlInputError as exc:
        raise ScenarioError(f"cannot read a YAML experiment: {exc}") from None
    if not isinstance(experiment, dict):
        raise fail("top level", "expected a Chaos Toolkit experiment (a mapping)")
    try:
        ensure_experiment_is_valid(experiment)
    except ChaosException as exc:
        raise fail("experiment", f"not a valid Chaos Toolkit experiment: {excerpt(str(exc))}") from None
    except Exception as exc:  # chaoslib assumes well-formed sections: a malformed one surfaces as a TypeError or so
        raise fail("experiment", f"not a valid Chaos Toolkit experiment ({type(exc).__name__}: {excerpt(str(exc))})") from None
    try:
        return _scenario(path, experiment, severities, fail)
    except ScenarioError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError) as exc:   # a section of the wrong shape
        raise fail("extensions[qkdops]", f"malformed ({type(exc).__name__}: {excerpt(str(exc))})") from None


def _scenario(path: Path, experiment: dict[str, Any], severities: Mapping[str, str] | None,
              fail: Callable[[str, str], ScenarioError]) -> Scenario:
    blocks = [e for e in experiment.get("extensions", []) if isinstance(e, dict) and e.get("name") == EXTENSION]
    if len(blocks) != 1:
        raise fail("extensions", f"expected exactly one extension named {EXTENSION!r}")
    block = blocks[0]
    where = "extensions[qkdops]"
    for key in ("link", "fault", "expect", "recovery", "limits"):
        if key not in block:
            raise fail(f"{where}.{key}", "missing")
    parameters = _parameters(block, fail)
    if block["recovery"] not in RECOVERY:
        raise fail(f"{where}.recovery", f"expected one of {', '.join(RECOVERY)}, got {excerpt(block['recovery'])}")
    severities = alert_severities() if severities is None else severities
    expect = block["expect"] if isinstance(block["expect"], dict) else {}
    pages, tickets, silent = (tuple(expect.get(k) or ()) for k in ("pages", "tickets", "silent"))
    for key, alerts in (("pages", pages), ("tickets", tickets), ("silent", silent)):
        for alert in alerts:
            if alert not in severities:
                raise fail(f"{where}.expect.{key}", f"no alert named {excerpt(alert)} in alert_rules/")
    for key, severity, alerts in (("pages", "page", pages), ("tickets", "ticket", tickets)):
        for alert in alerts:
            if severities[alert] != severity:
                raise fail(f"{where}.expect.{key}", f"{alert} is a {severities[alert] or 'severity-less'} alert, not a {severity}")
    if (set(pages) | set(tickets)) & set(silent):
        raise fail(f"{where}.expect", f"alerts both expected and silent: {sorted((set(pages) | set(tickets)) & set(silent))}")
    limits_raw = block["limits"] if isinstance(block["limits"], dict) else {}
    try:
        limits = Limits(*(float(limits_raw[k]) for k in ("detect_s", "recover_s", "run_s")))
    except (KeyError, TypeError, ValueError):
        raise fail(f"{where}.limits", "expected numbers detect_s, recover_s, run_s") from None
    if not 0 < limits.detect_s <= limits.run_s or not 0 < limits.recover_s <= limits.run_s \
            or not limits.run_s <= MAX_RUN_S:
        raise fail(f"{where}.limits", f"expected 0 < detect_s, recover_s <= run_s <= {MAX_RUN_S:g} (finite)")
    scenario = Scenario(path.stem, path, experiment, str(block["link"]), str(block["fault"]), parameters,
                        pages, tickets, silent, str(block["recovery"]), limits)
    _check_agreement(scenario, fail)
    return scenario


def _parameters(block: Mapping[str, Any], fail: Any) -> dict[str, Any]:
    """The fault's parameters, validated: a link fault's by the catalogue, a stack fault's here."""
    where, given = "extensions[qkdops]", block.get("parameters") or {}
    stack = STACK_FAULTS.get(block["fault"])
    if stack is None:
        try:
            return fault_spec(block["fault"]).validate(given)
        except FaultError as exc:
            raise fail(f"{where}.fault", f"{exc}; or a fault of the stack: {', '.join(STACK_FAULTS)}") from None
    if not isinstance(given, dict) or set(given) != {stack.parameter} or given[stack.parameter] not in stack.choices:
        raise fail(f"{where}.parameters", f"{block['fault']} takes exactly {stack.parameter}: one of {', '.join(stack.choices)}")
    return dict(given)


def activities(experiment: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(section, activity) in run order: hypothesis probes, method, rollbacks."""
    for probe in (experiment.get("steady-state-hypothesis") or {}).get("probes", []):
        yield "steady-state-hypothesis", probe
    for activity in experiment.get("method", []):
        yield "method", activity
    for activity in experiment.get("rollbacks", []):
        yield "rollbacks", activity


def _check_agreement(s: Scenario, fail: Any) -> None:
    injects, rolled_back, undone, waited = [], False, False, 0.0
    stack = s.stack_fault
    for section, activity in activities(s.experiment):
        provider = activity.get("provider", {})
        if provider.get("type") != "python" or provider.get("module") not in MODULES:
            raise fail(f"{section}[{activity.get('name')}]", f"only the qkdops extension's python providers ({', '.join(MODULES)})")
        args = provider.get("arguments", {})
        func = provider.get("func")
        if func in INJECTORS:
            if section != "method":
                raise fail(f"{section}[{activity.get('name')}]", "faults are injected in the method only")
            for key, value in (args.get("parameters") or {}).items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise fail(f"{section}[{activity.get('name')}].parameters.{key}",
                               f"expected a number, got {excerpt(value)} (YAML reads 1e-10 as text: write 1.0e-10)")
            injects.append((func, args))
        if stack is not None and section == "rollbacks" and func == stack.undo \
                and args.get("name") == s.parameters[stack.parameter]:
            undone = True
        if section == "rollbacks" and func == "clear_fault" and args.get("link") == s.link and args.get("fault") is None:
            rolled_back = True
        pauses = activity.get("pauses") or {}
        for key, value in (("timeout_s", args.get("timeout_s", 0)), ("pauses.before", pauses.get("before", 0)),
                           ("pauses.after", pauses.get("after", 0))):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_RUN_S:
                raise fail(f"{section}[{excerpt(activity.get('name'))}].{key}", f"expected seconds in [0, {MAX_RUN_S:g}], got {excerpt(value)}")
            waited += value
    if stack is not None:
        name = s.parameters[stack.parameter]
        if injects != [(stack.inject, {"name": name})]:
            raise fail("method", f"expected exactly one {stack.inject}(name={name}) and no other fault")
        if not undone:
            raise fail("rollbacks", f"expected a {stack.undo}(name={name})")
    elif len(injects) != 1 or injects[0][0] != "inject_fault" or injects[0][1].get("link") != s.link \
            or injects[0][1].get("fault") != s.fault \
            or fault_spec(s.fault).validate(injects[0][1].get("parameters") or {}) != dict(s.parameters):
        raise fail("method", f"expected exactly one inject_fault of {s.fault} on {s.link} with the declared parameters")
    if not rolled_back:
        raise fail("rollbacks", f"expected a clear_fault of every fault of {s.link} (no fault argument)")
    if waited > s.limits.run_s:
        raise fail("extensions[qkdops].limits.run_s", f"the activities may wait {waited:g} s, more than run_s {s.limits.run_s:g}")


def plan(s: Scenario) -> str:
    """What ``qkdops gameday run`` would do, in order, without touching anything."""
    lines = [f"{s.name}: {s.title}", f"  link {s.link}; fault {s.fault} {dict(s.parameters) or ''}".rstrip(),
             f"  expect pages: {', '.join(s.pages) or 'none'}; tickets: {', '.join(s.tickets) or 'none'}; "
             f"must stay silent: {', '.join(s.silent) or 'none'}",
             f"  recovery: {s.recovery}; limits: detect {s.limits.detect_s:g} s, recover {s.limits.recover_s:g} s, "
             f"run {s.limits.run_s:g} s"]
    for section, activity in activities(s.experiment):
        provider = activity["provider"]
        args = ", ".join(f"{k}={v}" for k, v in provider.get("arguments", {}).items())
        pauses = activity.get("pauses", {})
        pause = "".join(f" (pause {k} {v:g} s)" for k, v in pauses.items())
        lines.append(f"  [{section}] {activity['type']} {activity['name']}: {provider['func']}({args}){pause}")
    undo = f" and {s.stack_fault.undo}(name={s.parameters[s.stack_fault.parameter]})" if s.stack_fault else ""
    lines.append(f"  [always] clear every fault of the link{undo} at the end, even when interrupted")
    return "\n".join(lines)
