"""What the exporters publish: per-link counters, gauges and histograms, updated by the runtime.

The runtime writes (``LinkState.record_*``) under the state's lock; exporters read consistent,
immutable ``LinkSnapshot``s. Counters only grow (they restart from zero with the process, which
Prometheus ``rate()`` handles). Nothing here holds key material: counts, rates, bounds, device
readings and latencies only.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from qkdlink.emulator import DeviceTelemetry
from qkdlink.physics.entropy import binary_entropy
from qkdops.histogram import Histogram, HistogramSnapshot
from qkdops.runtime.pipeline import BlockResult

# Abort reasons (closed set; `none` for a successful block) and key hand-off outcomes.
BLOCK_REASONS = ("none", "qber", "low_counts", "estimation", "verification", "classical_channel")
# Hand-off outcomes: ``success`` (both ends' KMEs hold the block's key); the KME refused it
# (``kme_unavailable``), did not answer within the hand-off timeout (``kme_timeout``) or had no room
# (``store_full``) — the key waits in the link's buffer and is retried; ``buffer_full``: the buffer
# itself was full, so a freshly distilled key was discarded (the only outcome that loses key).
HANDOFF_OUTCOMES = ("success", "kme_unavailable", "kme_timeout", "store_full", "buffer_full")
# the calls that serve keys → their API: ETSI GS QKD 014 (enc_keys to the master, dec_keys to the slave)
# and SKIP (key to the initiator, key_by_id to the responder)
KME_CALLS = {"enc_keys": "etsi014", "dec_keys": "etsi014", "key": "skip", "key_by_id": "skip"}
STAGES = ("sifting", "estimation", "error_correction", "verification", "privacy_amplification", "key_handoff")
CALIBRATION_ACTIONS = ("relock_phase", "retune_intensities", "realign_polarization", "regate_detectors")

# Bucket bounds (seconds). Stage latencies: decades from 10 µs to 1 s (six stages × buckets is most of
# a link's samples, so decades keep a 1,000-link scrape cheap); hand-off: 100 µs … 1 s; detector
# timing jitter: |arrival − gate centre| from 5 ps to 1 ns. Hand-off: distilled → held by both KMEs,
# milliseconds when healthy, up to minutes while a KME is down (1 s is the latency SLO's threshold).
STAGE_BUCKETS = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)
HANDOFF_BUCKETS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
JITTER_BUCKETS = (5e-12, 1e-11, 2e-11, 5e-11, 1e-10, 2e-10, 5e-10, 1e-9)
# Post-processing latency of a block (complete → key buffered, queueing and time on the classical
# channel's wire included): M8's real-time target is 1 s, so resolve around it.
LATENCY_BUCKETS = (0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Stages that run on the link's CPU (key_handoff is the buffer's disk write, timed as a stage only).
CPU_STAGES = STAGES[:-1]


@dataclass(frozen=True)
class LinkObjectives:
    """A link's configured targets and nominal values, published so rules can compare against them
    per link (kube-state-metrics style) instead of hard-coding one threshold for every link."""

    block_seconds: float                  # post-processing block length
    key_rate_target_bps: float            # secret-key rate the availability SLO asks for
    qber_threshold: float                 # key-basis QBER above which a block aborts
    nominal_dark_count_rate_hz: float     # dark-count rate of a healthy detector (p_dc × gate rate)
    nominal_channel_loss_db: float        # design loss of the quantum channel (fibre length × attenuation)
    model_ec_efficiency: float = 1.16     # f the finite-key model assumes (the link's ec_efficiency parameter)


@dataclass(frozen=True)
class LinkSnapshot:
    """One link's published state at one instant."""

    link: str
    protocol: str
    sites: Mapping[str, str]
    telemetry: DeviceTelemetry | None
    active_faults: tuple[str, ...]
    objectives: LinkObjectives | None
    # counters (since process start)
    pulses_total: float
    detections_total: float
    decoy_pulses_total: Mapping[str, float]       # intensity → pulses sent (sifted classes)
    decoy_detections_total: Mapping[str, float]   # intensity → detections (sifted classes)
    sifted_bits_total: Mapping[str, float]        # basis → sifted bits
    sifted_bit_errors_total: Mapping[str, float]  # basis → errors among them
    secret_key_bits_total: float
    ec_leak_bits_total: float
    ec_shannon_limit_bits_total: float            # n·H2(E) of the reconciled blocks (E: the QBER EC found)
    ec_messages_total: float
    ec_round_trips_total: float
    ec_frames_total: float
    ec_frame_failures_total: float
    ec_frames_discarded_total: float              # LDPC frames that never decoded (key bits made public, counted as leak)
    pa_input_bits_total: float                    # sifted key bits hashed into key (output: secret_key_bits_total)
    key_confirmation_failures_total: float        # blocks whose two ends' keys differed at hand-off (discarded)
    cpu_seconds_total: Mapping[str, float]        # stage → thread CPU seconds
    blocks_total: Mapping[str, float]             # reason (BLOCK_REASONS) → blocks
    handoffs_total: Mapping[str, float]           # outcome → hand-offs
    calibrations_total: Mapping[tuple[str, str], float]  # (action, outcome ok|failed) → actions
    rng_health_failures_total: float
    # last post-processed block
    last_block_index: int | None
    last_block_end_timestamp_seconds: float | None
    last_success_timestamp_seconds: float | None
    y1_lower: float | None
    e1_upper: float | None
    block_qber: float | None
    ec_efficiency: float | None                   # measured f of the last reconciled block
    # key delivery: the link's buffer of distilled key awaiting hand-off, and its ends' KME stores
    handoff_backlog_bits: float
    handoff_buffer_capacity_bits: float
    key_store_keys: Mapping[str, float]                  # site → keys (of the default size) held
    key_store_capacity_keys: float                       # max_key_count of each end
    keys_served_total: Mapping[tuple[str, str], float]   # (SAE, call) → keys served to it
    keys_expired_total: float                            # keys issued but never fetched within the TTL
    key_store_bytes_total: Mapping[str, float]           # accepted | discarded | issued → bytes per end (KeyPoolStore.tallies)
    # histograms
    stage_seconds: Mapping[str, HistogramSnapshot]
    postprocessing_seconds: HistogramSnapshot
    handoff_seconds: HistogramSnapshot
    timing_jitter_seconds: HistogramSnapshot
    qkdl_id: str = ""                                    # ETSI GS QKD 015 key association link id (LinkSpec.qkdl_uuid)


