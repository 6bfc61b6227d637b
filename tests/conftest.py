"""Shared fixtures: a small three-protocol fleet config whose blocks close every few frames."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from qkdops.runtime import blocks, fleet

# Test tiers (README, "Tests"): every test gets exactly one of these markers, by its module.
#   e2e       starts real processes or servers: `qkdops up`, Prometheus, Alertmanager, a fresh venv
#   contract  holds a public contract: CLI forms, HTTP APIs over real sockets, metric names and rule
#             files checked by promtool/amtool, generated files, import layers, runbooks
#   unit      everything else: in-process, no sockets, no subprocesses
# The developer's loop is `pytest -m "not e2e and not slow"`; `bash scripts/test.sh` runs them all.
E2E_MODULES = frozenset({
    "test_alerting_e2e", "test_alertmanager", "test_bench_smoke", "test_calibration_e2e", "test_cli_keys", "test_dashboard_render",
    "test_gameday_e2e", "test_ha_e2e", "test_install", "test_kme_crash", "test_long_term_store", "test_postprocessing_e2e",
    "test_sharded_stack", "test_slo_report_e2e", "test_stack", "test_stack_e2e", "test_up",
})
CONTRACT_MODULES = frozenset({
    "test_alert_rules", "test_architecture", "test_cli_calibrate", "test_cli_emulate", "test_cli_fault", "test_cli_keyrate",
    "test_compose", "test_control_api", "test_credentials", "test_dashboards", "test_dashboards_cmd", "test_exporter_control",
    "test_exporters", "test_fuzz_inputs", "test_generate_cmd", "test_ha_config", "test_http_server", "test_key_length_conventions",
    "test_kme", "test_kubernetes", "test_no_key_material", "test_openslo", "test_pager_sink", "test_runbooks", "test_sharding", "test_slo",
    "test_slo_report",
})
TIERS = ("unit", "contract", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rpartition(".")[2] if item.module is not None else ""
        item.add_marker("e2e" if module in E2E_MODULES else "contract" if module in CONTRACT_MODULES else "unit")



@pytest.fixture(autouse=True)
def reproducible_block_seeds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process fleets draw each block's post-processing seed from a generator seeded by (test, link).

    The product draws it from the OS CSPRNG, so Cascade's permutations and the emulated strings differ
    on every run, and Cascade has a real frame error rate (measured: 1 failed 64-kbit frame in 2,460 at
    QBER 2.6 % corrected with the block sizes of 2.4 %, i.e. ~3 % of 5.4-Mbit blocks end in a
    verification abort). A test asserting on a block's outcome must see the same blocks every run;
    seeds per link, not one shared stream, because links step on their own threads."""
    def builder(link: str, protocol: str, frames_per_block: int, next_index: int) -> blocks.BlockBuilder:
        source = random.Random(f"{request.node.nodeid}/{link}/{next_index}")
        return blocks.BlockBuilder(link, protocol, frames_per_block, next_index, lambda: source.getrandbits(63))
    monkeypatch.setattr(fleet, "BlockBuilder", builder)

SMALL_FLEET = """
runtime:
  state_dir: {state}
  control_port: {control}
  device_exporter_port: {device}
  postprocessing_exporter_port: {pp}
  frame_seconds: 1.0
links:
  - id: bb84-a
    protocol: bb84-decoy
    preset: lim2014
    sites: {{alice: a, bob: b}}
    distance_km: 25
    detector: {{dead_time_s: 1.0e-7}}
    source: {{key_basis_probability: 0.7}}
    block_pulses: 2.0e+9
    seed: 1
  - id: mdi-a
    protocol: mdi
    preset: snspd
    sites: {{alice: a, bob: b, charlie: c}}
    distances_km: {{alice_charlie: 20, charlie_bob: 20}}
    source: {{mu: 0.3, nu: 0.1, p_mu: 0.4, p_nu: 0.4, key_basis_probability: 0.5}}
    block_pulses: 3.0e+10
    seed: 2
  - id: tf-a
    protocol: tf
    preset: snspd
    sites: {{alice: a, bob: b, charlie: c}}
    distances_km: {{alice_charlie: 100, charlie_bob: 100}}
    source: {{mu: 0.45, epsilon_send: 0.023, nu: 0.09, nu2: 0.42, z_window_probability: 0.7}}
    block_pulses: 2.0e+10
    seed: 3
"""


def write_fleet_config(directory: Path, control: int = 9800, device: int = 9810, pp: int = 9811) -> Path:
    path = directory / "links.yaml"
    path.write_text(SMALL_FLEET.format(state=directory / "state", control=control, device=device, pp=pp))
    return path


@pytest.fixture
def fleet_config_path(tmp_path: Path) -> Path:
    """A links.yaml in tmp_path: BB84 closes a block every 2 frames, TF every 20, MDI every 30."""
    return write_fleet_config(tmp_path)
