"""Twin-field QKD, sending-or-not-sending (SNS) variant.

Protocol: Wang, Yu, Hu, PRA 98, 062323 (2018) ("WYH"). Alice and Bob each send one pulse per time
window to an untrusted relay, Charlie, who interferes them on a 50:50 beam splitter and announces
which of his two detectors clicked. An *effective event* is a window in which exactly one detector
clicks. Each party independently picks a Z window (probability ``z_window_probability``) or an X
window; windows where the choices differ are discarded.

* Z (key) windows: a party *sends* a phase-randomised coherent pulse of intensity μ (``mu``) with
  probability ε (``epsilon_send``), else sends nothing. Alice's bit is 1 when she sends; Bob's bit
  is 1 when he does *not* send (he flips). A bit error is a window where both or neither sent, so
  Z errors do not depend on which detector clicked nor on any interference — the reason SNS
  tolerates large misalignment.
* X (decoy) windows: each party sends vacuum, μ1 (``nu``) or μ2 (``nu2``) with a random phase.
  One-sided windows (one party vacuum) give the yields for the decoy bounds; windows where both
  sent μ1 and the announced phases differ by at most Δ/2 from 0 or π (Δ = 2π/M, M =
  ``phase_slices``; kept fraction 2/M) estimate the phase-error rate: near 0 (π) the error is a
  click of the detector that should stay dark for constructive (destructive) interference.

Channel: ``distance_km`` is the whole Alice–Bob fibre through Charlie; ``relay_position`` is the
fraction of it on Alice's side. ``extra_loss_db`` (connectors, a loss-step or fibre-cut fault) is
applied to **Alice's arm only**: a fault sits on one span, and the asymmetry it creates is itself
part of the damage (imbalanced interference raises the X error). Arm transmittances include
Charlie's detector efficiency (η_a = η_det 10^(−(α L_a + extra)/10)); both detectors are identical.

Per-detector noise: dark counts p_d and background light give the no-click probability of an
unlit detector q = (1 − p_d) e^(−η_det n_bg). Afterpulses are first order and additive, as in
``bb84``: every effective event brings p_ap more, on a random detector (half of them are X errors;
Z errors are fixed by the sending choices). Dead time scales all gains by the live fraction from
the mean click rate of one detector (Rogers et al., NJP 9, 319 (2007)), a first-order model.

Misalignment e_d (``misalignment_error``) lowers the interference visibility to v = 1 − 2 e_d,
so a fraction e_d of a single photon goes to the wrong detector; the residual phase mismatch δ
between the two lasers (``phase_mismatch_rad``, an emulator input from laser phase drift) shifts
the relative phase at Charlie. Single-photon X error: e1 = [η̄ − √(η_a η_b) v cos δ] / (2 η̄) +
noise, i.e. e_d + (1 − 2 e_d) sin²(δ/2) for symmetric arms (physics.md: ≈ sin²(δ/2)); the
post-selected class averages this over the slice with a fixed 8-point Gauss–Legendre rule.

Key-length conventions (docs/physics.md), the same in every mode: the key string is every
effective event of the Z windows (n_t, pooled over the four sending combinations), λ_EC =
f n_t H2(E_Z) on it, and the untagged bits are the one-sided single-photon events,
2ε(1−ε) μ e^(−μ) s1 per Z window. No vacuum term is counted in any mode (WYH and Jiang et al. 2019
count none: a window where nobody sends is a bit error). Rates are per time window sent (one pulse
from each party): ``finite`` reports ℓ / (all windows of the block) and the asymptotic modes its
N → ∞ limit, WYH's R = 2ε(1−ε) μ e^(−μ) s1 [1 − H2(e1^ph)] − f S_Z H2(E_Z) times the Z-window
share p_Z² — unless a preset pins a paper's ``sifting_factor`` q: ``wang-yu-hu-2018`` pins q = 1,
WYH's rate per window as if every window were a Z window. Rates compare with PLOB per use of the
Alice–Bob channel, ``geometry().fiber_transmittance``.
"""

from __future__ import annotations

import math

from numpy.polynomial.legendre import leggauss
from scipy.special import i0e

