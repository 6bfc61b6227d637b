"""Optical fibre channel and the repeaterless (PLOB) capacity bound."""

from __future__ import annotations

import math


def fiber_loss_db(distance_km: float, loss_db_per_km: float, extra_loss_db: float = 0.0) -> float:
    """Total channel loss in dB: α·L plus lumped extra loss (splices, connectors, a bad splice fault)."""
    if distance_km < 0:
        raise ValueError(f"distance_km must be >= 0, got {distance_km}")
    if loss_db_per_km < 0:
        raise ValueError(f"fiber_loss_db_per_km must be >= 0, got {loss_db_per_km}")
    return loss_db_per_km * distance_km + extra_loss_db


def transmittance_from_db(loss_db: float) -> float:
    """η = 10^(−loss/10), the power transmittance of a channel with ``loss_db`` of loss."""
    return 10.0 ** (-loss_db / 10.0)


def fiber_transmittance(distance_km: float, loss_db_per_km: float, extra_loss_db: float = 0.0) -> float:
    """η_ch = 10^(−(α L + extra)/10) for standard single-mode fibre.

    Gobby, Yuan, Shields, APL 84, 3762 (2004) and Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), eq. (2):
    the channel transmittance of a fibre of length L with loss coefficient α in dB/km.
    """
    return transmittance_from_db(fiber_loss_db(distance_km, loss_db_per_km, extra_loss_db))


def plob_bound(transmittance: float) -> float:
    """Secret-key capacity of a pure-loss channel, −log2(1 − η) bits per channel use.

    Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043 (2017), eq. (19): no
    repeaterless protocol can distil more key per use of a lossy channel of transmittance η.
    """
    if not 0.0 <= transmittance <= 1.0:
        raise ValueError(f"transmittance must be in [0, 1], got {transmittance}")
    if transmittance >= 1.0:
        return math.inf
    return -math.log2(1.0 - transmittance)
