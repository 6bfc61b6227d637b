"""The emulated link: reproducibility, exact count laws, every fault's physics, calibration actions."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import numpy as np
import pytest

from qkdlink.emulator import FAULTS, DeviceSettings, FaultError, Link, LinkConfig, LinkConfigError
from qkdlink.emulator.devices import Disturbance, PhaseReference, Polarization
from qkdlink.settings import PhaseSettings, PolarizationSettings, choice_parameters, intensity_parameters
from qkdlink.protocols import PROTOCOL_NAMES, get_protocol
from qkdlink.protocols.base import BlockCounts

AVAILABLE = [name for name in PROTOCOL_NAMES
             if importlib.util.find_spec(f"qkdlink.protocols.{name.split('-')[0]}") is not None]
TWO_ARM = [name for name in AVAILABLE if name != "bb84-decoy"]
STATIC = DeviceSettings.static()


def make(protocol: str = "bb84-decoy", seed: int = 7, devices: DeviceSettings = STATIC, **kw) -> Link:
    kw.setdefault("frame_pulses", 10 ** 9)
    return Link(LinkConfig(f"test-{protocol}", protocol=protocol, seed=seed, devices=devices, **kw))


def sifted(record) -> tuple[float, float]:
    """(sifted detections, sifted errors) of a frame."""
    counts = record.counts.classes.values()
    return sum(c.detected for c in counts), sum(c.errors for c in counts)


def key_qber(record) -> float:
    z = [c for (intensity, basis), c in record.counts.classes.items() if basis == "Z"]
    return sum(c.errors for c in z) / max(1, sum(c.detected for c in z))


def run(link: Link, frames: int) -> list:
    return [link.step_frame() for _ in range(frames)]


# ---- stepping, reproducibility, count laws -------------------------------------------------------

@pytest.mark.parametrize("protocol", AVAILABLE)
def test_same_seed_same_frames_and_telemetry(protocol: str) -> None:
    a, b = make(protocol, devices=DeviceSettings()), make(protocol, devices=DeviceSettings())
    c = make(protocol, seed=8, devices=DeviceSettings())
    for _ in range(4):
        ra, rb, rc = a.step_frame(), b.step_frame(), c.step_frame()
        assert ra.counts == rb.counts and ra.telemetry == rb.telemetry and ra.detected_total == rb.detected_total
    assert ra.counts != rc.counts


def test_reading_telemetry_and_truth_does_not_perturb_the_counts() -> None:
    a, b = make(devices=DeviceSettings()), make(devices=DeviceSettings())
    for _ in range(3):
        a.telemetry(), a.truth(), a.effective_parameters()
        assert a.step_frame().counts == b.step_frame().counts


def test_frame_timing_follows_frame_pulses_and_rate() -> None:
    link = make(frame_pulses=5 * 10 ** 8, repetition_rate_hz=2.5e9)
    first, second = link.step_frame(), link.step_frame()
    assert (first.index, first.start_s, first.end_s) == (0, 0.0, 0.2)
    assert (second.index, second.start_s) == (1, 0.2) and second.end_s == pytest.approx(0.4)
    assert link.nominal["repetition_rate_hz"] == 2.5e9
    assert first.counts.pulses == 5 * 10 ** 8 and all(isinstance(c.detected, int) for c in first.counts.classes.values())


@pytest.mark.parametrize("protocol", AVAILABLE)
def test_static_devices_leave_effective_equal_to_nominal(protocol: str) -> None:
    link = make(protocol)
    record = link.step_frame()
    assert dict(record.effective) == pytest.approx(dict(record.nominal), rel=1e-12, abs=1e-15)
    assert record.truth == link.protocol.single_photon_truth(record.effective)


@pytest.mark.parametrize("protocol", AVAILABLE)
def test_sampled_counts_match_the_protocols_expected_counts(protocol: str) -> None:
    """Summed over 200 frames, every class's sent/detected/error count is within 5σ of its mean."""
    link = make(protocol, devices=DeviceSettings(), frame_pulses=10 ** 8)
    records = run(link, 200)
    totals: dict = {}
    for r in records:
        expected = BlockCounts.expected(link.protocol.pulse_classes(r.effective), r.counts.pulses)
        for key, got in r.counts.classes.items():
            mean = expected.classes[key]
            row = totals.setdefault(key, np.zeros((3, 3)))  # rows: sent, detected, errors; cols: observed, mean, var
            for i, (obs, mu, p) in enumerate(((got.sent, mean.sent, mean.sent / r.counts.pulses),
                                              (got.detected, mean.detected, mean.detected / r.counts.pulses),
                                              (got.errors, mean.errors, mean.errors / r.counts.pulses))):
                row[i] += (obs, mu, mu * (1.0 - p))  # each count is Binomial(N, p): thinned multinomial
    for key, row in totals.items():
        for what, (obs, mu, var) in zip(("sent", "detected", "errors"), row):
            if var > 0:
                assert abs(obs - mu) / math.sqrt(var) < 5.0, (key, what)


