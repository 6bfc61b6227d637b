"""Parameters and statistical helpers shared by the protocol models.

Shared parameter definitions keep one name, unit and range for the same physical quantity in every
protocol (the CLI's ``--set`` and ``links.yaml`` rely on that).
"""

from __future__ import annotations

import math

from qkdlink.protocols.base import Param

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


def hoeffding_delta(total: float, epsilon: float, terms: float = 21.0) -> float:
    """δ = √(n/2 · ln(terms/ε)): Hoeffding deviation for counts drawn from a pool of ``total`` events.

    Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014), text after eq. (2): the observed count
    of intensity k deviates from its expectation by at most δ except with probability ε/terms.
    """
    if total <= 0:
        return 0.0
    return math.sqrt(total / 2.0 * math.log(terms / epsilon))
