"""Decoy estimation over a sliding window of archived blocks, and the decoy settings it recommends.

Per-block estimation (the post-processing pipeline) answers "may this block issue key?". The window
answers the slower questions an engineer asks of a link: with the statistics of the last N blocks
pooled, what are the single-photon bounds and the key rate the channel supports, and would the
finite-key analysis abort? Pooling is exact for the decoy method — counts of each (intensity, basis)
class add — and the estimate is the library's own finite-key analysis (``Protocol.estimate`` with
``analysis="finite"``) on the summed counts with the link's nominal parameters, the same call the
pipeline makes per block: BB84 Lim et al., PRA 89, 022307 (2014); MDI Curty et al., Nat. Commun.
5, 3732 (2014); TF (SNS) Jiang et al., PRA 100, 062316 (2019). The bounds hold except with
probability ε_sec (the link's ``epsilon_sec``).

Recommendation (Lim et al. 2014 optimise μ, ν and their probabilities per channel): the observed
channel is the link model with the extra loss that reproduces the window's measured detection
probability over the sifted classes (Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005), eq. (2): gains scale
with η = 10^(−loss/10)); ``qkdlink.keyrate.optimise`` then maximises the finite-key rate at the
link's block size over the intensities and their choice probabilities. It is advice, published as
metrics and printed by ``qkdops calibrate decoy_estimation``; nothing is applied to the link.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scipy.optimize import brentq

from qkdlink.settings import choice_parameters, intensity_parameters
from qkdlink.keyrate import optimise, predict
from qkdlink.protocols import get_protocol
from qkdlink.protocols.base import FINITE, BlockCounts, ClassCounts, KeyEstimate, Protocol

MAX_EXTRA_LOSS_DB = 60.0
VACUUM_PARAMETERS = ("omega",)  # a vacuum decoy stays a vacuum decoy: not optimised


@dataclass(frozen=True)
class WindowEstimate:
    """The finite-key estimate of the pooled window, with what it was computed from."""

    link: str
    protocol: str
    first_block: int
    last_block: int
    blocks: int
    pulses: float
    seconds: float                  # emulated time the window's pulses took
    estimate: KeyEstimate
    epsilon_sec: float

    @property
    def key_rate_bytes_per_second(self) -> float:
        bits = self.estimate.secret_key_bits or 0.0
        return 0.0 if self.estimate.aborted or self.seconds <= 0 else bits / self.seconds / 8.0

    @property
    def state(self) -> str:
        """Abort reason, or ``none`` when the window would issue key."""
        return self.estimate.abort_reason or "none"


@dataclass(frozen=True)
class Recommendation:
    observed_loss_db: float
    parameters: Mapping[str, float]          # recommended intensities and choice probabilities
    current_rate_bits_per_pulse: float
    recommended_rate_bits_per_pulse: float
    notes: tuple[str, ...] = field(default=())

    @property
    def gain_ratio(self) -> float | None:
        if self.current_rate_bits_per_pulse <= 0:
            return None if self.recommended_rate_bits_per_pulse <= 0 else math.inf
        return self.recommended_rate_bits_per_pulse / self.current_rate_bits_per_pulse


def pooled_counts(blocks: list[Mapping[str, Any]]) -> BlockCounts:
    """Sum of the blocks' class counts (the decoy statistics of the window as one block)."""
    table: dict[tuple[str, str], list[float]] = {}
    pulses = 0.0
    for block in blocks:
        pulses += float(block["pulses"])
        for c in block["counts"]:
            acc = table.setdefault((c["intensity"], c["basis"]), [0.0, 0.0, 0.0])
            acc[0] += c["sent"]
            acc[1] += c["detected"]
            acc[2] += c["errors"]
    return BlockCounts(pulses, {k: ClassCounts(*v) for k, v in table.items()})


def estimate_window(window: Mapping[str, Any]) -> WindowEstimate:
    """Finite-key estimate of the blocks in a control-API ``/blocks`` answer (ValueError if none)."""
    blocks = [b for b in window["blocks"] if b.get("classical_channel_up", True)]
    if not blocks:
        raise ValueError(f"link {window['link']}: no archived block with the classical channel up to estimate")
    protocol = get_protocol(window["protocol"])
    nominal = window["nominal"]
    counts = pooled_counts(blocks)
    estimate = protocol.estimate(counts, nominal, FINITE)
    return WindowEstimate(window["link"], window["protocol"], blocks[0]["index"], blocks[-1]["index"], len(blocks),
                          counts.pulses, counts.pulses / float(window["repetition_rate_hz"]), estimate,
                          float(nominal.get("epsilon_sec", math.nan)))


def observed_extra_loss_db(protocol: Protocol, nominal: Mapping[str, float], counts: BlockCounts) -> float:
    """Extra loss (dB, ≥ 0) at which the model's detection probability over the sifted classes
    equals the measured one; 0 when the link does at least as well as its nominal model."""
    measured = counts.detected / counts.pulses if counts.pulses > 0 else 0.0

    def model(extra: float) -> float:
        classes = protocol.pulse_classes({**nominal, "extra_loss_db": extra})
        return sum(c.probability * c.gain for c in classes)

    if measured <= 0:
        return MAX_EXTRA_LOSS_DB
    base = nominal.get("extra_loss_db", 0.0)
    if model(base) <= measured:
        return base
    if model(MAX_EXTRA_LOSS_DB) >= measured:
        return MAX_EXTRA_LOSS_DB
    return float(brentq(lambda x: math.log(model(x)) - math.log(measured), base, MAX_EXTRA_LOSS_DB, xtol=1e-4))


def recommend(window: Mapping[str, Any], block_pulses: float) -> Recommendation:
    """Decoy intensities and probabilities maximising the finite-key rate of a ``block_pulses``
    block on the channel the window observed."""
    protocol = get_protocol(window["protocol"])
    nominal = dict(window["nominal"])
    counts = pooled_counts([b for b in window["blocks"] if b.get("classical_channel_up", True)])
    extra = observed_extra_loss_db(protocol, nominal, counts)
    observed = {**nominal, "extra_loss_db": extra}
    loss_db = -10.0 * math.log10(max(protocol.geometry(observed).fiber_transmittance, 1e-300))
    multiway, _ = choice_parameters(protocol)
    names = [n for n in intensity_parameters(protocol) if n not in VACUUM_PARAMETERS and nominal[n] > 0] + list(multiway)
    current = predict(protocol, observed, FINITE, block_pulses).key_rate_bits_per_pulse
    best = optimise(protocol, observed, names, FINITE, block_pulses)
    rate = predict(protocol, best, FINITE, block_pulses).key_rate_bits_per_pulse
    notes = () if extra < MAX_EXTRA_LOSS_DB else ("no light seen: the channel loss is beyond the fit range",)
    if rate <= current:  # the optimiser found nothing better: keep what runs
        best, rate = observed, current
    return Recommendation(loss_db, {n: best[n] for n in (*intensity_parameters(protocol), *multiway)}, current, rate, notes)