def test_total_detections_include_unsifted_pulses() -> None:
    record = make().step_frame()
    detected, _ = sifted(record)
    sifted_share = sum(c.sent for c in record.counts.classes.values()) / record.counts.pulses
    assert record.detected_total > detected
    assert record.detected_total == pytest.approx(detected / sifted_share, rel=0.01)
    assert record.telemetry.detection_rate_hz == pytest.approx(record.detected_total / 1.0)


def test_link_config_errors_name_the_field() -> None:
    with pytest.raises(LinkConfigError, match="frame_pulses"):
        LinkConfig("x", frame_pulses=0)
    with pytest.raises(LinkConfigError, match="protocol"):
        LinkConfig("x", protocol="e91")
    with pytest.raises(LinkConfigError, match="seed"):
        LinkConfig("x", seed=-1)
    with pytest.raises(ValueError, match="mu"):
        Link(LinkConfig("x", overrides={"mu": -1.0}))
    with pytest.raises(ValueError, match="gate_fraction"):
        dataclasses.replace(DeviceSettings().clock, gate_fraction=2.0)


def test_choice_and_intensity_parameters_are_found_in_every_protocol() -> None:
    expected = {
        "bb84-decoy": (("mu", "nu", "omega"), (("p_mu", "p_nu"), ("key_basis_probability",))),
        "mdi": (("mu", "nu", "omega"), (("p_mu", "p_nu"), ("key_basis_probability",))),
        "tf": (("mu", "nu", "nu2"), (("p_nu", "p_nu2"), ("epsilon_send", "z_window_probability"))),
    }
    for name in AVAILABLE:
        protocol = get_protocol(name)
        assert (intensity_parameters(protocol), choice_parameters(protocol)) == expected[name]


# ---- fault catalogue ------------------------------------------------------------------------------

def test_catalogue_names_and_specs() -> None:
    assert tuple(FAULTS) == ("fiber_cut", "loss_step", "phase_drift", "polarization_drift", "modulator_drift",
                             "dark_count_rise", "detector_saturation", "rng_bias", "clock_desync",
                             "classical_channel_outage", "reconciliation_fault")
    for name, fault in FAULTS.items():
        assert fault.name == name and fault.description and fault.effect
        for p in fault.parameters:
            assert p.unit and p.description and p.minimum is not None and p.maximum is not None
            assert p.minimum <= p.default <= p.maximum
    assert {f.fixed_by for f in FAULTS.values()} == {None, "relock_phase", "retune_intensities",
                                                     "realign_polarization", "regate_detectors"}


def test_unknown_fault_or_bad_parameter_raises_and_leaves_the_link_unchanged() -> None:
    link, twin = make(devices=DeviceSettings()), make(devices=DeviceSettings())
    link.inject("loss_step", loss_db=1.0)
    twin.inject("loss_step", loss_db=1.0)
    before = (link.active_faults(), link.effective_parameters())
    cases = [
        (lambda: link.inject("fibre_cut"), "unknown fault 'fibre_cut'.*fiber_cut"),
        (lambda: link.inject("loss_step", loss=3.0), "fault 'loss_step' has no parameter 'loss'.*loss_db"),
        (lambda: link.inject("loss_step", loss_db=-3.0), "loss_step.*'loss_db' must be >= 0"),
        (lambda: link.inject("loss_step", loss_db="lots"), "loss_step.*'loss_db' must be a number"),
        (lambda: link.inject("rng_bias", bias=True), "rng_bias.*'bias' must be a number"),
        (lambda: link.inject("classical_channel_outage", minutes=5), "no parameter 'minutes'.*none"),
        (lambda: link.clear("gremlins"), "unknown fault 'gremlins'"),
        (lambda: link.inject("key_handoff_failure"), "unknown fault 'key_handoff_failure'"),  # the runtime's
    ]
    for call, message in cases:
        with pytest.raises(FaultError, match=message):
            call()
    assert isinstance(FaultError("x"), ValueError)
    assert (link.active_faults(), link.effective_parameters()) == before
    assert link.step_frame().counts == twin.step_frame().counts


