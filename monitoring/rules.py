"""Every Prometheus rule file, rendered from its source with one monitoring config.

The hand-written rules are templates (``alert_rules/templates/*.yml.tmpl``: alerts and the recordings
they share with the dashboards) whose ``[[ name ]]`` placeholders take the config's thresholds,
job selectors and runbook base URL; the SLO burn-rate rules are generated from the SLO specs
(``slo/``). ``qkdops generate`` writes the result into ``alert_rules/`` (what the compose
Prometheus mounts and promtool's rule tests load); ``qkdops up`` writes its own copy, with runbook
links on its own control API, into its state directory.
"""

from __future__ import annotations

from pathlib import Path

from monitoring import slo
from monitoring.config import MonitoringConfig, render_template
from qkdops.assets import asset

RULES_DIR = asset("alert_rules")
TEMPLATES_DIR = RULES_DIR / "templates"
# Not ``.yml``: a template is not a rule file (its placeholders are not PromQL), and tools that load or
# check every ``alert_rules/**/*.yml`` must not take it for one.
TEMPLATE_SUFFIX = ".tmpl"
SPEC_DIR = asset("slo")
SLO_RULES = "qkd-slos.yml"


def render_rule_files(config: MonitoringConfig, spec_dir: Path = SPEC_DIR) -> dict[str, str]:
    """File name → text of every rule file: the templates rendered, then the SLO rules.
    TemplateError or slo.SpecError naming the source when one is malformed."""
    values = config.values()
    files = {}
    for template in sorted(TEMPLATES_DIR.glob(f"*.yml{TEMPLATE_SUFFIX}")):
        source = f"{TEMPLATES_DIR.parent.name}/{TEMPLATES_DIR.name}/{template.name}"
        files[template.name.removesuffix(TEMPLATE_SUFFIX)] = (f"# Rendered by `qkdops generate` from {source} and the monitoring config "
                                f"(monitoring.yaml): edit those, not this file.\n"
                                + render_template(template.read_text(encoding="utf-8"), source, values))
    if SLO_RULES in files:
        raise ValueError(f"{TEMPLATES_DIR / (SLO_RULES + TEMPLATE_SUFFIX)}: this name is the generated SLO rule file's; rename the template")
    files[SLO_RULES] = slo.generate(spec_dir, values)[0]
    return files


def write_rule_files(config: MonitoringConfig, target_dir: Path) -> list[Path]:
    """Render every rule file into ``target_dir``; rule files left there from an earlier render that
    this one no longer has are removed, so Prometheus never loads a rule nobody ships."""
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_rule_files(config).items():
        (target := target_dir / name).write_text(text, encoding="utf-8")
        written.append(target)
    for stale in set(target_dir.glob("*.yml")) - set(written):
        stale.unlink()
    return written
