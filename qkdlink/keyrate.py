"""Key-rate predictions: one protocol, one distance, one analysis mode → the numbers a QKD engineer checks.

This is the library behind ``qkdops keyrate``. It feeds the protocol's *expected* block counts to the
same ``estimate`` that post-processing runs on sampled counts, and puts the PLOB repeaterless bound
beside the result so a rate above it (possible only for twin-field) is visible at a glance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize

from qkdlink.physics.channel import plob_bound
from qkdlink.protocols import get_protocol
from qkdlink.protocols.base import ANALYSES, FINITE, BlockCounts, ParameterError, Params, Protocol

DEFAULT_FINITE_PULSES = 1e12


@dataclass(frozen=True)
class KeyRatePoint:
    """One prediction, with the field names of the ``qkdops keyrate --json`` contract."""

    protocol: str
    preset: str
    distance_km: float
    analysis: str
    pulses: float | None
    channel_transmittance: float
    plob_bound_bits_per_pulse: float
    gain: float
    qber: float
    key_rate_bits_per_pulse: float
    y1_lower: float | None
    e1_upper: float | None
    secret_key_bits: float | None
    abort_reason: str | None

    def as_json(self) -> dict[str, object]:
        return {k: _json_number(v) for k, v in asdict(self).items()}


def _json_number(value: object) -> object:
    """JSON has no infinity: an unbounded PLOB value (η = 1 at 0 km) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def predict(protocol: Protocol, params: Params, analysis: str, pulses: float | None = None,
            preset: str = "") -> KeyRatePoint:
    """Expected key rate and bounds for a resolved parameter set (see ``Protocol.resolve``)."""
    if analysis not in ANALYSES:
        raise ParameterError(f"analysis must be one of {', '.join(ANALYSES)}, got '{analysis}'")
    n = float(pulses if pulses is not None else DEFAULT_FINITE_PULSES)
    if n <= 0:
        raise ParameterError(f"pulses must be > 0, got {pulses}")
    counts = BlockCounts.expected(protocol.pulse_classes(params), n)
    est = protocol.estimate(counts, params, analysis)
    eta = protocol.geometry(params).fiber_transmittance
    return KeyRatePoint(
        protocol=protocol.name, preset=preset or protocol.default_preset, distance_km=params["distance_km"],
        analysis=analysis, pulses=n if analysis == FINITE else None, channel_transmittance=eta,
        plob_bound_bits_per_pulse=plob_bound(eta), gain=est.gain, qber=est.qber,
        key_rate_bits_per_pulse=est.key_rate_bits_per_pulse, y1_lower=est.y1_lower, e1_upper=est.e1_upper,
        secret_key_bits=est.secret_key_bits, abort_reason=est.abort_reason)


def sweep(protocol_name: str, distances_km: Sequence[float], analysis: str, preset: str | None = None,
          overrides: Mapping[str, float] | None = None, pulses: float | None = None) -> list[KeyRatePoint]:
    """``predict`` at each distance, other parameters from the preset and ``overrides``."""
    protocol = get_protocol(protocol_name)
    points = []
    for d in distances_km:
        params = protocol.resolve({**(overrides or {}), "distance_km": d}, preset)
        points.append(predict(protocol, params, analysis, pulses, preset or protocol.default_preset))
    return points


def optimise(protocol: Protocol, params: Params, names: Sequence[str], analysis: str,
             pulses: float | None = None) -> dict[str, float]:
    """Parameters ``names`` (e.g. mu, nu, p_mu) that maximise the key rate, others held fixed.

    Papers quote rates with intensities and probabilities optimised per distance (e.g. Lim et al.
    2014); Nelder–Mead on the parameters' allowed ranges, with inconsistent sets (e.g. ν ≥ μ) scored
    as no key. Returns the full parameter set at the optimum.
    """
    specs = [protocol.parameter(n) for n in names]
    start = np.array([params[n] for n in names], dtype=float)

    def rate(x: np.ndarray) -> float:
        trial = dict(params)
        for spec, value in zip(specs, x):
            if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
                return 1.0
            trial[spec.name] = float(value)
        try:
            protocol.check_consistency(trial)
            return -predict(protocol, trial, analysis, pulses).key_rate_bits_per_pulse
        except (ParameterError, ValueError, ZeroDivisionError, OverflowError):
            return 1.0

    if rate(start) >= 0.0:  # no key at the start: Nelder–Mead sees a flat landscape
        start = _start_with_key(start, rate)
    scale = max(abs(rate(start)), 1e-300)
    result = minimize(lambda x: rate(x) / scale, start, method="Nelder-Mead",
                      options={"xatol": 1e-5, "fatol": 1e-7, "maxiter": 400 * len(names)})
    best = result.x if result.fun <= rate(start) / scale else start
    return {**params, **{n: float(v) for n, v in zip(names, best)}}


def _start_with_key(start: np.ndarray, rate: Callable[[np.ndarray], float], tries: int = 256) -> np.ndarray:
    """Best of seeded log-uniform perturbations (×1/4…×4) of ``start``; ``start`` if none gives key."""
    rng = np.random.default_rng(0)
    best, best_rate = start, rate(start)
    for _ in range(tries):
        trial = start * np.exp(rng.uniform(-math.log(4.0), math.log(4.0), size=start.shape))
        value = rate(trial)
        if value < best_rate:
            best, best_rate = trial, value
    return best