def test_inject_clear_and_active_faults() -> None:
    link = make()
    link.step_frame()
    fault = link.inject("loss_step")
    assert (fault.name, dict(fault.parameters), fault.injected_at_s) == ("loss_step", {"loss_db": 3.0}, 1.0)
    link.inject("loss_step", loss_db=5.0)  # re-inject replaces
    link.inject("rng_bias", bias=0.01)
    assert [(f.name, dict(f.parameters)) for f in link.active_faults()] == [
        ("loss_step", {"loss_db": 5.0}), ("rng_bias", {"bias": 0.01})]
    assert link.step_frame().active_faults == ("loss_step", "rng_bias")
    assert link.clear("fiber_cut") == ()
    assert link.clear("loss_step") == ("loss_step",)
    assert link.clear() == ("rng_bias",) and link.active_faults() == ()


def test_fiber_cut_leaves_only_dark_counts_and_clear_restores() -> None:
    link = make()
    healthy = run(link, 3)
    link.inject("fiber_cut")
    cut = run(link, 3)
    dark = dict(link.nominal, detector_efficiency=0.0)  # no light at all: dark counts only
    dark_level = BlockCounts.expected(link.protocol.pulse_classes(dark), 10 ** 9).detected
    for r in cut:
        detected, errors = sifted(r)
        assert abs(detected - dark_level) < 5 * math.sqrt(dark_level)
        assert errors / detected == pytest.approx(0.5, abs=0.05)
        assert r.telemetry.channel_loss_db == pytest.approx(healthy[0].telemetry.channel_loss_db + 100.0)
        assert r.truth.yield_ < 1e-5
    assert sifted(healthy[0])[0] > 1000 * dark_level
    for link_action in (link.relock_phase, link.retune_intensities, link.realign_polarization, link.regate_detectors):
        link_action()
    assert sifted(link.step_frame())[0] < 2 * dark_level  # no calibration repairs a fibre
    link.clear("fiber_cut")
    restored = link.step_frame()
    assert sifted(restored)[0] == pytest.approx(sifted(healthy[0])[0], rel=0.01)


@pytest.mark.parametrize("protocol", TWO_ARM)
def test_fiber_cut_on_a_relay_link_leaves_one_users_light(protocol: str) -> None:
    link = make(protocol)
    healthy = link.step_frame()
    link.inject("fiber_cut")
    cut = link.step_frame()
    assert sifted(cut)[0] < 0.6 * sifted(healthy)[0]
    assert cut.truth.yield_ < 0.6 * healthy.truth.yield_
    assert cut.truth.phase_error_rate == pytest.approx(0.5, abs=1e-3)
    link.clear()
    assert link.step_frame().truth == healthy.truth


def test_loss_step_scales_detections_by_the_transmittance() -> None:
    link, twin = make(), make()
    link.inject("loss_step", loss_db=3.0)
    for action in (link.relock_phase, link.retune_intensities, link.realign_polarization, link.regate_detectors):
        action()
    base = sum(sifted(r)[0] for r in run(twin, 5))
    stepped = sum(sifted(r)[0] for r in run(link, 5))
    assert stepped / base == pytest.approx(10 ** -0.3, rel=0.01)