from qkdlink.physics.channel import transmittance_from_db
from qkdlink.physics.detector import dead_time_live_fraction
from qkdlink.physics.entropy import binary_entropy
from qkdlink.protocols import common as c
from qkdlink.protocols.statistics import (
    chernoff_count_lower, chernoff_count_upper, chernoff_mean_lower, chernoff_mean_upper,
)
from qkdlink.protocols.base import (
    ABORT_ESTIMATION, ABORT_LOW_COUNTS, ABORT_QBER, ASYMPTOTIC, ASYMPTOTIC_IDEAL, FINITE, BlockCounts,
    ChannelGeometry, KeyEstimate, Param, ParameterError, Params, Protocol, PulseClass, SinglePhotonTruth,
)

KEY_BASIS, TEST_BASIS = "Z", "X"
# Z windows, "<Alice>-<Bob>": signal = sends μ, vacuum = does not send.
Z_CLASSES = ("signal-signal", "signal-vacuum", "vacuum-signal", "vacuum-vacuum")
# X windows: one-sided decoys, vacuum, and the phase-post-selected μ1–μ1 class.
X_VACUUM = "vacuum-vacuum"
X_DECOY = ("decoy-vacuum", "vacuum-decoy")
X_DECOY2 = ("decoy2-vacuum", "vacuum-decoy2")
X_MATCHED = "decoy-decoy"

# Fixed Gauss–Legendre rule on [−1, 1] for the phase-slice average: the integrand is an
# exponential of cos over at most a half-turn, so 8 nodes are exact to ~1e-12 and cost nothing.
_GL_NODES, _GL_WEIGHTS = (tuple(float(v) for v in a) for a in leggauss(8))

# Finite key: failure probabilities in the union bound ε_sec = 2ε̂ + ε_PA + 7ξ, all set equal
# (ξ = ε̂ = ε_PA = ε_sec / 10). Seven Chernoff bounds: S00 (both ways), pooled μ1 and μ2 yields,
# T_Δ, and the two conversions of expected to observed untagged-bit and phase-error counts.
_EPS_TERMS = 10.0


