"""The import contracts cover every module, and the light clients stay light.

A new module outside every layer would be unconstrained, so the layers contracts must place every
top-level package and every module of the layered packages (the check itself is ``lint-imports``,
run by scripts/test.sh). The calibration runner is a client of Prometheus and the control API: it
must run without loading the runtime, the KMEs or the emulator (issue 16).
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERED = ("qkdlink", "qkdops", "qkdops_cli")


def _contracts() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _layers(name: str) -> set[str]:
    layers = next(c for c in _contracts()["contracts"] if c["name"] == name)["layers"]
    return {module.strip() for layer in layers for module in layer.replace("|", ":").split(":")}


def test_every_top_level_package_sits_in_one_package_layer() -> None:
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert on_disk == set(_contracts()["root_packages"]), "a new top-level package needs its place in the layers"
    assert _layers("packages, one direction") == on_disk


def test_every_module_of_the_layered_packages_sits_in_a_layer() -> None:
    named = _layers("layers, one direction")
    for package in LAYERED:
        modules = {f"{package}.{m.name}" for m in pkgutil.iter_modules(import_module(package).__path__)} - {f"{package}.__main__"}
        assert modules - named == set(), "add these modules to a layer in pyproject.toml [tool.importlinter]"


def test_the_calibration_runner_loads_no_runtime_kme_or_emulator_module() -> None:
    code = "import sys, calibration_jobs.runner; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                            cwd=ROOT).stdout.split()
    heavy = [m for m in loaded if m.startswith(("qkdops.runtime", "qkdops.kme", "qkdlink.emulator", "exporters", "control_api"))]
    assert heavy == []
    assert "calibration_jobs.runner" in loaded
