"""Key-length conventions: one key string, one sifting, one vacuum term in every analysis mode.

docs/physics.md, "Key-length conventions". Two contracts:

* the post-processing API — ``Protocol.key_bits`` is the string the finite estimate charges
  λ_EC = f·n·H2(E) for, and ``secret_key_length(estimate, leak)`` = ⌊key_budget_bits − leak⌋
  reproduces the estimate's own key length when fed the modelled leak;
* as N → ∞ the finite rate (expected counts) tends to the asymptotic rate of the same parameters,
  and the vacuum contribution (BB84) is counted the same way in every mode.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qkdlink.physics.entropy import binary_entropy
from qkdlink.protocols import get_protocol
from qkdlink.protocols.base import (
    ASYMPTOTIC, ASYMPTOTIC_IDEAL, FINITE, BlockCounts, ClassCounts, KeyEstimate, Protocol, secret_key_length,
)

# Realistic blocks: the shipped fleet's operating points (links.yaml) and one preset point per protocol.
BLOCKS = [
    ("bb84-decoy", "lim2014", {"distance_km": 25.0, "dead_time_s": 1e-7}, 1e10),
    ("bb84-decoy", "lim2014", {"distance_km": 80.0}, 1e11),
    ("bb84-decoy", "gys", {"distance_km": 30.0}, 1e12),
    ("mdi", "snspd", {"distance_km": 80.0, "dead_time_s": 1e-8, "mu": 0.3, "nu": 0.1, "p_mu": 0.4, "p_nu": 0.4,
                      "key_basis_probability": 0.5}, 3e10),
    ("mdi", "xu2013", {"distance_km": 20.0}, 1e13),
    ("tf", "snspd", {"distance_km": 300.0, "mu": 0.45, "epsilon_send": 0.023, "nu": 0.09, "nu2": 0.42,
                     "z_window_probability": 0.7}, 3e10),
    ("tf", "wang-yu-hu-2018", {"distance_km": 300.0}, 1e13),
]

# Classes of each protocol's key string (what key_bits must count).
KEY_CLASSES = {
    "bb84-decoy": [("signal", "Z"), ("decoy", "Z"), ("vacuum", "Z")],
    "mdi": [("signal-signal", "Z")],
    "tf": [("signal-signal", "Z"), ("signal-vacuum", "Z"), ("vacuum-signal", "Z"), ("vacuum-vacuum", "Z")],
}


def sampled_block(protocol: Protocol, p: dict[str, float], pulses: float, seed: int) -> BlockCounts:
    """Integer counts as a real block has them: binomial detections and errors per class."""
    rng = np.random.default_rng(seed)
    table = {}
    for c in protocol.pulse_classes(p):
        sent = int(round(pulses * c.probability))
        detected = int(rng.binomial(sent, c.gain))
        table[c.key] = ClassCounts(sent, detected, int(rng.binomial(detected, c.error_rate)))
    return BlockCounts(pulses, table)


def blocks(case: tuple) -> list[tuple[dict[str, float], BlockCounts]]:
    name, preset, overrides, pulses = case
    protocol = get_protocol(name)
    p = protocol.resolve(overrides, preset)
    return [(p, sampled_block(protocol, p, pulses, seed)) for seed in (1, 2)] + \
        [(p, BlockCounts.expected(protocol.pulse_classes(p), pulses))]


# ---- TASK A: the post-processing API -----------------------------------------------------------
@pytest.mark.parametrize("case", BLOCKS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]['distance_km']:.0f}km")
def test_key_bits_is_the_string_the_estimate_charges_for(case: tuple) -> None:
    protocol = get_protocol(case[0])
    for p, counts in blocks(case):
        detected = sum(counts.get(*k).detected for k in KEY_CLASSES[case[0]])
        wrong = sum(counts.get(*k).errors for k in KEY_CLASSES[case[0]])
        n, errors = protocol.key_bits(counts)
        assert isinstance(n, int) and isinstance(errors, int)
        assert (n, errors) == (round(detected), round(wrong))
        est = protocol.estimate(counts, p, FINITE)
        assert not est.aborted, est.abort_reason
        # λ_EC = f·n·H2(E) of the estimate is computed on exactly this string (before rounding, for expected counts).
        assert est.details["leak_ec_bits"] == pytest.approx(p["ec_efficiency"] * detected * binary_entropy(wrong / detected), rel=1e-9)


@pytest.mark.parametrize("case", BLOCKS, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]['distance_km']:.0f}km")
def test_secret_key_length_with_the_modelled_leak_is_the_estimate(case: tuple) -> None:
    protocol = get_protocol(case[0])
    for p, counts in blocks(case):
        est = protocol.estimate(counts, p, FINITE)
        leak, budget = est.details["leak_ec_bits"], est.details["key_budget_bits"]
        assert est.secret_key_bits > 0
        assert secret_key_length(est, leak) == est.secret_key_bits == math.floor(budget - leak)
        # A better code leaks less and keeps the difference; a leak above the budget leaves nothing.
        assert secret_key_length(est, 0.9 * leak) == math.floor(budget - 0.9 * leak) > est.secret_key_bits
        assert secret_key_length(est, budget + 1.0) == 0


def test_secret_key_length_is_zero_without_a_budget() -> None:
    bb84 = get_protocol("bb84-decoy")
    p = bb84.resolve({"distance_km": 25.0, "misalignment_error": 0.2}, "lim2014")
    noisy = bb84.estimate(BlockCounts.expected(bb84.pulse_classes(p), 1e10), p, FINITE)
    assert noisy.abort_reason == "qber" and "key_budget_bits" not in noisy.details
    assert secret_key_length(noisy, 0.0) == 0
    assert secret_key_length(KeyEstimate(FINITE, 0.0, 0.0, None, None, 0.0), 0.0) == 0


# ---- TASK B: finite → asymptotic of the same parameters -----------------------------------------
# (protocol, preset, distance, tolerance at N = 1e14). Every preset; presets that pin a paper's q
# (gys, xu2013, wang-yu-hu-2018) are compared with the sifting derived (sifting_factor = 0): the pin
# only rescales the asymptotic rate to that paper's "per signal pulse" convention.
#
# Tolerance: the finite bounds differ from the asymptotic ones by the concentration terms — Hoeffding
# δ = √(n/2 ln(21/ε)) (BB84), Chernoff √(2 n ln(1/ε)) per cell (MDI, TF), the sampling γ — which relative
# to the counts fall as 1/√N, plus ln(1/ε)-sized security terms that fall as 1/N. At 1e14 pulses the
# smallest cells that enter the decoy bounds hold ≥ 1e6 detections here, so the gap is ≲ 2 %: 3 %.
# MDI xu2013 (p_d = 3e-6, η_d = 14.5 %): its decoy-vacuum cells hold only ~8e4 detections at 1e14 pulse
# pairs (Chernoff ≈ ±3 % each, amplified by the double difference Q̃_νν − Q̃_νω − Q̃_ων + Q̃_ωω): 6 %.
CONVERGENCE = [
    ("bb84-decoy", "gys", 25.0, 0.03),
    ("bb84-decoy", "lim2014", 25.0, 0.03),
    ("bb84-decoy", "lim2014", 50.0, 0.03),
    ("mdi", "snspd", 40.0, 0.03),
    ("mdi", "xu2013", 0.0, 0.06),
    ("tf", "snspd", 200.0, 0.03),
    ("tf", "wang-yu-hu-2018", 200.0, 0.03),
]
PULSES = (1e10, 1e12, 1e14)


def rates(name: str, preset: str, distance: float, **overrides: float) -> tuple[float, list[float]]:
    """(asymptotic rate, finite rates at PULSES) from expected counts, sifting derived."""
    protocol = get_protocol(name)
    p = protocol.resolve({"distance_km": distance, "sifting_factor": 0.0, **overrides}, preset)
    classes = protocol.pulse_classes(p)
    asym = protocol.estimate(BlockCounts.expected(classes, 1e12), p, ASYMPTOTIC).key_rate_bits_per_pulse
    finite = [protocol.estimate(BlockCounts.expected(classes, n), p, FINITE).key_rate_bits_per_pulse for n in PULSES]
    return asym, finite


@pytest.mark.parametrize("name, preset, distance, tolerance", CONVERGENCE)
def test_finite_rate_rises_to_the_asymptotic_rate_of_the_same_parameters(name: str, preset: str, distance: float,
                                                                         tolerance: float) -> None:
    asym, finite = rates(name, preset, distance)
    positive = [r for r in finite if r > 0]
    assert finite == sorted(finite) and len(positive) >= 2 and positive == sorted(set(positive)), finite
    assert finite[-1] < asym
    assert 1.0 - finite[-1] / asym < tolerance, (finite[-1], asym)
    # The gap closes as 1/√N (100× the pulses: ~10× smaller; 0.2 leaves room for the ln(1/ε) terms).
    # A convention that differed between the modes would leave a constant gap instead.
    assert 1.0 - finite[-1] / asym < 0.2 * (1.0 - finite[-2] / asym)


def test_pinned_sifting_factor_only_rescales_the_asymptotic_rate() -> None:
    """MDI and TF: a paper's q replaces the derived key share (p_μ² p_Z², p_Z²) and changes nothing else."""
    for name, preset, distance, share in (("mdi", "xu2013", 50.0, lambda p: (p["p_mu"] * p["key_basis_probability"]) ** 2),
                                          ("tf", "wang-yu-hu-2018", 300.0, lambda p: p["z_window_probability"] ** 2)):
        protocol = get_protocol(name)
        pinned = protocol.resolve({"distance_km": distance}, preset)
        derived = {**pinned, "sifting_factor": 0.0}
        assert pinned["sifting_factor"] == 1.0
        for analysis in (ASYMPTOTIC_IDEAL, ASYMPTOTIC):
            counts = BlockCounts.expected(protocol.pulse_classes(pinned), 1e12)
            r_pinned = protocol.estimate(counts, pinned, analysis).key_rate_bits_per_pulse
            r_derived = protocol.estimate(counts, derived, analysis).key_rate_bits_per_pulse
            assert r_derived == pytest.approx(share(pinned) * r_pinned, rel=1e-12)


