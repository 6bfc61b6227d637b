"""Post-processing on real bits: both ends' strings, Cascade, verification, PA, key confirmation, replay."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.trace import NoOpTracer
from kme_harness import kme_config

from qkdlink.emulator.sifted import sifted_strings
from qkdlink.physics.entropy import binary_entropy
from qkdops.config import PostProcessingSpec, load_config
from qkdops.runtime.blocks import Block
from qkdops.runtime.fleet import Fleet
from qkdops.runtime.pipeline import BlockResult, PostProcessor, replay_channel


# ---- the sifted strings -------------------------------------------------------------------------------

@pytest.mark.parametrize("n,errors", [(1, 0), (1, 1), (13, 5), (100_003, 2_417), (65_536, 40_000)])
def test_bobs_string_differs_from_alices_in_exactly_the_sampled_errors(n: int, errors: int):
    s = sifted_strings(7, n, errors)
    assert s.alice.dtype == np.uint8 and len(s.alice) == len(s.bob) == (n + 7) // 8
    assert int(np.unpackbits(s.alice ^ s.bob).sum()) == errors
    assert not np.unpackbits(s.alice)[n:].any() and not np.unpackbits(s.bob)[n:].any()   # padding stays zero


def test_sifted_strings_are_replayable_from_the_seed_and_differ_between_seeds():
    a, b = sifted_strings(11, 50_000, 900), sifted_strings(11, 50_000, 900)
    assert np.array_equal(a.alice, b.alice) and np.array_equal(a.bob, b.bob)
    c = sifted_strings(12, 50_000, 900)
    assert not np.array_equal(a.alice, c.alice)
    ones = np.unpackbits(a.alice).mean()
    assert 0.49 < ones < 0.51                                   # Alice's bits are uniform


def test_error_positions_are_uniform_over_the_string():
    positions = np.flatnonzero(np.unpackbits(sifted_strings(3, 1_000_000, 20_000).alice
                                              ^ sifted_strings(3, 1_000_000, 20_000).bob))
    counts, _ = np.histogram(positions, bins=10, range=(0, 1_000_000))
    assert counts.min() > 1_800 and counts.max() < 2_200       # 2,000 ± 4.5 σ per tenth


# ---- one block through the pipeline --------------------------------------------------------------------

def _fleet_block(tmp_path: Path, link: str = "bb84-a", frames: int = 2) -> tuple[Block, PostProcessor]:
    config = kme_config(tmp_path)
    fleet = Fleet(config)
    try:
        fleet.run_frames(frames)
        block = next(fleet.archive.blocks(link))
        r = fleet.links[link]
        return block, PostProcessor(link, r.spec.protocol, r.link.nominal, NoOpTracer(), r.spec.postprocessing)
    finally:
        fleet.stop()


def test_a_clean_block_gives_both_ends_the_same_key_from_their_own_bits(tmp_path: Path):
    block, processor = _fleet_block(tmp_path)
    processed, _ = processor.process(block, None)
    r = processed.result
    assert r.reason == "none" and r.engine == "bits" and r.secret_key_bits > 0
    assert processed.alice_key == processed.bob_key and 8 * len(processed.alice_key) == r.secret_key_bits
    assert r.key_sha256 == r.key_sha256_bob == hashlib.sha256(processed.alice_key).hexdigest()
    n, errors = processor.protocol.key_bits(block.block_counts())
    assert r.key_string_bits == n and r.ec_corrected_bits == errors           # Cascade found every sampled error
    assert r.leak_ec_bits >= n * binary_entropy(errors / n)                   # never below the Shannon limit
    assert 1.0 <= r.ec_efficiency < 1.5 and r.ec_frame_failures == 0
    assert r.ec_messages > 0 and r.ec_round_trips > 0 and r.channel_seconds > 0
    assert r.verification_tag_bits == 50                                      # ⌈log2(1/ε_cor)⌉, ε_cor = 1e-15
    # the key length is the finite-key formula with the measured leak, not the model's f·n·H2(E)
    estimate = processor.protocol.estimate(block.block_counts(), processor.nominal, "finite")
    assert r.secret_key_bits == int(estimate.details["key_budget_bits"] - r.leak_ec_bits) // 8 * 8
    # every stage ran and was timed; EC's time includes its round trips on the wire
    assert set(processed.stage_seconds) == {"sifting", "estimation", "error_correction", "verification",
                                            "privacy_amplification"}
    assert processed.stage_seconds["error_correction"] >= r.channel_seconds * 0.9
    assert processed.cpu_seconds["privacy_amplification"] > 0               # both ends' hashes, each on its thread


def test_a_blocks_latency_counts_its_time_on_the_classical_channels_wire(tmp_path: Path):
    # the wire time is emulated (added, not slept): qkd_postprocessing_duration_seconds must still carry it
    fleet = Fleet(kme_config(tmp_path))
    try:
        fleet.run_frames(6)
        wire = [BlockResult.from_json(fleet.archive.result("bb84-a", b.index)).channel_seconds
                for b in fleet.archive.blocks("bb84-a")]
        latency = {s.link: s for s in fleet.snapshots()}["bb84-a"].postprocessing_seconds
    finally:
        fleet.stop()
    assert latency.count == len(wire) >= 2 and min(wire) > 0
    assert latency.sum >= sum(wire)


def test_the_same_block_twice_gives_the_same_key_and_another_seed_another_key(tmp_path: Path):
    block, processor = _fleet_block(tmp_path)
    first, second = processor.process(block, None)[0], processor.process(block, None)[0]
    assert first.alice_key == second.alice_key and first.result == second.result
    other = processor.process(dataclasses.replace(block, seed=block.seed + 1), None)[0]
    assert other.result.reason == "none" and other.alice_key != first.alice_key


def test_reconciliation_fault_is_caught_by_verification_and_gives_no_key(tmp_path: Path):
    block, processor = _fleet_block(tmp_path)
    faulty = dataclasses.replace(block, postprocessing_faults={"reconciliation_fault": {"probability": 1.0, "residual_errors": 3}})
    processed, outcome = processor.process(faulty, None, deposit=lambda *a: pytest.fail("an unverified key was handed off"))
    assert processed.result.reason == "verification" and processed.alice_key == b"" and outcome is None
    assert processed.result.ec_frame_failures >= 1 and processed.result.secret_key_bits == 0


def test_without_verification_the_fault_gives_the_ends_different_keys(tmp_path: Path):
    block, processor = _fleet_block(tmp_path)
    unverified = PostProcessor(processor.link, processor.protocol_name, processor.nominal, NoOpTracer(),
                               PostProcessingSpec(verification=False))
    faulty = dataclasses.replace(block, postprocessing_faults={"reconciliation_fault": {"probability": 1.0, "residual_errors": 1}})
    processed, _ = unverified.process(faulty, None)
    assert processed.result.reason == "none" and processed.result.verification_tag_bits == 0
    assert processed.alice_key != processed.bob_key and processed.result.key_sha256 != processed.result.key_sha256_bob
    clean, _ = unverified.process(block, None)
    assert clean.alice_key == clean.bob_key


def test_a_fault_with_probability_zero_changes_nothing(tmp_path: Path):
    block, processor = _fleet_block(tmp_path)
    faulty = dataclasses.replace(block, postprocessing_faults={"reconciliation_fault": {"probability": 0.0, "residual_errors": 8}})
    assert processor.process(faulty, None)[0].alice_key == processor.process(block, None)[0].alice_key


def test_a_classical_channel_failing_mid_protocol_aborts_and_replays_at_the_same_message(tmp_path: Path):
    block, processor = _fleet_block(tmp_path)
    processed, _ = processor.process(block, None, channel_up=replay_channel(5))
    r = processed.result
    assert r.reason == "classical_channel" and r.channel_failed_after == 5 and processed.alice_key == b""
    assert r.sifted_bits                                  # sifted before the channel failed
    again, _ = processor.process(block, None, channel_up=replay_channel(r.channel_failed_after))
    assert again.result == r


def test_the_model_engine_charges_the_measured_cascade_efficiency(tmp_path: Path):
    block, processor = _fleet_block(tmp_path)
    model = PostProcessor(processor.link, processor.protocol_name, processor.nominal, NoOpTracer(), PostProcessingSpec(engine="model"))
    bits = processor.process(block, None)[0].result
    modelled = model.process(block, None)[0]
    assert modelled.result.engine == "model" and modelled.result.reason == "none" and modelled.result.ec_frames == 0
    # the model's leak uses the efficiency the bits engine measures: within 10 % of this block's
    assert modelled.result.leak_ec_bits == pytest.approx(bits.leak_ec_bits, rel=0.1)
    assert modelled.alice_key == modelled.bob_key and len(modelled.alice_key) * 8 == modelled.result.secret_key_bits


def _with(processor: PostProcessor, **settings) -> PostProcessor:
    return PostProcessor(processor.link, processor.protocol_name, processor.nominal, NoOpTracer(),
                         dataclasses.replace(processor.settings, **settings))


@pytest.fixture(scope="module")
def tf_block(tmp_path_factory: pytest.TempPathFactory) -> tuple[Block, PostProcessor]:
    """A twin-field block (≈ 1.2 Mbit of sifted key at QBER ≈ 2.3 %): LDPC decodes it in a few seconds."""
    return _fleet_block(tmp_path_factory.mktemp("tf"), link="tf-a", frames=20)


def test_ldpc_gives_both_ends_the_same_key_in_one_round_trip_per_blind_round(tf_block):
    block, processor = tf_block
    processed, _ = _with(processor, error_correction="ldpc").process(block, None)
    r = processed.result
    assert r.reason == "none" and r.ec_method == "ldpc" and processed.alice_key == processed.bob_key
    n, errors = processor.protocol.key_bits(block.block_counts())
    assert r.ec_corrected_bits == errors and r.ec_frames_discarded == 0 and r.ec_frame_failures == 0
    assert r.leak_ec_bits >= n * binary_entropy(errors / n) and r.ec_efficiency >= 1.0
    cascade = processor.process(block, None)[0].result
    assert 1 <= r.ec_round_trips <= 1 + 10 < cascade.ec_round_trips and r.channel_seconds < cascade.channel_seconds
    assert processed.cpu_seconds["error_correction"] > 0      # the decoder threads' CPU is the stage's


def test_ldpc_reconciliation_fault_is_caught_by_verification(tf_block):
    block, processor = tf_block
    faulty = dataclasses.replace(block, postprocessing_faults={"reconciliation_fault": {"probability": 1.0, "residual_errors": 2}})
    processed, _ = _with(processor, error_correction="ldpc").process(faulty, None)
    assert processed.result.reason == "verification" and processed.alice_key == b"" and processed.result.ec_frame_failures >= 1


def test_ldpc_channel_failing_mid_protocol_aborts_and_replays_at_the_same_message(tf_block):
    block, processor = tf_block
    ldpc = _with(processor, error_correction="ldpc")
    processed, _ = ldpc.process(block, None, channel_up=replay_channel(1))
    assert processed.result.reason == "classical_channel" and processed.result.channel_failed_after == 1
    assert ldpc.process(block, None, channel_up=replay_channel(1))[0].result == processed.result


def test_the_model_engine_charges_the_efficiency_ldpc_measured(tf_block):
    block, processor = tf_block
    bits = _with(processor, error_correction="ldpc").process(block, None)[0].result
    modelled = _with(processor, error_correction="ldpc", engine="model").process(block, None)[0].result
    cascade = _with(processor, engine="model").process(block, None)[0].result
    assert modelled.leak_ec_bits == pytest.approx(bits.leak_ec_bits, rel=0.15) and modelled.leak_ec_bits > cascade.leak_ec_bits


# ---- the fleet: hand-off with key confirmation, replay -------------------------------------------------

def _unverified_config(tmp_path: Path):
    path = kme_config(tmp_path).source
    text = path.read_text().replace("    seed: 1\n", "    seed: 1\n    postprocessing: {verification: false}\n", 1)
    path.write_text(text)
    return load_config(path)


def test_without_verification_a_mismatch_is_discarded_at_hand_off_and_never_stored(tmp_path: Path):
    config = _unverified_config(tmp_path)
    assert config.link("bb84-a").postprocessing.verification is False
    fleet = Fleet(config)
    try:
        fleet.run_frames(2)                                              # a clean block: handed off
        snap = {s.link: s for s in fleet.snapshots()}["bb84-a"]
        held = fleet.key_pool.level("a", "bb84-a").held_bytes
        assert held > 0 and snap.key_confirmation_failures_total == 0
        fleet.inject("bb84-a", "reconciliation_fault", {"probability": 1.0})
        fleet.run_frames(4)                                              # two blocks with residual errors
        snap = {s.link: s for s in fleet.snapshots()}["bb84-a"]
        assert snap.key_confirmation_failures_total == 2 and snap.blocks_total["none"] == 3
        assert fleet.key_pool.level("a", "bb84-a").held_bytes == held == fleet.key_pool.level("b", "bb84-a").held_bytes
        assert fleet.buffer.level_bits("bb84-a") == 0                     # discarded at both ends
        assert snap.handoffs_total["success"] == 1
    finally:
        fleet.stop()


@pytest.mark.slow  # replays a whole archive on the bits engine
def test_replay_reproduces_every_blocks_key_fingerprints(tmp_path: Path):
    config = kme_config(tmp_path)
    fleet = Fleet(config)
    try:
        fleet.run_frames(6)
        fleet.inject("bb84-a", "reconciliation_fault", {"probability": 1.0})
        fleet.run_frames(2)
    finally:
        fleet.stop()
    out = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "replay", "--config", str(config.source), "--link", "bb84-a",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["status"] for r in rows] == ["identical"] * 4
    assert [r["reason"] for r in rows] == ["none", "none", "none", "verification"]
    fingerprints = [r["key_sha256"] for r in rows[:3]]
    assert all(len(f) == 64 for f in fingerprints) and len(set(fingerprints)) == 3
    assert [r["recorded_key_sha256"] for r in rows[:3]] == fingerprints
