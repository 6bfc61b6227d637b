"""The ``qkdops keyrate`` contract: options, JSON fields, sweeps, errors naming the bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qkdops_cli.cli import main

REQUIRED = {"protocol", "distance_km", "analysis", "channel_transmittance", "plob_bound_bits_per_pulse",
            "gain", "qber", "key_rate_bits_per_pulse", "y1_lower", "e1_upper", "secret_key_bits", "abort_reason"}


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main(["keyrate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_single_distance_prints_one_object_with_the_contract_fields(capsys):
    out = run_json(capsys, "--protocol", "bb84-decoy", "--distance-km", "50", "--preset", "gys",
                   "--analysis", "asymptotic-ideal")
    assert isinstance(out, dict) and REQUIRED <= out.keys()
    assert out["protocol"] == "bb84-decoy" and out["distance_km"] == 50
    assert out["key_rate_bits_per_pulse"] == pytest.approx(2.226e-4, rel=0.02)
    assert out["plob_bound_bits_per_pulse"] == pytest.approx(-__import__("math").log2(1 - 10 ** (-0.21 * 5)))


def test_sweep_prints_a_list_including_the_stop(capsys):
    out = run_json(capsys, "--protocol", "bb84-decoy", "--distance-km", "0:100:25")
    assert [p["distance_km"] for p in out] == [0, 25, 50, 75, 100]
    assert out[0]["plob_bound_bits_per_pulse"] is None  # η = 1: unbounded, JSON has no infinity


def test_set_overrides_and_finite_pulses(capsys):
    base = run_json(capsys, "--protocol", "bb84-decoy", "--distance-km", "50", "--analysis", "finite",
                    "--pulses", "1e11", "--preset", "lim2014")
    worse = run_json(capsys, "--protocol", "bb84-decoy", "--distance-km", "50", "--analysis", "finite",
                     "--pulses", "1e11", "--preset", "lim2014", "--set", "misalignment_error=0.02",
                     "--set", "detector_efficiency=0.05")
    assert base["secret_key_bits"] > worse["secret_key_bits"] > 0
    assert worse["qber"] > base["qber"]


@pytest.mark.parametrize("name", ["mu", "detector_efficiency", "dark_count_probability", "misalignment_error",
                                  "ec_efficiency", "fiber_loss_db_per_km", "sifting_factor"])
@pytest.mark.parametrize("protocol", ["bb84-decoy", "mdi", "tf"])
def test_documented_set_names_are_accepted_and_listed(capsys, protocol, name):
    listing = run_json(capsys, "--protocol", protocol, "--show-params")
    rows = {r["name"]: r for r in listing["parameters"]}
    assert name in rows and rows[name]["unit"]
    assert main(["keyrate", "--protocol", protocol, "--distance-km", "20", "--set",
                 f"{name}={rows[name]['value']}", "--json"]) == 0


@pytest.mark.parametrize(("argv", "needle"), [
    (["--distance-km", "abc"], "--distance-km"),
    (["--distance-km", "10:0:5"], "--distance-km"),
    (["--distance-km", "10", "--set", "mu"], "NAME=VALUE"),
    (["--distance-km", "10", "--set", "mu=lots"], "mu"),
    (["--distance-km", "10", "--set", "warp_factor=9"], "warp_factor"),
    (["--distance-km", "10", "--set", "mu=-1"], "mu"),
    (["--distance-km", "10", "--preset", "nope"], "nope"),
])
def test_bad_input_exits_2_naming_the_field(capsys, argv, needle):
    assert main(["keyrate", "--protocol", "bb84-decoy", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_plot_draws_a_png(tmp_path: Path, capsys):
    target = tmp_path / "rate.png"
    assert main(["keyrate", "--protocol", "bb84-decoy", "--distance-km", "0:150:10", "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_installed_entry_point_runs():
    exe = shutil.which("qkdops", path=str(Path(sys.executable).parent))
    assert exe, "the qkdops console script is installed with the package"
    out = subprocess.run([exe, "keyrate", "--protocol", "bb84-decoy", "--distance-km", "10", "--json"],
                         capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout)["distance_km"] == 10
