"""The fleet: every configured link stepping in real time, its blocks archived and post-processed.

One thread steps all links: each link advances one emulator frame (``runtime.frame_seconds``) per
frame of wall-clock time, sums frames into post-processing blocks and archives each block durably;
the same thread then hands buffered keys on to both ends' KME stores (``handoff.py``), where the
sites' ETSI 014 KMEs (``qkdops/kme``) serve them. At 1,000 links a frame costs well under a second
of CPU (docs/benchmarks.md), so one thread keeps up. Post-processing — real error correction and
privacy amplification on each block's bits, several seconds of CPU for a 10-s metro block — runs
in a small pool of worker threads (``POSTPROCESSING_WORKERS``), in block order per link, so device
telemetry never waits for it and a short-block link never waits behind a long one (NumPy's and
SciPy's FFT kernels release the GIL, so two workers use both cores); a block archived but not yet
post-processed when the process dies is post-processed at the next start.

Everything outside (control API, calibration jobs, game days) acts through ``Fleet``'s methods;
they take the link's lock, so they interleave safely with stepping.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from qkdlink.emulator import ActiveFault, ActiveFaults, CalibrationResult, Link
from qkdops.config import FleetConfig, LinkSpec
from qkdops.runtime.archive import BlockArchive
from qkdops.runtime.blocks import Block, BlockBuilder
from qkdops.runtime.faults import RUNTIME_FAULTS, fault_spec
from qkdops.kme.stats import KMEStats
from qkdops.kme.store import KeyPoolStore, open_key_pool
from qkdops.runtime.handoff import FAULT as HANDOFF_FAULT
from qkdops.runtime.handoff import HandoffQueue
from qkdops.runtime.keybuffer import KeyBuffer
from qkdops.runtime.memory import retain_freed_memory
from qkdops.runtime.pipeline import RECONCILIATION_FAULT, BlockResult, PostProcessor
from qkdops.runtime.state import CALIBRATION_ACTIONS, LinkObjectives, LinkSnapshot, LinkState
from qkdops.runtime.tracing import make_tracer

log = logging.getLogger("qkdops.fleet")
JITTER_SAMPLES_PER_FRAME = 64
MAX_CATCH_UP_FRAMES = 10  # after a stall, step at most this many frames per link per tick
POSTPROCESSING_WORKERS = 2  # post-processing threads (blocks of one link stay in order on one at a time)


class UnknownLink(KeyError):
    """No link with that id; ``str()`` names it and the known ids."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownAction(ValueError):
    """No calibration action with that name."""


