"""``qkdops generate``: every generated file of the repository is current, and drift is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkdops_cli import generate_cmd
from qkdops_cli.cli import main


def test_every_generated_file_in_the_repository_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--check"]) == 0
    assert "current (alert-rules, slo-rules, dashboards, compose-prometheus, compose-alertmanager, kubernetes)" in capsys.readouterr().out


def test_check_names_a_stale_or_missing_file_and_generate_writes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    stale, missing = tmp_path / "stale.yml", tmp_path / "sub" / "missing.yml"
    stale.write_text("old\n")
    monkeypatch.setattr(generate_cmd, "ARTIFACTS", {"demo": lambda config: {stale: "new\n", missing: "made\n"}})
    assert main(["generate", "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{stale} is stale" in err and f"{missing} is missing" in err and "-old" in err and "+new" in err
    assert stale.read_text() == "old\n" and not missing.exists()          # --check writes nothing
    assert main(["generate", "--only", "demo"]) == 0
    assert stale.read_text() == "new\n" and missing.read_text() == "made\n"
    assert main(["generate", "--check"]) == 0
    assert main(["generate", "--only", "nope"]) == 2
