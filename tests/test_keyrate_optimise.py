"""``qkdlink.keyrate.optimise``: papers quote rates at optimised intensities; so can the CLI."""

from __future__ import annotations

from qkdlink.keyrate import optimise, predict
from qkdlink.protocols import get_protocol
from qkdops_cli.cli import main

NAMES = ["mu", "nu", "p_mu", "p_nu", "key_basis_probability"]


def test_optimum_is_never_worse_than_the_start_and_stays_consistent():
    bb84 = get_protocol("bb84-decoy")
    start = bb84.resolve({"distance_km": 100}, "lim2014")
    best = optimise(bb84, start, NAMES, "finite", 1e11)
    bb84.check_consistency(best)
    assert predict(bb84, best, "finite", 1e11).key_rate_bits_per_pulse >= \
        predict(bb84, start, "finite", 1e11).key_rate_bits_per_pulse > 0


def test_optimiser_finds_key_from_a_start_that_has_none():
    mdi = get_protocol("mdi")
    start = mdi.resolve({"distance_km": 80}, "snspd")
    assert predict(mdi, start, "finite", 1e11).key_rate_bits_per_pulse == 0
    best = optimise(mdi, start, NAMES, "finite", 1e11)
    assert predict(mdi, best, "finite", 1e11).key_rate_bits_per_pulse > 0


def test_cli_optimize_rejects_unknown_names(capsys):
    assert main(["keyrate", "--protocol", "tf", "--distance-km", "100", "--optimize", "mu,warp"]) == 2
    assert "warp" in capsys.readouterr().err
