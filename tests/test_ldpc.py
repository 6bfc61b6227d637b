"""Blind LDPC reconciliation: both ends agree, the leak is what crossed the wire, and the codes have the
structure the leak accounting relies on (qkdlink/postprocessing/ldpc.py)."""

from __future__ import annotations

import numpy as np
import pytest

from qkdlink.emulator.sifted import sifted_strings
from qkdlink.physics.entropy import binary_entropy
from qkdlink.postprocessing import ldpc
from qkdlink.postprocessing.channel import ChannelDown, ClassicalChannel
from qkdlink.postprocessing.efficiency import LDPC, QBERS, measure, measured_efficiency


def _run(n: int, errors: int, design: float, seed: int = 3, channel: ClassicalChannel | None = None):
    s = sifted_strings(seed, n, errors)
    channel = channel or ClassicalChannel(0.001)
    return s, ldpc.reconcile(s.alice, s.bob, n, design, seed, channel), channel


@pytest.mark.parametrize("n,qber", [(5_000, 0.03), (70_000, 0.02), (120_000, 0.05)])
def test_both_ends_hold_alices_key_and_the_leak_is_above_the_shannon_limit(n: int, qber: float):
    errors = round(qber * n)
    s, r, _ = _run(n, errors, qber)
    assert r.dropped_frames == 0
    assert np.array_equal(r.corrected, r.alice) and np.array_equal(r.alice, s.alice)
    assert r.flipped_bits == errors
    assert r.disclosed_bits >= n * binary_entropy(errors / n)
    assert r.decoder_cpu_seconds > 0


def test_the_leak_is_every_bit_alice_sent_minus_the_punctured_symbols_credit():
    n, qber = 60_000, 0.03
    s, r, channel = _run(n, round(qber * n), qber)
    layout = ldpc.plan(n, qber)
    sent = channel.stats().bits_by_sender["alice"]
    # syndromes (M per frame) + revealed symbols, less the still-private punctured symbols of every frame
    assert r.disclosed_bits == sent - r.frames * layout.start_punctured + r.dropped_frames * r.frame_key_bits
    assert r.frames == layout.frames and r.frame_key_bits == layout.key_per_frame


def test_a_frame_that_decodes_at_once_costs_one_round_trip():
    n = 40_000
    s, r, channel = _run(n, round(0.005 * n), 0.04)   # sized for 4 %, 0.5 % errors: decodes at the first attempt
    assert r.rounds == 0 and r.round_trips == 1 and r.messages == 2
    assert r.emulated_seconds == pytest.approx(2 * 0.001)
    assert np.array_equal(r.corrected, s.alice)


def test_frames_that_never_decode_are_discarded_at_both_ends_and_counted_as_leak(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ldpc, "MAX_ROUNDS", 2)
    n = 20_000
    s, r, _ = _run(n, round(0.2 * n), 0.01)           # 20 % errors on a code sized for 1 %: hopeless in 2 rounds
    assert r.dropped_frames == r.frames >= 1 and r.rounds == 2
    assert not np.unpackbits(r.alice).any() and not np.unpackbits(r.corrected).any()
    assert r.disclosed_bits >= n                       # every key bit is counted as disclosed


def test_a_stubborn_frame_is_settled_by_revealing_key_bits_rather_than_discarded():
    n = 20_000
    s, r, _ = _run(n, round(0.06 * n), 0.01)          # 6 % errors on a code sized for 1 %
    assert r.dropped_frames == 0 and np.array_equal(r.corrected, s.alice)
    assert r.rounds > ldpc.plan(n, 0.01).start_punctured // ldpc.plan(n, 0.01).step   # past the punctured symbols


def test_a_channel_outage_stops_reconciliation():
    calls = iter([True, False])
    with pytest.raises(ChannelDown):
        _run(10_000, 300, 0.03, channel=ClassicalChannel(0.001, lambda: next(calls, False)))


def test_the_same_inputs_give_the_same_result():
    first = _run(30_000, 900, 0.03)[1]
    second = _run(30_000, 900, 0.03)[1]
    assert np.array_equal(first.corrected, second.corrected)
    assert (first.disclosed_bits, first.messages, first.rounds) == (second.disclosed_bits, second.messages, second.rounds)


@pytest.mark.parametrize("bad", [dict(n_bits=0), dict(qber_estimate=0.5), dict(qber_estimate=-0.1), dict(seed=-1),
                                 dict(n_bits=10_000)])
def test_bad_arguments_are_refused(bad: dict):
    s = sifted_strings(1, 1_000, 10)
    args = dict(alice=s.alice, bob=s.bob, n_bits=1_000, qber_estimate=0.02, seed=1, channel=ClassicalChannel()) | bad
    with pytest.raises(ValueError):
        ldpc.reconcile(**args)


@pytest.mark.parametrize("n,rate", [(1024, 0.5), (16384, 0.8), (16384, 0.96)])
def test_codes_have_no_repeated_edges_an_acyclic_degree_two_chain_and_untainted_puncturing(n: int, rate: float):
    code = ldpc.mother_code(n, rate)
    checks = np.repeat(np.arange(code.m), np.diff(code.check_ptr))
    pairs = checks.astype(np.int64) * n + code.check_var
    assert np.unique(pairs).size == pairs.size
    assert code.m == round(n * (1 - rate)) and 0 < code.punctured.size <= ldpc.ADAPTABLE * n
    degree = np.bincount(code.check_var, minlength=n)
    assert degree.min() >= 2
    # degree-2 symbols as edges between their two checks: a forest (a cycle would be a low-weight codeword)
    parent = np.arange(code.m)

    def root(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c
    for v in np.flatnonzero(degree == 2):
        a, b = (root(int(c)) for c in checks[code.check_var == v])
        assert a != b
        parent[a] = b
    # untainted: every punctured symbol has a check with no other punctured neighbour, so rank(H_P) = |P|
    punctured = np.zeros(n, dtype=bool)
    punctured[code.punctured] = True
    punctured_per_check = np.bincount(checks[punctured[code.check_var]], minlength=code.m)
    for v in code.punctured:
        assert (punctured_per_check[checks[code.check_var == v]] == 1).any()


def test_the_plan_starts_at_the_target_efficiency():
    for qber in (0.01, 0.02, 0.05):
        layout = ldpc.plan(1_000_000, qber)
        leak = layout.code.m - layout.start_punctured
        assert leak == pytest.approx(ldpc.F_START * binary_entropy(qber) * layout.key_per_frame, abs=1)
        assert layout.code.n == ldpc.FRAME_BITS
    assert ldpc.plan(2_000, 0.02).code.n == 4096 and ldpc.plan(500, 0.02).code.n == ldpc.MIN_FRAME_BITS


def test_the_model_engine_table_matches_what_ldpc_measures_now():
    assert measured_efficiency("ldpc", 0.02, 1e6) == pytest.approx(LDPC[2][QBERS.index(0.02)])
    assert measure(0.04, 100_000, 2, seed=11, method="ldpc") == pytest.approx(measured_efficiency("ldpc", 0.04, 1e5), abs=0.05)
