"""``qkdops emulate``: per-block estimation on an emulated link, with scheduled fault windows."""

from __future__ import annotations

import json

import pytest

from qkdops_cli.cli import main


def run_blocks(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    assert main(["emulate", "--json", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_fibre_cut_window_stops_key_and_clearing_restores_it(capsys):
    blocks = run_blocks(capsys, "--protocol", "bb84-decoy", "--preset", "lim2014", "--blocks", "5",
                        "--inject", "fiber_cut@2-4")
    keys = [b["secret_key_bits"] for b in blocks]
    assert keys[0] > 0 and keys[1] > 0 and keys[4] > 0
    assert keys[2] == keys[3] == 0
    assert blocks[2]["faults"] == ["fiber_cut"] and blocks[4]["faults"] == []
    assert blocks[2]["detected"] < 1e-3 * blocks[0]["detected"]
    for b in blocks:
        if b["abort_reason"] is None:
            assert b["y1_lower"] <= b["y1_true"] and b["e1_upper"] >= b["e1_true"]


def test_same_seed_same_blocks(capsys):
    args = ("--protocol", "tf", "--preset", "snspd", "--distance-km", "200", "--block-pulses", "1e11", "--blocks", "2")
    assert run_blocks(capsys, *args) == run_blocks(capsys, *args)


def test_output_carries_counts_and_bounds_never_key_material(capsys):
    block = run_blocks(capsys, "--blocks", "1", "--preset", "lim2014")[0]
    assert set(block) == {"link", "protocol", "block", "start_s", "end_s", "detected", "qber", "y1_lower",
                          "y1_true", "e1_upper", "e1_true", "secret_key_bits", "abort_reason", "faults"}


@pytest.mark.parametrize(("spec", "needle"), [
    ("fiber_cut", "FAULT[:NAME=VALUE,...]@START"),
    ("no_such_fault@1", "no_such_fault"),
    ("loss_step:loss_db=999@1", "loss_db"),
    ("loss_step:volume=3@1", "volume"),
    ("loss_step@x", "START and END"),
    ("loss_step@3-2", "START < END"),
    ("key_handoff_failure@1", "operations runtime"),   # no hand-off in `qkdops emulate`
])
def test_bad_fault_windows_exit_2_naming_the_problem(capsys, spec, needle):
    assert main(["emulate", "--blocks", "1", "--inject", spec]) == 2
    assert needle in capsys.readouterr().err
