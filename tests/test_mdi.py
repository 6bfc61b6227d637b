"""MDI-QKD model: closed forms against the optics, published numbers, bounds, finite key, parameters.

Reference numbers and their provenance:
* The Xu et al. 2013 table (``XU2013_TABLE``) is computed from the paper's printed Appendix-B
  formulas and its key-rate eq. (1) with an independent implementation (scipy's I0, the formulas
  typed as printed), not read off a plot: tolerance 2 %.
* "Over say 200 km will remain secure" is a statement of Lo, Curty, Qi, PRL 108, 130503 (2012)
  (abstract, Fig. 2) for the parameter set Xu et al. 2013 restate in their Table 1: checked as
  positive key at 200 km, a read-off statement (10 % class, here a threshold).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.special import i0

from qkdlink.physics.channel import plob_bound
from qkdlink.protocols import get_protocol
from qkdlink.protocols.base import (
    ABORT_ESTIMATION, ABORT_LOW_COUNTS, ABORT_QBER, ANALYSES, ASYMPTOTIC, ASYMPTOTIC_IDEAL, FINITE, BlockCounts,
    ClassCounts, KeyEstimate, ParameterError, PulseClass,
)
from qkdlink.protocols.mdi import PROTOCOL, x_basis, z_basis

PULSES = 1e12


def params(preset: str | None = None, **overrides: float) -> dict[str, float]:
    return PROTOCOL.resolve(overrides, preset=preset)


def estimate(p: dict[str, float], analysis: str, pulses: float = PULSES) -> KeyEstimate:
    return PROTOCOL.estimate(BlockCounts.expected(PROTOCOL.pulse_classes(p), pulses), p, analysis)


def rate(p: dict[str, float], analysis: str, pulses: float = PULSES) -> float:
    return estimate(p, analysis, pulses).key_rate_bits_per_pulse


def classes(p: dict[str, float]) -> dict[tuple[str, str], PulseClass]:
    return {c.key: c for c in PROTOCOL.pulse_classes(p)}


def reach_km(preset: str, analysis: str, pulses: float = PULSES) -> float:
    """Largest distance with key (bisection over 0–1000 km)."""
    lo, hi = 0.0, 1000.0
    for _ in range(25):
        mid = (lo + hi) / 2.0
        if rate(params(preset, distance_km=mid), analysis, pulses) > 0:
            lo = mid
        else:
            hi = mid
    return lo


# ---- the closed forms against the optics -----------------------------------------------------
_POL = {"H": (1.0, 0.0), "V": (0.0, 1.0), "D": (2 ** -0.5, 2 ** -0.5), "A": (2 ** -0.5, -(2 ** -0.5))}


def brute_force_bsm(ma: float, mb: float, pd: float, basis: str, phases: int = 720) -> tuple[float, float]:
    """(gain, QBER) of the polarisation BSM by direct phase averaging of two coherent states.

    Beam splitter c = (a + b)/√2, d = (a − b)/√2 per polarisation; each of cH, cV, dH, dV clicks
    with 1 − (1 − p_d) e^(−|α|²); ψ⁻ = (cH, dV) or (cV, dH), ψ⁺ = (cH, cV) or (dH, dV), exactly two
    clicks. Z: every success with equal bits is an error; X: ψ⁺ with unequal bits, ψ⁻ with equal.
    """
    states = ("H", "V") if basis == "Z" else ("D", "A")
    phi = np.linspace(0.0, 2.0 * np.pi, phases, endpoint=False)
    gain = errors = 0.0
    for ia, sa in enumerate(states):
        for ib, sb in enumerate(states):
            amp_a = [math.sqrt(ma) * x * np.ones_like(phi) for x in _POL[sa]]
            amp_b = [math.sqrt(mb) * x * np.exp(1j * phi) for x in _POL[sb]]
            mean = {"cH": abs(amp_a[0] + amp_b[0]) ** 2 / 2, "cV": abs(amp_a[1] + amp_b[1]) ** 2 / 2,
                    "dH": abs(amp_a[0] - amp_b[0]) ** 2 / 2, "dV": abs(amp_a[1] - amp_b[1]) ** 2 / 2}
            click = {k: 1.0 - (1.0 - pd) * np.exp(-v) for k, v in mean.items()}

            def pattern(on: set[str]) -> float:
                prob = np.ones_like(phi)
                for k in click:
                    prob = prob * (click[k] if k in on else 1.0 - click[k])
                return float(prob.mean())

            psi_minus = pattern({"cH", "dV"}) + pattern({"cV", "dH"})
            psi_plus = pattern({"cH", "cV"}) + pattern({"dH", "dV"})
            gain += (psi_minus + psi_plus) / 4.0
            if basis == "Z":
                errors += (psi_minus + psi_plus) / 4.0 if ia == ib else 0.0
            else:
                errors += (psi_minus if ia == ib else psi_plus) / 4.0
    return gain, errors / gain


@pytest.mark.parametrize("ma, mb, pd", [(0.3, 0.3, 1e-3), (0.05, 0.2, 1e-2), (2.0, 0.7, 0.05), (0.4, 0.0, 0.01)])
def test_closed_forms_match_phase_averaged_optics(ma: float, mb: float, pd: float) -> None:
    """At e_d = 0 Xu et al.'s Appendix-B gains and QBERs are exact for threshold detectors."""
    for basis, closed in (("Z", z_basis), ("X", x_basis)):
        gain, errors = closed(ma, mb, pd, 0.0)
        want_gain, want_qber = brute_force_bsm(ma, mb, pd, basis)
        assert gain == pytest.approx(want_gain, rel=1e-9), basis
        assert errors / gain == pytest.approx(want_qber, rel=1e-9), basis