class LinkRuntime:
    """One link: emulator, frame → block builder, post-processor and published state."""

    def __init__(self, spec: LinkSpec, frame_seconds: float, archive: BlockArchive, buffer: KeyBuffer,
                 processor_factory: Callable[[Link], PostProcessor], started_at: float,
                 buffered: Callable[[str, int], None], store_capacity_keys: int) -> None:
        self.spec = spec
        self.frame_pulses = max(1, round(frame_seconds * spec.repetition_rate_hz))
        self.frame_seconds = self.frame_pulses / spec.repetition_rate_hz
        self.archive, self.buffer, self.buffered = archive, buffer, buffered
        next_index = archive.next_index(spec.id)
        # A restart continues the block numbering; a new seed per restart keeps it from replaying
        # the counts of the blocks already archived.
        config = dataclasses.replace(spec.emulator_config(self.frame_pulses), seed=spec.seed * 1_000_003 + next_index)
        self.link = Link(config)
        self.runtime_faults = ActiveFaults(RUNTIME_FAULTS)  # faults the emulator does not model (faults.py)
        self.builder = BlockBuilder(spec.id, spec.protocol, max(1, round(spec.block_pulses / self.frame_pulses)), next_index)
        self.processor = processor_factory(self.link)
        self.lock = threading.RLock()
        self.started_at = started_at
        self.frames = 0
        self._jitter_rng = np.random.default_rng(config.seed + 1)
        intensities = sorted({k[0] for k in (c.key for c in self.link.protocol.pulse_classes(self.link.nominal))})
        bases = sorted({c.basis for c in self.link.protocol.pulse_classes(self.link.nominal)})
        sites = {"alice": spec.sites.alice, "bob": spec.sites.bob, "charlie": spec.sites.charlie or ""}
        objectives = LinkObjectives(
            block_seconds=self.builder.frames_per_block * self.frame_seconds, key_rate_target_bps=spec.key_rate_target_bps,
            qber_threshold=self.link.nominal["qber_abort_threshold"],
            nominal_dark_count_rate_hz=self.link.nominal["dark_count_probability"] * spec.repetition_rate_hz,
            nominal_channel_loss_db=-10.0 * math.log10(self.link.protocol.geometry(self.link.nominal).fiber_transmittance),
            model_ec_efficiency=self.link.nominal["ec_efficiency"])
        self.state = LinkState(spec.id, spec.protocol, sites, intensities, bases, buffer.capacity_bits,
                               store_capacity_keys, objectives, spec.qkdl_uuid)
        self.state.set_backlog_bits(buffer.level_bits(spec.id))
        self.last_result: BlockResult | None = None
        self.last_block_end: float | None = None
        self.previous_qber = previous_qber(archive, spec.id, next_index)
        self.channel_up = True   # the classical channel as of the last frame: post-processing's live view

    def frames_due(self, now: float) -> int:
        return int((now - self.started_at) / self.frame_seconds) - self.frames

    def step_frame(self) -> Block | None:
        """Advance the emulator one frame; return a block when the frame completes one."""
        with self.lock:
            record = self.link.step_frame()
            self.frames += 1
            start = self.started_at + (self.frames - 1) * self.frame_seconds
            end = start + self.frame_seconds
            t = record.telemetry
            decoy_pulses: dict[str, float] = {}
            decoy_detections: dict[str, float] = {}
            for (intensity, _), c in record.counts.classes.items():
                decoy_pulses[intensity] = decoy_pulses.get(intensity, 0.0) + c.sent
                decoy_detections[intensity] = decoy_detections.get(intensity, 0.0) + c.detected
            jitter = self._jitter_rng.normal(t.clock_offset_s, max(t.timing_jitter_s, 0.0), JITTER_SAMPLES_PER_FRAME)
            faults = (*record.active_faults, *self.runtime_faults.names())
            self.state.record_frame(t, faults, float(self.frame_pulses), float(record.detected_total),
                                    decoy_pulses, decoy_detections, jitter.tolist(), t.rng_apt_failures)
            self.channel_up = t.classical_channel_up
            in_force = {f.name: f.parameters for f in self.link.active_faults() if f.name == RECONCILIATION_FAULT}
            return self.builder.add(record, start, end, self.frame_pulses, in_force, faults)

    def inject(self, name: str, parameters: Mapping[str, float]) -> ActiveFault:
        """Put fault ``name`` (of the combined catalogue) in force: a runtime fault here, any other
        in the emulator. FaultError, nothing changed, for an unknown fault or a bad parameter."""
        with self.lock:
            if fault_spec(name).name in RUNTIME_FAULTS:
                return self.runtime_faults.inject(name, parameters, self.link.time_s)
            return self.link.inject(name, **parameters)

    def clear(self, name: str | None = None) -> tuple[str, ...]:
        """Clear fault ``name`` (None: every fault, the emulator's and the runtime's); the names cleared."""
        with self.lock:
            if name is None:
                return (*self.link.clear(), *self.runtime_faults.clear())
            if fault_spec(name).name in RUNTIME_FAULTS:
                return self.runtime_faults.clear(name)
            return self.link.clear(name)

    def active_faults(self) -> tuple[ActiveFault, ...]:
        """The faults in force: the emulator's, then the runtime's."""
        with self.lock:
            return (*self.link.active_faults(), *self.runtime_faults.active())

    def process(self, block: Block) -> BlockResult:
        """Archive ``block`` (durably), post-process it, hand off its key, record the result."""
        self.archive.append(block)
        return self.post_process(block)

    def post_process(self, block: Block, completed_at: float | None = None) -> BlockResult:
        """Post-process an archived block; ``completed_at`` (monotonic) starts its latency."""
        started = time.monotonic() if completed_at is None else completed_at
        processed, outcome = self.processor.process(
            block, self.previous_qber, lambda index, alice, bob: self.buffer.deposit(self.spec.id, index, alice, bob),
            channel_up=lambda: self.channel_up)
        result = processed.result
        self.archive.record_result(self.spec.id, block.index, result.to_json())
        # the classical channel's wire time is emulated, not slept: added, as a real link would wait for it
        self.state.record_block(result, block.end_timestamp, processed.stage_seconds, processed.cpu_seconds,
                                time.monotonic() - started + result.channel_seconds)
        if outcome == "buffer_full":
            self.state.record_handoff(outcome, None, self.buffer.level_bits(self.spec.id))
        elif outcome is not None:
            self.buffered(self.spec.id, block.index)
        if result.qber_for_next_block is not None:
            self.previous_qber = result.qber_for_next_block
        self.last_result, self.last_block_end = result, block.end_timestamp
        return result

    def recover(self) -> int:
        """Post-process archived blocks a crash left without a result; returns how many."""
        pending = self.archive.unprocessed(self.spec.id)
        for block in pending:
            self.post_process(block)
        return len(pending)


