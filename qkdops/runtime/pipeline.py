"""Post-processing of one block: sifting → estimation → error correction → verification →
privacy amplification → key hand-off, one OpenTelemetry span per stage under one trace per block.

Every abort has a reason (``state.BLOCK_REASONS``):
* ``classical_channel`` — the authenticated channel was down during the block: nothing can be sifted;
* ``qber`` / ``low_counts`` / ``estimation`` — from the finite-key analysis (``qkdlink.protocols``);
* ``verification`` — error correction left residual errors: a rate-adaptive code is sized from the
  previous block's QBER (Martinez-Mateo et al., QIC 12, 791 (2012): the code rate follows the
  estimated QBER), so a QBER jump beyond the code's margin leaves the keys unequal and the
  verification hash (ε_cor) catches it.

The result is a deterministic function of the block, the link's nominal parameters and the previous
block's QBER, so ``qkdops replay`` reproduces it; only the key bytes (fresh random bytes standing for
the distilled key) and the latencies differ. Key bytes go to the key buffer (then the KMEs) and nowhere else: span
attributes, results and logs carry counts and bounds only.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from opentelemetry.trace import Span, Tracer

from qkdlink.protocols import get_protocol
from qkdlink.protocols.base import FINITE, KeyEstimate
from qkdops.runtime.blocks import Block

# A rate-adaptive code sized for QBER q corrects up to q · (1 + margin) + floor.
EC_MARGIN = 0.25
EC_FLOOR = 0.005


@dataclass(frozen=True)
class BlockResult:
    """What post-processing concluded about one block (no key material)."""

    link: str
    index: int
    reason: str                        # "none" when a key was produced
    sifted_bits: Mapping[str, int]     # basis → sifted bits
    sifted_errors: Mapping[str, int]   # basis → errors among them
    qber: float | None                 # key-basis QBER of the block
    y1_lower: float | None
    e1_upper: float | None
    secret_key_bits: int
    leak_ec_bits: float
    design_qber: float | None          # QBER the error-correction code was sized for

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BlockResult:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Processed:
    result: BlockResult
    key: bytes                         # the distilled key; empty when aborted
    stage_seconds: Mapping[str, float]


class PostProcessor:
    """Runs the stages for one link. ``deposit(index, key) -> outcome`` is the key hand-off."""

    def __init__(self, link: str, protocol: str, nominal: Mapping[str, float], tracer: Tracer) -> None:
        self.link, self.protocol_name = link, protocol
        self.protocol = get_protocol(protocol)
        self.nominal = dict(nominal)
        self.tracer = tracer

    def process(self, block: Block, previous_qber: float | None,
                deposit: Callable[[int, bytes], str] | None = None) -> tuple[Processed, str | None]:
        """Post-process ``block``; hand the key to ``deposit`` if given. Returns (processed, hand-off outcome)."""
        stages: dict[str, float] = {}
        attributes = {"qkd.link": self.link, "qkd.protocol": self.protocol_name, "qkd.block": block.index}
        with self.tracer.start_as_current_span("postprocess_block", attributes=attributes) as root:
            processed = self._stages(block, previous_qber, stages)
            outcome = None
            if deposit is not None and processed.key:
                started = time.perf_counter()
                with self.tracer.start_as_current_span("key_handoff") as span:
                    outcome = deposit(block.index, processed.key)
                    span.set_attribute("qkd.handoff_outcome", outcome)
                stages["key_handoff"] = time.perf_counter() - started
            root.set_attribute("qkd.reason", processed.result.reason)
            root.set_attribute("qkd.secret_key_bits", processed.result.secret_key_bits)
        return Processed(processed.result, processed.key, stages), outcome

    @contextmanager
    def _timed(self, name: str, stages: dict[str, float]) -> Iterator[Span]:
        """One span per stage; its duration also goes to the stage-latency histogram."""
        started = time.perf_counter()
        with self.tracer.start_as_current_span(name) as span:
            try:
                yield span
            finally:
                stages[name] = time.perf_counter() - started

    def _stages(self, block: Block, previous_qber: float | None, stages: dict[str, float]) -> Processed:
        counts = block.block_counts()
        with self._timed("sifting", stages) as span:
            sifted: dict[str, int] = {}
            errors: dict[str, int] = {}
            for (_, basis), (_, detected, wrong) in block.counts.items():
                sifted[basis] = sifted.get(basis, 0) + detected
                errors[basis] = errors.get(basis, 0) + wrong
            if not block.classical_channel_up:
                span.set_attribute("qkd.abort", "classical_channel")
                return self._abort(block, "classical_channel", {}, {}, None, previous_qber)
        with self._timed("estimation", stages) as span:
            estimate: KeyEstimate = self.protocol.estimate(counts, self.nominal, FINITE)
            span.set_attribute("qkd.qber", estimate.qber)
            if estimate.abort_reason is not None:
                span.set_attribute("qkd.abort", estimate.abort_reason)
                return self._abort(block, estimate.abort_reason, sifted, errors, estimate, previous_qber)
        with self._timed("error_correction", stages) as span:
            design = previous_qber if previous_qber is not None else estimate.qber
            leak = float(estimate.details.get("leak_ec_bits", 0.0))
            span.set_attribute("qkd.leak_ec_bits", leak)
            span.set_attribute("qkd.design_qber", design)
        with self._timed("verification", stages) as span:
            corrected = estimate.qber <= design * (1.0 + EC_MARGIN) + EC_FLOOR
            span.set_attribute("qkd.verified", corrected)
            if not corrected:
                return self._abort(block, "verification", sifted, errors, estimate, design, leak)
        with self._timed("privacy_amplification", stages) as span:
            key_bits = int(estimate.secret_key_bits or 0) // 8 * 8
            key = os.urandom(key_bits // 8)
            span.set_attribute("qkd.secret_key_bits", key_bits)
        result = BlockResult(self.link, block.index, "none", sifted, errors, estimate.qber, estimate.y1_lower,
                             estimate.e1_upper, key_bits, leak, design)
        return Processed(result, key, stages)

    def _abort(self, block: Block, reason: str, sifted: Mapping[str, int], errors: Mapping[str, int],
               estimate: KeyEstimate | None, design: float | None, leak: float = 0.0) -> Processed:
        result = BlockResult(
            self.link, block.index, reason, dict(sifted), dict(errors),
            estimate.qber if estimate else None, estimate.y1_lower if estimate else None,
            estimate.e1_upper if estimate else None, 0, leak, design)
        return Processed(result, b"", {})