def test_x_basis_matches_printed_formula_and_stays_accurate_far_out() -> None:
    """The cancellation-free evaluation equals the printed one where the printed one is accurate."""
    for ma, mb, pd, ed in ((0.3, 0.3, 3e-6, 0.015), (0.01, 0.05, 1e-4, 0.03), (1e-3, 1e-3, 3e-6, 0.0)):
        y = (1 - pd) * math.exp(-(ma + mb) / 4)
        x = math.sqrt(ma * mb) / 2
        q_x = 2 * y ** 2 * (1 + 2 * y ** 2 - 4 * y * i0(x) + i0(2 * x))
        e_q = 0.5 * q_x - 2 * (0.5 - ed) * y ** 2 * (i0(2 * x) - 1)
        gain, errors = x_basis(ma, mb, pd, ed)
        assert gain == pytest.approx(q_x, rel=1e-6)
        assert errors == pytest.approx(e_q, rel=1e-6)
    # 400 km with SNSPDs: ~1e-5 photons per arm; the gain must stay positive and near 4y²(1−y)²-led value.
    gain, errors = x_basis(3e-6, 3e-6, 1e-8, 0.01)
    assert gain > 0 and 0 < errors / gain < 0.5


# ---- ideal limits -----------------------------------------------------------------------------
def test_no_dark_counts_no_misalignment_gives_error_free_key_basis() -> None:
    p = params(dark_count_probability=0.0, misalignment_error=0.0, distance_km=50)
    for (label, basis), c in classes(p).items():
        if basis == "Z":
            assert c.error_rate == 0.0, label
    eta_a, eta_b = PROTOCOL.geometry(p).arm_transmittances
    truth = PROTOCOL.single_photon_truth(p)
    assert truth.yield_ == pytest.approx(eta_a * eta_b / 2, rel=1e-12)
    assert truth.phase_error_rate == pytest.approx(0.0, abs=1e-15)


