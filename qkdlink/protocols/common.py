"""Parameters and statistical helpers shared by the protocol models.

Shared parameter definitions keep one name, unit and range for the same physical quantity in every
protocol (the CLI's ``--set`` and ``links.yaml`` rely on that).
"""

from __future__ import annotations

from collections.abc import Mapping

from qkdlink.physics.entropy import binary_entropy
from qkdlink.protocols.base import ABORT_ESTIMATION, ABORT_QBER, KeyEstimate, Param, Params

# Channel
DISTANCE_KM = Param("distance_km", 25.0, "km", "fibre length between Alice and Bob (MDI/TF: total, through the relay)", 0.0, 2000.0)
FIBER_LOSS = Param("fiber_loss_db_per_km", 0.2, "dB/km", "fibre attenuation coefficient α", 0.0, 10.0)
EXTRA_LOSS = Param("extra_loss_db", 0.0, "dB", "lumped extra loss: connectors, splices, a loss-step or fibre-cut fault", 0.0, 400.0)
# Detectors (Bob's, or Charlie's for MDI/TF)
DETECTOR_EFFICIENCY = Param("detector_efficiency", 0.1, "ratio", "detection efficiency incl. receiver insertion loss", 0.0, 1.0)
DARK_COUNT = Param("dark_count_probability", 1e-6, "ratio", "dark-count probability per detector per gate", 0.0, 0.5)
AFTERPULSE = Param("afterpulse_probability", 0.0, "ratio", "afterpulse probability per click", 0.0, 0.5)
DEAD_TIME = Param("dead_time_s", 0.0, "s", "detector dead time (0: no saturation modelled)", 0.0, 1e-3)
BACKGROUND = Param("background_photons", 0.0, "photons/gate", "stray light reaching each detector per gate (saturation/blinding)", 0.0, 1e6)
REPETITION_RATE = Param("repetition_rate_hz", 1e9, "Hz", "pulse repetition rate (sets click rate for dead time)", 1.0, 1e11)
MISALIGNMENT = Param("misalignment_error", 0.01, "ratio", "optical misalignment error e_d", 0.0, 0.5)
# Post-processing and security
EC_EFFICIENCY = Param("ec_efficiency", 1.16, "ratio", "error-correction inefficiency f (leak = f·n·H2(E))", 1.0, 3.0)
QBER_ABORT = Param("qber_abort_threshold", 0.11, "ratio", "abort a block whose key-basis QBER exceeds this", 0.0, 0.5)
EPS_SEC = Param("epsilon_sec", 1e-10, "ratio", "secrecy parameter ε_sec of the finite-key analysis", 1e-30, 0.1)
EPS_COR = Param("epsilon_cor", 1e-15, "ratio", "correctness parameter ε_cor of the finite-key analysis", 1e-30, 0.1)
# Asymptotic modes: 0 (default) derives the sifting from the basis (and intensity) probabilities of the
# finite analysis; a preset that reproduces a paper pins that paper's q (docs/physics.md, "Key-length conventions").
SIFTING = Param("sifting_factor", 0.0, "ratio",
                "asymptotic modes: a paper's q, rate per signal pulse R = q[…]; 0 = derived, per pulse sent as in finite mode",
                0.0, 1.0)


def sifting(p: Params, key_share: float) -> float:
    """Weight of the asymptotic rate: the preset's pinned q, or ``key_share`` when q is 0 (derived).

    ``key_share`` is the fraction of all pulses sent in the classes the finite analysis takes key
    from (BB84: p_Z²; MDI: p_μ² p_Z²; TF: p_Z²), so the asymptotic rate is per pulse sent and is
    the N → ∞ limit of the finite rate. A pinned q > 0 reproduces a paper's rate per signal pulse
    (e.g. q = 1/2 of Ma et al. 2005) and breaks that correspondence on purpose.
    """
    q = p["sifting_factor"]
    return q if q > 0.0 else key_share


def asymptotic_estimate(analysis: str, p: Params, *, weight: float, gain: float, qber: float, key_gain: float,
                        single_gain: float, y1: float, e1: float, vacuum_gain: float = 0.0,
                        details: Mapping[str, float] | None = None) -> KeyEstimate:
    """R = w [Q0 + Q1 (1 − H2(e1)) − f Q H2(E)], or an abort with its reason.

    The GLLP form every protocol here shares (Gottesman, Lo, Lütkenhaus, Preskill, QIC 4, 325
    (2004); Ma et al. PRA 72, 012326 (2005) eq. (1); MDI: Lo, Curty, Qi PRL 108, 130503 (2012);
    SNS-TF: Wang, Yu, Hu PRA 98, 062323 (2018)): privacy amplification removes what the phase error
    of the single-photon (pair, untagged) events Q1 can leak, error correction pays f H2(E) per
    detection of the key string (gain ``key_gain``, error rate ``qber``). Q0 (``vacuum_gain``): key
    from vacuum events, which carry no information to Eve (Lo, QIC 5, 413 (2005)); 0 where the
    protocol or preset does not count it. w = ``sifting(p, …)``. ``gain`` is the reported signal
    gain; ``y1``/``e1`` are reported as the bounds used.
    """
    rate = weight * (vacuum_gain + single_gain * (1.0 - binary_entropy(e1))
                     - p["ec_efficiency"] * key_gain * binary_entropy(qber))
    reason = None
    if qber > p["qber_abort_threshold"]:
        reason, rate = ABORT_QBER, 0.0
    elif rate <= 0.0:
        reason, rate = ABORT_ESTIMATION, 0.0
    return KeyEstimate(analysis=analysis, gain=gain, qber=qber, y1_lower=y1, e1_upper=e1,
                       key_rate_bits_per_pulse=rate, abort_reason=reason, details=dict(details or {}))