class SendingOrNotSendingTF(Protocol):
    name = "tf"
    parameters = (
        c.DISTANCE_KM, c.FIBER_LOSS, c.EXTRA_LOSS, c.DETECTOR_EFFICIENCY, c.DARK_COUNT, c.AFTERPULSE,
        c.DEAD_TIME, c.BACKGROUND, c.REPETITION_RATE, c.MISALIGNMENT,
        Param("relay_position", 0.5, "ratio", "fraction of the Alice–Bob fibre on Alice's side of Charlie", 0.0, 1.0),
        Param("mu", 0.4, "photons", "Z-window sending intensity μ_z", 0.0, 10.0),
        Param("epsilon_send", 0.05, "ratio", "probability ε that a party sends in a Z window", 0.0, 1.0),
        Param("nu", 0.1, "photons", "weak decoy μ1 (X windows; the phase-post-selected class)", 1e-6, 10.0),
        Param("nu2", 0.4, "photons", "strong decoy μ2 (X windows)", 0.0, 10.0),
        Param("z_window_probability", 0.8, "ratio", "probability that each party picks a Z window", 0.0, 1.0),
        Param("p_nu", 0.35, "ratio", "probability of μ1 in an X window (vacuum gets 1 − p_nu − p_nu2)", 0.0, 1.0),
        Param("p_nu2", 0.35, "ratio", "probability of μ2 in an X window", 0.0, 1.0),
        Param("phase_slices", 16.0, "count", "number M of phase slices; post-selection width Δ = 2π/M", 2.0, 1e4),
        Param("phase_mismatch_rad", 0.0, "rad", "residual phase mismatch δ between the two lasers at Charlie", -math.pi, math.pi),
        c.SIFTING,
        c.EC_EFFICIENCY, c.QBER_ABORT, c.EPS_SEC, c.EPS_COR,
    )
    presets = {
        # WYH 2018 simulation (α = 0.2 dB/km, f = 1.1; e_d = 15 %, the smallest of the four
        # misalignments in the paper's abstract). The paper's device table was not available to us:
        # p_d = 1e-11 and η_det = 0.7 are *calibrated* so that this model, with ε and μ optimised,
        # reproduces the abstract's secure distances (700, 600, 500, 300 km at e_d = 15, 25, 35,
        # 45 %; checked in tests/test_tf.py) — not transcribed. ε, μ, μ1, μ2: near the optimum of
        # the decoy-bounded asymptotic rate at 300–500 km (e_d = 15 % forces a small ε and μ1).
        # q = 1 pinned: the asymptotic modes give WYH's rate per window as if every window were a Z
        # window (the paper's convention), not the per-window-sent limit of finite mode.
        "wang-yu-hu-2018": {
            "fiber_loss_db_per_km": 0.2, "detector_efficiency": 0.7, "dark_count_probability": 1e-11,
            "misalignment_error": 0.15, "ec_efficiency": 1.1, "mu": 0.45, "epsilon_send": 0.016,
            "nu": 0.02, "nu2": 0.3, "phase_slices": 16.0, "sifting_factor": 1.0,
        },
        # A realistic deployment: SNSPDs (η 60 % incl. receiver loss, ~10 Hz dark counts in a 1 ns
        # gate, 50 ns dead time; physics.md device ranges), 3 % interference misalignment, 1 GHz.
        # Sifting derived: asymptotic rates per window sent, the limit of finite mode.
        "snspd": {
            "fiber_loss_db_per_km": 0.2, "detector_efficiency": 0.6, "dark_count_probability": 1e-8,
            "dead_time_s": 50e-9, "repetition_rate_hz": 1e9, "misalignment_error": 0.03,
            "ec_efficiency": 1.16, "mu": 0.45, "epsilon_send": 0.04, "nu": 0.05, "nu2": 0.3,
            "phase_slices": 16.0,
        },
    }
    default_preset = "wang-yu-hu-2018"

    # ---- model -------------------------------------------------------------------------------
    def check_consistency(self, p: Params) -> None:
        if not p["mu"] > 0.0:
            raise ParameterError(f"parameter 'mu' (Z-window sending intensity) must be > 0, got {p['mu']}")
        if not 0.0 < p["epsilon_send"] < 1.0:
            raise ParameterError(f"parameter 'epsilon_send' must be strictly between 0 and 1, got {p['epsilon_send']}")
        if not p["nu"] < p["nu2"]:
            raise ParameterError(f"decoy intensities must satisfy nu < nu2, got nu={p['nu']}, nu2={p['nu2']}")
        if not 0.0 < p["z_window_probability"] < 1.0:
            raise ParameterError("parameter 'z_window_probability' must be strictly between 0 and 1 "
                                 f"(key needs Z windows, estimation X windows), got {p['z_window_probability']}")
        if not (p["p_nu"] > 0.0 and p["p_nu2"] > 0.0):
            raise ParameterError(f"parameters 'p_nu' and 'p_nu2' must be > 0, got p_nu={p['p_nu']}, p_nu2={p['p_nu2']}")
        if not p["p_nu"] + p["p_nu2"] < 1.0:
            raise ParameterError(f"p_nu + p_nu2 must be < 1 (the X-window vacuum needs a share), got {p['p_nu'] + p['p_nu2']}")
        if p["phase_slices"] != math.floor(p["phase_slices"]):
            raise ParameterError(f"parameter 'phase_slices' must be a whole number, got {p['phase_slices']}")

    def geometry(self, p: Params) -> ChannelGeometry:
        alpha, length, r = p["fiber_loss_db_per_km"], p["distance_km"], p["relay_position"]
        loss_a = alpha * length * r + p["extra_loss_db"]
        loss_b = alpha * length * (1.0 - r)
        eta_det = p["detector_efficiency"]
        return ChannelGeometry(transmittance_from_db(loss_a + loss_b),
                               (eta_det * transmittance_from_db(loss_a), eta_det * transmittance_from_db(loss_b)))

    def pulse_classes(self, p: Params) -> list[PulseClass]:
        m = _Model(self, p)
        eps, pz = p["epsilon_send"], p["z_window_probability"]
        p1, p2 = p["p_nu"], p["p_nu2"]
        p0 = 1.0 - p1 - p2
        mu, mu1, mu2 = p["mu"], p["nu"], p["nu2"]
        z_share = pz * pz
        x_share = (1.0 - pz) * (1.0 - pz)
        kept = 2.0 / p["phase_slices"]
        # Z: (probability within Z windows, raw gain, error rate fixed by the sending choices)
        z_rows = (
            (eps * eps, m.both_random(mu), 1.0),
            (eps * (1.0 - eps), m.one_sided(mu, m.eta_a), 0.0),
            ((1.0 - eps) * eps, m.one_sided(mu, m.eta_b), 0.0),
            ((1.0 - eps) ** 2, m.vacuum(), 1.0),
        )
        classes = [PulseClass(name, KEY_BASIS, z_share * w, m.finish_gain(g), e)
                   for name, (w, g, e) in zip(Z_CLASSES, z_rows)]
        # X: one-sided and vacuum windows split their clicks evenly between the detectors.
        x_rows = [
            (X_VACUUM, p0 * p0, m.vacuum()),
            (X_DECOY[0], p1 * p0, m.one_sided(mu1, m.eta_a)), (X_DECOY[1], p0 * p1, m.one_sided(mu1, m.eta_b)),
            (X_DECOY2[0], p2 * p0, m.one_sided(mu2, m.eta_a)), (X_DECOY2[1], p0 * p2, m.one_sided(mu2, m.eta_b)),
        ]
        for name, w, g in x_rows:
            gain, errors = m.finish(g, g / 2.0)
            classes.append(PulseClass(name, TEST_BASIS, x_share * w, gain, errors / gain if gain > 0 else 0.0))
        gain, errors = m.finish(*m.matched_slice(mu1))
        classes.append(PulseClass(X_MATCHED, TEST_BASIS, x_share * p1 * p1 * kept, gain,
                                  errors / gain if gain > 0 else 0.0))
        return classes

    def single_photon_truth(self, p: Params) -> SinglePhotonTruth:
        """Untagged single-photon yield s1 = (s10 + s01)/2 and its phase-error rate e1^ph (WYH).

        s10 = q [η_a + 2 (1 − η_a)(1 − q)]: the photon clicks one detector and the other stays dark,
        or it is lost and exactly one detector dark-counts. The phase error of untagged Z bits is the
        X error of the twin single-photon state (|01⟩ + |10⟩)/√2 at zero announced phase difference,
        so it sees the laser mismatch δ but none of the slice width Δ (which only the estimate pays).
        """
        m = _Model(self, p)
        mean_eta = (m.eta_a + m.eta_b) / 2.0
        q = m.q
        s1 = q * (mean_eta + 2.0 * (1.0 - mean_eta) * (1.0 - q))
        wrong = (mean_eta - math.sqrt(m.eta_a * m.eta_b) * m.visibility * math.cos(p["phase_mismatch_rad"])) / 2.0
        s1e1 = q * (wrong + (1.0 - mean_eta) * (1.0 - q))
        gain, errors = m.finish(s1, s1e1)
        return SinglePhotonTruth(gain, errors / gain if gain > 0 else 0.5)

    # ---- estimation --------------------------------------------------------------------------
    def estimate(self, counts: BlockCounts, p: Params, analysis: str) -> KeyEstimate:
        if analysis == FINITE:
            return self._finite(counts, p)
        if analysis not in (ASYMPTOTIC, ASYMPTOTIC_IDEAL):
            raise ValueError(f"unknown analysis '{analysis}'")
        s_z, e_z, _, windows_z = _z_statistics(counts)
        if analysis == ASYMPTOTIC_IDEAL:
            truth = self.single_photon_truth(p)
            s1, e1 = truth.yield_, truth.phase_error_rate
        else:
            gains = _x_gains(counts)
            s1 = max(_s1_lower(p["nu"], p["nu2"], gains["s00"], gains["s1"], gains["s2"]), 0.0)
            e1 = _e1_upper(p["nu"], gains["t"], gains["s00"], s1 * 2.0 * p["nu"] * math.exp(-2.0 * p["nu"]))
        eps, mu = p["epsilon_send"], p["mu"]
        untagged = 2.0 * eps * (1.0 - eps) * mu * math.exp(-mu) * s1
        weight = c.sifting(p, windows_z / counts.pulses if counts.pulses > 0 else 0.0)
        return c.asymptotic_estimate(analysis, p, weight=weight, gain=s_z, qber=e_z, key_gain=s_z,
                                     single_gain=untagged, y1=s1, e1=e1)

    def key_bits(self, counts: BlockCounts) -> tuple[int, int]:
        """Effective Z events n_t and their errors, pooled over the four Z classes (WYH's key string)."""
        rows = [counts.get(name, KEY_BASIS) for name in Z_CLASSES]
        return round(sum(r.detected for r in rows)), round(sum(r.errors for r in rows))

    def _finite(self, counts: BlockCounts, p: Params) -> KeyEstimate:
        """Finite-size key length of SNS with Chernoff-bounded decoy estimation.

        Follows the structure of Jiang, Yu, Hu, Wang, Phys. Rev. Applied 12, 024061 (2019):
        expected values of the observed X-window counts are bounded (Chernoff), fed to WYH's decoy
        formulas, and the expected numbers of untagged bits and of their phase errors are turned
        back into bounds on the actual numbers (Chernoff again); then
        ℓ = n1 [1 − H2(φ)] − f n_t H2(E_Z) − log2(2/ε_cor) − 2 log2(1/(√2 ε_PA ε̂)); everything but
        λ_EC = f n_t H2(E_Z) is ``details["key_budget_bits"]``.
        The Chernoff bounds are the multiplicative ones in closed form (``qkdlink.protocols.statistics``); they
        take the windows as independent, which is how the emulator samples them.
        """
        eps_sec, eps_cor = p["epsilon_sec"], p["epsilon_cor"]
        xi = eps_sec / _EPS_TERMS
        mu, mu1, mu2, eps = p["mu"], p["nu"], p["nu2"], p["epsilon_send"]
        s_z, e_z, n_t, windows_z = _z_statistics(counts)
        base = dict(analysis=FINITE, gain=s_z, qber=e_z)
        vac = counts.get(X_VACUUM, TEST_BASIS)
        d1, d2 = _pooled(counts, X_DECOY), _pooled(counts, X_DECOY2)
        matched = counts.get(X_MATCHED, TEST_BASIS)
        if n_t <= 0 or min(vac.sent, d1[0], d2[0], matched.sent) <= 0:
            return KeyEstimate(**base, y1_lower=0.0, e1_upper=0.5, key_rate_bits_per_pulse=0.0,
                               secret_key_bits=0.0, s1_lower=0.0, abort_reason=ABORT_LOW_COUNTS)
        if e_z > p["qber_abort_threshold"]:
            return KeyEstimate(**base, y1_lower=None, e1_upper=None, key_rate_bits_per_pulse=0.0,
                               secret_key_bits=0.0, abort_reason=ABORT_QBER)
        s00_hi = chernoff_mean_upper(vac.detected, xi) / vac.sent
        s00_lo = chernoff_mean_lower(vac.detected, xi) / vac.sent
        s1_lo = chernoff_mean_lower(d1[1], xi) / d1[0]
        s2_hi = chernoff_mean_upper(d2[1], xi) / d2[0]
        t_hi = chernoff_mean_upper(matched.errors, xi) / matched.sent
        y1 = max(_s1_lower(mu1, mu2, s00_hi, s1_lo, s2_hi), 0.0)
        one_photon = 2.0 * mu1 * math.exp(-2.0 * mu1)
        s1e1_hi = max(t_hi - math.exp(-2.0 * mu1) * s00_lo / 2.0, 0.0) / one_photon
        untagged_windows = windows_z * 2.0 * eps * (1.0 - eps) * mu * math.exp(-mu)
        n1 = chernoff_count_lower(untagged_windows * y1, xi)
        m1 = chernoff_count_upper(untagged_windows * s1e1_hi, xi)
        details = {"s00_upper": s00_hi, "s_nu_lower": s1_lo, "s_nu2_upper": s2_hi, "t_delta_upper": t_hi,
                   "n1_expected_lower": untagged_windows * y1, "m1_upper": m1}
        if y1 <= 0.0 or n1 <= 0.0:
            reason = ABORT_LOW_COUNTS if n_t < 1e4 else ABORT_ESTIMATION
            return KeyEstimate(**base, y1_lower=0.0, e1_upper=0.5, key_rate_bits_per_pulse=0.0,
                               secret_key_bits=0.0, s1_lower=0.0, abort_reason=reason, details=details)
        phi = min(0.5, m1 / n1)
        leak = p["ec_efficiency"] * n_t * binary_entropy(e_z)
        budget = n1 * (1.0 - binary_entropy(phi)) - math.log2(2.0 / eps_cor) - 2.0 * math.log2(1.0 / (math.sqrt(2.0) * xi * xi))
        details.update(leak_ec_bits=leak, key_budget_bits=budget)
        ell = math.floor(budget - leak)
        ell = ell if ell > 0 else 0.0
        return KeyEstimate(**base, y1_lower=y1, e1_upper=phi,
                           key_rate_bits_per_pulse=ell / counts.pulses if counts.pulses > 0 else 0.0,
                           secret_key_bits=float(ell), s1_lower=n1,
                           abort_reason=None if ell > 0 else ABORT_ESTIMATION, details=details)