def test_x_basis_signal_qber_is_the_coherent_state_value() -> None:
    """E_X of signal pairs: 1/2 − 2y²[I0(2x) − 1]/Q_X (Xu et al. 2013), → 1/4 + e_d/2 at high loss."""
    for distance, ed in ((0.0, 0.0), (20.0, 0.0), (20.0, 0.02)):
        p = params(dark_count_probability=0.0, misalignment_error=ed, distance_km=distance)
        eta_a, eta_b = PROTOCOL.geometry(p).arm_transmittances
        ma, mb = eta_a * p["mu"], eta_b * p["mu"]
        y, x = math.exp(-(ma + mb) / 4), math.sqrt(ma * mb) / 2
        q_x = 2 * y ** 2 * (1 + 2 * y ** 2 - 4 * y * i0(x) + i0(2 * x))
        want = 0.5 - 2 * (0.5 - ed) * y ** 2 * (i0(2 * x) - 1) / q_x
        assert classes(p)[("signal-signal", "X")].error_rate == pytest.approx(want, rel=1e-6)
    far = params(dark_count_probability=0.0, misalignment_error=0.02, distance_km=300)
    assert classes(far)[("signal-signal", "X")].error_rate == pytest.approx(0.25 + 0.01, abs=1e-4)
    assert classes(params(distance_km=20))[("signal-signal", "X")].error_rate > 0.24


# ---- published / formula-derived numbers for the default preset ------------------------------
# (L km, Q_μμ,Z, E_μμ,Z, Q_μμ,X, E_μμ,X, Y11, e11, R ideal) for Xu et al. 2013 Table 1
# (p_d = 3e-6, η_d = 0.145, e_d = 0.015, f = 1.16, 0.2 dB/km), μ = 0.4, symmetric relay.
XU2013_TABLE = [
    (0, 1.5426e-03, 1.5204e-02, 3.1302e-03, 2.5402e-01, 1.0514e-02, 1.5072e-02, 4.6737e-04),
    (50, 1.6385e-04, 1.5637e-02, 3.2900e-04, 2.5654e-01, 1.0518e-03, 1.5245e-02, 4.4924e-05),
    (100, 1.6743e-05, 1.7003e-02, 3.3466e-05, 2.5765e-01, 1.0530e-04, 1.5793e-02, 4.2700e-06),
    (150, 1.6994e-06, 2.1277e-02, 3.3783e-06, 2.5897e-01, 1.0567e-05, 1.7518e-02, 3.7019e-07),
    (200, 1.7504e-07, 3.4370e-02, 3.4314e-07, 2.6240e-01, 1.0687e-06, 2.2904e-02, 2.0903e-08),
]


@pytest.mark.parametrize("row", XU2013_TABLE, ids=lambda r: f"{r[0]}km")
def test_xu2013_preset_reproduces_formula_values(row: tuple[float, ...]) -> None:
    """Computed from Xu et al. 2013's stated formulas (not a plot): 2 %."""
    distance, q_z, e_z, q_x, e_x, y11, e11, r_ideal = row
    p = params("xu2013", distance_km=distance)
    table = classes(p)
    assert table[("signal-signal", "Z")].gain == pytest.approx(q_z, rel=0.02)
    assert table[("signal-signal", "Z")].error_rate == pytest.approx(e_z, rel=0.02)
    assert table[("signal-signal", "X")].gain == pytest.approx(q_x, rel=0.02)
    assert table[("signal-signal", "X")].error_rate == pytest.approx(e_x, rel=0.02)
    truth = PROTOCOL.single_photon_truth(p)
    assert truth.yield_ == pytest.approx(y11, rel=0.02)
    assert truth.phase_error_rate == pytest.approx(e11, rel=0.02)
    assert rate(p, ASYMPTOTIC_IDEAL) == pytest.approx(r_ideal, rel=0.02)


def test_xu2013_is_default_and_secure_over_200_km() -> None:
    """Lo, Curty, Qi 2012: with these devices key survives 'over say 200 km' (read-off statement)."""
    assert PROTOCOL.default_preset == "xu2013"
    p = params(distance_km=200)
    assert rate(p, ASYMPTOTIC_IDEAL) > 0
    assert rate(p, ASYMPTOTIC) > 0
    assert 200 < reach_km("xu2013", ASYMPTOTIC_IDEAL) < 260