@pytest.mark.parametrize("protocol", TWO_ARM)
def test_phase_drift_loses_lock_and_relock_restores(protocol: str) -> None:
    link = make(protocol, devices=DeviceSettings())
    baseline = link.step_frame()
    assert baseline.telemetry.phase_locked is True
    link.inject("phase_drift", drift_rate_rad_per_s=150.0)  # 200 rad stretcher range: gone in ~2 s
    records = run(link, 3)
    assert records[-1].telemetry.phase_locked is False
    assert records[-1].telemetry.phase_error_rad == pytest.approx(math.pi / 2)
    assert records[-1].telemetry.visibility < 0.05 * baseline.telemetry.visibility + 1e-9
    assert records[-1].truth.phase_error_rate > baseline.truth.phase_error_rate + 0.05
    result = link.relock_phase()
    assert result.ok and result.after["phase_locked"] == 1.0 and result.before["phase_locked"] == 0.0
    after = link.effective_parameters()
    for name in {"phase_mismatch_rad", "misalignment_error"} & set(after):
        assert after[name] == pytest.approx(baseline.effective[name], abs=0.01)
    assert link.telemetry().phase_relock_count == 1
    assert link.step_frame().telemetry.phase_locked is True  # 150 rad/s winds 150 of 200 rad: still locked
    assert run(link, 2)[-1].telemetry.phase_locked is False    # …and the drift goes on


@pytest.mark.parametrize("protocol", TWO_ARM)
def test_phase_drift_beyond_the_hold_range_cannot_be_relocked(protocol: str) -> None:
    link = make(protocol)
    link.inject("phase_drift", drift_rate_rad_per_s=1e4)  # > K = 2π kHz
    link.step_frame()
    result = link.relock_phase()
    assert not result.ok and "hold range" in result.message


def test_phase_reference_absent_on_bb84() -> None:
    link, twin = make(), make()
    link.inject("phase_drift", drift_rate_rad_per_s=1e4)
    record = link.step_frame()
    assert record.counts == twin.step_frame().counts
    assert record.telemetry.phase_locked is None and record.telemetry.phase_error_rad is None
    assert link.relock_phase().ok


def test_phase_reference_static_error_and_jitter() -> None:
    """Locked: ⟨cos δ⟩ = cos(asin(r/K)) e^(−D/4K) (first-order loop, Gardner ch. 2/9)."""
    settings = dataclasses.replace(DeviceSettings(), phase=PhaseSettings(
        drift_rad_per_s=600.0, drift_walk_rad_per_s_per_sqrt_s=0.0, diffusion_rad2_per_s=400.0,
        actuator_range_rad=1e6))
    link = make("tf" if "tf" in AVAILABLE else "mdi", devices=settings) if TWO_ARM else None
    if link is None:
        pytest.skip("no two-arm protocol module available")
    link.step_frame()
    k = 2 * math.pi * 1e3
    expected = math.acos(math.cos(math.asin(600.0 / k)) * math.exp(-400.0 / (4 * k)))
    assert link.telemetry().phase_error_rad == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("dt", [1.0, 10.0])
def test_phase_drift_rate_wanders_but_stays_bounded(dt: float) -> None:
    """The drift rate is an Ornstein–Uhlenbeck process: over days its mean is r₀ and its spread
    σ√(τ/2), whatever the frame length (Gillespie's exact update), where a random walk would have
    wandered σ√t (3 rad/s after a day: a stretcher wound through in a minute)."""
    s = PhaseSettings()
    ref = PhaseReference(s, active=True)
    rng = np.random.default_rng(11)
    rates = []
    for _ in range(int(20 * 86400 / dt)):   # 20 days, sampled every 10 min
        ref.evolve(dt, rng, Disturbance())
        ref.locked = True   # the rate's statistics, not the loop's
        rates.append(ref.drift_rad_per_s)
    sample = np.asarray(rates[:: int(600 / dt)])
    spread = s.drift_walk_rad_per_s_per_sqrt_s * math.sqrt(s.drift_correlation_s / 2)
    assert spread == pytest.approx(0.3)
    assert sample.std() == pytest.approx(spread, rel=0.15)
    assert abs(sample.mean() - s.drift_rad_per_s) < 0.1
    assert np.abs(sample).max() < 6 * spread


def test_polarization_flip_probability_is_malus_averaged_over_the_frame() -> None:
    """A 10-s frame under a 0.02 rad/s drift: its pulses see θ from 0 to 0.2 rad, so they flip with
    the mean of sin²θ along the sweep (about a third of sin²(0.2)), not with the end's value."""
    pol = Polarization(PolarizationSettings(diffusion_rad2_per_s=0.0, realign_residual_rad=0.0))
    pol.evolve(10.0, np.random.default_rng(1), Disturbance(polarization_drift_rad_per_s=0.02))
    sweep = np.linspace(0.0, 0.2, 100_001)
    assert pol.flip_probability() == pytest.approx(float(np.mean(np.sin(sweep) ** 2)), rel=1e-4)
    assert pol.flip_probability() == pytest.approx(math.sin(0.2) ** 2 / 3, rel=0.01)
    pol.realign(np.random.default_rng(2))
    assert pol.flip_probability() == 0.0   # realigned: the next frame starts from the residual


