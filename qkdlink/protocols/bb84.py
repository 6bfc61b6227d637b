"""Decoy-state BB84 with three intensities (signal μ, decoy ν, weakest decoy ω ≈ 0).

Model of the detection statistics: Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), Sec. II (GYS channel),
with Lim et al.'s exact click probability and afterpulsing (PRA 89, 022307, 2014, eqs. (8)–(10)).
Key basis Z, test basis X (Lim et al. use X for key; the roles are swapped here, nothing else).

Analysis modes:
* ``asymptotic-ideal``: GLLP key rate with the exact vacuum and single-photon yields and error rate
  (Gottesman, Lo, Lütkenhaus, Preskill, QIC 4, 325 (2004); Ma et al. 2005 eq. (1)).
* ``asymptotic``: vacuum + weak decoy bounds from the configured intensities, infinite data
  (Ma et al. 2005 eqs. (34), (37); with ω > 0 the general form of Lim et al. 2014 eqs. (2)–(4)
  with zero statistical deviation, which reduces to Ma's for ω = 0).
* ``finite``: Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), eqs. (1)–(6), Hoeffding
  bounds on every count.

Key-length conventions (docs/physics.md), the same in every mode:
* key string: the Z-basis detections of all three intensities (Lim et al. 2014), λ_EC = f n_Z H2(E_Z)
  on that pooled string; the single-photon and vacuum parts are τ1 Y1 and τ0 Y0 per Z pulse,
  τ_n = Σ_k p_k e^(−k) k^n / n!;
* vacuum events count as key when ``vacuum_contribution`` = 1 (s_Z0 of Lim et al., Q0 of
  Lo, QIC 5, 413 (2005)), in every mode; the ``gys`` preset sets 0, as Ma et al. 2005 eq. (1);
* rates per pulse sent: the asymptotic modes are the N → ∞ limit of ``finite`` (weight p_Z²)
  unless a preset pins a paper's ``sifting_factor`` q — ``gys``: q = 1/2, Ma et al.'s rate per
  signal pulse from the signal class alone, R = q [v Q0 + Q1 (1 − H2(e1)) − f Q_μ H2(E_μ)].
"""

from __future__ import annotations

import math

from qkdlink.physics.channel import fiber_transmittance
from qkdlink.physics.detector import dead_time_live_fraction
from qkdlink.physics.entropy import binary_entropy
from qkdlink.physics.source import poisson_probability, tau
from qkdlink.protocols import common as c
from qkdlink.protocols.statistics import hoeffding_delta, sampling_gamma
from qkdlink.protocols.base import (
    ABORT_ESTIMATION, ABORT_LOW_COUNTS, ABORT_QBER, ASYMPTOTIC, ASYMPTOTIC_IDEAL, FINITE, BlockCounts,
    ChannelGeometry, KeyEstimate, Param, ParameterError, Params, Protocol, PulseClass, SinglePhotonTruth,
)

INTENSITIES = ("signal", "decoy", "vacuum")
KEY_BASIS, TEST_BASIS = "Z", "X"
E0 = 0.5  # error rate of a random (background) click