def test_snspd_reach_is_a_few_hundred_km() -> None:
    asymptotic = reach_km("snspd", ASYMPTOTIC)
    assert 300 < asymptotic < 700
    assert asymptotic > reach_km("xu2013", ASYMPTOTIC) + 100
    assert 150 < reach_km("snspd", FINITE, 1e14) < asymptotic


# ---- bounds and scaling ---------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["xu2013", "snspd"])
def test_never_above_plob_and_falls_with_distance(preset: str) -> None:
    previous = {a: math.inf for a in ANALYSES}
    for distance in range(0, 401, 10):
        p = params(preset, distance_km=distance)
        cap = plob_bound(PROTOCOL.geometry(p).fiber_transmittance)
        for analysis in ANALYSES:
            r = rate(p, analysis, 1e14)
            assert r <= cap, (preset, distance, analysis)
            assert r <= previous[analysis], (preset, distance, analysis)
            if previous[analysis] > 0 and r > 0:
                assert r < previous[analysis]
            previous[analysis] = r


@pytest.mark.parametrize("preset", ["xu2013", "snspd"])
def test_rate_is_linear_in_total_transmittance(preset: str) -> None:
    """log R against log η_total has slope ≈ 1 (MDI), not the 1/2 of twin-field QKD."""
    spans = (100.0, 120.0, 140.0, 160.0)
    log_eta = [math.log10(PROTOCOL.geometry(params(preset, distance_km=L)).fiber_transmittance) for L in spans]
    for analysis in (ASYMPTOTIC_IDEAL, ASYMPTOTIC):
        log_r = [math.log10(rate(params(preset, distance_km=L), analysis)) for L in spans]
        slope = np.polyfit(log_eta, log_r, 1)[0]
        assert 0.95 < slope < 1.2, (analysis, slope)


def test_asymptotic_never_beats_ideal_and_bounds_hold() -> None:
    for distance in (0, 50, 100, 150, 200):
        p = params(distance_km=distance)
        ideal, bound = estimate(p, ASYMPTOTIC_IDEAL), estimate(p, ASYMPTOTIC)
        assert bound.key_rate_bits_per_pulse <= ideal.key_rate_bits_per_pulse
        truth = PROTOCOL.single_photon_truth(p)
        assert bound.y1_lower <= truth.yield_
        assert bound.e1_upper >= truth.phase_error_rate


@pytest.mark.parametrize("omega", [0.0, 1e-3])
def test_y11_bound_below_truth_and_tight_as_decoy_weakens(omega: float) -> None:
    ratios = []
    for nu in (0.2, 0.1, 0.05, 0.01, 0.003):
        p = params(distance_km=60, nu=nu, omega=omega)
        truth = PROTOCOL.single_photon_truth(p)
        bound = estimate(p, ASYMPTOTIC)
        assert bound.y1_lower <= truth.yield_
        assert bound.details["y11_x_lower"] <= truth.yield_
        assert bound.e1_upper >= truth.phase_error_rate
        ratios.append(bound.y1_lower / truth.yield_)
    assert ratios == sorted(ratios)
    assert ratios[-1] > 0.99


def test_finite_rises_with_block_size_and_approaches_asymptotic() -> None:
    p = params(distance_km=20)
    # xu2013 pins Xu et al.'s q = 1 (per Z signal pair); derived sifting (0) makes the asymptotic rate
    # per pulse pair sent, the N → ∞ limit of the finite one.
    p["sifting_factor"] = 0.0
    asymptotic = rate(p, ASYMPTOTIC)
    truth = PROTOCOL.single_photon_truth(p)
    rates = []
    for pulses in (1e10, 1e11, 1e12, 1e13, 1e14):
        out = estimate(p, FINITE, pulses)
        rates.append(out.key_rate_bits_per_pulse)
        if not out.aborted:
            assert out.y1_lower <= truth.yield_
            assert out.e1_upper >= truth.phase_error_rate
            assert out.s1_lower > 0 and out.secret_key_bits == pytest.approx(out.key_rate_bits_per_pulse * pulses)
    positive = [r for r in rates if r > 0]
    assert rates == sorted(rates) and len(positive) >= 3 and positive == sorted(set(positive))
    assert rates[-1] <= asymptotic
    assert rates[-1] > 0.85 * asymptotic
    assert rate(p, FINITE, 1e16) > 0.98 * asymptotic