class _Model:
    """Per-window effective-event probabilities at Charlie for one parameter set.

    Coherent amplitudes √(k η_a), √(k η_b) meet on the beam splitter; with relative phase ψ the two
    detectors see mean photon numbers A ± B cos ψ, A = (k_a η_a + k_b η_b)/2, B = v √(k_a η_a k_b η_b).
    "Exactly one click" = q e^(−I_1)(1 − q e^(−I_2)) + (1 ↔ 2).
    """

    def __init__(self, protocol: SendingOrNotSendingTF, p: Params) -> None:
        self.eta_a, self.eta_b = protocol.geometry(p).arm_transmittances
        # ln q kept separately: 1 − q e^(−I) = −expm1(ln q − I) stays exact when both p_d and I
        # are tiny, which the decoy bounds (differences of nearly equal yields) need.
        self.ln_q = math.log1p(-p["dark_count_probability"]) - p["detector_efficiency"] * p["background_photons"]
        self.q = math.exp(self.ln_q)
        self.visibility = 1.0 - 2.0 * p["misalignment_error"]
        self.afterpulse = p["afterpulse_probability"]
        self.mismatch = p["phase_mismatch_rad"]
        self.half_slice = math.pi / p["phase_slices"]
        self.live = self._live_fraction(p)

    def _live_fraction(self, p: Params) -> float:
        """Armed fraction of one detector from its mean click probability (Jensen-level estimate)."""
        pz, eps = p["z_window_probability"], p["epsilon_send"]
        mean_intensity = pz * eps * p["mu"] + (1.0 - pz) * (p["p_nu"] * p["nu"] + p["p_nu2"] * p["nu2"])
        flux = mean_intensity * (self.eta_a + self.eta_b) / 2.0
        click = (1.0 - self.q * math.exp(-flux)) * (1.0 + self.afterpulse)
        return dead_time_live_fraction(click * p["repetition_rate_hz"], p["dead_time_s"])

    def _lit(self, photons: float) -> float:
        """P(a detector fires) = 1 − q e^(−n) for mean photon number n, without cancellation."""
        return -math.expm1(self.ln_q - photons)

    def _one_click(self, photons_1: float, photons_2: float) -> float:
        """P(exactly one of the two detectors fires) for mean photon numbers n1, n2 on them."""
        return (self.q * math.exp(-photons_2) * self._lit(photons_1)
                + self.q * math.exp(-photons_1) * self._lit(photons_2))

    def vacuum(self) -> float:
        """S00 = 2 q (1 − q): exactly one detector fires with no light."""
        return self._one_click(0.0, 0.0)

    def one_sided(self, k: float, eta: float) -> float:
        """S_k0 = 2 q e^(−kη/2) − 2 q² e^(−kη): one party sends k, the other nothing."""
        return self._one_click(k * eta / 2.0, k * eta / 2.0)

    def both_random(self, k: float) -> float:
        """Both send k with independent random phases: the phase average of e^(−B cos ψ) is I0(B).

        S = 2 q e^(−A) I0(B) − 2 q² e^(−2A) (WYH's both-sending Z gain), written as
        2 q e^(−A) [(I0(B) − 1) + (1 − q e^(−A))] with e^(−A) I0(B) = i0e(B) e^(B−A).
        """
        a = k * (self.eta_a + self.eta_b) / 2.0
        b = self.visibility * k * math.sqrt(self.eta_a * self.eta_b)
        bessel_excess = float(i0e(b)) * math.exp(b) - 1.0
        return 2.0 * self.q * math.exp(-a) * (bessel_excess + self._lit(a))

    def matched_slice(self, k: float) -> tuple[float, float]:
        """(gain, error) of the μ1–μ1 windows kept by phase post-selection, averaged over the slice.

        The announced difference φ is uniform on [−Δ/2, Δ/2]; Charlie sees ψ = φ + δ. An error is
        the dark-for-ψ=0 detector (mean A − B cos ψ) clicking while the bright one (A + B cos ψ)
        does not. The π slice mirrors this with the detectors swapped: same statistics.
        """
        a = k * (self.eta_a + self.eta_b) / 2.0
        b = self.visibility * k * math.sqrt(self.eta_a * self.eta_b)
        gain = errors = 0.0
        for x, w in zip(_GL_NODES, _GL_WEIGHTS):
            c_psi = b * math.cos(self.half_slice * x + self.mismatch)
            bright, dark = a + c_psi, a - c_psi
            gain += w * self._one_click(bright, dark)
            errors += w * self.q * math.exp(-bright) * self._lit(dark)
        return gain / 2.0, errors / 2.0  # the weights sum to 2 on [−1, 1]

    def finish_gain(self, gain: float) -> float:
        return gain * (1.0 + self.afterpulse) * self.live

    def finish(self, gain: float, errors: float) -> tuple[float, float]:
        """Add afterpulses (p_ap per event, half on the wrong detector) and dead time."""
        return (self.finish_gain(gain),
                (errors + self.afterpulse * gain / 2.0) * self.live)