@dataclass
class LinkState:
    """Mutable state of one link; every method takes the lock, so any thread may call it."""

    link: str
    protocol: str
    sites: Mapping[str, str]
    intensities: Sequence[str]
    bases: Sequence[str]
    handoff_buffer_capacity_bits: float
    key_store_capacity_keys: float = 0.0
    objectives: LinkObjectives | None = None
    qkdl_id: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._telemetry: DeviceTelemetry | None = None
        self._faults: tuple[str, ...] = ()
        self._pulses = self._detections = self._key_bits = self._leak = self._rng_failures = 0.0
        self._shannon = self._ec_messages = self._ec_round_trips = self._ec_frames = self._ec_frame_failures = 0.0
        self._ec_discarded = 0.0
        self._pa_in = self._mismatches = 0.0
        self._cpu = dict.fromkeys(CPU_STAGES, 0.0)
        self._efficiency: float | None = None
        self._latency = Histogram(LATENCY_BUCKETS)
        self._decoy_pulses = dict.fromkeys(self.intensities, 0.0)
        self._decoy_detections = dict.fromkeys(self.intensities, 0.0)
        self._sifted = dict.fromkeys(self.bases, 0.0)
        self._sifted_errors = dict.fromkeys(self.bases, 0.0)
        self._blocks = dict.fromkeys(BLOCK_REASONS, 0.0)
        self._handoffs = dict.fromkeys(HANDOFF_OUTCOMES, 0.0)
        self._calibrations = {(a, o): 0.0 for a in CALIBRATION_ACTIONS for o in ("ok", "failed")}
        self._last_index: int | None = None
        self._last_end: float | None = None
        self._last_success: float | None = None
        self._y1: float | None = None
        self._e1: float | None = None
        self._qber: float | None = None
        self._backlog_bits = 0.0
        self._store_keys = {site: 0.0 for role, site in self.sites.items() if role in ("alice", "bob")}
        self._served: dict[tuple[str, str], float] = {}
        self._expired = 0.0
        self._store_bytes: dict[str, float] = {}
        self._stages = {s: Histogram(STAGE_BUCKETS) for s in STAGES}
        self._handoff = Histogram(HANDOFF_BUCKETS)
        self._jitter = Histogram(JITTER_BUCKETS)

    def record_frame(self, telemetry: DeviceTelemetry, faults: Sequence[str], pulses: float, detections: float,
                     decoy_pulses: Mapping[str, float], decoy_detections: Mapping[str, float],
                     jitter_samples: Sequence[float], rng_failures: int) -> None:
        """A frame of the emulated link: device readings and its raw counts."""
        with self._lock:
            self._telemetry = telemetry
            self._faults = tuple(faults)
            self._pulses += pulses
            self._detections += detections
            for k, v in decoy_pulses.items():
                self._decoy_pulses[k] = self._decoy_pulses.get(k, 0.0) + v
            for k, v in decoy_detections.items():
                self._decoy_detections[k] = self._decoy_detections.get(k, 0.0) + v
            for sample in jitter_samples:
                self._jitter.observe(abs(sample))
            self._rng_failures += rng_failures

    def record_block(self, r: BlockResult, end_timestamp: float, stage_seconds: Mapping[str, float],
                     cpu_seconds: Mapping[str, float] | None = None, latency_s: float | None = None) -> None:
        """A post-processed block: outcome, sifted counts, key, bounds, what error correction,
        verification and privacy amplification did, stage latencies and CPU, and ``latency_s``
        (block complete → key buffered)."""
        if r.reason not in BLOCK_REASONS:
            raise ValueError(f"unknown block reason {r.reason!r}")
        with self._lock:
            self._blocks[r.reason] += 1
            for b, v in r.sifted_bits.items():
                self._sifted[b] = self._sifted.get(b, 0.0) + v
            for b, v in r.sifted_errors.items():
                self._sifted_errors[b] = self._sifted_errors.get(b, 0.0) + v
            self._key_bits += r.secret_key_bits
            self._leak += r.leak_ec_bits
            if r.ec_frames:   # the bits engine reconciled this block
                if r.ec_corrected_bits:
                    self._shannon += r.key_string_bits * binary_entropy(r.ec_corrected_bits / r.key_string_bits)
                self._ec_messages += r.ec_messages
                self._ec_round_trips += r.ec_round_trips
                self._ec_frames += r.ec_frames
                self._ec_frame_failures += r.ec_frame_failures
                self._ec_discarded += r.ec_frames_discarded
                self._efficiency = r.ec_efficiency if r.ec_efficiency is not None else self._efficiency
            if r.reason == "none":
                self._pa_in += r.key_string_bits
            self._last_index, self._last_end = r.index, end_timestamp
            if r.reason == "none":
                self._last_success = end_timestamp
            self._y1, self._e1, self._qber = r.y1_lower, r.e1_upper, r.qber
            for stage, seconds in stage_seconds.items():
                self._stages[stage].observe(seconds)
            for stage, seconds in (cpu_seconds or {}).items():
                if stage in self._cpu:
                    self._cpu[stage] += seconds
            if latency_s is not None:
                self._latency.observe(latency_s)

    def record_key_mismatch(self) -> None:
        """A block's two keys failed the key confirmation at hand-off and were discarded."""
        with self._lock:
            self._mismatches += 1

    def record_handoff(self, outcome: str, latency_s: float | None, backlog_bits: float) -> None:
        """One hand-off attempt; ``latency_s`` (distilled → held by both KMEs) for a success."""
        if outcome not in HANDOFF_OUTCOMES:
            raise ValueError(f"unknown hand-off outcome {outcome!r}")
        with self._lock:
            self._handoffs[outcome] += 1
            if latency_s is not None:
                self._handoff.observe(latency_s)
            self._backlog_bits = backlog_bits

    def record_calibration(self, action: str, ok: bool) -> None:
        with self._lock:
            self._calibrations[(action, "ok" if ok else "failed")] += 1

    def set_backlog_bits(self, bits: float) -> None:
        with self._lock:
            self._backlog_bits = bits

    def set_key_stores(self, keys_by_site: Mapping[str, float], served: Mapping[tuple[str, str], float],
                       expired: float = 0.0, store_bytes: Mapping[str, int] | None = None) -> None:
        """What the ends' KMEs hold for this link, have served and let expire, and their byte tallies
        (accepted at hand-off, discarded as surplus, issued) — read from the KME store."""
        with self._lock:
            self._store_keys.update(keys_by_site)
            self._served = dict(served)
            self._expired = expired
            self._store_bytes = {kind: float(n) for kind, n in (store_bytes or {}).items()}

    def snapshot(self) -> LinkSnapshot:
        with self._lock:
            return LinkSnapshot(
                link=self.link, protocol=self.protocol, sites=dict(self.sites), qkdl_id=self.qkdl_id, telemetry=self._telemetry,
                active_faults=self._faults, objectives=self.objectives, pulses_total=self._pulses, detections_total=self._detections,
                decoy_pulses_total=dict(self._decoy_pulses), decoy_detections_total=dict(self._decoy_detections),
                sifted_bits_total=dict(self._sifted), sifted_bit_errors_total=dict(self._sifted_errors),
                secret_key_bits_total=self._key_bits, ec_leak_bits_total=self._leak,
                ec_shannon_limit_bits_total=self._shannon, ec_messages_total=self._ec_messages,
                ec_round_trips_total=self._ec_round_trips, ec_frames_total=self._ec_frames,
                ec_frame_failures_total=self._ec_frame_failures, ec_frames_discarded_total=self._ec_discarded,
                pa_input_bits_total=self._pa_in,
                key_confirmation_failures_total=self._mismatches,
                cpu_seconds_total=dict(self._cpu), ec_efficiency=self._efficiency,
                blocks_total=dict(self._blocks), handoffs_total=dict(self._handoffs),
                calibrations_total=dict(self._calibrations), rng_health_failures_total=self._rng_failures,
                last_block_index=self._last_index, last_block_end_timestamp_seconds=self._last_end,
                last_success_timestamp_seconds=self._last_success, y1_lower=self._y1, e1_upper=self._e1,
                block_qber=self._qber, handoff_backlog_bits=self._backlog_bits,
                handoff_buffer_capacity_bits=self.handoff_buffer_capacity_bits, key_store_keys=dict(self._store_keys),
                key_store_capacity_keys=self.key_store_capacity_keys, keys_served_total=dict(self._served), keys_expired_total=self._expired,
                key_store_bytes_total=dict(self._store_bytes),
                stage_seconds={s: h.snapshot() for s, h in self._stages.items()},
                postprocessing_seconds=self._latency.snapshot(),
                handoff_seconds=self._handoff.snapshot(), timing_jitter_seconds=self._jitter.snapshot(),
            )
