"""Decoy-state BB84 against the published numbers of physics.md and the physical invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from qkdlink.keyrate import predict, sweep
from qkdlink.protocols import get_protocol
from qkdlink.protocols.base import BlockCounts, ParameterError

BB84 = get_protocol("bb84-decoy")


# physics.md, "Decoy-state BB84 — reference model": GYS channel, μ = 0.48 (computed from the stated
# formula, 2 % tolerance).
GYS_TABLE = [  # L km, R bits/pulse, Q_mu, E_mu
    (0, 2.555e-3, 2.137e-2, 0.0330),
    (50, 2.226e-4, 1.925e-3, 0.0334),
    (100, 1.718e-5, 1.733e-4, 0.0376),
    (140, 2.465e-7, 2.650e-5, 0.0630),
]


@pytest.mark.parametrize(("distance", "rate", "gain", "qber"), GYS_TABLE)
def test_gys_ideal_decoy_rate_gain_and_qber_match_ma_2005(distance, rate, gain, qber):
    point = sweep("bb84-decoy", [distance], "asymptotic-ideal", preset="gys")[0]
    assert point.key_rate_bits_per_pulse == pytest.approx(rate, rel=0.02)
    assert point.gain == pytest.approx(gain, rel=0.02)
    assert point.qber == pytest.approx(qber, rel=0.02)


def test_gys_maximal_distance_is_about_142_km():
    rates = {p.distance_km: p.key_rate_bits_per_pulse
             for p in sweep("bb84-decoy", [138, 141, 144, 147], "asymptotic-ideal", preset="gys")}
    assert rates[138] > 0 and rates[141] > 0
    assert rates[144] == 0 and rates[147] == 0


def test_weak_decoy_bounds_hold_and_approach_ideal_as_decoy_vanishes():
    """Ma et al. 2005 eqs. (34), (37): Y1_L <= Y1, e1_U >= e1, and R -> ideal as nu -> 0."""
    ratios = []
    for nu in (0.2, 0.1, 0.05, 0.01):
        p = BB84.resolve({"distance_km": 50, "nu": nu}, "gys")
        truth = BB84.single_photon_truth(p)
        bound = predict(BB84, p, "asymptotic")
        ideal = predict(BB84, p, "asymptotic-ideal")
        assert bound.y1_lower <= truth.yield_
        assert bound.e1_upper >= truth.phase_error_rate
        ratios.append(bound.key_rate_bits_per_pulse / ideal.key_rate_bits_per_pulse)
    assert ratios == sorted(ratios)
    assert ratios[-1] > 0.98


@pytest.mark.parametrize("analysis", ["asymptotic-ideal", "asymptotic", "finite"])
@pytest.mark.parametrize("preset", ["gys", "lim2014"])
def test_rate_never_exceeds_plob_and_falls_with_distance(analysis, preset):
    points = sweep("bb84-decoy", list(range(0, 201, 10)), analysis, preset=preset, pulses=1e12)
    rates = [p.key_rate_bits_per_pulse for p in points]
    assert all(p.key_rate_bits_per_pulse <= p.plob_bound_bits_per_pulse for p in points)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert rates[0] > 0


def test_rate_scales_linearly_with_transmittance():
    """Repeaterless protocols: log R vs log η has slope ≈ 1 away from the dark-count cliff."""
    points = sweep("bb84-decoy", [20, 40, 60, 80], "asymptotic-ideal", preset="gys")
    slope = np.polyfit(np.log([p.channel_transmittance for p in points]),
                       np.log([p.key_rate_bits_per_pulse for p in points]), 1)[0]
    assert slope == pytest.approx(1.0, abs=0.05)


def test_finite_rate_rises_with_pulses_and_approaches_asymptotic():
    p = BB84.resolve({"distance_km": 50}, "lim2014")
    asym = predict(BB84, p, "asymptotic").key_rate_bits_per_pulse
    finite = [predict(BB84, p, "finite", n).key_rate_bits_per_pulse for n in (1e8, 1e9, 1e10, 1e11, 1e12, 1e14)]
    assert finite == sorted(finite)
    assert all(r < asym for r in finite)
    # Same conventions in both modes (sifting p_Z², all intensities, s_0 counted): the finite rate
    # tends to the asymptotic one itself (tests/test_key_length_conventions.py checks how fast).
    assert finite[-1] / asym > 0.98


def _rate_at_key_detections(params: dict, n_key: float, kappa: float = 1e-15) -> float:
    """Finite rate when the block holds ``n_key`` key-basis detections, ε_sec = κ ℓ (Lim et al. 2014)."""
    classes = BB84.pulse_classes(params)
    pulses = n_key / sum(c.probability * c.gain for c in classes if c.basis == "Z")
    counts = BlockCounts.expected(classes, pulses)
    trial = dict(params)
    estimate = BB84.estimate(counts, trial, "finite")
    for _ in range(3):  # fixed point of ε_sec = κ ℓ
        if not estimate.secret_key_bits:
            break
        trial["epsilon_sec"] = kappa * estimate.secret_key_bits
        estimate = BB84.estimate(counts, trial, "finite")
    return estimate.key_rate_bits_per_pulse


def _optimised_rate(distance: float, n_key: float) -> float:
    base = BB84.resolve({"distance_km": distance}, "lim2014")
    names = ["mu", "nu", "p_mu", "p_nu", "key_basis_probability"]

    def objective(x: np.ndarray) -> float:
        trial = {**base, **dict(zip(names, x))}
        try:
            for name in names:
                BB84.parameter(name).check(trial[name])
            BB84.check_consistency(trial)
            return -1e6 * _rate_at_key_detections(trial, n_key)
        except (ParameterError, ValueError, ZeroDivisionError):
            return 1.0

    starts = ([0.5, 0.1, 0.7, 0.2, 0.9], [0.4, 0.15, 0.5, 0.3, 0.8])
    return max(-minimize(objective, x0, method="Nelder-Mead",
                         options={"maxiter": 2000, "xatol": 1e-6, "fatol": 1e-9}).fun / 1e6 for x0 in starts)


def test_lim_2014_rate_for_1e9_is_1_75_times_rate_for_1e7_at_100_km():
    """physics.md: Lim et al. 2014 Fig. 1 — read off the text/figure, 10 % tolerance."""
    r7, r9 = _optimised_rate(100, 1e7), _optimised_rate(100, 1e9)
    assert r9 / r7 == pytest.approx(1.75, rel=0.10)
    asym = predict(BB84, BB84.resolve({"distance_km": 100}, "lim2014"), "asymptotic-ideal")
    assert r9 < asym.key_rate_bits_per_pulse


def test_fibre_cut_leaves_only_dark_counts_and_no_key():
    p = BB84.resolve({"distance_km": 25, "extra_loss_db": 120}, "lim2014")
    point = predict(BB84, p, "finite", 1e10)
    assert point.gain == pytest.approx(2 * p["dark_count_probability"], rel=0.05)
    assert point.key_rate_bits_per_pulse == 0 and point.abort_reason == "qber"


def test_detector_saturation_collapses_detection_through_dead_time():
    healthy = BB84.resolve({"distance_km": 25, "dead_time_s": 1e-6}, "lim2014")
    blinded = {**healthy, "background_photons": 50.0}
    g_healthy = predict(BB84, healthy, "asymptotic").gain
    g_blinded = predict(BB84, blinded, "asymptotic")
    assert g_blinded.gain < 1.1e-3  # live fraction 1/(1 + 1e9 · 1e-6) ≈ 1e-3
    assert g_blinded.qber > 0.4 and g_blinded.key_rate_bits_per_pulse == 0
    assert g_healthy > 1e-3


@pytest.mark.parametrize(("overrides", "field"), [
    ({"nu": 0.6}, "mu > nu + omega"),
    ({"omega": 0.2}, "nu > omega"),
    ({"p_mu": 0.9, "p_nu": 0.2}, "p_mu + p_nu"),
    ({"detector_efficiency": 1.5}, "detector_efficiency"),
    ({"bogus": 1.0}, "bogus"),
])
def test_bad_parameters_are_rejected_with_the_field_named(overrides, field):
    with pytest.raises(ParameterError, ) as err:
        BB84.resolve(overrides, "gys")
    assert field in str(err.value)


def test_truth_matches_ma_closed_forms():
    p = BB84.resolve({"distance_km": 80}, "gys")
    eta = 0.045 * 10 ** (-0.21 * 80 / 10)
    y0 = 1.7e-6
    truth = BB84.single_photon_truth(p)
    assert truth.yield_ == pytest.approx(y0 + eta, rel=1e-4)
    assert truth.phase_error_rate == pytest.approx((0.5 * y0 + 0.033 * eta) / (y0 + eta), rel=1e-3)
    assert math.isclose(sum(c.probability for c in BB84.pulse_classes(p)), 0.5)
