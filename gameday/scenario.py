"""A game-day scenario: a Chaos Toolkit experiment file with a ``qkdops`` extension block.

The experiment (steady-state hypothesis, method, rollbacks) is what Chaos Toolkit's engine runs; the
extension block is what the run is judged against::

    extensions:
      - name: qkdops
        scenario: fiber-cut              # optional: its name in `qkdops gameday run` (default: the file's stem)
        link: metro-bb84                 # the link the fault is injected on
        fault: fiber_cut                 # a fault of `qkdops fault list`, or of the stack (STACK_FAULTS)
        parameters: {}                   # its parameters (others take their defaults)
        during: {fault: fiber_cut}       # a stack fault only, optional: the link fault it strikes during
        expect:
          pages: [QKDFiberCut]           # must be delivered to the pager sink as pages
          tickets: []                    # must be delivered to the pager sink as tickets
          silent: [QKDLinkDown, …]       # must not notify at all (inhibited, or not this fault's)
        recovery: runbook                # runbook (a human's action in the method) | automatic (a calibration job)
        limits: {detect_s: 30, recover_s: 180, run_s: 420}

``load`` checks both halves and that they agree — the method injects exactly the declared fault on
the declared link (a stack fault: exactly its action, undone again in the rollbacks; with ``during``,
after exactly one injection of that link fault), every waiting probe is bounded within ``run_s``, and
the rollbacks clear the link's faults — so a scenario cannot claim one thing and do another. Errors
name the file and field.

A scenario is named after its file unless the block names it (``scenario``): the Alertmanager crash
is ``alertmanager-crash``, kept in ``cluster-peer-crash.yaml`` because tools that check Alertmanager
configurations take any ``alertmanager*.yaml`` for one.

``during`` is how the HA game days are written (``prometheus-crash``, ``alertmanager-crash``): the link
fault is what pages, the stack fault (a monitoring replica killed) is what the page must survive, and
``qkdops gameday run`` judges that it arrives exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaoslib.exceptions import ChaosException
from chaoslib.experiment import ensure_experiment_is_valid

from monitoring.alertmanager import ALERTMANAGER_PEERS
from monitoring.prometheus import PROMETHEUS_REPLICAS
from monitoring.rules import RULES_DIR
from qkdlink.emulator import FaultError
from qkdops.runtime.faults import fault_spec
from qkdops.yaml_fields import FieldError, FieldReader
from qkdops.yaml_input import YamlInputError, excerpt, load_file

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"
SCENARIO_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")

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
    check: str | None = None  # an action run before anything is injected; it raises when the stack cannot take the fault


STACK_FAULTS: Mapping[str, StackFault] = {
    "exporter_crash": StackFault("stop_exporter", "start_exporter", "exporter", ("device", "postprocessing")),
    # SIGKILL of one Prometheus replica or Alertmanager peer of `qkdops up --ha`, restarted by its supervisor
    "monitoring_replica_crash": StackFault("kill_monitoring_replica", "await_monitoring_replica", "replica",
                                           (*PROMETHEUS_REPLICAS, *ALERTMANAGER_PEERS), check="ha_replica"),
}
INJECTORS = ("inject_fault", *(f.inject for f in STACK_FAULTS.values()))


class ScenarioError(FieldError):
    """A scenario file that cannot be run; the message names the file and the field."""


@dataclass(frozen=True)
class Limits:
    detect_s: float
    recover_s: float
    run_s: float


@dataclass(frozen=True)
class Scenario:
    name: str                       # `qkdops gameday run fiber-cut`: the block's ``scenario``, else the file's stem
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
    during: str | None = None                        # the link fault a stack fault strikes during
    during_parameters: Mapping[str, Any] = field(default_factory=dict)

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


def files(directory: Path = SCENARIOS_DIR) -> dict[str, Path]:
    """Scenario name → its file, by name; ScenarioError when two files claim one name. A file that
    does not parse is listed under its stem, so loading it reports what is wrong."""
    out: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        name = _declared_name(path) or path.stem
        if name in out:
            raise ScenarioError(f"{path}: scenario name '{name}' is also {out[name]}'s")
        out[name] = path
    return dict(sorted(out.items()))


def _declared_name(path: Path) -> str | None:
    """The ``scenario`` of the file's ``qkdops`` block, if it parses and has one (``load`` checks it)."""
    try:
        experiment = load_file(path)
    except YamlInputError:   # load reports it, naming the file
        return None
    blocks = [e for e in (experiment or {}).get("extensions", []) if isinstance(e, dict) and e.get("name") == EXTENSION] \
        if isinstance(experiment, dict) else []
    name = blocks[0].get("scenario") if len(blocks) == 1 else None
    return name if isinstance(name, str) else None


