"""What every protocol model provides, and the data that flows between the models and the link.

A protocol model is pure: given a flat parameter mapping (distance, fibre, detector, source and
security settings — see each model's ``parameters``) it gives

* ``pulse_classes``: the expected statistics of every sifted (intensity, basis) class — the exact
  per-pulse detection and error probabilities the emulator samples block counts from;
* ``single_photon_truth``: the true single-photon (pair) yield and phase-error rate, which real
  hardware never sees but the emulator knows, so tests can check the estimator against the truth;
* ``estimate``: from block counts (sampled, or expected ones), a lower bound on the single-photon
  yield, an upper bound on its phase-error rate and the secret key length — or an abort with its
  reason — in one of three analysis modes (``ANALYSES``).

The same ``estimate`` serves ``qkdops keyrate`` (fed expected counts) and post-processing (fed sampled
counts), so the numbers the CLI predicts are the numbers the running link produces.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ASYMPTOTIC_IDEAL = "asymptotic-ideal"
ASYMPTOTIC = "asymptotic"
FINITE = "finite"
ANALYSES: tuple[str, ...] = (ASYMPTOTIC_IDEAL, ASYMPTOTIC, FINITE)

# Abort reasons the library can give; the pipeline adds `verification` and `classical_channel`.
ABORT_QBER = "qber"
ABORT_LOW_COUNTS = "low_counts"
ABORT_ESTIMATION = "estimation"

Params = Mapping[str, float]


class ParameterError(ValueError):
    """A parameter is unknown or out of its range; the message names the parameter."""


@dataclass(frozen=True)
class Param:
    """One model parameter: its name, default, unit and allowed range."""

    name: str
    default: float
    unit: str
    description: str
    minimum: float | None = None
    maximum: float | None = None

    def check(self, value: float, where: str = "") -> float:
        """Return ``value`` as float, or raise ParameterError naming the parameter and its range."""
        prefix = f"{where}: " if where else ""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParameterError(f"{prefix}parameter '{self.name}' must be a number, got {value!r}") from None
        if number != number:  # NaN
            raise ParameterError(f"{prefix}parameter '{self.name}' must be a number, got NaN")
        if self.minimum is not None and number < self.minimum:
            raise ParameterError(f"{prefix}parameter '{self.name}' must be >= {self.minimum} {self.unit}, got {number}")
        if self.maximum is not None and number > self.maximum:
            raise ParameterError(f"{prefix}parameter '{self.name}' must be <= {self.maximum} {self.unit}, got {number}")
        return number


@dataclass(frozen=True)
class PulseClass:
    """Expected statistics of one sifted class of pulses (or TF windows).

    ``probability`` is the fraction of all sent pulses that land in this class after sifting
    (intensity choice × matching bases × any post-selection); ``gain`` the probability that such a
    pulse gives a counted detection event; ``error_rate`` the probability that a detection event in
    this class is a bit error (the class QBER).
    """

    intensity: str
    basis: str
    probability: float
    gain: float
    error_rate: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.intensity, self.basis)


@dataclass(frozen=True)
class ClassCounts:
    """Pulses sent, detection events and bit errors of one class in one block (floats when expected)."""

    sent: float
    detected: float
    errors: float

    def __post_init__(self) -> None:
        if self.sent < 0 or self.detected < 0 or self.errors < 0:
            raise ValueError(f"counts must be >= 0, got {self}")
        if self.detected > self.sent or self.errors > self.detected:
            raise ValueError(f"counts must satisfy errors <= detected <= sent, got {self}")

    @property
    def gain(self) -> float:
        return self.detected / self.sent if self.sent > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.detected if self.detected > 0 else 0.0


@dataclass(frozen=True)
class BlockCounts:
    """All class counts of one block, keyed by (intensity, basis), and the pulses sent in the block."""

    pulses: float
    classes: Mapping[tuple[str, str], ClassCounts]

    def get(self, intensity: str, basis: str) -> ClassCounts:
        """Counts of a class; a class absent from the block counts as nothing sent."""
        return self.classes.get((intensity, basis), ClassCounts(0.0, 0.0, 0.0))

    @property
    def detected(self) -> float:
        return sum(c.detected for c in self.classes.values())

    @classmethod
    def expected(cls, classes: Iterable[PulseClass], pulses: float) -> BlockCounts:
        """Expected (mean) counts of a block of ``pulses`` pulses: the noiseless input for predictions."""
        table = {}
        for c in classes:
            sent = pulses * c.probability
            detected = sent * c.gain
            table[c.key] = ClassCounts(sent, detected, detected * c.error_rate)
        return cls(pulses, table)


@dataclass(frozen=True)
class SinglePhotonTruth:
    """True single-photon (MDI: single-photon-pair) yield and phase-error rate of the key basis."""

    yield_: float
    phase_error_rate: float


@dataclass(frozen=True)
class KeyEstimate:
    """Outcome of one estimation: bounds, key length and rate, or an abort with its reason.

    ``key_rate_bits_per_pulse`` is per pulse (MDI/TF: per pulse pair or time window) sent in every
    mode — ``secret_key_bits / pulses`` in finite mode, its N → ∞ limit in the asymptotic modes —
    except where a preset pins a paper's sifting factor q (``sifting_factor`` > 0): the asymptotic
    modes then give that paper's rate per signal pulse times q, so published numbers are reproduced.
    See docs/physics.md, "Key-length conventions".

    Finite mode also reports ``details["leak_ec_bits"]`` (the modelled λ_EC = f·n·H2(E)) and, once
    the bounds exist, ``details["key_budget_bits"]``: the key length before λ_EC is subtracted and
    before flooring, so that post-processing can apply the leak its error correction measured
    (``secret_key_length``).
    """

    analysis: str
    gain: float
    qber: float
    y1_lower: float | None
    e1_upper: float | None
    key_rate_bits_per_pulse: float
    secret_key_bits: float | None = None
    s1_lower: float | None = None
    abort_reason: str | None = None
    details: Mapping[str, float] = field(default_factory=dict)

    @property
    def aborted(self) -> bool:
        return self.abort_reason is not None


@dataclass(frozen=True)
class ChannelGeometry:
    """Fibre transmittance between the users (for PLOB) and the per-arm system transmittances."""

    fiber_transmittance: float
    arm_transmittances: tuple[float, ...]


class Protocol(ABC):
    """A QKD protocol model: parameters, presets, expected class statistics, truth and estimation."""

    name: str
    parameters: tuple[Param, ...]
    presets: Mapping[str, Mapping[str, float]]
    default_preset: str

    def parameter(self, name: str) -> Param:
        for p in self.parameters:
            if p.name == name:
                return p
        known = ", ".join(sorted(p.name for p in self.parameters))
        raise ParameterError(f"unknown parameter '{name}' for protocol {self.name} (known: {known})")

    def resolve(self, overrides: Mapping[str, float] | None = None, preset: str | None = None,
                where: str = "") -> dict[str, float]:
        """Defaults, then the preset, then ``overrides``; every value range-checked by name."""
        name = preset or self.default_preset
        if name not in self.presets:
            raise ParameterError(
                f"{where + ': ' if where else ''}unknown preset '{name}' for protocol {self.name} "
                f"(known: {', '.join(sorted(self.presets))})")
        values = {p.name: p.default for p in self.parameters}
        for key, value in {**self.presets[name], **(overrides or {})}.items():
            try:
                spec = self.parameter(key)
            except ParameterError as exc:
                raise ParameterError(f"{where}: {exc}" if where else str(exc)) from None
            values[key] = spec.check(value, where)
        self.check_consistency(values)
        return values

    def check_consistency(self, p: Params) -> None:
        """Cross-parameter checks (e.g. decoy ordering); raise ParameterError naming the fields."""

    @abstractmethod
    def geometry(self, p: Params) -> ChannelGeometry:
        """Channel transmittances for the parameter set."""

    @abstractmethod
    def pulse_classes(self, p: Params) -> list[PulseClass]:
        """Expected statistics of every sifted class."""

    @abstractmethod
    def single_photon_truth(self, p: Params) -> SinglePhotonTruth:
        """True single-photon (pair) yield and phase-error rate in the key basis."""

    @abstractmethod
    def estimate(self, counts: BlockCounts, p: Params, analysis: str) -> KeyEstimate:
        """Bounds and key from block counts; ``asymptotic-ideal`` uses the model's truth instead."""

    @abstractmethod
    def key_bits(self, counts: BlockCounts) -> tuple[int, int]:
        """(n, errors): length of the sifted key string that enters error correction and privacy
        amplification in finite mode, and the number of bit errors in it.

        These are exactly the n and E·n of the finite estimate's λ_EC = f·n·H2(E), so that error
        correction runs on the string the estimate budgeted for. Counts of real blocks are integers;
        expected (float) counts are rounded.
        """


def secret_key_length(estimate: KeyEstimate, leak_ec_bits: float) -> int:
    """ℓ = ⌊key_budget_bits − leak_ec_bits⌋ for the leak error correction really disclosed, or 0.

    0 when that is ≤ 0, or when the finite estimate aborted before it had a budget (too few counts,
    QBER above the threshold, no single-photon bound). With ``leak_ec_bits =
    estimate.details["leak_ec_bits"]`` this is ``estimate.secret_key_bits``.

    The verification tag (a hash of ⌈log2(1/ε_cor)⌉ bits, disclosed after error correction) is
    not subtracted here: each paper's correctness term — log2(2/ε_cor) in Lim et al., PRA 89,
    022307 (2014) and Jiang et al., PR Applied 12, 024061 (2019), log2(8/ε_cor) in Curty et al.,
    Nat. Commun. 5, 3732 (2014) — is at least the tag length and stays in the budget, so it pays
    for the tag; subtracting the tag again would count it twice.
    """
    budget = estimate.details.get("key_budget_bits")
    if budget is None:
        return 0
    length = math.floor(budget - leak_ec_bits)
    return length if length > 0 else 0