@pytest.mark.parametrize("protocol", AVAILABLE)
def test_polarization_drift_raises_qber_and_realign_restores(protocol: str) -> None:
    link = make(protocol)
    baseline = link.step_frame()
    link.inject("polarization_drift", rate_rad_per_s=0.05)
    drifted = run(link, 6)[-1]
    theta = drifted.telemetry.polarization_drift_rad
    assert theta == pytest.approx(0.3)
    # the frame's pulses saw θ sweep 0.25 → 0.3: Malus averaged over the sweep
    flip = 0.5 - (math.sin(2 * theta) - math.sin(2 * (theta - 0.05))) / (4 * 0.05)
    assert math.sin(theta - 0.05) ** 2 < flip < math.sin(theta) ** 2
    expected = baseline.effective["misalignment_error"]
    expected = expected + flip - 2 * expected * flip
    assert drifted.effective["misalignment_error"] == pytest.approx(expected)
    assert drifted.truth.phase_error_rate > baseline.truth.phase_error_rate
    if protocol == "bb84-decoy":
        assert key_qber(drifted) > key_qber(baseline) + 0.05
    result = link.realign_polarization()
    assert result.before["polarization_drift_rad"] == pytest.approx(theta) and result.after["polarization_drift_rad"] == 0.0
    assert link.effective_parameters()["misalignment_error"] == pytest.approx(baseline.effective["misalignment_error"])
    assert link.step_frame().effective["misalignment_error"] > baseline.effective["misalignment_error"]  # still drifting


@pytest.mark.parametrize("protocol", AVAILABLE)
def test_modulator_drift_moves_actual_intensities_and_retune_restores(protocol: str) -> None:
    link = make(protocol)
    names = intensity_parameters(link.protocol)
    link.inject("modulator_drift", bias_rate_rad_per_s=0.1)
    drifted = run(link, 8)[-1]
    peak = max(link.nominal[k] for k in names)
    for k in names:
        phase = 2 * math.acos(math.sqrt(link.nominal[k] / peak))
        assert drifted.effective[k] == pytest.approx(peak * math.cos((phase + 0.8) / 2) ** 2)
        assert drifted.telemetry.mean_photon_number_commanded[k] == link.nominal[k]
        assert drifted.telemetry.mean_photon_number_measured[k] == pytest.approx(drifted.effective[k])
    weakest = min(names, key=lambda k: link.nominal[k])
    assert abs(drifted.effective[weakest] - link.nominal[weakest]) > 0.1 * link.nominal[weakest] + 0.001
    if link.nominal[weakest] == 0.0:
        assert drifted.effective[weakest] == pytest.approx(peak * math.sin(0.4) ** 2)  # the vacuum lights up
    result = link.retune_intensities()
    assert result.ok and result.before[f"mean_photon_number_{weakest}"] == pytest.approx(drifted.effective[weakest])
    now = link.effective_parameters()
    assert {k: now[k] for k in names} == pytest.approx({k: link.nominal[k] for k in names})


def test_modulator_power_drift_and_monitor_noise() -> None:
    link = make(devices=DeviceSettings())
    link.inject("modulator_drift", bias_rate_rad_per_s=0.0, power_rate_per_s=-0.05)
    record = run(link, 10)[-1]
    assert record.effective["mu"] == pytest.approx(0.48 * math.exp(-0.5), rel=0.01)
    measured = record.telemetry.mean_photon_number_measured["mu"]
    assert measured != record.effective["mu"] and measured == pytest.approx(record.effective["mu"], rel=0.06)
    link.retune_intensities()
    assert link.effective_parameters()["mu"] == pytest.approx(0.48, rel=0.06)