class DiscardedKeys:
    """Where a history run's keys go (``Fleet(deliver_keys=False)``): nowhere. The emulated past's keys
    were consumed in the past, so each is counted as handed off the moment it is distilled; its
    hand-off latency is the time this took (deposit → recorded), as measured, not assumed."""

    def __init__(self, capacity_bits: int) -> None:
        self.capacity_bits = capacity_bits
        self._deposited_at = time.perf_counter()

    def deposit(self, link: str, index: int, alice: bytes, bob: bytes) -> str:
        self._deposited_at = time.perf_counter()
        return "success"

    def latency_s(self) -> float:
        """Since the last deposit: the runtime records the hand-off right after depositing."""
        return time.perf_counter() - self._deposited_at

    def level_bits(self, link: str) -> int:
        return 0

    def close(self) -> None:
        """Nothing held."""


class Fleet:
    """All links of a ``FleetConfig``; real-time stepping in a background thread (``start``)."""

    def __init__(self, config: FleetConfig, clock: Callable[[], float] = time.time, span_exporter: Any = None,
                 key_store_refresh_s: float = 0.0, deliver_keys: bool = True, durable: bool = True) -> None:
        """``key_store_refresh_s`` > 0: the KMEs serve from the shared store in another process (a worker of
        a sharded fleet), so the published store figures are re-read at this period rather than only after
        this process's own hand-offs and KME calls. ``deliver_keys`` False (a history run, ``qkdops
        history``): keys go nowhere — no key buffer, KME store or hand-off queue is opened, and each
        distilled key counts as handed off at once and is dropped (``DiscardedKeys``). ``durable`` False
        (a history run): the block archive — and with ``deliver_keys`` the key buffer and KME store — are
        scratch (``open_durable(durable=False)``), serving their own run only."""
        retain_freed_memory()   # before this fleet starts any thread: block-sized buffers reused, not re-faulted
        self.config = config
        self.clock = clock
        rt = config.runtime
        self.archive = BlockArchive(rt.state_dir / "blocks.sqlite", durable=durable)
        self.kme_stats = KMEStats()  # requests of the sites' KMEs (qkdops/kme/server.py), published by the exporter
        delivery = config.key_delivery
        self.tracer, self._shutdown_tracer = make_tracer(rt.tracing, rt.otlp_endpoint, span_exporter)
        now = clock()
        self.buffer: KeyBuffer | DiscardedKeys
        self.key_pool: KeyPoolStore | None = None
        self.handoff: HandoffQueue | None = None
        if deliver_keys:
            self.buffer = KeyBuffer(rt.state_dir / "keys.sqlite", rt.key_store_capacity_bits, durable)
            self.key_pool = open_key_pool(config, durable)
            self.handoff = HandoffQueue(
                self.buffer, self.key_pool, {s.id: (s.sites.alice, s.sites.bob) for s in config.links},
                self._handoff_fault, self._record_handoff, delivery.handoff_timeout_s, self.tracer,
                clock, mismatch=lambda link_id: self.links[link_id].state.record_key_mismatch())
        else:
            self.buffer = DiscardedKeys(rt.key_store_capacity_bits)
        model_key: Callable[[int], bytes] = os.urandom if deliver_keys else bytes
        self.links: dict[str, LinkRuntime] = {
            spec.id: LinkRuntime(spec, rt.frame_seconds, self.archive, self.buffer,
                                 lambda link, s=spec: PostProcessor(s.id, s.protocol, link.nominal, self.tracer, s.postprocessing,
                                                                    model_key),
                                 now, self._buffered, delivery.max_key_count)
            for spec in config.links}
        for link_id in self.links:
            self.refresh_key_stores(link_id)
        for runtime in self.links.values():
            if (n := runtime.recover()):
                log.info("link %s: post-processed %d archived block(s) left by a previous run", runtime.spec.id, n)
        self._key_store_refresh_s = key_store_refresh_s
        self._key_stores_read_at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._postprocessing: _PostProcessingPool | None = None

    # ---- stepping -------------------------------------------------------------------------------
    def run_frames(self, frames: int = 1) -> list[BlockResult]:
        """Step every link ``frames`` frames now, regardless of the clock (tests, benchmarks)."""
        results = []
        for _ in range(frames):
            for runtime in self.links.values():
                if (block := runtime.step_frame()) is not None:
                    results.append(runtime.process(block))
            if self.handoff is not None:
                self.handoff.run_due(self.clock())
        return results

    def tick(self) -> None:
        """Step every link by the frames wall-clock time has made due; a finished block is archived
        and post-processed — by the post-processing thread once ``start`` runs, here otherwise."""
        now = self.clock()
        for runtime in self.links.values():
            for _ in range(min(runtime.frames_due(now), MAX_CATCH_UP_FRAMES)):
                if (block := runtime.step_frame()) is not None:
                    if self._postprocessing is None:
                        runtime.process(block)
                    else:
                        runtime.archive.append(block)
                        self._postprocessing.submit(runtime, block)
        if self.handoff is not None:
            self.handoff.run_due(self.clock())
        if self._key_store_refresh_s and now - self._key_stores_read_at >= self._key_store_refresh_s:
            self._key_stores_read_at = now
            for link_id in self.links:
                self.refresh_key_stores(link_id)

    def start(self, interval_s: float = 0.05) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.tick()
                except Exception:  # a bug must not silently stop every link: log and keep going
                    log.exception("fleet tick failed")

        self._postprocessing = _PostProcessingPool(POSTPROCESSING_WORKERS)
        self._thread = threading.Thread(target=loop, name="qkdops-fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._postprocessing is not None:   # finish the blocks in hand; queued ones are recovered at the next start
            self._postprocessing.stop(timeout_s=60)
        self._shutdown_tracer()
        self.archive.close()
        self.buffer.close()
        if self.key_pool is not None:
            self.key_pool.close()

    # ---- key delivery -------------------------------------------------------------------------------
    def _handoff_fault(self, link_id: str) -> Mapping[str, float] | None:
        r = self.links[link_id]
        with r.lock:
            fault = r.runtime_faults.get(HANDOFF_FAULT)
            return None if fault is None else fault.parameters

    def _buffered(self, link_id: str, index: int) -> None:
        """A block's key is in the buffer: queue its hand-off (or, keys discarded, count it done)."""
        if self.handoff is not None:
            self.handoff.buffered(link_id, index, self.clock())
        elif isinstance(self.buffer, DiscardedKeys):
            self.links[link_id].state.record_handoff("success", self.buffer.latency_s(), 0.0)

    def _record_handoff(self, link_id: str, outcome: str, latency_s: float | None) -> None:
        self.links[link_id].state.record_handoff(outcome, latency_s, self.buffer.level_bits(link_id))
        if outcome == "success":
            self.refresh_key_stores(link_id)

    def refresh_key_stores(self, link_id: str) -> None:
        """Publish what the link's two KME stores hold and have served (after a hand-off or a KME call)."""
        r = self.links[link_id]
        if self.key_pool is None:
            return
        key_bytes = self.config.key_delivery.key_size_bits // 8
        held = {site: self.key_pool.level(site, link_id).held_bytes // key_bytes for site in (r.spec.sites.alice, r.spec.sites.bob)}
        served = {key: float(n) for key, n in self.key_pool.served(link_id).items()}
        r.state.set_key_stores(held, served, float(self.key_pool.expired(link_id)), self.key_pool.tallies(link_id))

    # ---- reading ----------------------------------------------------------------------------------
    def runtime(self, link_id: str) -> LinkRuntime:
        if link_id not in self.links:
            raise UnknownLink(f"unknown link '{link_id}' (links: {', '.join(self.links)})")
        return self.links[link_id]

    def link_ids(self) -> list[tuple[str, str]]:
        """(link id, protocol) of every link, in configuration order."""
        return [(r.spec.id, r.spec.protocol) for r in self.links.values()]

    def snapshots(self) -> list[LinkSnapshot]:
        return [r.state.snapshot() for r in self.links.values()]

    def status(self, link_id: str) -> dict[str, Any]:
        """JSON-ready status of one link: configuration, devices, faults, last block, key delivery."""
        r = self.runtime(link_id)
        with r.lock:
            telemetry = r.link.telemetry()
            faults = _fault_list(r)
            emulated = r.link.time_s
        last = r.last_result
        return {
            "link": r.spec.id, "protocol": r.spec.protocol, "sites": dataclasses.asdict(r.spec.sites),
            "emulated_seconds": emulated, "frames": r.frames, "next_block": r.builder.next_index,
            "block_seconds": r.builder.frames_per_block * r.frame_seconds, "frame_seconds": r.frame_seconds,
            "telemetry": _jsonable({f.name: getattr(telemetry, f.name) for f in dataclasses.fields(telemetry)}), "active_faults": faults,
            "last_block": None if last is None else {
                "index": last.index, "end_timestamp": r.last_block_end, "reason": last.reason,
                "secret_key_bits": last.secret_key_bits,
                "qber": last.qber, "y1_lower": last.y1_lower, "e1_upper": last.e1_upper},
            "key_delivery": {
                "buffered_bits": self.buffer.level_bits(r.spec.id),
                "stores": {} if self.key_pool is None else {site: dataclasses.asdict(self.key_pool.level(site, r.spec.id))
                                                            for site in (r.spec.sites.alice, r.spec.sites.bob)}},
            "objectives": dataclasses.asdict(r.state.objectives) if r.state.objectives is not None else None,
        }

    def recent_blocks(self, link_id: str, last: int) -> dict[str, Any]:
        """The link's ``last`` archived blocks (counts per class, no truth, no key) and the nominal
        parameters their estimation uses: what a sliding-window decoy analysis needs."""
        r = self.runtime(link_id)
        next_index = self.archive.next_index(link_id)
        blocks = self.archive.blocks(link_id, first=max(0, next_index - last))
        return {
            "link": link_id, "protocol": r.spec.protocol, "nominal": dict(r.link.nominal),
            "repetition_rate_hz": r.spec.repetition_rate_hz,
            "blocks": [{"index": b.index, "start_timestamp": b.start_timestamp, "end_timestamp": b.end_timestamp,
                        "pulses": b.pulses, "classical_channel_up": b.classical_channel_up,
                        "counts": [{"intensity": i, "basis": basis, "sent": s, "detected": d, "errors": e}
                                   for (i, basis), (s, d, e) in sorted(b.counts.items())]}
                       for b in blocks],
        }

    # ---- acting -----------------------------------------------------------------------------------
    def inject(self, link_id: str, fault: str, parameters: Mapping[str, float]) -> dict[str, Any]:
        """Put ``fault`` in force on the link (FaultError for a bad name/parameter, link unchanged)."""
        r = self.runtime(link_id)
        with r.lock:
            active = r.inject(fault, parameters)
            in_force = _fault_list(r)
        log.info("link %s: fault %s injected %s", link_id, fault, dict(active.parameters))
        return {"link": link_id, "fault": active.name, "parameters": dict(active.parameters), "active_faults": in_force}

    def clear(self, link_id: str, fault: str | None = None) -> list[str]:
        r = self.runtime(link_id)
        cleared = list(r.clear(fault))
        log.info("link %s: cleared %s", link_id, cleared or "nothing")
        return cleared

    def act(self, link_id: str, action: str) -> CalibrationResult:
        """Run a calibration action (relock_phase, retune_intensities, …) and count its outcome."""
        if action not in CALIBRATION_ACTIONS:
            raise UnknownAction(f"unknown action '{action}' (actions: {', '.join(CALIBRATION_ACTIONS)})")
        r = self.runtime(link_id)
        with r.lock:
            result: CalibrationResult = getattr(r.link, action)()
        r.state.record_calibration(action, result.ok)
        log.info("link %s: %s -> %s (%s)", link_id, action, "ok" if result.ok else "failed", result.message)
        return result


class _PostProcessingPool:
    """Worker threads that post-process archived blocks: any link's blocks on any worker, but one
    block of a link at a time and in archive order (each block's EC is sized by the previous one's
    QBER, and the hand-off takes keys in block order)."""

    def __init__(self, workers: int) -> None:
        self._ready: queue.Queue[LinkRuntime | None] = queue.Queue()   # links with blocks waiting and no worker on them
        self._pending: dict[str, list[tuple[Block, float]]] = {}
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"qkdops-postprocess-{i}", daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, runtime: LinkRuntime, block: Block) -> None:
        with self._lock:
            self._pending.setdefault(runtime.spec.id, []).append((block, time.monotonic()))
            if runtime.spec.id not in self._busy:
                self._busy.add(runtime.spec.id)
                self._ready.put(runtime)

    def _work(self) -> None:
        while (runtime := self._ready.get()) is not None:
            link = runtime.spec.id
            while True:
                with self._lock:
                    if not self._pending.get(link):
                        self._busy.discard(link)
                        break
                    block, completed_at = self._pending[link].pop(0)
                try:
                    runtime.post_process(block, completed_at)
                except Exception:  # the block stays archived without a result: the next start retries it
                    log.exception("link %s: post-processing block %d failed", link, block.index)

    def stop(self, timeout_s: float) -> None:
        with self._lock:
            self._pending.clear()
        for _ in self._threads:
            self._ready.put(None)
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))


def previous_qber(archive: BlockArchive, link: str, index: int, lookback: int = 50) -> float | None:
    """QBER of the latest block before ``index`` that made key: what the error correction of block
    ``index`` is sized for (``BlockResult.qber_for_next_block``). Replay uses the same rule."""
    for earlier in range(index - 1, max(-1, index - 1 - lookback), -1):
        body = archive.result(link, earlier)
        if body is not None and (qber := BlockResult.from_json(body).qber_for_next_block) is not None:
            return qber
    return None


def _fault_list(runtime: LinkRuntime) -> list[dict[str, Any]]:
    return [{"name": f.name, "parameters": dict(f.parameters), "injected_at_s": f.injected_at_s}
            for f in runtime.active_faults()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):  # includes the read-only mappings of the telemetry
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value