# ---- aborts ---------------------------------------------------------------------------------
def test_abort_reasons() -> None:
    noisy = params(misalignment_error=0.2, distance_km=20)
    for analysis in ANALYSES:
        assert estimate(noisy, analysis, 1e14).abort_reason == ABORT_QBER
    near = params(distance_km=50)
    assert estimate(near, FINITE, 1e8).abort_reason == ABORT_LOW_COUNTS
    empty = BlockCounts(0.0, {})
    assert PROTOCOL.estimate(empty, near, FINITE).abort_reason == ABORT_LOW_COUNTS
    beyond = params(distance_km=225)  # QBER ≈ 5 %, below the threshold, but no key from the bounds
    for analysis in (ASYMPTOTIC, FINITE):
        out = estimate(beyond, analysis, 1e16)
        assert out.qber < beyond["qber_abort_threshold"]
        assert out.abort_reason == ABORT_ESTIMATION and out.key_rate_bits_per_pulse == 0.0
    with pytest.raises(ValueError):
        PROTOCOL.estimate(empty, near, "optimistic")


def test_only_x_counts_missing_is_low_counts() -> None:
    p = params(distance_km=20)
    counts = BlockCounts.expected([c for c in PROTOCOL.pulse_classes(p) if c.basis == "Z"], 1e14)
    assert PROTOCOL.estimate(counts, p, FINITE).abort_reason == ABORT_LOW_COUNTS
    single = BlockCounts(1e6, {("signal-signal", "Z"): ClassCounts(1e6, 10.0, 0.0)})
    assert PROTOCOL.estimate(single, p, FINITE).abort_reason == ABORT_LOW_COUNTS


# ---- structure, geometry, devices ------------------------------------------------------------
def test_pulse_classes_cover_every_intensity_pair_and_basis() -> None:
    p = params(distance_km=30)
    table = PROTOCOL.pulse_classes(p)
    assert len(table) == 18
    labels = {c.intensity for c in table}
    assert labels == {f"{a}-{b}" for a in ("signal", "decoy", "vacuum") for b in ("signal", "decoy", "vacuum")}
    q = p["key_basis_probability"]
    assert sum(c.probability for c in table) == pytest.approx(q ** 2 + (1 - q) ** 2)
    signal_decoy = {c.basis: c for c in table if c.intensity == "signal-decoy"}
    assert signal_decoy["Z"].probability == pytest.approx(p["p_mu"] * p["p_nu"] * q * q)
    assert signal_decoy["X"].probability == pytest.approx(p["p_mu"] * p["p_nu"] * (1 - q) ** 2)
    assert all(0 <= c.gain <= 1 and 0 <= c.error_rate <= 0.5 for c in table)


def test_geometry_relay_position_and_extra_loss() -> None:
    p = params(distance_km=100, relay_position=0.25, extra_loss_db=3.0)
    g = PROTOCOL.geometry(p)
    assert g.fiber_transmittance == pytest.approx(10 ** (-(0.2 * 100 + 3.0) / 10))
    eta_a, eta_b = g.arm_transmittances
    eta_d = p["detector_efficiency"]
    assert eta_a == pytest.approx(eta_d * 10 ** (-(0.2 * 25 + 3.0) / 10))
    assert eta_b == pytest.approx(eta_d * 10 ** (-(0.2 * 75) / 10))
    assert eta_a * eta_b == pytest.approx(eta_d ** 2 * g.fiber_transmittance)
    step = params(distance_km=50, extra_loss_db=3.0)
    assert rate(step, ASYMPTOTIC) < rate(params(distance_km=50), ASYMPTOTIC)


