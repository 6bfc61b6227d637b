"""Measurement-device-independent QKD (polarisation encoding, decoy states, untrusted relay Charlie).

Alice and Bob each send phase-randomised weak coherent pulses in a BB84 polarisation state with one
of three intensities (signal μ, decoy ν, weakest decoy ω ≈ 0, the same set for both) to Charlie,
who sits ``relay_position`` of the way from Alice and performs a linear-optics Bell-state
measurement: a 50:50 beam splitter, a polarising beam splitter on each output and four threshold
detectors. A click in exactly one H and one V detector is a success — ψ⁻ for detectors on
different outputs, ψ⁺ for the same output — and both announcements are kept (Lo, Curty, Qi,
PRL 108, 130503 (2012)). Key basis Z (H/V), test basis X (D/A).

Detection statistics: the closed forms of Xu, Curty, Qi, Lo, New J. Phys. 15, 113007 (2013),
Appendix B (the same physics as Ma & Razavi, PRA 86, 062319 (2012), with the phenomenological
misalignment e_d of Xu et al.: a success flips its bit with probability e_d). At e_d = 0 the forms
are exact for two phase-randomised coherent states and threshold detectors; tests/test_mdi.py
checks them against a brute-force phase average of the optics.

Noise that is not a photon from Alice or Bob — dark counts, stray light, afterpulses — clicks a
detector independently of the pulse in its gate, so it is folded into one per-detector noise-click
probability that takes the place of p_d in the closed forms:

    p_noise = 1 − (1 − p_dc) e^(−η_det n_bg) (1 − p_ap r̄),

with r̄ the mean click probability of one detector per gate. Afterpulses are modelled as noise
clicks in a later, random gate (first order in p_ap, as the trusted-detector model of Lim et al.,
PRA 89, 022307 (2014), eq. (9)); Charlie's detectors are untrusted, so afterpulses cost key through
the error rates and never open a loophole.

``extra_loss_db`` (connectors, a bad splice, a loss step or a fibre cut) is applied to Alice's arm:
a fault sits at one place in the link, and the end-to-end loss — the PLOB transmittance — then
grows by exactly ``extra_loss_db``, as it does for the point-to-point protocols.

Analysis modes:
* ``asymptotic-ideal``: R = q [Q11_Z (1 − H2(e11_X)) − f Q_μμ,Z H2(E_μμ,Z)], Q11 = μ² e^(−2μ) Y11,
  with the exact Y11 and e11 (Xu et al. 2013 eq. (1); Lo, Curty, Qi 2012 eq. (1)).
* ``asymptotic``: the same rate with Y11 and e11 bounded from the 3 × 3 intensity gains by the
  analytic weak + vacuum decoy method (Xu et al. 2013 Appendix A; Wang, PRA 87, 012320 (2013)),
  written for a weakest decoy ω ≥ 0.
* ``finite``: Curty, Xu, Cui, Lim, Tamaki, Lo, Nat. Commun. 5, 3732 (2014): the same decoy bounds
  on counts, every count of the intensity grid widened by multiplicative Chernoff bounds, the
  phase error sampled from the X basis, and the paper's key length with its security terms.

Key-length conventions (docs/physics.md), the same in every mode: the key string is the
signal-signal Z class (Xu et al. 2013 eq. (1); Curty et al. 2014), λ_EC = f n H2(E) on it, and the
single-pair part is that class's share μ² e^(−2μ) Y11 of it. No vacuum term is counted in any mode
(neither paper counts one). Rates are per pulse pair sent: the asymptotic modes are the N → ∞ limit
of ``finite`` (weight p_μ² p_Z²), unless a preset pins a paper's ``sifting_factor`` q — ``xu2013``:
q = 1, Xu et al.'s rate per signal pulse pair in the Z basis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from qkdlink.physics.channel import transmittance_from_db
from qkdlink.physics.detector import dead_time_live_fraction
from qkdlink.physics.entropy import binary_entropy
from qkdlink.physics.source import poisson_probability
from qkdlink.protocols import common as c
from qkdlink.protocols.statistics import chernoff_count_lower, chernoff_mean_lower, chernoff_mean_upper, sampling_gamma
from qkdlink.protocols.base import (
    ABORT_ESTIMATION, ABORT_LOW_COUNTS, ABORT_QBER, ASYMPTOTIC, ASYMPTOTIC_IDEAL, FINITE, BlockCounts,
    ChannelGeometry, KeyEstimate, Param, ParameterError, Params, Protocol, PulseClass, SinglePhotonTruth,
)

INTENSITIES = ("signal", "decoy", "vacuum")
KEY_BASIS, TEST_BASIS = "Z", "X"
KEY_CLASS = "signal-signal"

# Failure-probability budget of the finite analysis. Curty et al. 2014 compose
# ε_sec = 2(ε' + 2 ε_e + ε̂) + ε_PA; every one-sided estimation bound used here (7 + 7 Z/X detection
# cells, 4 X error cells, the signal-signal share of single pairs, the phase-error sampling) is
# counted in ε_e, and ε' = ε̂ = ε_PA = (each bound's ε) = ε_sec / FINITE_TERMS.
ESTIMATION_BOUNDS = 20
FINITE_TERMS = 2 + 2 + 1 + 4 * ESTIMATION_BOUNDS


def class_label(alice: str, bob: str) -> str:
    """Intensity label of a pulse-pair class, e.g. ``signal-decoy`` (Alice's first)."""
    return f"{alice}-{bob}"


class MDIQKD(Protocol):
    name = "mdi"
    parameters = (
        c.DISTANCE_KM, c.FIBER_LOSS, c.EXTRA_LOSS, c.DETECTOR_EFFICIENCY, c.DARK_COUNT, c.AFTERPULSE,
        c.DEAD_TIME, c.BACKGROUND, c.REPETITION_RATE, c.MISALIGNMENT,
        Param("relay_position", 0.5, "ratio", "fraction of distance_km between Alice and the relay Charlie", 0.0, 1.0),
        Param("mu", 0.4, "photons", "signal mean photon number μ (both senders)", 0.0, 10.0),
        Param("nu", 0.05, "photons", "decoy mean photon number ν (both senders)", 0.0, 10.0),
        Param("omega", 0.0, "photons", "weakest decoy ω (0 = vacuum, both senders)", 0.0, 10.0),
        Param("p_mu", 0.6, "ratio", "probability of sending the signal intensity", 0.0, 1.0),
        Param("p_nu", 0.25, "ratio", "probability of sending the decoy intensity (ω gets the rest)", 0.0, 1.0),
        Param("key_basis_probability", 0.7, "ratio", "probability that each sender picks the key basis Z", 0.0, 1.0),
        c.SIFTING,
        c.EC_EFFICIENCY, c.QBER_ABORT, c.EPS_SEC, c.EPS_COR,
    )
    presets = {
        # Xu, Curty, Qi, Lo, NJP 15, 113007 (2013), Table 1 — the set Lo, Curty, Qi (2012) use for
        # their Fig. 2 and Ma & Razavi (2012) for their Table 1: p_d = 3e-6 per detector,
        # η_d = 14.5 %, e_d = 1.5 %, f = 1.16, 0.2 dB/km. The intensities are an operating point
        # that maximises the finite-key rate for 50–100 km blocks of 1e13–1e14 pulse pairs (the papers
        # optimise them per distance). q = 1 pinned: the asymptotic modes give Xu et al.'s rate per
        # Z-basis signal pulse pair (their eq. (1)), not the per-pair-sent limit of finite mode.
        "xu2013": {
            "fiber_loss_db_per_km": 0.2, "detector_efficiency": 0.145, "dark_count_probability": 3e-6,
            "misalignment_error": 0.015, "ec_efficiency": 1.16, "sifting_factor": 1.0,
            "mu": 0.4, "nu": 0.05, "omega": 0.0, "p_mu": 0.6, "p_nu": 0.25, "key_basis_probability": 0.7,
        },
        # Superconducting nanowire detectors at the relay (physics.md device ranges): 85 %
        # efficiency, 10 Hz dark counts in a 1 ns window, 1 % misalignment, optimised-code f = 1.1.
        # Sifting derived: asymptotic rates per pulse pair sent, the limit of finite mode.
        "snspd": {
            "fiber_loss_db_per_km": 0.2, "detector_efficiency": 0.85, "dark_count_probability": 1e-8,
            "misalignment_error": 0.01, "ec_efficiency": 1.1,
            "mu": 0.4, "nu": 0.05, "omega": 0.0, "p_mu": 0.6, "p_nu": 0.25, "key_basis_probability": 0.7,
        },
    }
    default_preset = "xu2013"

    # ---- model -------------------------------------------------------------------------------
    def check_consistency(self, p: Params) -> None:
        """μ > ν > ω and every intensity sent: the decoy bounds divide by μ − ν, ν − ω and each p."""
        if not p["nu"] > p["omega"]:
            raise ParameterError(f"decoy intensities must satisfy nu > omega, got nu={p['nu']}, omega={p['omega']}")
        if not p["mu"] > p["nu"]:
            raise ParameterError(f"intensities must satisfy mu > nu, got mu={p['mu']}, nu={p['nu']}")
        for name in ("p_mu", "p_nu"):
            if not p[name] > 0.0:
                raise ParameterError(f"{name} must be > 0 (every intensity is needed by the decoy bounds), got {p[name]}")
        if not p["p_mu"] + p["p_nu"] < 1.0:
            raise ParameterError(
                f"p_mu + p_nu must be < 1 (the weakest decoy needs a share), got p_mu + p_nu = {p['p_mu'] + p['p_nu']}")

    def geometry(self, p: Params) -> ChannelGeometry:
        """Whole Alice–Bob fibre for PLOB; arms (Alice–Charlie, Bob–Charlie) incl. Charlie's detectors."""
        alpha, length, extra = p["fiber_loss_db_per_km"], p["distance_km"], p["extra_loss_db"]
        alice_db = alpha * length * p["relay_position"] + extra
        bob_db = alpha * length * (1.0 - p["relay_position"])
        eta_d = p["detector_efficiency"]
        return ChannelGeometry(transmittance_from_db(alpha * length + extra),
                               (eta_d * transmittance_from_db(alice_db), eta_d * transmittance_from_db(bob_db)))

    @staticmethod
    def _intensities(p: Params) -> dict[str, tuple[float, float]]:
        """Intensity name → (mean photon number, probability), the same for Alice and Bob."""
        return {"signal": (p["mu"], p["p_mu"]), "decoy": (p["nu"], p["p_nu"]),
                "vacuum": (p["omega"], 1.0 - p["p_mu"] - p["p_nu"])}

    def _detector_state(self, p: Params) -> tuple[float, float]:
        """(p_noise, live): per-detector noise-click probability and armed-gate fraction.

        A detector sees on average a quarter of the light reaching Charlie (the beam splitter and
        polarising beam splitters conserve energy; phase and bit averages make the four detectors
        equivalent), so its mean click probability r̄ = Σ p_a p_b [1 − (1 − p_bg) e^(−(η_a a + η_b b)/4)].
        Afterpulses add p_ap r̄ noise clicks (Lim et al. 2014 eq. (9)); dead time leaves each
        detector armed a fraction 1/(1 + R r̄ (1 + p_ap) τ) of gates (Rogers et al., NJP 9, 319 (2007)).
        """
        eta_a, eta_b = self.geometry(p).arm_transmittances
        p_bg = 1.0 - (1.0 - p["dark_count_probability"]) * math.exp(-p["detector_efficiency"] * p["background_photons"])
        levels = self._intensities(p).values()
        r_bar = sum(pa * pb * (1.0 - (1.0 - p_bg) * math.exp(-(eta_a * a + eta_b * b) / 4.0))
                    for a, pa in levels for b, pb in levels)
        ap = p["afterpulse_probability"]
        p_noise = 1.0 - (1.0 - p_bg) * (1.0 - ap * r_bar)
        live = dead_time_live_fraction(r_bar * (1.0 + ap) * p["repetition_rate_hz"], p["dead_time_s"])
        return p_noise, live

    def pulse_classes(self, p: Params) -> list[PulseClass]:
        """Every (Alice intensity, Bob intensity, common basis) class; gain = P(ψ⁻ or ψ⁺ announced).

        A success needs two detectors armed at once, so dead time scales gains by live².
        """
        eta_a, eta_b = self.geometry(p).arm_transmittances
        p_noise, live = self._detector_state(p)
        e_d = p["misalignment_error"]
        qz = p["key_basis_probability"]
        levels = self._intensities(p)
        classes = []
        for name_a, (a, pa) in levels.items():
            for name_b, (b, pb) in levels.items():
                stats = {KEY_BASIS: z_basis(eta_a * a, eta_b * b, p_noise, e_d),
                         TEST_BASIS: x_basis(eta_a * a, eta_b * b, p_noise, e_d)}
                for basis, q in ((KEY_BASIS, qz), (TEST_BASIS, 1.0 - qz)):
                    gain, errors = stats[basis]
                    classes.append(PulseClass(class_label(name_a, name_b), basis, pa * pb * q * q,
                                              gain * live * live, errors / gain if gain > 0 else 0.0))
        return classes

    def single_photon_truth(self, p: Params) -> SinglePhotonTruth:
        """Y11 (both bases) and e11 of the X basis, which is the phase error of the Z key.

        Xu et al. 2013, Appendix B:
        Y11 = (1−p_d)² [η_a η_b / 2 + (2η_a + 2η_b − 3η_a η_b) p_d + 4(1−η_a)(1−η_b) p_d²],
        e11 Y11 = Y11/2 − (1/2 − e_d)(1−p_d)² η_a η_b / 2.
        """
        eta_a, eta_b = self.geometry(p).arm_transmittances
        p_noise, live = self._detector_state(p)
        y11, e11 = single_pair(eta_a, eta_b, p_noise, p["misalignment_error"])
        return SinglePhotonTruth(y11 * live * live, e11)

    # ---- estimation --------------------------------------------------------------------------
    def estimate(self, counts: BlockCounts, p: Params, analysis: str) -> KeyEstimate:
        if analysis == FINITE:
            return self._finite(counts, p)
        if analysis not in (ASYMPTOTIC, ASYMPTOTIC_IDEAL):
            raise ValueError(f"unknown analysis '{analysis}'")
        key = counts.get(KEY_CLASS, KEY_BASIS)
        details: dict[str, float] = {}
        if analysis == ASYMPTOTIC_IDEAL:
            truth = self.single_photon_truth(p)
            y11, e11 = truth.yield_, truth.phase_error_rate
        else:
            mu, nu, om = p["mu"], p["nu"], p["omega"]
            weight = self._rescale(p)
            gains = {b: {k: weight[k] * counts.get(k, b).gain for k in weight} for b in (KEY_BASIS, TEST_BASIS)}
            x_errors = {k: weight[k] * counts.get(k, TEST_BASIS).gain * counts.get(k, TEST_BASIS).error_rate
                        for k in weight}
            y11 = max(0.0, y11_lower_bound(gains[KEY_BASIS], gains[KEY_BASIS], mu, nu, om))
            y11_x = max(0.0, y11_lower_bound(gains[TEST_BASIS], gains[TEST_BASIS], mu, nu, om))
            e11 = e11_upper_bound(x_errors, x_errors, y11_x, nu, om)
            details = {"y11_x_lower": y11_x}
        # Q11 = μ² e^(−2μ) Y11 (Xu et al. 2013, eq. (1)); derived weight p_μ² p_Z²: the key class's
        # share of the pulse pairs sent, as in ``_finite``.
        q11 = poisson_probability(p["mu"], 1) ** 2 * y11
        weight = c.sifting(p, key.sent / counts.pulses if counts.pulses > 0 else 0.0)
        return c.asymptotic_estimate(analysis, p, weight=weight, gain=key.gain, qber=key.error_rate,
                                     key_gain=key.gain, single_gain=q11, y1=y11, e1=e11, details=details)

    def key_bits(self, counts: BlockCounts) -> tuple[int, int]:
        """Detections and errors of the signal-signal Z class, the key string of Curty et al. 2014."""
        key = counts.get(KEY_CLASS, KEY_BASIS)
        return round(key.detected), round(key.errors)

    @staticmethod
    def _rescale(p: Params, probabilities: bool = False) -> dict[str, float]:
        """Class label → e^(a+b) (÷ p_a p_b if ``probabilities``): undoes the Poisson weights."""
        levels = MDIQKD._intensities(p)
        return {class_label(na, nb): math.exp(a + b) / ((pa * pb) if probabilities else 1.0)
                for na, (a, pa) in levels.items() for nb, (b, pb) in levels.items()}

    @staticmethod
    def _tau11(p: Params) -> float:
        """τ11 = Σ p_a p_b a b e^(−a−b): probability that a pulse pair holds one photon from each sender."""
        levels = MDIQKD._intensities(p).values()
        return sum(pa * pb * poisson_probability(a, 1) * poisson_probability(b, 1)
                   for a, pa in levels for b, pb in levels)

    def _finite(self, counts: BlockCounts, p: Params) -> KeyEstimate:
        """Key length as stated by Curty et al. 2014 (with ε_sec = 2(ε' + 2ε_e + ε̂) + ε_PA):

        ℓ = s11_key [1 − H2(φ)] − λ_EC − log2(8/ε_cor) − 2 log2(2/(ε' ε̂)) − 2 log2(1/(2 ε_PA)),

        λ_EC = f n_key H2(E_key) over the signal-signal Z class, s11_key and φ from ``_finite_bounds``;
        everything but λ_EC is ``details["key_budget_bits"]``.
        """
        key = counts.get(KEY_CLASS, KEY_BASIS)
        n_key, qber = key.detected, key.error_rate
        n_x = sum(counts.get(k, TEST_BASIS).detected for k in self._rescale(p))
        base = dict(analysis=FINITE, gain=key.gain, qber=qber)
        if n_key <= 0 or n_x <= 0:
            return KeyEstimate(**base, y1_lower=0.0, e1_upper=0.5, key_rate_bits_per_pulse=0.0,
                               secret_key_bits=0.0, s1_lower=0.0, abort_reason=ABORT_LOW_COUNTS)
        if qber > p["qber_abort_threshold"]:
            return KeyEstimate(**base, y1_lower=None, e1_upper=None, key_rate_bits_per_pulse=0.0,
                               secret_key_bits=0.0, abort_reason=ABORT_QBER)
        eps = p["epsilon_sec"] / FINITE_TERMS
        leak = p["ec_efficiency"] * n_key * binary_entropy(qber)
        b = self._finite_bounds(counts, p, eps)
        security = math.log2(8.0 / p["epsilon_cor"]) + 2.0 * math.log2(2.0 / eps ** 2) + 2.0 * math.log2(1.0 / (2.0 * eps))
        budget = b["s11_key_lower"] * (1.0 - binary_entropy(b["phase_error_upper"])) - security
        ell = float(math.floor(budget - leak))
        ell = ell if ell > 0 else 0.0
        details = {**b, "leak_ec_bits": leak, "security_bits": security, "key_budget_bits": budget}
        reason = None
        if ell <= 0:
            # Would the same block give key without statistical fluctuations? Then the block is too
            # small for the bounds (low counts); otherwise the link itself gives no key.
            inf = self._finite_bounds(counts, p, None)
            ell_inf = inf["s11_key_lower"] * (1.0 - binary_entropy(inf["phase_error_upper"])) - leak
            reason = ABORT_LOW_COUNTS if ell_inf > 0 else ABORT_ESTIMATION
        return KeyEstimate(**base, y1_lower=b["y11_z_lower"], e1_upper=b["phase_error_upper"],
                           key_rate_bits_per_pulse=ell / counts.pulses if counts.pulses > 0 else 0.0,
                           secret_key_bits=ell, s1_lower=b["s11_key_lower"], abort_reason=reason,
                           details=details)

    def _finite_bounds(self, counts: BlockCounts, p: Params, eps: float | None) -> dict[str, float]:
        """Single-pair bounds from counts; ``eps=None`` drops every statistical deviation.

        Counts: given the photon numbers of the detected pulse pairs, each one's intensity pair is
        an independent draw (the senders choose intensities independently of everything Charlie
        sees), so the count n_ab of a cell is a sum of independent Bernoulli variables and its
        conditional mean lies in [chernoff_mean_lower, chernoff_mean_upper](n_ab) — per cell, as Curty et al. 2014
        bound their grid with Chernoff's inequality. With rescaled counts Ñ_ab = e^(a+b) n_ab / (p_a p_b),
        E[Ñ_ab] = Σ a^n b^m/(n! m!) · s_nm/τ_nm, so the asymptotic bound of ``y11_lower_bound`` holds
        for s11/τ11 with each Ñ replaced by its worst case, and likewise ``e11_upper_bound`` for the
        X-basis error counts.
        Key: of the s11_Z single-pair detections in Z, the signal-signal class holds a binomial share
        with mean p_μ² μ² e^(−2μ) / τ11 (Curty et al. 2014's p_{s,s|11}), bounded below by Chernoff.
        Phase error: e11_X sampled onto the key pairs with γ of Lim et al. 2014, eq. (5) (random
        sampling without replacement; Fung, Ma, Chau, PRA 81, 012318 (2010)).
        """
        mu, nu, om = p["mu"], p["nu"], p["omega"]
        weight = self._rescale(p, probabilities=True)
        tau11 = self._tau11(p)

        def widened(basis: str, attr: str) -> tuple[dict[str, float], dict[str, float]]:
            lo, hi = {}, {}
            for k, w in weight.items():
                value = getattr(counts.get(k, basis), attr)
                low, high = (chernoff_mean_lower(value, eps), chernoff_mean_upper(value, eps)) if eps is not None else (value, value)
                lo[k], hi[k] = w * low, w * high
            return lo, hi

        s11_z = tau11 * max(0.0, y11_lower_bound(*widened(KEY_BASIS, "detected"), mu, nu, om))
        s11_x = tau11 * max(0.0, y11_lower_bound(*widened(TEST_BASIS, "detected"), mu, nu, om))
        err_lo, err_hi = widened(TEST_BASIS, "errors")
        v11_x = tau11 * max(0.0, (err_hi[class_label("decoy", "decoy")] - err_lo[class_label("decoy", "vacuum")]
                                  - err_lo[class_label("vacuum", "decoy")] + err_hi[class_label("vacuum", "vacuum")])
                            / (nu - om) ** 2)
        mean_key = p["p_mu"] ** 2 * poisson_probability(mu, 1) ** 2 / tau11 * s11_z
        s11_key = chernoff_count_lower(mean_key, eps) if eps is not None else mean_key
        e11_x = min(0.5, v11_x / s11_x) if s11_x > 0 else 0.5
        phase = e11_x
        if eps is not None and s11_key > 0 and s11_x > 0:
            phase = min(0.5, e11_x + sampling_gamma(eps, e11_x, s11_key, s11_x))
        pulses_z = sum(counts.get(k, KEY_BASIS).sent for k in weight)
        y11_z = s11_z / (tau11 * pulses_z) if pulses_z > 0 else 0.0
        return {"s11_z_lower": s11_z, "s11_x_lower": s11_x, "v11_x_upper": v11_x, "s11_key_lower": s11_key,
                "e11_x_upper": e11_x, "phase_error_upper": phase, "y11_z_lower": y11_z}


# ---- closed-form detection statistics ----------------------------------------------------------
def _bessel_terms(x: float) -> tuple[float, float]:
    """(I0(x) − 1, I0(2x) − 4 I0(x) + 3), summed from the power series so no cancellation is lost.

    I0(z) = Σ (z²/4)^k / (k!)²; in the second combination the k = 0 and k = 1 terms cancel exactly,
    which is what keeps the X-basis gain accurate at long distance (it is O(x⁴) there).
    """
    t = x * x / 4.0
    term, k = 1.0, 0
    first = second = 0.0
    while True:
        k += 1
        term *= t / (k * k)
        first += term
        if k >= 2:
            second += term * (4.0 ** k - 4.0)
        if term * 4.0 ** k <= 1e-17 * (first + second):
            return first, second


def z_basis(ma: float, mb: float, pd: float, e_d: float) -> tuple[float, float]:
    """(Q_Z, E_Z Q_Z) for received mean photon numbers ma = η_a a, mb = η_b b (Xu et al. 2013, App. B).

    Q_C = 2(1−p_d)² e^(−μ'/2) [1 − (1−p_d) e^(−ma/2)] [1 − (1−p_d) e^(−mb/2)]   (orthogonal states)
    Q_E = 2 p_d (1−p_d)² e^(−μ'/2) [I0(2x) − (1−p_d) e^(−μ'/2)]              (equal states)
    Q_Z = Q_C + Q_E,  E_Z Q_Z = e_d Q_C + (1 − e_d) Q_E,  μ' = ma + mb,  x = √(ma mb)/2.
    """
    s = 1.0 - pd
    log_s = math.log1p(-pd) if pd < 1.0 else -math.inf
    half = math.exp(-(ma + mb) / 2.0)
    click_a = pd - s * math.expm1(-ma / 2.0)
    click_b = pd - s * math.expm1(-mb / 2.0)
    q_c = 2.0 * s * s * half * click_a * click_b
    a2 = _bessel_terms(math.sqrt(ma * mb))[0]  # I0(2x) − 1 with 2x = √(ma mb)
    q_e = 2.0 * pd * s * s * half * (a2 - math.expm1(log_s - (ma + mb) / 2.0)) if pd > 0 else 0.0
    return q_c + q_e, e_d * q_c + (1.0 - e_d) * q_e


def x_basis(ma: float, mb: float, pd: float, e_d: float) -> tuple[float, float]:
    """(Q_X, E_X Q_X) (Xu et al. 2013, App. B), with y = (1−p_d) e^(−μ'/4), x = √(ma mb)/2:

    Q_X = 2y² [1 + 2y² − 4y I0(x) + I0(2x)],   E_X Q_X = Q_X/2 − 2(1/2 − e_d) y² [I0(2x) − 1].

    Evaluated as Q_X = 2y² [2u² + 4u a₁ + c] and E_X Q_X = y² [2u² − 4y a₁ + 2 e_d a₂], with u = 1 − y,
    a₁ = I0(x) − 1, a₂ = I0(2x) − 1, c = a₂ − 4a₁ — algebraically identical, but free of the
    cancellation of O(1) terms that would swamp the O(μ'²) gain at long distance.
    """
    log_s = math.log1p(-pd) if pd < 1.0 else -math.inf
    y = math.exp(log_s - (ma + mb) / 4.0)
    u = -math.expm1(log_s - (ma + mb) / 4.0)
    x = math.sqrt(ma * mb) / 2.0
    a1, cx = _bessel_terms(x)
    a2 = _bessel_terms(2.0 * x)[0]
    q_x = 2.0 * y * y * (2.0 * u * u + 4.0 * u * a1 + cx)
    errors = y * y * (2.0 * u * u - 4.0 * y * a1 + 2.0 * e_d * a2)
    return q_x, max(errors, 0.0)


def single_pair(eta_a: float, eta_b: float, pd: float, e_d: float) -> tuple[float, float]:
    """(Y11, e11) of Xu et al. 2013, App. B; Y11 is the same in both bases, e11 is the X error.

    At p_d = 0: Y11 = η_a η_b / 2 (two of the four Bell states are identified) and e11 = e_d.
    """
    s = 1.0 - pd
    y11 = s * s * (eta_a * eta_b / 2.0 + (2.0 * eta_a + 2.0 * eta_b - 3.0 * eta_a * eta_b) * pd
                   + 4.0 * (1.0 - eta_a) * (1.0 - eta_b) * pd * pd)
    if y11 <= 0:
        return 0.0, 0.5
    e11y11 = y11 / 2.0 - (0.5 - e_d) * s * s * eta_a * eta_b / 2.0
    return y11, e11y11 / y11


# ---- decoy-state bounds ------------------------------------------------------------------------
def y11_lower_bound(lo: Mapping[str, float], hi: Mapping[str, float], mu: float, nu: float, om: float) -> float:
    """Lower bound on Y11 from rescaled gains Q̃_ab = e^(a+b) Q_ab (``lo``/``hi``: their worst cases).

    Xu et al. 2013, Appendix A (ω = 0), Wang, PRA 87, 012320 (2013) (ω > 0): with
    D(t) = Q̃_tt − Q̃_tω − Q̃_ωt + Q̃_ωω = Σ_{n,m≥1} (t^n − ω^n)(t^m − ω^m)/(n! m!) Y_nm, the ratios
    r_n = (ν^n − ω^n)/(μ^n − ω^n) fall with n, so every n + m ≥ 3 term of D(ν) is at most κ = r₁r₂
    times its term in D(μ), and
        Y11 ≥ [D(ν) − κ D(μ)] / [(ν − ω)² (μ − ν)/(μ + ω)].
    For ω = 0 this is Xu et al.'s [μ³ D(ν) − ν³ D(μ)] / [μ² ν² (μ − ν)]. It tends to Y11 as ν → 0.
    Each Q̃ enters with the bound (lo or hi) that makes the result smallest.
    """
    r1 = (nu - om) / (mu - om)
    r2 = (nu * nu - om * om) / (mu * mu - om * om)
    kappa = r1 * r2
    lab = class_label
    coefficients = {
        lab("decoy", "decoy"): 1.0, lab("decoy", "vacuum"): -1.0, lab("vacuum", "decoy"): -1.0,
        lab("vacuum", "vacuum"): 1.0 - kappa, lab("signal", "signal"): -kappa,
        lab("signal", "vacuum"): kappa, lab("vacuum", "signal"): kappa,
    }
    numerator = sum(w * (lo[k] if w > 0 else hi[k]) for k, w in coefficients.items())
    return numerator / ((nu - om) ** 2 * (mu - nu) / (mu + om))


def e11_upper_bound(lo: Mapping[str, float], hi: Mapping[str, float], y11: float, nu: float, om: float) -> float:
    """e11 ≤ [Ẽ_νν − Ẽ_νω − Ẽ_ων + Ẽ_ωω] / ((ν − ω)² Y11), Ẽ_ab = e^(a+b) E_ab Q_ab (X basis).

    Xu et al. 2013, Appendix A: the double difference keeps only n, m ≥ 1 terms, all non-negative,
    of which the (1, 1) one is (ν − ω)² e11 Y11. ``y11`` must be a lower bound in the same basis.
    """
    if y11 <= 0:
        return 0.5
    lab = class_label
    top = (hi[lab("decoy", "decoy")] - lo[lab("decoy", "vacuum")] - lo[lab("vacuum", "decoy")]
           + hi[lab("vacuum", "vacuum")])
    return min(0.5, max(0.0, top / ((nu - om) ** 2 * y11)))


PROTOCOL = MDIQKD()