def _z_statistics(counts: BlockCounts) -> tuple[float, float, float, float]:
    """(S_Z, E_Z, effective Z events n_t, Z windows) pooled over the four Z classes."""
    rows = [counts.get(name, KEY_BASIS) for name in Z_CLASSES]
    sent = sum(r.sent for r in rows)
    detected = sum(r.detected for r in rows)
    errors = sum(r.errors for r in rows)
    return (detected / sent if sent > 0 else 0.0, errors / detected if detected > 0 else 0.0, detected, sent)


def _pooled(counts: BlockCounts, names: tuple[str, str]) -> tuple[float, float]:
    """(windows, detections) of the two one-sided classes of a decoy, pooled.

    Alice-only and Bob-only windows are equally likely, so the pooled yield is the average
    (S_k0 + S_0k)/2 whose single-photon part is the untagged yield s1 = (s10 + s01)/2.
    """
    a, b = counts.get(names[0], TEST_BASIS), counts.get(names[1], TEST_BASIS)
    return a.sent + b.sent, a.detected + b.detected


def _x_gains(counts: BlockCounts) -> dict[str, float]:
    d1, d2 = _pooled(counts, X_DECOY), _pooled(counts, X_DECOY2)
    matched = counts.get(X_MATCHED, TEST_BASIS)
    return {"s00": counts.get(X_VACUUM, TEST_BASIS).gain,
            "s1": d1[1] / d1[0] if d1[0] > 0 else 0.0,
            "s2": d2[1] / d2[0] if d2[0] > 0 else 0.0,
            "t": matched.errors / matched.sent if matched.sent > 0 else 0.0}


