"""The import contracts cover every module: a new module outside every layer would be unconstrained,
so the layers contract must name each of qkdops's modules and every root package (the check itself
is ``lint-imports``, run by scripts/test.sh)."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import qkdops

ROOT = Path(__file__).resolve().parent.parent


def _contracts() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_every_qkdops_module_and_root_package_sits_in_a_layer() -> None:
    config = _contracts()
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    modules = {f"qkdops.{m.name}" for m in pkgutil.iter_modules(qkdops.__path__)}
    assert modules - named == set(), "add these modules to a layer in pyproject.toml [tool.importlinter]"
    roots = set(config["root_packages"]) - {"qkdops"}
    assert roots <= named
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert on_disk <= set(config["root_packages"]), "a new top-level package needs its place in the layers"