def test_asymmetric_relay_costs_key_at_fixed_total_loss() -> None:
    """Unequal arms with equal intensities spoil the two-photon interference (Xu et al. 2013, Sec. 5)."""
    symmetric = rate(params(distance_km=100), ASYMPTOTIC)
    lopsided = rate(params(distance_km=100, relay_position=0.1), ASYMPTOTIC)
    assert 0 <= lopsided < symmetric


def test_detector_faults_cost_key() -> None:
    base = params(distance_km=50)
    dead = params(distance_km=50, dead_time_s=1e-6, repetition_rate_hz=1e9)
    after = params(distance_km=50, afterpulse_probability=0.05)
    bright = params(distance_km=50, background_photons=1e-4)
    g0 = classes(base)[("signal-signal", "Z")]
    g_dead = classes(dead)[("signal-signal", "Z")]
    assert g_dead.gain < g0.gain and g_dead.error_rate == pytest.approx(g0.error_rate)
    assert classes(after)[("signal-signal", "Z")].error_rate > g0.error_rate
    assert classes(bright)[("signal-signal", "Z")].error_rate > g0.error_rate
    for p in (dead, after, bright):
        assert rate(p, ASYMPTOTIC) < rate(base, ASYMPTOTIC)
    blinded = params(distance_km=50, background_photons=1e3)
    assert classes(blinded)[("signal-signal", "Z")].gain == pytest.approx(0.0, abs=1e-12)


# ---- parameters -----------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, field", [
    ({"mu": 0.05, "nu": 0.1}, "mu"),
    ({"nu": 0.01, "omega": 0.02}, "omega"),
    ({"p_mu": 0.7, "p_nu": 0.3}, "p_mu"),
    ({"p_nu": 0.0}, "p_nu"),
    ({"relay_position": 1.5}, "relay_position"),
    ({"detector_efficiency": -0.1}, "detector_efficiency"),
    ({"misalignment_error": "high"}, "misalignment_error"),
    ({"no_such_knob": 1.0}, "no_such_knob"),
])
def test_bad_parameters_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ParameterError, match=field):
        PROTOCOL.resolve(overrides)


def test_registry_presets_and_cli_names() -> None:
    assert get_protocol("mdi") is PROTOCOL
    names = {p.name for p in PROTOCOL.parameters}
    for cli in ("mu", "detector_efficiency", "dark_count_probability", "misalignment_error", "ec_efficiency",
                "fiber_loss_db_per_km", "sifting_factor", "distance_km", "relay_position", "nu", "omega"):
        assert cli in names
    assert {"xu2013", "snspd"} <= set(PROTOCOL.presets)
    snspd = params("snspd")
    assert 0.8 <= snspd["detector_efficiency"] <= 0.9 and snspd["dark_count_probability"] <= 1e-7
    with pytest.raises(ParameterError, match="preset"):
        PROTOCOL.resolve(preset="nope")


# ---- performance ----------------------------------------------------------------------------
def test_estimate_and_pulse_classes_are_fast() -> None:
    p = params(distance_km=80)
    counts = BlockCounts.expected(PROTOCOL.pulse_classes(p), 1e13)
    budget = {ASYMPTOTIC_IDEAL: 1e-3, ASYMPTOTIC: 1e-3, FINITE: 3e-3}
    for analysis, limit in budget.items():
        start = time.perf_counter()
        for _ in range(200):
            PROTOCOL.estimate(counts, p, analysis)
        assert (time.perf_counter() - start) / 200 < limit, analysis
    start = time.perf_counter()
    for _ in range(200):
        PROTOCOL.pulse_classes(p)
    assert (time.perf_counter() - start) / 200 < 1e-3
