"""Post-processing of one block: sifting → estimation → error correction → verification →
privacy amplification → key hand-off, one OpenTelemetry span per stage under one trace per block.

With the ``bits`` engine (``postprocessing.engine`` of a link, the default) every stage after the
optics is the real computation on real bit strings, each end on its own:

* sifting — both ends' sifted key strings of the block (``qkdlink.emulator.sifted``: Alice's bits
  uniform, Bob's with exactly the block's sampled key-basis errors), from the block's seed;
* estimation — the finite-key decoy analysis of the block's counts (``qkdlink.protocols``): bounds
  on the single-photon counts and phase error, and the key-length budget before the EC leak;
* error correction — over the emulated classical channel, sized for the previous block's QBER, by the
  link's ``error_correction``: two-party Cascade (``qkdlink.postprocessing.cascade``; the leak λ_EC is
  the parities Alice disclosed, its thousand-odd round trips make it take time on a long wire) or
  one-way blind LDPC syndrome decoding (``qkdlink.postprocessing.ldpc``; λ_EC counts syndromes and
  revealed symbols, one round trip per blind round; frames that never decode are discarded: public
  zeros at both ends, counted as leak);
* verification — a Toeplitz hash tag of ⌈log2(1/ε_cor)⌉ bits of Alice's string, compared with Bob's
  (ε_cor-correctness: Tomamichel, Lim, Gisin, Renner, Nat. Commun. 3, 634 (2012)); a mismatch aborts;
* privacy amplification — Toeplitz hashing of each end's string to ℓ = ⌊budget − λ_EC⌋ bits (the
  finite-key formula with the measured leak), seed chosen by Alice and sent to Bob;
* key hand-off — both ends' keys to the key buffer, where the key confirmation compares them.

Every abort has a reason (``state.BLOCK_REASONS``): ``classical_channel`` (the authenticated channel
was down during the block or failed mid-protocol), ``qber`` / ``low_counts`` / ``estimation`` (the
finite-key analysis; ``estimation`` also when the measured leak leaves no key), ``verification``.

The ``model`` engine (for fleets too large to reconcile every link's bits) builds no strings: the
leak is f·n·H2(E) with the efficiency f the bits engine measured for Cascade at that QBER
(``qkdlink.postprocessing.efficiency``), and the key is random bytes given to both ends.

The result is a deterministic function of the block (its counts and seed), the link's nominal
parameters, its post-processing settings and the previous block's QBER, so ``qkdops replay``
reproduces it — key fingerprints (SHA-256) included for the bits engine. Key bytes go to the key
buffer (then the KMEs) and nowhere else: spans, results and logs carry counts, bounds and
fingerprints only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

import numpy as np
from opentelemetry.trace import Span, Tracer

from qkdlink.emulator.sifted import error_positions, sifted_strings
from qkdlink.physics.entropy import binary_entropy
from qkdlink.postprocessing import cascade, ldpc
from qkdlink.postprocessing.channel import ChannelDown, ClassicalChannel
from qkdlink.postprocessing.efficiency import measured_efficiency
from qkdlink.postprocessing.toeplitz import random_seed, seed_bits, toeplitz_hash
from qkdlink.protocols import get_protocol
from qkdlink.protocols.base import FINITE, BlockCounts, KeyEstimate, secret_key_length
from qkdops.config import PostProcessingSpec
from qkdops.runtime.blocks import Block

RECONCILIATION_FAULT = "reconciliation_fault"
Deposit = Callable[[int, bytes, bytes], str]   # (block index, Alice's key, Bob's key) → hand-off outcome


@dataclass(frozen=True)
class BlockResult:
    """What post-processing concluded about one block (no key material; fingerprints only)."""

    link: str
    index: int
    reason: str                        # "none" when a key was produced
    sifted_bits: Mapping[str, int]     # basis → sifted bits
    sifted_errors: Mapping[str, int]   # basis → errors among them
    qber: float | None                 # key-basis QBER of the block
    y1_lower: float | None
    e1_upper: float | None
    secret_key_bits: int
    leak_ec_bits: float                # λ_EC: parities disclosed (bits engine) or f·n·H2(E) (model)
    design_qber: float | None          # QBER the error correction was sized for
    engine: str = "model"              # results archived before the bits engine existed were the model's
    key_string_bits: int = 0           # n: the sifted key string entering EC and PA
    ec_corrected_bits: int = 0         # bits Bob flipped (the errors EC found)
    ec_messages: int = 0
    ec_round_trips: int = 0
    ec_frames: int = 0
    ec_frame_failures: int = 0         # frames left different from Alice's (emulator truth: ``cascade.failed_frames``)
    ec_efficiency: float | None = None  # f = λ_EC / (n·H2(E)), E = the QBER EC found
    channel_seconds: float = 0.0       # emulated time on the classical channel's wire
    verification_tag_bits: int = 0     # disclosed tag (covered by the ε_cor term of the key length)
    key_sha256: str | None = None      # fingerprint of Alice's key
    key_sha256_bob: str | None = None  # fingerprint of Bob's key (differs only if EC failed unverified)
    channel_failed_after: int | None = None  # messages the classical channel carried before it failed
    ec_frames_discarded: int = 0       # LDPC frames that never decoded: key bits made public zeros, counted as leak
    ec_method: str = "cascade"         # the link's error_correction when the block was processed

    @property
    def qber_for_next_block(self) -> float | None:
        """The QBER the next block's error correction is sized for: this block's, if it made key.
        An aborted block's QBER (a fibre cut's 1/2) says what went wrong, not what to expect next."""
        return self.qber if self.reason == "none" else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BlockResult:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Processed:
    result: BlockResult
    alice_key: bytes                   # each end's distilled key; empty when aborted
    bob_key: bytes
    stage_seconds: Mapping[str, float]  # wall time per stage, time on the classical channel's wire included
    cpu_seconds: Mapping[str, float] = field(default_factory=dict)


_BOB_END = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qkdops-bob-end")
"""Bob's privacy amplification runs here while Alice's runs on the block's own thread: the two ends
are two machines, and hashing both at once halves the stage's wall time on a multi-core host
(metro-bb84: ≈ 2 s of CPU per end per 10-s block, docs/benchmarks.md). Two workers, as many as
the post-processing pool has threads."""


def _hash_on_thread(bits: np.ndarray, n_in: int, n_out: int, seed: np.ndarray) -> tuple[bytes, float]:
    """``toeplitz_hash`` and the CPU seconds it took on this thread (added to the stage's CPU)."""
    started = time.thread_time()
    key = toeplitz_hash(bits, n_in, n_out, seed).tobytes()
    return key, time.thread_time() - started


@dataclass
class _Work:
    """What the stages of one block hand on to each other."""

    block: Block
    estimate: KeyEstimate | None = None
    design: float | None = None
    n: int = 0
    alice: np.ndarray | None = None
    bob: np.ndarray | None = None
    ec: cascade.CascadeResult | ldpc.LdpcResult | None = None
    frame_failures: int = 0
    frames_discarded: int = 0
    tag_bits: int = 0
    channel: ClassicalChannel | None = None
    failed_after: int | None = None


class Abort(Exception):
    """A stage ended the block: ``reason`` is its ``BLOCK_REASONS`` value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PostProcessor:
    """Runs the stages for one link."""

    def __init__(self, link: str, protocol: str, nominal: Mapping[str, float], tracer: Tracer,
                 settings: PostProcessingSpec | None = None, model_key: Callable[[int], bytes] = os.urandom) -> None:
        """``model_key(n)``: the model engine's n-byte key — random by default; a history run
        (``qkdops history``), whose keys are never delivered, passes zeros (``bytes``) and saves the
        random-number generation, most of a model block's cost."""
        self.link, self.protocol_name = link, protocol
        self.model_key = model_key
        self.protocol = get_protocol(protocol)
        self.nominal = dict(nominal)
        self.tracer = tracer
        self.settings = settings or PostProcessingSpec()

    @cached_property
    def expected_qber(self) -> float:
        """The key-basis QBER the nominal parameters predict: what a link's first block's EC is sized for."""
        n, e = self.protocol.key_bits(BlockCounts.expected(self.protocol.pulse_classes(self.nominal), 1e12))
        return e / n if n > 0 else 0.0

    def process(self, block: Block, previous_qber: float | None, deposit: Deposit | None = None,
                channel_up: Callable[[], bool] = lambda: True) -> tuple[Processed, str | None]:
        """Post-process ``block``; hand its keys to ``deposit`` if given. Returns (processed, hand-off outcome).

        ``channel_up()`` is asked before every message on the classical channel: the link's live
        state in the runtime, the recorded point of failure in a replay."""
        stages: dict[str, float] = {}
        cpu: dict[str, float] = {}
        attributes = {"qkd.link": self.link, "qkd.protocol": self.protocol_name, "qkd.block": block.index,
                      "qkd.engine": self.settings.engine}
        with self.tracer.start_as_current_span("postprocess_block", attributes=attributes) as root:
            processed = self._stages(block, previous_qber, stages, cpu, channel_up)
            outcome = None
            if deposit is not None and processed.alice_key:
                started = time.perf_counter()
                with self.tracer.start_as_current_span("key_handoff") as span:
                    outcome = deposit(block.index, processed.alice_key, processed.bob_key)
                    span.set_attribute("qkd.handoff_outcome", outcome)
                stages["key_handoff"] = time.perf_counter() - started
            root.set_attribute("qkd.reason", processed.result.reason)
            root.set_attribute("qkd.secret_key_bits", processed.result.secret_key_bits)
        return Processed(processed.result, processed.alice_key, processed.bob_key, stages, cpu), outcome

    # ---- stages ---------------------------------------------------------------------------------
    @contextmanager
    def _timed(self, name: str, stages: dict[str, float], cpu: dict[str, float], w: _Work) -> Iterator[Span]:
        """One span per stage; wall time (plus the stage's time on the channel's wire) and thread CPU time."""
        started, started_cpu = time.perf_counter(), time.thread_time()
        wire = w.channel.stats().emulated_seconds if w.channel is not None else 0.0
        with self.tracer.start_as_current_span(name) as span:
            try:
                yield span
            finally:
                wire = (w.channel.stats().emulated_seconds if w.channel is not None else 0.0) - wire
                stages[name] = time.perf_counter() - started + wire
                cpu[name] = time.thread_time() - started_cpu
                if wire:
                    span.set_attribute("qkd.channel_seconds", wire)

    def _stages(self, block: Block, previous_qber: float | None, stages: dict[str, float], cpu: dict[str, float],
                channel_up: Callable[[], bool]) -> Processed:
        counts = block.block_counts()
        sifted: dict[str, int] = {}
        errors: dict[str, int] = {}
        for (_, basis), (_, detected, wrong) in block.counts.items():
            sifted[basis] = sifted.get(basis, 0) + detected
            errors[basis] = errors.get(basis, 0) + wrong
        w = _Work(block)
        bits = self.settings.engine == "bits"
        try:
            with self._timed("sifting", stages, cpu, w) as span:
                if not block.classical_channel_up:
                    span.set_attribute("qkd.abort", "classical_channel")
                    raise Abort("classical_channel")
                w.n, key_errors = self.protocol.key_bits(counts)
                span.set_attribute("qkd.key_string_bits", w.n)
                if bits:
                    strings = sifted_strings(block.seed, w.n, key_errors)
                    w.alice, w.bob = strings.alice, strings.bob
            with self._timed("estimation", stages, cpu, w) as span:
                w.estimate = self.protocol.estimate(counts, self.nominal, FINITE)
                span.set_attribute("qkd.qber", w.estimate.qber)
                if w.estimate.abort_reason is not None:
                    span.set_attribute("qkd.abort", w.estimate.abort_reason)
                    raise Abort(w.estimate.abort_reason)
            w.design = previous_qber if previous_qber is not None else self.expected_qber
            if not bits:
                with self._timed("privacy_amplification", stages, cpu, w):
                    result, key = self._model(w, sifted, errors)
                return Processed(result, key, key, stages, cpu)
            rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(block.seed).spawn(4)]
            w.channel = ClassicalChannel(block.classical_latency_s, channel_up)
            with self._timed("error_correction", stages, cpu, w) as span:
                decoder_cpu = self._correct(w, rngs[0], rngs[1])
                span.set_attribute("qkd.leak_ec_bits", w.ec.disclosed_bits)
                span.set_attribute("qkd.design_qber", w.design)
                span.set_attribute("qkd.ec_round_trips", w.ec.round_trips)
                span.set_attribute("qkd.ec_method", self.settings.error_correction)
            cpu["error_correction"] += decoder_cpu
            if self.settings.verification:
                with self._timed("verification", stages, cpu, w) as span:
                    verified = self._verify(w, rngs[2])
                    span.set_attribute("qkd.verified", verified)
                    if not verified:
                        raise Abort("verification")
            with self._timed("privacy_amplification", stages, cpu, w) as span:
                ell = secret_key_length(w.estimate, w.ec.disclosed_bits) // 8 * 8
                span.set_attribute("qkd.secret_key_bits", ell)
                if ell <= 0:
                    span.set_attribute("qkd.abort", "estimation")
                    raise Abort("estimation")
                seed = random_seed(rngs[3], w.n, ell)   # Alice picks the seed and sends it to Bob
                seed = w.channel.send("alice", seed, bits=seed_bits(w.n, ell))
                at_bob = _BOB_END.submit(_hash_on_thread, w.ec.corrected, w.n, ell, seed)
                alice_key = toeplitz_hash(w.alice, w.n, ell, seed).tobytes()
                bob_key, bob_cpu = at_bob.result()
            cpu["privacy_amplification"] += bob_cpu
        except Abort as stop:
            return Processed(self._aborted(w, stop.reason, sifted, errors), b"", b"", stages, cpu)
        except ChannelDown:
            return Processed(self._aborted(w, "classical_channel", sifted, errors), b"", b"", stages, cpu)
        result = self._result(w, "none", sifted, errors, ell, hashlib.sha256(alice_key).hexdigest(),
                              hashlib.sha256(bob_key).hexdigest())
        return Processed(result, alice_key, bob_key, stages, cpu)

    def _correct(self, w: _Work, ec_rng: np.random.Generator, fault_rng: np.random.Generator) -> float:
        """The link's error correction between the two ends, then the reconciliation fault (an EC bug) if it is in
        force. Returns CPU seconds spent on other threads (the LDPC decoder's), to add to the stage's."""
        assert w.alice is not None and w.bob is not None and w.channel is not None and w.design is not None
        seed = int(ec_rng.integers(2 ** 63))
        elsewhere = 0.0
        if self.settings.error_correction == "ldpc":
            result = ldpc.reconcile(w.alice, w.bob, w.n, w.design, seed, w.channel)
            w.alice = result.alice   # discarded frames are public zeros at Alice's end too
            w.frames_discarded, elsewhere = result.dropped_frames, result.decoder_cpu_seconds
            w.ec = result
        else:
            w.ec = cascade.reconcile(w.alice, w.bob, w.n, w.design, seed, w.channel)
        fault = w.block.postprocessing_faults.get(RECONCILIATION_FAULT)
        if fault is not None and w.n > 0 and fault_rng.random() < fault["probability"]:
            wrong = np.zeros(w.n, dtype=bool)
            wrong[error_positions(fault_rng, w.n, min(int(fault["residual_errors"]), w.n))] = True
            w.ec = replace(w.ec, corrected=w.ec.corrected ^ np.packbits(wrong))
        w.frame_failures = cascade.failed_frames(w.alice, w.ec.corrected, w.n, w.ec.frame_key_bits)
        return elsewhere

    def _verify(self, w: _Work, rng: np.random.Generator) -> bool:
        """Alice sends a Toeplitz tag of her string (and its seed); Bob compares his own."""
        assert w.channel is not None and w.ec is not None and w.estimate is not None
        w.tag_bits = max(1, math.ceil(math.log2(1.0 / self.nominal["epsilon_cor"])))
        seed = w.channel.send("alice", random_seed(rng, w.n, w.tag_bits), bits=seed_bits(w.n, w.tag_bits))
        tag = w.channel.send("alice", toeplitz_hash(w.alice, w.n, w.tag_bits, seed), bits=w.tag_bits)
        return bool(np.array_equal(tag, toeplitz_hash(w.ec.corrected, w.n, w.tag_bits, seed)))

    def _model(self, w: _Work, sifted: Mapping[str, int], errors: Mapping[str, int]) -> tuple[BlockResult, bytes]:
        """The model engine: leak from the efficiency the link's EC method measured, random key at both ends."""
        assert w.estimate is not None
        f = measured_efficiency(self.settings.error_correction, w.estimate.qber, w.n)
        leak = f * w.n * binary_entropy(w.estimate.qber)
        ell = secret_key_length(w.estimate, leak) // 8 * 8
        if ell <= 0:
            return self._aborted(w, "estimation", sifted, errors, leak), b""
        return self._result(w, "none", sifted, errors, ell, leak=leak), self.model_key(ell // 8)

    # ---- results --------------------------------------------------------------------------------
    def _result(self, w: _Work, reason: str, sifted: Mapping[str, int], errors: Mapping[str, int], ell: int,
                alice_sha: str | None = None, bob_sha: str | None = None, leak: float | None = None) -> BlockResult:
        e = w.estimate
        ec = w.ec
        stats = w.channel.stats() if w.channel is not None else None
        efficiency = None
        if ec is not None and ec.flipped_bits > 0:
            efficiency = ec.disclosed_bits / (w.n * binary_entropy(ec.flipped_bits / w.n))
        return BlockResult(
            self.link, w.block.index, reason, dict(sifted), dict(errors), e.qber if e else None,
            e.y1_lower if e else None, e.e1_upper if e else None, ell,
            float(ec.disclosed_bits) if ec is not None else (leak or 0.0), w.design, self.settings.engine, w.n,
            ec.flipped_bits if ec else 0, stats.messages if stats else 0, stats.round_trips if stats else 0,
            ec.frames if ec else 0, w.frame_failures, efficiency, stats.emulated_seconds if stats else 0.0,
            w.tag_bits, alice_sha, bob_sha, w.failed_after, ec_frames_discarded=w.frames_discarded,
            ec_method=self.settings.error_correction)

    def _aborted(self, w: _Work, reason: str, sifted: Mapping[str, int], errors: Mapping[str, int],
                 leak: float | None = None) -> BlockResult:
        if reason == "classical_channel":
            if w.channel is None:
                sifted, errors = {}, {}   # nothing was sifted: the channel was down for the whole block
            else:
                w.failed_after = w.channel.stats().messages
        return self._result(w, reason, sifted, errors, 0, leak=leak)


def replay_channel(failed_after: int | None) -> Callable[[], bool]:
    """A ``channel_up`` that fails where the recorded run's channel failed: after that many messages."""
    carried = 0

    def up() -> bool:
        nonlocal carried
        carried += 1
        return failed_after is None or carried <= failed_after
    return up
