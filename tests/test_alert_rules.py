"""Alert rules (``alert_rules/*.yml``): promtool accepts them without a word, their unit tests pass,
every alert is tested both firing and silent, and the hand-written alerts keep the contract's
severity and class.

The promtool unit tests themselves (``alert_rules/tests/*test*.yml``) say what each alert must
do; this module runs them and checks that none of the alerts, generated ones included, escapes them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RULES_DIR = REPO / "alert_rules"
TESTS_DIR = RULES_DIR / "tests"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
# Unit-test files another test module already runs (it would double the suite's time to run them
# here too); the test below makes sure that module still does.
RUN_ELSEWHERE = {"slo_test.yml": REPO / "tests" / "test_slo.py"}

# The hand-written alerts of the contract (issue 4, plus the scheduler's in issue 6, the KMEs' in issue 7 and
# post-processing on bits in issue 14):
# severity, class.
CONTRACT = {
    "QKDLinkDown": ("page", "cause"),
    "QKDQBERHigh": ("ticket", "symptom"),
    "QKDPhaseLockLost": ("page", "symptom"),
    "QKDVisibilityLow": ("ticket", "symptom"),
    "QKDDarkCountRateHigh": ("ticket", "symptom"),
    "QKDDetectorSaturated": ("page", "cause"),
    "QKDFiberCut": ("page", "cause"),
    "QKDChannelLossHigh": ("ticket", "cause"),
    "QKDSessionAbortRateHigh": ("page", "symptom"),
    "QKDDecoyIntensityDrift": ("ticket", "symptom"),
    "QKDRNGHealthFailure": ("page", "cause"),
    "QKDClassicalChannelDown": ("page", "cause"),
    "QKDClockDesync": ("page", "cause"),
    "QKDKeyHandoffFailing": ("page", "cause"),
    "QKDCalibrationFailing": ("ticket", "cause"),
    "QKDExporterDown": ("page", "cause"),
    "QKDCalibrationSchedulerDown": ("ticket", "cause"),  # issue 6: the calibration scheduler's scrape target
    "QKDKMERequestsRefused": ("ticket", "cause"),  # issue 7: a site's KME refusing an SAE (401)
    "QKDFleetWorkerRestarted": ("ticket", "cause"),  # issue 17: a sharded fleet's worker process restarted
    "QKDVerificationFailing": ("page", "cause"),  # issue 14: error correction leaves residual errors
    "QKDKeyMismatch": ("page", "cause"),  # issue 14: the two ends' keys differ at hand-off
    "QKDECEfficiencyDegraded": ("ticket", "cause"),  # issue 14: measured EC efficiency f above the model's
    "QKDKMEUnreachable": ("page", "cause"),  # issue 19: the kme-probe gets no Status from a KME
    "QKDKMEKeyStoreLow": ("ticket", "cause"),  # issue 19: a probed KME store empties within the hour at its trend
    "QKDKMEKeysDisagree": ("page", "cause"),  # issue 19: a probe round trip got different keys at the two ends
    "QKDKMECertificateExpiring": ("ticket", "cause"),  # issue 19: a probed KME's or SAE's certificate expires soon
    "QKDKMEKeyExhausted": ("page", "symptom"),  # issue 19: a site's KME refuses applications key (503) for 5 m
}


def rule_files() -> list[Path]:
    """What Prometheus loads (and the repo hook checks): alert_rules/*.y*ml not named *test*."""
    return sorted(p for p in RULES_DIR.glob("*.y*ml") if "test" not in p.name)


def unit_test_files() -> list[Path]:
    return sorted(TESTS_DIR.glob("*test*.y*ml"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL or "promtool", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@needs_promtool
@pytest.mark.parametrize("path", rule_files(), ids=lambda p: p.name)
def test_promtool_check_rules_says_nothing_but_success(path: Path) -> None:
    """No error and no warning (duplicate rules, lint): only 'Checking' and 'SUCCESS' lines."""
    result = _promtool("check", "rules", str(path.relative_to(REPO)), timeout=60)
    output = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0, output
    assert [line for line in output if not line.startswith(("Checking ", "SUCCESS: "))] == []


@needs_promtool
@pytest.mark.parametrize("path", [p for p in unit_test_files() if p.name not in RUN_ELSEWHERE], ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path: Path) -> None:
    result = _promtool("test", "rules", str(path.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_test_files_run_elsewhere_are_still_run_there() -> None:
    for name, module in RUN_ELSEWHERE.items():
        assert name in module.read_text(), f"{module.name} no longer runs alert_rules/tests/{name}: run it here"


def test_every_rule_file_is_loaded_by_a_unit_test() -> None:
    loaded = {(path.parent / name).resolve() for path in unit_test_files()
              for name in yaml.safe_load(path.read_text()).get("rule_files", [])}
    assert {p.resolve() for p in rule_files()} <= loaded


def test_every_alert_is_tested_firing_and_silent() -> None:
    """Each alert of every rule file (generated SLO alerts too) has a promtool case where it fires
    with its labels and annotations, and one where it must stay silent."""
    fires: set[str] = set()
    silent: set[str] = set()
    for path in unit_test_files():
        for case in yaml.safe_load(path.read_text()).get("tests", []):
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "never tested firing"
    assert names - silent == set(), "never tested silent"


METRIC = re.compile(r"\b(?:qkd_link:[a-z0-9_:]+|slo:[a-z0-9_:]+|qkd_[a-z0-9_]+)")


def test_rules_and_their_annotation_queries_use_only_catalogue_metrics_and_recordings() -> None:
    """Every qkd_* name in an expression or annotation (templates query too) is exported or recorded: a metric
    removed from exporters/catalogue.yaml (issue 7: qkd_key_store_bytes) cannot linger in a rule."""
    catalogue = yaml.safe_load((REPO / "exporters" / "catalogue.yaml").read_text())["metrics"]
    known = set(catalogue) | {f"{name}{suffix}" for name, spec in catalogue.items() if spec["type"] == "histogram"
                              for suffix in ("_bucket", "_sum", "_count")}
    rules = [rule for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]
    known |= {rule["record"] for rule in rules if "record" in rule}
    used = {m for rule in rules for text in (rule["expr"], *rule.get("annotations", {}).values()) for m in METRIC.findall(text)}
    assert sorted(used - known) == []


def test_hand_written_alerts_are_the_contract_with_its_severity_and_class() -> None:
    rules = [rule for group in yaml.safe_load((RULES_DIR / "qkd-alerts.yml").read_text())["groups"]
             for rule in group["rules"]]
    assert {rule["alert"]: (rule["labels"]["severity"], rule["labels"]["class"]) for rule in rules} == CONTRACT
    assert len(rules) == len(CONTRACT)
    for rule in rules:
        assert "for" in rule, f"{rule['alert']}: state its `for`, even 0s, so the choice is visible"