def names(directory: Path = SCENARIOS_DIR) -> list[str]:
    return list(files(directory))


def load_all(selector: str, directory: Path = SCENARIOS_DIR) -> list[Scenario]:
    """``all`` or one scenario name, or ScenarioError listing the known ones."""
    known = files(directory)
    if selector == "all":
        return [load(path) for path in known.values()]
    if selector not in known:
        raise ScenarioError(f"unknown scenario '{selector}' (scenarios: {', '.join(known)}, or all)")
    return [load(known[selector])]


def load(path: Path, severities: Mapping[str, str] | None = None) -> Scenario:
    """The scenario in ``path``, validated; ScenarioError naming the file and the part that is wrong."""
    r = FieldReader(path, ScenarioError)
    experiment = r.mapping(r.load(), "", None)
    try:
        ensure_experiment_is_valid(experiment)
    except ChaosException as exc:
        r.problem("experiment", f"not a valid Chaos Toolkit experiment: {excerpt(str(exc))}")
    except Exception as exc:  # chaoslib assumes well-formed sections: a malformed one surfaces as a TypeError or so
        r.problem("experiment", f"not a valid Chaos Toolkit experiment ({type(exc).__name__}: {excerpt(str(exc))})")
    try:
        return _scenario(r, path, experiment, severities)
    except ScenarioError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError) as exc:   # a section of the wrong shape
        r.problem("extensions[qkdops]", f"malformed ({type(exc).__name__}: {excerpt(str(exc))})")


def _scenario(r: FieldReader, path: Path, experiment: dict[str, Any], severities: Mapping[str, str] | None) -> Scenario:
    blocks = [e for e in experiment.get("extensions", []) if isinstance(e, dict) and e.get("name") == EXTENSION]
    if len(blocks) != 1:
        r.problem("extensions", f"expected exactly one extension named {EXTENSION!r}")
    where = "extensions[qkdops]"
    block = r.mapping(blocks[0], where, ["name", "scenario", "parameters", "during"],
                      required=["link", "fault", "expect", "recovery", "limits"])
    name = r.string(block["scenario"], f"{where}.scenario", SCENARIO_NAME, "a scenario name (lower-case words joined by -)") \
        if "scenario" in block else path.stem
    link = r.string(block["link"], f"{where}.link")
    fault = r.string(block["fault"], f"{where}.fault")
    parameters = _parameters(r, fault, block.get("parameters") or {})
    during, during_parameters = _during(r, fault, block.get("during"))
    recovery = r.choice(block["recovery"], f"{where}.recovery", RECOVERY)
    severities = alert_severities() if severities is None else severities
    expect = r.mapping(block["expect"], f"{where}.expect", ["pages", "tickets", "silent"])
    pages, tickets, silent = (_alert_names(r, expect.get(k), f"{where}.expect.{k}", severities) for k in ("pages", "tickets", "silent"))
    for key, severity, alerts in (("pages", "page", pages), ("tickets", "ticket", tickets)):
        for alert in alerts:
            if severities[alert] != severity:
                r.problem(f"{where}.expect.{key}", f"{alert} is a {severities[alert] or 'severity-less'} alert, not a {severity}")
    if (set(pages) | set(tickets)) & set(silent):
        r.problem(f"{where}.expect", f"alerts both expected and silent: {sorted((set(pages) | set(tickets)) & set(silent))}")
    limits_raw = r.mapping(block["limits"], f"{where}.limits", (), required=["detect_s", "recover_s", "run_s"])
    limits = Limits(*(r.number(limits_raw[k], f"{where}.limits.{k}") for k in ("detect_s", "recover_s", "run_s")))
    if not 0 < limits.detect_s <= limits.run_s or not 0 < limits.recover_s <= limits.run_s or not limits.run_s <= MAX_RUN_S:
        r.fail(f"{where}.limits", f"0 < detect_s, recover_s <= run_s <= {MAX_RUN_S:g}", limits_raw)
    scenario = Scenario(name or path.stem, path, experiment, link, fault, parameters, pages, tickets, silent, recovery, limits,
                        during, during_parameters)
    _check_agreement(r, scenario)
    return scenario


def _alert_names(r: FieldReader, raw: Any, where: str, severities: Mapping[str, str]) -> tuple[str, ...]:
    """A list of alerts the rules define (absent: none)."""
    alerts = r.sequence(raw or [], where, "a list of alert names", empty=True)
    for alert in alerts:
        if not isinstance(alert, str) or alert not in severities:
            r.problem(where, f"no alert named {excerpt(alert)} in alert_rules/")
    return tuple(alerts)