def _s1_lower(mu1: float, mu2: float, s00: float, s_mu1: float, s_mu2: float) -> float:
    """s1 ≥ [μ2² e^μ1 S_μ1 − μ1² e^μ2 S_μ2 − (μ2² − μ1²) S00] / [μ1 μ2 (μ2 − μ1)].

    WYH's decoy bound on the untagged single-photon yield from the one-sided X windows (the
    vacuum + two-decoy bound of Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), eq. (34), with μ2 in the
    signal's role); valid for 0 < μ1 < μ2. Feed upper bounds for S_μ2, S00 and a lower one for S_μ1.
    """
    return ((mu2 ** 2 * math.exp(mu1) * s_mu1 - mu1 ** 2 * math.exp(mu2) * s_mu2 - (mu2 ** 2 - mu1 ** 2) * s00)
            / (mu1 * mu2 * (mu2 - mu1)))


def _e1_upper(mu1: float, t_delta: float, s00: float, single_photon_gain: float) -> float:
    """e1^ph ≤ [T_Δ − e^(−2μ1) S00 / 2] / (2 μ1 e^(−2μ1) s1), capped at 1/2 (WYH).

    T_Δ is the error yield of the post-selected μ1–μ1 windows; the pair carries one photon in
    total with probability 2μ1 e^(−2μ1) and none with e^(−2μ1) (whose clicks err half the time).
    ``single_photon_gain`` = 2 μ1 e^(−2μ1) s1 with s1 already a lower bound.
    """
    if single_photon_gain <= 0.0:
        return 0.5
    return min(0.5, max(t_delta - math.exp(-2.0 * mu1) * s00 / 2.0, 0.0) / single_photon_gain)


PROTOCOL = SendingOrNotSendingTF()