def test_shipped_presets_derive_the_sifting() -> None:
    """Only presets that reproduce a paper's rate formula pin q (their comments say which paper)."""
    pinned = {(name, preset) for name in ("bb84-decoy", "mdi", "tf")
              for preset, values in get_protocol(name).presets.items() if values.get("sifting_factor", 0.0) > 0}
    assert pinned == {("bb84-decoy", "gys"), ("mdi", "xu2013"), ("tf", "wang-yu-hu-2018")}


# ---- the vacuum contribution (BB84) ---------------------------------------------------------------
def vacuum_gain(preset: str, distance: float, analysis: str, pulses: float) -> float:
    """Rate with vacuum_contribution = 1 minus the rate with 0 (sifting derived)."""
    bb84 = get_protocol("bb84-decoy")
    out = []
    for v in (1.0, 0.0):
        p = bb84.resolve({"distance_km": distance, "vacuum_contribution": v, "sifting_factor": 0.0}, preset)
        out.append(bb84.estimate(BlockCounts.expected(bb84.pulse_classes(p), pulses), p, analysis).key_rate_bits_per_pulse)
    return out[0] - out[1]


@pytest.mark.parametrize("preset, distance", [("lim2014", 25.0), ("lim2014", 80.0), ("gys", 25.0)])
def test_vacuum_contribution_is_counted_the_same_way_in_every_mode(preset: str, distance: float) -> None:
    """v = 1 adds p_Z² τ0 Y0 per pulse in the asymptotic modes and s_Z0 in finite mode, which tends to it."""
    bb84 = get_protocol("bb84-decoy")
    p = bb84.resolve({"distance_km": distance, "vacuum_contribution": 1.0}, preset)
    counts = BlockCounts.expected(bb84.pulse_classes(p), 1e14)
    est_on = bb84.estimate(counts, p, FINITE)
    est_off = bb84.estimate(counts, {**p, "vacuum_contribution": 0.0}, FINITE)
    # Finite: exactly the s_Z0 bound, nothing else moves.
    assert est_on.details["key_budget_bits"] - est_off.details["key_budget_bits"] == \
        pytest.approx(est_on.details["s_z0_lower"], rel=1e-9)
    # Ideal mode adds the true p_Z² τ0 Y0; the decoy-bounded mode the same with Y0's lower bound
    # (ν e^ω Q_ω − ω e^ν Q_ν)/(ν − ω), exact for ω = 0, loose for ω > 0 at short distance (ω η ≫ Y0).
    tau0 = sum(pk * math.exp(-k) for k, pk in ((p["mu"], p["p_mu"]), (p["nu"], p["p_nu"]),
                                                 (p["omega"], 1.0 - p["p_mu"] - p["p_nu"])))
    gain_ideal = vacuum_gain(preset, distance, ASYMPTOTIC_IDEAL, 1e12)
    assert gain_ideal == pytest.approx(p["key_basis_probability"] ** 2 * tau0 * bb84._vacuum_yield(p), rel=1e-9)
    gain_asym = vacuum_gain(preset, distance, ASYMPTOTIC, 1e12)
    assert 0.0 < gain_asym <= gain_ideal
    # The finite s_Z0 tends to it, slower than the key as a whole: Lim et al.'s Hoeffding δ =
    # √(n_Z/2 ln(21/ε)) is sized by the whole Z basis, but s_Z0 rests on the weakest-decoy cell, a
    # ~1e-4 share of n_Z, so its relative deviation is tens of % at 1e14 pulses and falls as 1/√N:
    # compared at 1e16 and 1e18, where it is ≲ 10 % and ≲ 1 %.
    gaps = [1.0 - vacuum_gain(preset, distance, FINITE, n) / gain_asym for n in (1e16, 1e18)]
    assert 0.0 < gaps[1] < 0.01 and gaps[1] < 0.2 * gaps[0], gaps


