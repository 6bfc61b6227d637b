"""``qkdops calibrate JOB --link L``: one run now, printed as saw → decided → did → verified → outcome."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from calibration_jobs.config import DEFAULT_JOBS_FILE
from qkdops_cli.cli import main
from tests.calibration_harness import BB84, TOKEN, jobs_config, running_fleet


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("QKDOPS_API_TOKEN", TOKEN)
    with running_fleet(tmp_path, [BB84], jobs_config(), schedule=False) as rig:
        (tmp_path / "links.yaml").write_text(yaml.safe_dump({"runtime": {"state_dir": str(rig.state_dir)}, "links": [BB84]}))
        raw = yaml.safe_load(DEFAULT_JOBS_FILE.read_text())
        raw["signals"]["source"] = "status"
        (tmp_path / "jobs.yaml").write_text(yaml.safe_dump(raw))
        yield rig, ["--config", str(tmp_path / "links.yaml"), "--jobs", str(tmp_path / "jobs.yaml"), "--api", rig.api.url]


@pytest.mark.slow
def test_calibrate_prints_what_it_saw_decided_did_and_verified(rig, capsys: pytest.CaptureFixture[str]) -> None:
    loop, options = rig
    loop.blocks("bb84-fast", 2)
    loop.api.inject("bb84-fast", "polarization_drift", {"rate_rad_per_s": 0.01})
    loop.blocks("bb84-fast", 6)  # 0.06 rad: twice the tolerance; a frame after the realignment adds 0.01
    assert main(["calibrate", "polarization_realign", "--link", "bb84-fast", *options]) == 0
    out = capsys.readouterr().out
    assert out.startswith("polarization_realign on bb84-fast (bb84-decoy), run ")
    for expected in ("saw (status):", "polarization_angle_rad", "decided: act: polarization frame rotated",
                     "did: realign_polarization → ok", "verified: ok", "outcome: corrected"):
        assert expected in out, (expected, out)
    assert TOKEN not in out

    loop.api.clear("bb84-fast", "polarization_drift")  # the drift stops; what it left was realigned
    assert main(["calibrate", "polarization_realign", "--link", "bb84-fast", "--json", *options]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outcome"] == "healthy" and report["trigger"] == "manual" and report["action"] is None
    ledger = loop.store.runs("polarization_realign", "bb84-fast", 10)
    assert [r["outcome"] for r in ledger[:2]] == ["healthy", "corrected"], "manual runs are recorded like scheduled ones"


@pytest.mark.slow
def test_calibrate_bad_input_names_the_field(rig, capsys: pytest.CaptureFixture[str]) -> None:
    _, options = rig
    assert main(["calibrate", "phase_relock", "--link", "nope", *options]) == 2
    assert "--link: unknown link 'nope' (links: bb84-fast)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "relock", "--link", "bb84-fast", *options])
    assert exit_info.value.code == 2
