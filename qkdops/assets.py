"""Where the files qkdops ships beside its code live: the default fleet (``links.yaml``), the monitoring
config (``monitoring.yaml``), the alert rules and their templates (``alert_rules/``), the runbooks the
alerts link to (``runbooks/``) and the SLO specs (``slo/``).

In a checkout (``pip install -e .``, what ``scripts/setup.sh`` does) they are the repository's own
folders, so an edited runbook or rule is served at once. Installed from a wheel (``pip install .``)
the same files are under ``<prefix>/share/qkdops/`` (``[tool.setuptools.data-files]`` in
pyproject.toml). ``QKDOPS_ASSETS`` names another directory with the same layout, first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ASSETS_ENV = "QKDOPS_ASSETS"
CHECKOUT = Path(__file__).resolve().parent.parent   # the repository, when this is a checkout
SHARE = Path(sys.prefix) / "share" / "qkdops"


def asset(name: str) -> Path:
    """The shipped file or folder ``name`` (``links.yaml``, ``monitoring.yaml``, ``runbooks``, ``alert_rules``, ``slo``):
    under ``$QKDOPS_ASSETS``, else the checkout, else ``<prefix>/share/qkdops``; the last candidate
    when none has it, so an error names a path the operator can check."""
    candidates = [Path(os.environ[ASSETS_ENV]) / name] if os.environ.get(ASSETS_ENV) else []
    if (CHECKOUT / "pyproject.toml").is_file():
        candidates.append(CHECKOUT / name)
    candidates.append(SHARE / name)
    return next((c for c in candidates if c.exists()), candidates[-1])
