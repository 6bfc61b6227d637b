"""Decoy-estimation job: its published window bounds equal the library's, run offline on the archive.

The job pools the last N archived blocks (through the control API) and runs the finite-key analysis
on them; here the same blocks are read straight from the SQLite archive and handed to
``Protocol.estimate`` — the numbers must agree exactly. The recommendation must be physical: at
least as good as the current settings for the observed channel, and the fitted loss must see a
loss step.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from calibration_jobs.decoy import observed_extra_loss_db, pooled_counts
from calibration_jobs.metrics import CalibrationCollector
from exporters.server import render
from qkdlink.emulator import Link
from qkdlink.protocols import get_protocol
from qkdlink.protocols.base import FINITE, BlockCounts, ClassCounts
from qkdops.config import parse_config
from qkdops.runtime.archive import BlockArchive
from tests.calibration_harness import BB84, TF, jobs_config, running_fleet

WINDOW = 6


def offline_estimate(state_dir: Path, spec_raw: dict, first: int, last: int):
    spec = parse_config({"links": [spec_raw]}, state_dir / "x.yaml").links[0]
    archive = BlockArchive(state_dir / "blocks.sqlite")
    try:
        blocks = list(archive.blocks(spec.id, first, last))
    finally:
        archive.close()
    table: dict[tuple[str, str], list[int]] = {}
    for b in blocks:
        for key, counts in b.counts.items():
            table[key] = [x + y for x, y in zip(table.get(key, [0, 0, 0]), counts)]
    counts = BlockCounts(float(sum(b.pulses for b in blocks)), {k: ClassCounts(*map(float, v)) for k, v in table.items()})
    return get_protocol(spec.protocol).estimate(counts, Link(spec.emulator_config(1)).nominal, FINITE), len(blocks)


@pytest.mark.slow
def test_window_bounds_agree_with_the_library_offline_and_are_published(tmp_path: Path) -> None:
    jobs = jobs_config(overrides={"decoy_estimation": {"window_blocks": WINDOW}})
    with running_fleet(tmp_path, [BB84, TF], jobs, schedule=False) as rig:
        rig.blocks(TF["id"], WINDOW + 1)
        reports = {spec["id"]: rig.runner.run("decoy_estimation", spec["id"], spec["protocol"]) for spec in (BB84, TF)}
        exposition = render(CalibrationCollector(rig.store)).decode()
    for spec in (BB84, TF):
        report = reports[spec["id"]]
        assert report.outcome == "healthy", report.reason
        p = report.published
        assert p["window_blocks"] == WINDOW and p["last_block"] - p["first_block"] == WINDOW - 1
        estimate, n = offline_estimate(rig.state_dir, spec, p["first_block"], p["last_block"])
        assert n == WINDOW
        assert p["state"] == "none" and not estimate.aborted
        assert p["y1_lower"] == estimate.y1_lower and p["e1_upper"] == estimate.e1_upper and p["qber"] == estimate.qber
        seconds = p["pulses"] / 1e9
        assert p["key_rate_bytes_per_second"] == pytest.approx(estimate.secret_key_bits / seconds / 8, rel=1e-12)
        assert p["epsilon_sec"] == pytest.approx(1e-10) or 0 < p["epsilon_sec"] < 1e-3
        labels = f'link="{spec["id"]}",protocol="{spec["protocol"]}"'
        assert f"qkd_decoy_estimate_single_photon_yield_lower_bound_ratio{{{labels}}} {estimate.y1_lower!r}" in exposition
        assert f'qkd_decoy_estimate_state{{{labels},reason="none"}} 1.0' in exposition
        rec = p["recommendation"]
        assert rec["gain_ratio"] >= 1.0
        assert set(rec["parameters"]) >= {"mu", "nu"}


def test_observed_loss_fit_sees_a_loss_step() -> None:
    """Counts drawn from the model with 3 dB extra loss fit back to 3 dB; healthy counts fit to 0."""
    protocol = get_protocol("bb84-decoy")
    nominal = protocol.resolve({"distance_km": 25.0}, preset="lim2014")

    def expected(extra: float) -> BlockCounts:
        return BlockCounts.expected(protocol.pulse_classes({**nominal, "extra_loss_db": extra}), 1e10)

    assert observed_extra_loss_db(protocol, nominal, expected(3.0)) == pytest.approx(3.0, abs=1e-3)
    assert observed_extra_loss_db(protocol, nominal, expected(0.0)) == 0.0
    assert math.isclose(observed_extra_loss_db(protocol, nominal, BlockCounts(1e10, {})), 60.0)


def test_pooled_counts_add_per_class() -> None:
    blocks = [{"pulses": 10, "counts": [{"intensity": "signal", "basis": "Z", "sent": 5, "detected": 2, "errors": 1}]},
              {"pulses": 20, "counts": [{"intensity": "signal", "basis": "Z", "sent": 9, "detected": 3, "errors": 0},
                                        {"intensity": "decoy", "basis": "X", "sent": 4, "detected": 1, "errors": 1}]}]
    pooled = pooled_counts(blocks)
    assert pooled.pulses == 30 and pooled.get("signal", "Z") == ClassCounts(14, 5, 1)
    assert pooled.get("decoy", "X") == ClassCounts(4, 1, 1)
