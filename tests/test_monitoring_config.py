"""The monitoring config (monitoring.yaml) drives every monitoring artefact: a value changed there
changes the rules, the Prometheus and Alertmanager configs and the dashboards together, and a bad
config or template is refused with its file and field or line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dashboards.generate import render as render_dashboards
from monitoring.alertmanager import SecretFiles, alertmanager_config
from monitoring.config import DEFAULT_PATH, TemplateError, load_monitoring_config, promql_number, render_template
from monitoring.prometheus import COMPOSE_HOSTS, prometheus_config
from monitoring.rules import RULES_DIR, TEMPLATES_DIR, render_rule_files, write_rule_files
from qkdops.config import ConfigError
from qkdops_cli.cli import main

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
PLACEHOLDER = re.compile(r"\[\[\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\]\]")


def _config_file(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(DEFAULT_PATH.read_text())
    edit(raw)
    path = tmp_path / "monitoring.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _alerts(files: dict[str, str]) -> dict[str, dict]:
    return {rule["alert"]: rule for group in yaml.safe_load(files["qkd-alerts.yml"])["groups"] for rule in group["rules"]}


def test_every_threshold_in_the_config_is_used_and_every_placeholder_is_known() -> None:
    config = load_monitoring_config()
    used = {name for template in TEMPLATES_DIR.glob("*.yml.tmpl") for name in PLACEHOLDER.findall(template.read_text())}
    used |= {name for spec in (RULES_DIR.parent / "slo").glob("*.yaml") for name in PLACEHOLDER.findall(spec.read_text())}
    assert used <= set(config.values())
    used_thresholds = {name.removeprefix("thresholds.") for name in used if name.startswith("thresholds.")}
    # the EC thresholds are also drawn on the debug dashboard; nothing in the config is dead
    assert set(config.thresholds) == used_thresholds


def test_a_changed_threshold_moves_the_rule_and_the_dashboard_together(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["thresholds"].update(fiber_cut_excess_loss_db=15, ec_efficiency_margin=1.2, ec_efficiency_floor=1.3)
    config = load_monitoring_config(_config_file(tmp_path, edit))
    default = _alerts(render_rule_files(load_monitoring_config()))
    changed = _alerts(render_rule_files(config))
    assert default["QKDFiberCut"]["expr"].rstrip().endswith(">= 20")
    assert changed["QKDFiberCut"]["expr"].rstrip().endswith(">= 15")
    rule_threshold = "clamp_min(1.2 * qkd_link:ec_model_efficiency:max10m, 1.3)"
    assert rule_threshold in changed["QKDECEfficiencyDegraded"]["expr"]
    debug = json.loads(render_dashboards(config)["debug.json"])
    exprs = [t["expr"] for panel in debug["panels"] for t in panel.get("targets", [])]
    assert 'clamp_min(1.2 * qkd_link:ec_model_efficiency:max10m{link="$link"}, 1.3)' in exprs
    # nothing else moved: only the three numbers differ between the two renderings
    assert {name for name in default if default[name] != changed[name]} == {"QKDFiberCut", "QKDECEfficiencyDegraded"}


def test_job_names_move_the_scrape_jobs_and_every_selector_on_them(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["jobs"] = {"device": "optics", "postprocessing": "distill", "calibration": "tuner", "kme_probe": "prober"}
    config = load_monitoring_config(_config_file(tmp_path, edit))
    scrape = prometheus_config(config, COMPOSE_HOSTS, "rules/*.yml", 5.0, alertmanager_password_file="/s")
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"optics", "distill", "tuner", "prober"}
    text = "".join(render_rule_files(config).values())
    selected = set(re.findall(r'job="([^"]+)"', text)) | {j for alt in re.findall(r'job=~"([^"]+)"', text) for j in alt.split("|")}
    assert selected == jobs


def test_runbook_links_follow_the_deployment_everywhere(tmp_path: Path) -> None:
    base = "https://noc.example:8443/qkd"
    config = load_monitoring_config().with_runbook_base(base + "/")
    files = render_rule_files(config)
    urls = [rule["annotations"]["runbook_url"] for text in files.values() for group in yaml.safe_load(text)["groups"]
            for rule in group["rules"] if "alert" in rule]
    assert urls and all(url.startswith(base + "/runbooks/QKD") for url in urls)
    assert "127.0.0.1:9800" not in "".join(files.values())
    oncall = render_dashboards(config)["oncall.json"]
    assert f"{base}/runbooks/${{__data.fields.alertname}}" in oncall
    written = write_rule_files(config, tmp_path / "rules")
    assert sorted(p.name for p in written) == sorted(files)


def test_alertmanager_timers_come_from_the_config_and_scale_with_the_interval(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["alertmanager"]["page"] = {"group_wait": "20s", "group_interval": "2m", "repeat_interval": "2h"}
    config = load_monitoring_config(_config_file(tmp_path, edit))
    route = alertmanager_config(config, "h:1", SecretFiles(), 5.0,
                                sink_token_file="/t")["route"]
    page = next(r for r in route["routes"] if r["matchers"] == ['severity="page"'])
    assert (page["group_wait"], page["group_interval"], page["repeat_interval"]) == ("20s", "2m", "2h")
    fast = alertmanager_config(config, "h:1", SecretFiles(), 1.0,
                               sink_token_file="/t")["route"]
    assert next(r for r in fast["routes"] if r["matchers"] == ['severity="page"'])["group_wait"] == "4s"


@pytest.mark.parametrize(("edit", "field", "expected"), [
    (lambda raw: raw.pop("thresholds"), "thresholds", "required field is missing"),
    (lambda raw: raw.update(runbook_base_url="javascript:alert(1)"), "runbook_base_url", "http(s) URL"),
    (lambda raw: raw["jobs"].update(device='qkd"} or vector(1) #'), "jobs.device", "job name"),
    (lambda raw: raw["jobs"].update(calibration="qkd-device"), "jobs", "different name"),
    (lambda raw: raw["jobs"].pop("postprocessing"), "jobs.postprocessing", "required field is missing"),
    (lambda raw: raw["jobs"].update(device=""), "jobs.device", "non-empty string"),
    (lambda raw: raw["thresholds"].update(abort_ratio="half"), "thresholds.abort_ratio", "finite number"),
    (lambda raw: raw["thresholds"].update(abort_ratio=float("nan")), "thresholds.abort_ratio", "finite number"),
    (lambda raw: raw["thresholds"].update({"Bad Name": 1}), "thresholds.Bad Name", "threshold name"),
    (lambda raw: raw.update(scrape_interval="5 seconds"), "scrape_interval", "Prometheus duration"),
    (lambda raw: raw["alertmanager"]["ticket"].update(group_wait="0s"), "alertmanager.ticket.group_wait", "Prometheus duration"),
    (lambda raw: raw.update(scrape_interval="10m"), "scrape_interval", "at most 5m"),
    (lambda raw: raw.update(colour="blue"), "colour", "one of the keys"),
])
def test_a_bad_config_names_its_file_and_field(tmp_path: Path, edit, field: str, expected: str) -> None:
    path = _config_file(tmp_path, edit)
    with pytest.raises(ConfigError) as caught:
        load_monitoring_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {field}:") and expected in message


def test_an_unknown_placeholder_names_the_template_and_line() -> None:
    with pytest.raises(TemplateError, match=r"^alert_rules/templates/x.yml:3: unknown monitoring value \[\[ thresholds.nope \]\]"):
        render_template("groups:\n  - rules:\n      - expr: up > [[ thresholds.nope ]]\n", "alert_rules/templates/x.yml",
                        load_monitoring_config().values())
    # Prometheus's own templating and PromQL ranges pass through untouched
    text = 'summary: "{{ $labels.link }}"\nexpr: rate(x[5m])[1h:1m]\n'
    assert render_template(text, "t", {}) == text


def test_numbers_render_as_promql_writes_them() -> None:
    assert [promql_number(v) for v in (20.0, 0.98, 1e-10, 10000.0, 1.25)] == ["20", "0.98", "1e-10", "10000", "1.25"]


def test_generate_renders_from_another_config_and_check_names_what_it_would_change(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config_file(tmp_path, lambda raw: raw["thresholds"].update(channel_loss_excess_db=2))
    assert main(["generate", "--check", "--only", "alert-rules,dashboards", "--monitoring", str(path)]) == 1
    err = capsys.readouterr().err
    assert "qkd-alerts.yml is stale" in err and "+          > 2" in err
    assert "dashboards" not in err        # the dashboards do not draw that threshold
    broken = _config_file(tmp_path, lambda raw: raw["thresholds"].pop("channel_loss_excess_db"))
    assert main(["generate", "--check", "--monitoring", str(broken)]) == 2
    assert "unknown monitoring value [[ thresholds.channel_loss_excess_db ]]" in capsys.readouterr().err


@needs_promtool
def test_rules_rendered_from_a_changed_config_pass_promtool(tmp_path: Path) -> None:
    def edit(raw: dict) -> None:
        raw["jobs"]["device"] = "optics"
        raw["thresholds"].update(clock_offset_seconds=2.5e-10, qber_min_sifted_bits=5000)
    config = load_monitoring_config(_config_file(tmp_path, edit))
    written = write_rule_files(config, tmp_path / "rules")
    result = subprocess.run([PROMTOOL, "check", "rules", *map(str, written)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_yml_under_alert_rules_is_a_rule_file_promtool_accepts() -> None:
    """Tools load or check every alert_rules/**/*.yml; templates are .yml.tmpl so none is taken for rules."""
    files = [p for p in RULES_DIR.rglob("*.y*ml") if "tests" not in p.relative_to(RULES_DIR).parts]
    assert files and not any(p.parent == TEMPLATES_DIR for p in files)
    result = subprocess.run([PROMTOOL, "check", "rules", *map(str, files)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
