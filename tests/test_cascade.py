"""Two-party Cascade (qkdlink.postprocessing.cascade) over the emulated classical channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qkdlink.physics.entropy import binary_entropy
from qkdlink.postprocessing.cascade import CascadeResult, block_sizes, frame_size, reconcile
from qkdlink.postprocessing.efficiency import CASCADE as MEASURED, measure, measured_efficiency
from qkdlink.postprocessing.channel import ChannelDown, ClassicalChannel

ROOT = Path(__file__).resolve().parent.parent


def keys(n: int, qber: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Alice's random bits and Bob's copy with i.i.d. errors (unpacked), and the number of errors."""
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    errors = (rng.random(n) < qber).astype(np.uint8)
    return alice, alice ^ errors, int(errors.sum())


def run(alice: np.ndarray, bob: np.ndarray, qber: float, seed: int = 3, channel: ClassicalChannel | None = None,
        **kwargs: int) -> CascadeResult:
    return reconcile(np.packbits(alice), np.packbits(bob), alice.size, qber, seed, channel or ClassicalChannel(), **kwargs)


@pytest.mark.parametrize(("n", "qber"), [(200_003, 0.01), (200_003, 0.02), (131_077, 0.05), (70_001, 0.11)])
def test_bob_ends_with_alices_bits(n: int, qber: float) -> None:
    alice, bob, errors = keys(n, qber, seed=n)
    assert errors > 0
    result = run(alice, bob, qber)
    assert np.array_equal(result.corrected, np.packbits(alice))  # bit for bit, pad bits zero
    assert result.flipped_bits == errors
    assert result.disclosed_bits >= n * binary_entropy(errors / n)  # never below the Shannon limit
    assert result.frames == -(-n // 65536)
    assert result.messages > 0 and result.round_trips > 0


def test_efficiency_at_two_percent_on_a_million_bits() -> None:
    n = 1 << 20
    alice, bob, errors = keys(n, 0.02, seed=11)
    result = run(alice, bob, 0.02)
    assert np.array_equal(result.corrected, np.packbits(alice))
    f = result.disclosed_bits / (n * binary_entropy(errors / n))
    assert 1.0 < f <= 1.15


@pytest.mark.parametrize("qber_estimate", [0.0, 0.02])
def test_no_errors(qber_estimate: float) -> None:
    alice, _, _ = keys(100_000, 0.0)
    result = run(alice, alice.copy(), qber_estimate)
    assert np.array_equal(result.corrected, np.packbits(alice))
    assert result.flipped_bits == 0
    # only block parities are disclosed; with estimate 0 the blocks are half frames except the third pass's 4096 bits,
    # and after the first pass each frame's last block parity is inferred, not sent
    if qber_estimate == 0.0:
        assert result.disclosed_bits == 2 * (2 + 1 + 15 + 11)
    assert 0 < result.disclosed_bits < 0.05 * 100_000


def test_estimate_zero_still_corrects_errors() -> None:
    alice, bob, errors = keys(50_000, 0.01, seed=5)
    result = run(alice, bob, 0.0)
    assert np.array_equal(result.corrected, np.packbits(alice))
    assert result.flipped_bits == errors


@pytest.mark.parametrize("n", [1, 7, 13, 1000, 1001, 4099])
def test_tiny_keys(n: int) -> None:
    alice, bob, errors = keys(n, 0.05, seed=n)
    bob[n // 2] ^= 1  # at least one error
    result = run(alice, bob, 0.05)
    assert np.array_equal(result.corrected, np.packbits(alice))
    assert result.frames == 1
    assert result.corrected.size == (n + 7) // 8


def test_small_frames_and_a_ragged_last_frame() -> None:
    alice, bob, _ = keys(10_000, 0.03, seed=2)
    result = run(alice, bob, 0.03, frame_bits=2048)
    assert result.frames == 5
    assert np.array_equal(result.corrected, np.packbits(alice))


def test_deterministic_for_a_seed() -> None:
    alice, bob, _ = keys(150_000, 0.03, seed=9)
    first, second = run(alice, bob, 0.03, seed=42), run(alice, bob, 0.03, seed=42)
    assert np.array_equal(first.corrected, second.corrected)
    assert (first.disclosed_bits, first.messages, first.round_trips) == (second.disclosed_bits, second.messages, second.round_trips)
    other = run(alice, bob, 0.03, seed=43)  # other shuffles: another transcript
    assert np.array_equal(other.corrected, np.packbits(alice))
    assert (other.disclosed_bits, other.messages) != (first.disclosed_bits, first.messages)


class RecordingChannel(ClassicalChannel):
    """Keeps what each party sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[str, list[np.ndarray]] = {"alice": [], "bob": []}

    def send(self, sender: str, payload: np.ndarray | bytes, *, bits: int | None = None) -> np.ndarray | bytes:
        self.sent[sender].append(np.array(payload, copy=True))
        return super().send(sender, payload, bits=bits)


def test_bobs_messages_depend_on_the_error_pattern_only() -> None:
    """Bob's key never crosses: masking both keys with the same random string (same errors, other keys) leaves every
    message Bob sends unchanged, while Alice's parities change."""
    alice, bob, _ = keys(100_000, 0.03, seed=4)
    mask = np.random.default_rng(99).integers(0, 2, alice.size, dtype=np.uint8)
    plain, masked = RecordingChannel(), RecordingChannel()
    run(alice, bob, 0.03, channel=plain)
    run(alice ^ mask, bob ^ mask, 0.03, channel=masked)
    assert len(plain.sent["bob"]) == len(masked.sent["bob"]) > 0
    assert all(np.array_equal(x, y) for x, y in zip(plain.sent["bob"], masked.sent["bob"]))
    assert any(not np.array_equal(x, y) for x, y in zip(plain.sent["alice"], masked.sent["alice"]))


def test_leak_is_what_alice_sent() -> None:
    alice, bob, _ = keys(100_000, 0.02, seed=6)
    channel = RecordingChannel()
    result = run(alice, bob, 0.02, channel=channel)
    stats = channel.stats()
    assert result.disclosed_bits == stats.bits_by_sender["alice"] == sum(m.size for m in channel.sent["alice"])
    assert all(set(np.unique(m)) <= {0, 1} for m in channel.sent["alice"])  # Alice only ever sends parity bits
    assert result.messages == stats.messages == len(channel.sent["alice"]) + len(channel.sent["bob"])


def test_channel_down_mid_protocol_propagates() -> None:
    calls = {"n": 0}

    def is_up() -> bool:
        calls["n"] += 1
        return calls["n"] <= 10

    alice, bob, _ = keys(50_000, 0.02, seed=1)
    with pytest.raises(ChannelDown, match="after 10 messages"):
        run(alice, bob, 0.02, channel=ClassicalChannel(is_up=is_up))


def test_latency_is_paid_per_leg() -> None:
    alice, bob, _ = keys(50_000, 0.02, seed=8)
    channel = ClassicalChannel(one_way_latency_s=0.004)
    result = run(alice, bob, 0.02, channel=channel)
    stats = channel.stats()
    # every exchange is Bob's request then Alice's answer: two legs per round trip
    assert stats.legs == stats.messages == 2 * result.round_trips
    assert result.emulated_seconds == pytest.approx(0.004 * stats.legs)
    assert result.emulated_seconds > 0


def test_channel_counts_bits_legs_and_round_trips() -> None:
    channel = ClassicalChannel(one_way_latency_s=0.01)
    parities = np.array([1, 0, 1], dtype=np.uint8)
    assert np.array_equal(channel.send("bob", np.arange(4), bits=40), np.arange(4))
    received = channel.send("bob", b"ab")  # back to back: same leg
    assert received == b"ab"
    answer = channel.send("alice", parities)
    answer[0] = 0  # the receiver's copy, not the sender's array
    assert parities[0] == 1
    stats = channel.stats()
    assert (stats.messages, stats.legs, stats.round_trips) == (3, 2, 1)
    assert stats.bits_by_sender == {"alice": 3, "bob": 56}
    assert stats.emulated_seconds == pytest.approx(0.02)
    with pytest.raises(ValueError):
        channel.send("eve", parities)


def test_block_sizes_follow_martinez_mateo_option_8() -> None:
    assert block_sizes(0.02, 65536) == (64, 512, 4096) + (32768,) * 11
    assert block_sizes(0.05, 65536)[:3] == (16, 256, 4096)
    assert block_sizes(0.0, 1024) == (512,) * 14
    assert frame_size(1000) == 1024 and frame_size(10**6) == 65536 and frame_size(5000, 2048) == 2048
    with pytest.raises(ValueError):
        frame_size(1000, 1000)


# ---- the model engine's efficiency table ---------------------------------------------------------------

@pytest.mark.parametrize("n_bits,qber,strings", [(10_000, 0.04, 20), (100_000, 0.02, 5), (1_000_000, 0.01, 1)])
def test_the_model_engines_table_is_what_cascade_measures(n_bits: int, qber: float, strings: int):
    """The model engine charges f from a table; if Cascade changes, the table must be measured again
    (``python -m qkdlink.postprocessing.efficiency``). Tolerance: several standard errors of the cell."""
    table = measured_efficiency("cascade", qber, n_bits)
    assert measure(qber, n_bits, strings, seed=11) == pytest.approx(table, abs=0.012)


def test_model_efficiency_interpolates_and_clamps():
    assert measured_efficiency("cascade", 0.02, 1e6) == pytest.approx(MEASURED[2][2])
    assert MEASURED[1][2] > measured_efficiency("cascade", 0.02, 10 ** 5.5) > MEASURED[2][2]        # between n = 1e5 and 1e6
    assert measured_efficiency("cascade", 0.02, 1e9) == measured_efficiency("cascade", 0.02, 1e7)                # frames are 2^16 from 1e7 on
    assert measured_efficiency("cascade", 0.5, 1e6) == MEASURED[2][-1] and measured_efficiency("cascade", 0.0, 1e6) == MEASURED[2][0]