@pytest.mark.parametrize("protocol", AVAILABLE)
def test_dark_count_rise_follows_temperature_and_regate_restores(protocol: str) -> None:
    link = make(protocol, overrides={"dark_count_probability": 1e-6})
    baseline = link.step_frame()
    link.inject("dark_count_rise", rate_k_per_s=2.0)
    warm = run(link, 10)[-1]
    assert warm.telemetry.detector_temperature_c == pytest.approx(-20.0)
    assert warm.effective["dark_count_probability"] == pytest.approx(4e-6, rel=1e-5)  # 2^(20 K / 10 K)
    assert warm.telemetry.dark_count_rate_hz == pytest.approx(4e-6 * 1e9, rel=1e-5)
    assert warm.truth.phase_error_rate >= baseline.truth.phase_error_rate
    result = link.regate_detectors()
    assert result.before["detector_temperature_c"] == pytest.approx(-20.0) and result.after["detector_temperature_c"] == -40.0
    assert link.effective_parameters()["dark_count_probability"] == pytest.approx(1e-6)
    link.clear()
    hot = make(protocol)
    hot.inject("dark_count_rise", rate_k_per_s=100.0)
    assert run(hot, 2)[-1].telemetry.detector_temperature_c == 25.0  # a cooler cannot pass ambient


def test_dark_count_rise_raises_qber_at_long_distance() -> None:
    link = make(overrides={"distance_km": 120.0})
    baseline = link.step_frame()
    link.inject("dark_count_rise", rate_k_per_s=3.0)
    assert key_qber(run(link, 10)[-1]) > key_qber(baseline) + 0.03


@pytest.mark.parametrize("protocol", AVAILABLE)
def test_detector_saturation_pins_the_detection_rate(protocol: str) -> None:
    link = make(protocol, overrides={"dead_time_s": 2e-7, "distance_km": 200.0})
    baseline = link.step_frame()
    link.inject("detector_saturation", background_photons=10.0)
    saturated = link.step_frame()
    assert baseline.telemetry.dead_time_live_fraction > 0.5
    assert saturated.telemetry.dead_time_live_fraction < 0.01
    assert saturated.telemetry.detection_rate_hz <= 5e6  # at most one event per dead time
    assert saturated.truth.phase_error_rate > baseline.truth.phase_error_rate
    if protocol == "bb84-decoy":  # every gate clicks: pinned at the saturation rate, random bits
        assert saturated.telemetry.detection_rate_hz > 0.9 * 5e6
        assert key_qber(saturated) == pytest.approx(0.5, abs=0.01)
    else:  # both relay detectors fire: the few single-click events left are noise
        detected, errors = sifted(saturated)
        assert errors / detected > 0.45 > sifted(baseline)[1] / sifted(baseline)[0]
    link.clear("detector_saturation")
    restored = link.step_frame()
    assert restored.effective == baseline.effective and restored.truth == baseline.truth


@pytest.mark.parametrize("protocol", AVAILABLE)
def test_rng_bias_tilts_the_choices_and_fails_health(protocol: str) -> None:
    link = make(protocol, devices=DeviceSettings())
    healthy = link.step_frame()
    assert healthy.telemetry.rng_health_pass and abs(healthy.telemetry.rng_monobit_z) < 5
    link.inject("rng_bias", bias=0.05)
    biased = link.step_frame()
    multiway, binary = choice_parameters(link.protocol)
    for name in binary + multiway[:1]:
        assert biased.effective[name] > link.nominal[name]
    assert sum(biased.effective[n] for n in multiway) < 1.0
    assert not biased.telemetry.rng_health_pass and biased.telemetry.rng_apt_failures > 0
    assert biased.telemetry.rng_bias == pytest.approx(0.05, abs=1e-4)
    # the class occupations follow the actual (tilted) choices
    expected = BlockCounts.expected(link.protocol.pulse_classes(biased.effective), 10 ** 9)
    nominal = BlockCounts.expected(link.protocol.pulse_classes(link.nominal), 10 ** 9)
    key, count = max(biased.counts.classes.items(), key=lambda kv: kv[1].sent)
    assert abs(count.sent - expected.classes[key].sent) < 5 * math.sqrt(expected.classes[key].sent)
    assert abs(count.sent - nominal.classes[key].sent) > 10 * math.sqrt(nominal.classes[key].sent)


def test_small_rng_bias_is_caught_by_the_monobit_test() -> None:
    link = make()
    link.inject("rng_bias", bias=0.001)
    telemetry = link.step_frame().telemetry
    assert telemetry.rng_apt_failures == 0 and telemetry.rng_monobit_z > 5 and not telemetry.rng_health_pass