def _parameters(r: FieldReader, fault: str, given: Any) -> dict[str, Any]:
    """The fault's parameters, validated: a link fault's by the catalogue, a stack fault's here."""
    where = "extensions[qkdops]"
    stack = STACK_FAULTS.get(fault)
    if stack is not None:
        if not isinstance(given, dict) or set(given) != {stack.parameter} or given[stack.parameter] not in stack.choices:
            r.problem(f"{where}.parameters", f"{fault} takes exactly {stack.parameter}: one of {', '.join(stack.choices)}")
        return dict(given)
    try:
        return fault_spec(fault).validate(given)
    except FaultError as exc:
        r.problem(f"{where}.fault", f"{exc}; or a fault of the stack: {', '.join(STACK_FAULTS)}")


def _during(r: FieldReader, fault: str, raw: Any) -> tuple[str | None, dict[str, Any]]:
    """The link fault a stack fault strikes during (absent: none); only a stack fault has one."""
    if raw is None:
        return None, {}
    where = "extensions[qkdops].during"
    if fault not in STACK_FAULTS:
        r.problem(where, f"only a fault of the stack ({', '.join(STACK_FAULTS)}) strikes during a link fault; {fault} is the link's")
    during = r.mapping(raw, where, ["parameters"], required=["fault"])
    name = r.string(during["fault"], f"{where}.fault")
    try:
        return name, fault_spec(name).validate(during.get("parameters") or {})
    except FaultError as exc:
        r.problem(f"{where}.fault", str(exc))


def activities(experiment: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(section, activity) in run order: hypothesis probes, method, rollbacks."""
    for probe in (experiment.get("steady-state-hypothesis") or {}).get("probes", []):
        yield "steady-state-hypothesis", probe
    for activity in experiment.get("method", []):
        yield "method", activity
    for activity in experiment.get("rollbacks", []):
        yield "rollbacks", activity


def _check_agreement(r: FieldReader, s: Scenario) -> None:
    injects, rolled_back, undone, waited = [], False, False, 0.0
    stack = s.stack_fault
    for section, activity in activities(s.experiment):
        provider = activity.get("provider", {})
        if provider.get("type") != "python" or provider.get("module") not in MODULES:
            r.problem(f"{section}[{activity.get('name')}]", f"only the qkdops extension's python providers ({', '.join(MODULES)})")
        args = provider.get("arguments", {})
        func = provider.get("func")
        if func in INJECTORS:
            if section != "method":
                r.problem(f"{section}[{activity.get('name')}]", "faults are injected in the method only")
            for key, value in (args.get("parameters") or {}).items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    r.fail(f"{section}[{activity.get('name')}].parameters.{key}", "a number (YAML reads 1e-10 as text: write 1.0e-10)",
                           value)
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
                r.fail(f"{section}[{excerpt(activity.get('name'))}].{key}", f"seconds in [0, {MAX_RUN_S:g}]", value)
            waited += value
    if stack is not None:
        name = s.parameters[stack.parameter]
        link_fault = [] if s.during is None else injects[:1]
        if s.during is not None and (len(link_fault) != 1 or not _injects(link_fault[0], s.link, s.during, s.during_parameters)):
            r.problem("method", f"expected first exactly one inject_fault of {s.during} on {s.link} with the parameters of "
                                "extensions[qkdops].during")
        if injects[len(link_fault):] != [(stack.inject, {"name": name})]:
            during = f" after the inject_fault of {s.during}" if s.during else ""
            r.problem("method", f"expected exactly one {stack.inject}(name={name}){during} and no other fault")
        if not undone:
            r.problem("rollbacks", f"expected a {stack.undo}(name={name})")
    elif len(injects) != 1 or not _injects(injects[0], s.link, s.fault, s.parameters):
        r.problem("method", f"expected exactly one inject_fault of {s.fault} on {s.link} with the declared parameters")
    if not rolled_back:
        r.problem("rollbacks", f"expected a clear_fault of every fault of {s.link} (no fault argument)")
    if waited > s.limits.run_s:
        r.problem("extensions[qkdops].limits.run_s", f"the activities may wait {waited:g} s, more than run_s {s.limits.run_s:g}")


def _injects(inject: tuple[str, dict[str, Any]], link: str, fault: str, parameters: Mapping[str, Any]) -> bool:
    """Whether a method's injection is ``inject_fault`` of ``fault`` on ``link`` with ``parameters``."""
    func, args = inject
    return func == "inject_fault" and args.get("link") == link and args.get("fault") == fault \
        and fault_spec(fault).validate(args.get("parameters") or {}) == dict(parameters)


def plan(s: Scenario) -> str:
    """What ``qkdops gameday run`` would do, in order, without touching anything."""
    during = f" during {s.during} {dict(s.during_parameters) or ''}".rstrip() if s.during else ""
    lines = [f"{s.name}: {s.title}", f"  link {s.link}; fault {s.fault} {dict(s.parameters) or ''}".rstrip() + during,
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