def test_gys_reproduces_ma_2005_without_the_vacuum_term_and_with_it_when_asked() -> None:
    """Ma et al. 2005 eq. (1) omits Q0: the preset does; switching it on adds q Y0 e^(−μ) in the pinned convention."""
    bb84 = get_protocol("bb84-decoy")
    p = bb84.resolve({"distance_km": 50.0}, "gys")
    assert p["vacuum_contribution"] == 0.0 and p["sifting_factor"] == 0.5
    counts = BlockCounts.expected(bb84.pulse_classes(p), 1e12)
    off = bb84.estimate(counts, p, ASYMPTOTIC_IDEAL).key_rate_bits_per_pulse
    on = bb84.estimate(counts, {**p, "vacuum_contribution": 1.0}, ASYMPTOTIC_IDEAL).key_rate_bits_per_pulse
    assert off == pytest.approx(2.226e-4, rel=0.02)  # physics.md table
    assert on - off == pytest.approx(0.5 * 1.7e-6 * math.exp(-p["mu"]), rel=1e-3)


def test_vacuum_contribution_is_a_switch() -> None:
    bb84 = get_protocol("bb84-decoy")
    with pytest.raises(ValueError, match="vacuum_contribution"):
        bb84.resolve({"vacuum_contribution": 0.5}, "lim2014")