def test_clock_desync_loses_detections_then_adds_errors_and_clear_resyncs() -> None:
    link = make()
    baseline = link.step_frame()
    link.inject("clock_desync", rate_s_per_s=1e-10)  # 100 ps per 1-s frame; gate 400 ps, period 1 ns
    records = run(link, 10)
    offsets = [r.telemetry.clock_offset_s for r in records]
    assert offsets == pytest.approx([k * 1e-10 for k in range(1, 11)])
    assert sifted(records[0])[0] == pytest.approx(sifted(baseline)[0], rel=0.01)   # 100 ps: inside the gate
    assert sifted(records[4])[0] < 0.01 * sifted(baseline)[0]                      # 500 ps: between gates
    assert records[4].effective["detector_efficiency"] < 0.01 * baseline.effective["detector_efficiency"]
    assert sifted(records[9])[0] == pytest.approx(sifted(baseline)[0], rel=0.01)   # 1 ns: the next slot…
    assert key_qber(records[9]) == pytest.approx(0.5, abs=0.01)                    # …but the wrong pulse
    link.clear("clock_desync")
    resynced = link.step_frame()
    assert abs(resynced.telemetry.clock_offset_s) < 1e-12  # servo τ = 0.1 s: e^-10 of 1 ns left
    assert key_qber(resynced) == pytest.approx(key_qber(baseline), abs=0.002)


def test_classical_channel_outage_only_marks_the_channel_down() -> None:
    link, twin = make(devices=DeviceSettings()), make(devices=DeviceSettings())
    assert link.step_frame().telemetry.classical_channel_up
    twin.step_frame()
    link.inject("classical_channel_outage")
    assert link.telemetry().classical_channel_up is False
    down, normal = link.step_frame(), twin.step_frame()
    assert down.counts == normal.counts  # the quantum layer keeps measuring
    assert down.telemetry.classical_channel_up is False and down.telemetry.classical_latency_s is None
    assert "classical_channel_outage" in down.active_faults
    link.clear()
    up = link.step_frame()
    assert up.telemetry.classical_channel_up and up.telemetry.classical_latency_s == pytest.approx(1.12e-3, rel=0.5)


def test_drift_faults_cleared_keep_their_damage_until_calibrated() -> None:
    link = make()
    link.inject("polarization_drift", rate_rad_per_s=0.1)
    run(link, 3)
    link.clear()
    theta = link.step_frame().telemetry.polarization_drift_rad
    assert theta == pytest.approx(0.3)
    link.realign_polarization()
    assert link.telemetry().polarization_drift_rad == 0.0


# ---- telemetry and truth -------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", AVAILABLE)
def test_telemetry_fields_are_in_base_units(protocol: str) -> None:
    link = make(protocol, devices=DeviceSettings())
    t = link.step_frame().telemetry
    assert t.time_s == 1.0 and t.link_id == f"test-{protocol}" and t.protocol == protocol
    assert t.channel_transmittance == pytest.approx(10 ** (-t.channel_loss_db / 10))
    assert 0 < t.detector_efficiency <= 1 and 0 < t.visibility <= 1 and 0 < t.dead_time_live_fraction <= 1
    assert t.detector_temperature_c == pytest.approx(-40.0, abs=0.5)
    assert set(t.mean_photon_number_commanded) == set(t.mean_photon_number_measured) == set(intensity_parameters(link.protocol))
    assert all(type(v) is float for v in t.mean_photon_number_measured.values())
    assert t.phase_locked is (True if protocol in TWO_ARM else None)
    assert abs(t.clock_offset_s) < 1e-10 and t.timing_jitter_s == 30e-12
    assert t.rng_health_pass and t.classical_channel_up and t.classical_latency_s > 0


def test_truth_comes_from_the_effective_parameters() -> None:
    link = make()
    link.inject("polarization_drift", rate_rad_per_s=0.1)
    record = run(link, 3)[-1]
    assert record.truth == link.protocol.single_photon_truth(record.effective)
    assert record.truth != link.protocol.single_photon_truth(record.nominal)
    assert link.truth() == link.protocol.single_photon_truth(link.effective_parameters())
    with pytest.raises(TypeError):
        record.nominal["mu"] = 1.0  # type: ignore[index]