class DecoyBB84(Protocol):
    name = "bb84-decoy"
    parameters = (
        c.DISTANCE_KM, c.FIBER_LOSS, c.EXTRA_LOSS, c.DETECTOR_EFFICIENCY, c.DARK_COUNT, c.AFTERPULSE,
        c.DEAD_TIME, c.BACKGROUND, c.REPETITION_RATE, c.MISALIGNMENT,
        Param("mu", 0.5, "photons", "signal mean photon number μ", 0.0, 10.0),
        Param("nu", 0.1, "photons", "decoy mean photon number ν", 0.0, 10.0),
        Param("omega", 0.0, "photons", "weakest decoy ω (0 = vacuum)", 0.0, 10.0),
        Param("p_mu", 0.8, "ratio", "probability of sending the signal intensity", 0.0, 1.0),
        Param("p_nu", 0.15, "ratio", "probability of sending the decoy intensity (ω gets the rest)", 0.0, 1.0),
        Param("key_basis_probability", 0.5, "ratio", "probability that each party picks the key basis Z", 0.0, 1.0),
        c.SIFTING,
        Param("vacuum_contribution", 1.0, "flag", "1: vacuum events count as key (s_Z0, Q0) in every mode; 0: omit them", 0.0, 1.0),
        c.EC_EFFICIENCY, c.QBER_ABORT, c.EPS_SEC, c.EPS_COR,
    )
    presets = {
        # Gobby-Yuan-Shields channel as used by Ma et al. 2005 (physics.md): Y0 = 1.7e-6 for both
        # detectors, so p_dc = 1 − √(1 − Y0) per detector. Reproduces Ma et al.'s eq. (1) as
        # printed: the paper's q = 1/2 pinned (asymptotic rates per signal pulse, signal class only,
        # not the N → ∞ limit of finite mode) and no vacuum term, in every mode.
        "gys": {
            "fiber_loss_db_per_km": 0.21, "detector_efficiency": 0.045,
            "dark_count_probability": 1.0 - math.sqrt(1.0 - 1.7e-6), "misalignment_error": 0.033,
            "ec_efficiency": 1.22, "sifting_factor": 0.5, "vacuum_contribution": 0.0,
            "mu": 0.48, "nu": 0.05, "omega": 0.0,
        },
        # Lim, Curty, Walenta, Xu, Zbinden 2014, simulation section (intensities/probabilities are
        # optimised in the paper; these are a good operating point at ~100 km). The paper's key
        # length counts s_Z0 (its eq. (1)); the asymptotic sifting is derived (p_Z² per pulse sent).
        "lim2014": {
            "fiber_loss_db_per_km": 0.2, "detector_efficiency": 0.1, "dark_count_probability": 6e-7,
            "afterpulse_probability": 0.04, "misalignment_error": 5e-3, "ec_efficiency": 1.16,
            "epsilon_cor": 1e-15, "epsilon_sec": 1e-10, "mu": 0.5, "nu": 0.1, "omega": 2e-4,
            "p_mu": 0.7, "p_nu": 0.2, "key_basis_probability": 0.9, "vacuum_contribution": 1.0,
        },
    }
    default_preset = "gys"

    # ---- model -------------------------------------------------------------------------------
    def check_consistency(self, p: Params) -> None:
        if not p["nu"] > p["omega"]:
            raise ParameterError(f"decoy intensities must satisfy nu > omega, got nu={p['nu']}, omega={p['omega']}")
        if not p["mu"] > p["nu"] + p["omega"]:
            raise ParameterError(f"intensities must satisfy mu > nu + omega, got mu={p['mu']}, nu={p['nu']}, omega={p['omega']}")
        if not p["p_mu"] + p["p_nu"] < 1.0:
            raise ParameterError(f"p_mu + p_nu must be < 1 (the weakest decoy needs a share), got {p['p_mu'] + p['p_nu']}")
        if p["vacuum_contribution"] not in (0.0, 1.0):
            raise ParameterError(f"parameter 'vacuum_contribution' must be 0 or 1, got {p['vacuum_contribution']}")

    def geometry(self, p: Params) -> ChannelGeometry:
        eta_fiber = fiber_transmittance(p["distance_km"], p["fiber_loss_db_per_km"], p["extra_loss_db"])
        return ChannelGeometry(eta_fiber, (eta_fiber * p["detector_efficiency"],))

    def _y0(self, p: Params) -> float:
        """Probability that at least one of Bob's two detectors fires with no signal photon."""
        no_click_one = (1.0 - p["dark_count_probability"]) * math.exp(-p["detector_efficiency"] * p["background_photons"])
        return 1.0 - no_click_one ** 2

    def _raw(self, p: Params, photons_yield: float) -> tuple[float, float]:
        """(click, error) probabilities before dead time, given P(signal click) = ``photons_yield``.

        Signal clicks err with e_d, background/dark clicks with 1/2 (Ma et al. 2005, eq. (5));
        afterpulses add D·p_ap clicks, half of them errors (Lim et al. 2014, eqs. (9)–(10)).
        """
        y0 = self._y0(p)
        noise = y0 * (1.0 - photons_yield)
        click = photons_yield + noise
        ap = p["afterpulse_probability"]
        errors = p["misalignment_error"] * photons_yield + E0 * noise + ap * click / 2.0
        return click * (1.0 + ap), errors

    def _live_fraction(self, p: Params) -> float:
        """Armed-gate fraction from the average raw click rate (non-paralysable dead time)."""
        eta = self.geometry(p).arm_transmittances[0]
        weights = self._intensity_weights(p)
        avg = sum(w * self._raw(p, 1.0 - math.exp(-eta * k))[0] for k, w in weights)
        return dead_time_live_fraction(avg * p["repetition_rate_hz"], p["dead_time_s"])

    @staticmethod
    def _intensity_weights(p: Params) -> list[tuple[float, float]]:
        return [(p["mu"], p["p_mu"]), (p["nu"], p["p_nu"]), (p["omega"], 1.0 - p["p_mu"] - p["p_nu"])]

    def pulse_classes(self, p: Params) -> list[PulseClass]:
        eta = self.geometry(p).arm_transmittances[0]
        live = self._live_fraction(p)
        qz = p["key_basis_probability"]
        classes = []
        for name, (k, pk) in zip(INTENSITIES, self._intensity_weights(p)):
            click, errors = self._raw(p, 1.0 - math.exp(-eta * k))
            for basis, q in ((KEY_BASIS, qz), (TEST_BASIS, 1.0 - qz)):
                classes.append(PulseClass(name, basis, pk * q * q, click * live, errors / click if click > 0 else 0.0))
        return classes

    def single_photon_truth(self, p: Params) -> SinglePhotonTruth:
        """Y1 = Y0 + η − Y0 η, e1 = (e0 Y0 (1−η) + e_d η)/Y1 (Ma et al. 2005 eqs. (7)–(8), exact form)."""
        eta = self.geometry(p).arm_transmittances[0]
        click, errors = self._raw(p, eta)
        return SinglePhotonTruth(click * self._live_fraction(p), errors / click)

    def _vacuum_yield(self, p: Params) -> float:
        """True Y0: the click probability of an empty pulse, afterpulses and dead time included."""
        return self._raw(p, 0.0)[0] * self._live_fraction(p)

    @staticmethod
    def _taus(p: Params) -> tuple[float, float]:
        """(τ0, τ1): probability that a pulse of the intensity mix holds 0 (1) photons (Lim et al. 2014)."""
        mus, probs = zip(*DecoyBB84._intensity_weights(p))
        return tau(0, list(mus), list(probs)), tau(1, list(mus), list(probs))

    def key_bits(self, counts: BlockCounts) -> tuple[int, int]:
        """Z-basis detections of all three intensities and their errors (Lim et al. 2014's key string)."""
        key = [counts.get(k, KEY_BASIS) for k in INTENSITIES]
        return round(sum(k.detected for k in key)), round(sum(k.errors for k in key))

    # ---- estimation --------------------------------------------------------------------------
    def estimate(self, counts: BlockCounts, p: Params, analysis: str) -> KeyEstimate:
        if analysis == FINITE:
            return self._finite(counts, p)
        if analysis not in (ASYMPTOTIC, ASYMPTOTIC_IDEAL):
            raise ValueError(f"unknown analysis '{analysis}'")
        signal = counts.get("signal", KEY_BASIS)
        if analysis == ASYMPTOTIC_IDEAL:
            truth = self.single_photon_truth(p)
            y0, y1, e1 = self._vacuum_yield(p), truth.yield_, truth.phase_error_rate
        else:
            y0, y1 = self._asymptotic_yields(counts, p, KEY_BASIS)
            e1 = self._asymptotic_phase_error(counts, p)
        vacuum = p["vacuum_contribution"] * y0
        if p["sifting_factor"] > 0.0:
            # A paper's convention (Ma et al. 2005 eq. (1)): per signal pulse, key from the signal
            # class alone, Q1 = Y1 μ e^(−μ), Q0 = Y0 e^(−μ).
            mu = p["mu"]
            return c.asymptotic_estimate(
                analysis, p, weight=p["sifting_factor"], gain=signal.gain, qber=signal.error_rate,
                key_gain=signal.gain, single_gain=y1 * poisson_probability(mu, 1),
                vacuum_gain=vacuum * poisson_probability(mu, 0), y1=y1, e1=e1)
        # N → ∞ limit of ``_finite``: the pooled Z string of all intensities, s_Z0 → τ0 Y0 and
        # s_Z1 → τ1 Y1 per Z pulse, weight p_Z² = Z pulses / pulses sent.
        key = [counts.get(k, KEY_BASIS) for k in INTENSITIES]
        pulses_z, n_z, m_z = (sum(getattr(k, a) for k in key) for a in ("sent", "detected", "errors"))
        t0, t1 = self._taus(p)
        return c.asymptotic_estimate(
            analysis, p, weight=pulses_z / counts.pulses if counts.pulses > 0 else 0.0, gain=signal.gain,
            qber=m_z / n_z if n_z > 0 else 0.0, key_gain=n_z / pulses_z if pulses_z > 0 else 0.0,
            single_gain=t1 * y1, vacuum_gain=t0 * vacuum, y1=y1, e1=e1)

    @staticmethod
    def _asymptotic_yields(counts: BlockCounts, p: Params, basis: str) -> tuple[float, float]:
        """(Y0, Y1) lower bounds from the gains of ``basis`` (Ma et al. 2005 eq. (34); general ω: Lim et al. eqs. (2)–(3))."""
        mu, nu, om = p["mu"], p["nu"], p["omega"]
        q = {k: counts.get(k, basis).gain for k in INTENSITIES}
        y0 = max(0.0, (nu * math.exp(om) * q["vacuum"] - om * math.exp(nu) * q["decoy"]) / (nu - om))
        y1 = mu / (mu * (nu - om) - nu ** 2 + om ** 2) * (
            math.exp(nu) * q["decoy"] - math.exp(om) * q["vacuum"]
            - (nu ** 2 - om ** 2) / mu ** 2 * (math.exp(mu) * q["signal"] - y0))
        return y0, max(y1, 0.0)

    def _asymptotic_phase_error(self, counts: BlockCounts, p: Params) -> float:
        """e1 ≤ … from the test basis (Ma et al. 2005 eq. (37); general ω: Lim et al. eq. (4)).

        The test basis's single-photon errors are divided by the test basis's own Y1 bound, as
        ``_finite`` divides v_X1 by s_X1 (equal to the key basis's in expectation: the model's
        gains do not depend on the basis).
        """
        nu, om = p["nu"], p["omega"]
        _, y1_x = self._asymptotic_yields(counts, p, TEST_BASIS)
        x_decoy, x_vac = counts.get("decoy", TEST_BASIS), counts.get("vacuum", TEST_BASIS)
        e1y1 = (math.exp(nu) * x_decoy.errors / max(x_decoy.sent, 1e-300)
                - math.exp(om) * x_vac.errors / max(x_vac.sent, 1e-300)) / (nu - om)
        return min(0.5, e1y1 / y1_x) if y1_x > 0 else 0.5

    def _finite(self, counts: BlockCounts, p: Params) -> KeyEstimate:
        """Lim et al. 2014 eqs. (1)–(6); every count bounded by Hoeffding's inequality.

        ℓ = ⌊v s_Z0 + s_Z1 (1 − h(φ)) − 6 log2(21/ε_sec) − log2(2/ε_cor) − λ_EC⌋, v =
        ``vacuum_contribution``; everything but λ_EC is ``details["key_budget_bits"]``.
        """
        mu = {"signal": p["mu"], "decoy": p["nu"], "vacuum": p["omega"]}
        pk = {"signal": p["p_mu"], "decoy": p["p_nu"], "vacuum": 1.0 - p["p_mu"] - p["p_nu"]}
        eps_sec, eps_cor = p["epsilon_sec"], p["epsilon_cor"]
        t0, t1 = self._taus(p)
        m1, m2, m3 = mu["signal"], mu["decoy"], mu["vacuum"]

        def bounds(basis: str, attr: str) -> tuple[dict[str, float], dict[str, float]]:
            values = {k: getattr(counts.get(k, basis), attr) for k in INTENSITIES}
            delta = hoeffding_delta(sum(values.values()), eps_sec)
            lo = {k: math.exp(mu[k]) / pk[k] * max(values[k] - delta, 0.0) for k in INTENSITIES}
            hi = {k: math.exp(mu[k]) / pk[k] * (values[k] + delta) for k in INTENSITIES}
            return lo, hi

        def s0_s1(basis: str) -> tuple[float, float]:
            lo, hi = bounds(basis, "detected")
            s0 = max(0.0, t0 * (m2 * lo["vacuum"] - m3 * hi["decoy"]) / (m2 - m3))
            s1 = m1 * t1 * (lo["decoy"] - hi["vacuum"] - (m2 ** 2 - m3 ** 2) / m1 ** 2 * (hi["signal"] - s0 / t0)) \
                / (m1 * (m2 - m3) - m2 ** 2 + m3 ** 2)
            return s0, s1

        key = [counts.get(k, KEY_BASIS) for k in INTENSITIES]
        n_z = sum(k.detected for k in key)
        m_z = sum(k.errors for k in key)
        n_x = sum(counts.get(k, TEST_BASIS).detected for k in INTENSITIES)
        pulses_z = sum(k.sent for k in key)
        signal = counts.get("signal", KEY_BASIS)
        qber = m_z / n_z if n_z > 0 else 0.0
        base = dict(analysis=FINITE, gain=signal.gain, qber=qber)
        if n_z <= 0 or n_x <= 0:
            return KeyEstimate(**base, y1_lower=0.0, e1_upper=0.5, key_rate_bits_per_pulse=0.0,
                               secret_key_bits=0.0, s1_lower=0.0, abort_reason=ABORT_LOW_COUNTS)
        if qber > p["qber_abort_threshold"]:
            return KeyEstimate(**base, y1_lower=None, e1_upper=None, key_rate_bits_per_pulse=0.0,
                               secret_key_bits=0.0, abort_reason=ABORT_QBER)
        s_z0, s_z1 = s0_s1(KEY_BASIS)
        _, s_x1 = s0_s1(TEST_BASIS)
        err_lo, err_hi = bounds(TEST_BASIS, "errors")
        v_x1 = t1 * (err_hi["decoy"] - err_lo["vacuum"]) / (m2 - m3)
        y1_lower = max(s_z1, 0.0) / (t1 / sum(pk.values()) * pulses_z) if pulses_z > 0 else 0.0
        if s_z1 <= 0 or s_x1 <= 0:
            reason = ABORT_LOW_COUNTS if n_z < 1e4 else ABORT_ESTIMATION
            return KeyEstimate(**base, y1_lower=0.0, e1_upper=0.5, key_rate_bits_per_pulse=0.0,
                               secret_key_bits=0.0, s1_lower=0.0, abort_reason=reason)
        ratio = min(max(v_x1 / s_x1, 0.0), 0.5)
        phi = min(0.5, ratio + sampling_gamma(eps_sec / 21.0, ratio, s_x1, s_z1))
        leak = p["ec_efficiency"] * n_z * binary_entropy(qber)
        budget = (p["vacuum_contribution"] * s_z0 + s_z1 * (1.0 - binary_entropy(phi))
                  - 6.0 * math.log2(21.0 / eps_sec) - math.log2(2.0 / eps_cor))
        details = {"s_z0_lower": s_z0, "s_x1_lower": s_x1, "v_x1_upper": v_x1, "leak_ec_bits": leak,
                   "key_budget_bits": budget}
        ell = math.floor(budget - leak)
        ell = ell if ell > 0 else 0.0
        return KeyEstimate(**base, y1_lower=y1_lower, e1_upper=phi,
                           key_rate_bits_per_pulse=ell / counts.pulses if counts.pulses > 0 else 0.0,
                           secret_key_bits=float(ell), s1_lower=s_z1,
                           abort_reason=None if ell > 0 else ABORT_ESTIMATION, details=details)


PROTOCOL = DecoyBB84()
