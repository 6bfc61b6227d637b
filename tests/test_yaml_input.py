"""qkdops.yaml_input: every config and spec file is read by one loader that refuses alias bombs, deep
nesting, recursive aliases, duplicate keys and oversized documents — quickly, with a short error
naming the file — and still reads ordinary YAML (anchors and aliases included)."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from calibration_jobs.config import load_jobs_config
from exporters.catalogue import CatalogueError
from exporters.catalogue import load as load_catalogue
from gameday.scenario import ScenarioError
from gameday.scenario import load as load_scenario
from qkdops.config import ConfigError, load_config
from monitoring.slo import SpecError, parse_spec
from qkdops.yaml_input import MAX_BYTES, MAX_DEPTH, YamlInputError, load_file, load_text

# "billion laughs": 9 levels of 9 aliases each = 9^9 ≈ 3.9·10⁸ strings once expanded, in ~600 bytes
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def _refused(text: str) -> str:
    started, rss = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(YamlInputError) as caught:
        load_text(text, "links.yaml")
    assert time.perf_counter() - started < 5.0                                   # refused, not expanded
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 * 1024  # KiB: no blow-up
    message = str(caught.value)
    assert message.startswith("links.yaml: ") and len(message) < 400
    return message


def test_an_alias_bomb_is_refused_without_expanding_it() -> None:
    assert len(BOMB) < 1000
    assert "alias bomb" in _refused(BOMB)


def test_deep_nesting_and_recursive_aliases_are_refused() -> None:
    assert f"nested deeper than {MAX_DEPTH} levels" in _refused("[" * 5000 + "]" * 5000)
    assert f"nested deeper than {MAX_DEPTH}" in _refused("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 80)))
    assert "recursive" in _refused("a: &x [1, *x]\n")


def test_duplicate_keys_are_refused_with_their_line() -> None:
    assert _refused("runtime: {}\nlinks: []\nruntime: {frame_seconds: 2}\n") == \
        "links.yaml: line 3, column 1: invalid YAML: duplicate key 'runtime'"


def test_a_huge_value_is_never_echoed() -> None:
    message = _refused("a: '" + "x" * 100_000 + "'\nb: [1\n")
    assert "xxxx" not in message


def test_oversized_and_non_utf8_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * MAX_BYTES + b"\n")
    with pytest.raises(YamlInputError, match=r"big.yaml: refused: larger than 4 MiB"):
        load_file(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("site: Zürich\n".encode("latin-1"))
    with pytest.raises(YamlInputError, match=r"latin.yaml: invalid YAML: not UTF-8"):
        load_file(latin)


def test_ordinary_yaml_with_anchors_still_loads() -> None:
    text = "defaults: &d {efficiency: 0.1, dead_time_s: 1.0e-7}\nlinks:\n  - {id: a, detector: *d}\n  - {id: b, detector: *d}\n"
    loaded = load_text(text, "x.yaml")
    assert loaded["links"][1]["detector"] == {"efficiency": 0.1, "dead_time_s": 1.0e-7}
    assert load_text("", "x.yaml") is None


@pytest.mark.parametrize("reader, error", [
    (load_config, ConfigError), (load_jobs_config, ConfigError), (load_scenario, ScenarioError),
    (lambda p: parse_spec(p.read_text(), str(p), {}), SpecError),
    (lambda p: load_catalogue(p.read_text(), str(p)), CatalogueError),
])
def test_every_file_reader_refuses_the_bomb_naming_the_file(tmp_path: Path, reader, error) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(BOMB)
    with pytest.raises(error) as caught:
        reader(path)
    assert str(path) in str(caught.value) and "alias bomb" in str(caught.value) and len(str(caught.value)) < 400


def test_a_config_error_echoes_a_short_excerpt_of_a_huge_value(tmp_path: Path) -> None:
    path = tmp_path / "links.yaml"
    path.write_text("runtime: {}\nlinks: [" + ", ".join(["[" + ", ".join(["x" * 50] * 200) + "]"] * 200) + "]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: links[0]: expected a mapping, got a list [") and len(str(caught.value)) < 400


def test_a_number_too_long_to_convert_is_refused_with_a_short_error() -> None:
    with pytest.raises(YamlInputError, match=r"^x.yaml: refused: .*digits") as caught:
        load_text("a: " + "1" * 5000, "x.yaml")
    assert len(str(caught.value)) < 200
