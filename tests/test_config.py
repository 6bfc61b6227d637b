"""links.yaml: the shipped fleet loads; every invalid config fails naming the file and the field."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from qkdops.config import DEFAULT_CONFIG, ConfigError, load_config, parse_config


def test_shipped_fleet_has_one_link_per_protocol_at_realistic_distances():
    config = load_config(DEFAULT_CONFIG)
    by_protocol = {spec.protocol: spec for spec in config.links}
    assert set(by_protocol) == {"bb84-decoy", "mdi", "tf"}
    assert by_protocol["bb84-decoy"].parameters["distance_km"] == 25
    mdi = by_protocol["mdi"]
    assert mdi.parameters["distance_km"] == 80 and mdi.parameters["relay_position"] == 0.5
    assert mdi.sites.charlie and by_protocol["tf"].parameters["distance_km"] == 300
    assert config.runtime.bind == "127.0.0.1"
    assert (config.runtime.control_port, config.runtime.device_exporter_port,
            config.runtime.postprocessing_exporter_port, config.runtime.pager_sink_port) == (9800, 9810, 9811, 9820)
    assert config.runtime.state_dir == DEFAULT_CONFIG.parent / "var/qkdops"


def _base() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


@pytest.mark.parametrize(("mutate", "field", "expected"), [
    (lambda c: c["links"][0]["detector"].update(efficiency=1.5), "links[0].detector.efficiency", "<= 1.0"),
    (lambda c: c["links"][0].update(colour="red"), "links[0].colour", "one of the keys"),
    (lambda c: c["links"][1].update(id=c["links"][0]["id"]), "links[1].id", "unique"),
    (lambda c: c["links"][0].update(protocol="e91"), "links[0].protocol", "bb84-decoy, mdi, tf"),
    (lambda c: c["links"][0]["sites"].update(charlie="relay"), "links[0].sites.charlie", "point-to-point"),
    (lambda c: c["links"][1]["sites"].pop("charlie"), "links[1].sites.charlie", "non-empty string"),
    (lambda c: c["links"][1]["source"].update(warp=2), "links[1].source.warp", "parameter of protocol mdi"),
    (lambda c: c["links"][1]["source"].update(nu=0.5), "links[1]", "mu > nu"),
    (lambda c: c["links"][2].update(block_pulses=-5), "links[2].block_pulses", "number in"),
    (lambda c: c["links"][2].update(preset="nope"), "links[2].preset", "one of"),
    (lambda c: c["runtime"].update(device_exporter_port=9800), "runtime", "distinct control"),
    (lambda c: c["runtime"].update(pager_sink_port=9093), "runtime", "pager sink, calibration and VictoriaMetrics ports"),
    (lambda c: c["runtime"].update(calibration_exporter_port=9811), "runtime", "calibration and VictoriaMetrics ports"),
    (lambda c: c["runtime"].update(victoria_metrics_port=9090), "runtime", "VictoriaMetrics ports"),
    (lambda c: c["runtime"].update(pager_sink_port=70000), "runtime.pager_sink_port", "65535"),
    (lambda c: c["runtime"].update(tracing="jaeger"), "runtime.tracing", "none, console, otlp"),
    (lambda c: c["runtime"].update(bind="lab north!"), "runtime.bind", "an IP address or host name, got 'lab north!'"),
    (lambda c: c["runtime"].update(bind="-lab"), "runtime.bind", "an IP address or host name"),
    (lambda c: c["runtime"].update(otlp_endpoint="ftp://collector:4318"), "runtime.otlp_endpoint", "an http(s) URL"),
    (lambda c: c["runtime"].update(otlp_endpoint="http://collector:99999/v1/traces"), "runtime.otlp_endpoint", "an http(s) URL"),
    (lambda c: c["runtime"].update(otlp_endpoint="http:///v1/traces"), "runtime.otlp_endpoint", "an http(s) URL"),
    (lambda c: c["runtime"].update(runbook_base_url="file:///etc/passwd"), "runtime.runbook_base_url", "an http(s) URL"),
    (lambda c: c["runtime"].update(state_dir="var/\0qkdops"), "runtime.state_dir", "a path (no NUL characters)"),
    (lambda c: c.update(links=[]), "links", "non-empty list"),
    (lambda c: c["links"][0].update(devices={"phase": {"loop_gain_rad_per_s": "fast"}}),
     "links[0].devices.phase.loop_gain_rad_per_s", "a finite number"),
    (lambda c: c["links"][0].update(devices={"phase": {"loop_gain_rad_per_s": float("inf")}}),
     "links[0].devices.phase.loop_gain_rad_per_s", "a finite number, got inf"),
    (lambda c: c["links"][0].update(distance_km=float("nan")), "links[0].distance_km", "a finite number, got nan"),
    (lambda c: c["key_delivery"].update(key_size_bits=100), "key_delivery.key_size_bits", "multiple of 8"),
    (lambda c: c["key_delivery"].update(key_size_bits=16), "key_delivery.key_size_bits", "[min_key_size_bits, max_key_size_bits]"),
    (lambda c: c["key_delivery"].update(max_key_count=0), "key_delivery.max_key_count", "number in"),
    (lambda c: c["key_delivery"].update(vendor="x"), "key_delivery.vendor", "one of the keys"),
    (lambda c: c["key_delivery"].update(pending_key_ttl_s=0), "key_delivery.pending_key_ttl_s", "number in"),
    (lambda c: c["key_delivery"].update(full_store="refuse"), "key_delivery.full_store", "one of discard_oldest, discard_newest"),
    (lambda c: c["links"][0].update(qkdl_id="metro"), "links[0].qkdl_id", "a UUID"),
    (lambda c: c["links"][0].update(qkdl_id=42), "links[0].qkdl_id", "a non-empty string"),
    (lambda c: c["key_delivery"].update(pending_key_ttl_s=float("nan")), "key_delivery.pending_key_ttl_s", "finite"),
    (lambda c: c["key_delivery"]["kmes"][1].update(site="lab-north"), "key_delivery.kmes[1].site", "one KME per site"),
    (lambda c: c["key_delivery"]["kmes"][1].update(port=9830), "key_delivery.kmes", "distinct port per KME"),
    (lambda c: c["key_delivery"]["kmes"][1].update(port=9811), "key_delivery.kmes", "distinct from the runtime's ports"),
    (lambda c: c["key_delivery"]["kmes"][1].update(skip_port=9830), "key_delivery.kmes", "per SKIP key provider"),
    (lambda c: c["key_delivery"]["kmes"][1].update(skip_port=9800), "key_delivery.kmes", "(ETSI 014 and SKIP) ports distinct"),
    (lambda c: c["key_delivery"]["kmes"][1].update(skip_port=70000), "key_delivery.kmes[1].skip_port", "65535"),
    (lambda c: c["key_delivery"]["kmes"][1].update(port=65500), "key_delivery.kmes[1].skip_port", "set skip_port"),
    (lambda c: c["key_delivery"]["kmes"][1].update(saes=[]), "key_delivery.kmes[1].saes", "non-empty list"),
    (lambda c: c["key_delivery"]["kmes"][1].update(saes=["sae/../x"]), "key_delivery.kmes[1].saes[0]", "an SAE id"),
    (lambda c: c["key_delivery"]["kmes"][1].update(saes=["sae-lab-north"]), "key_delivery.kmes[1].saes[0]",
     "not already served by site lab-north"),
])
def test_invalid_configs_name_the_file_and_field(tmp_path: Path, mutate, field, expected):
    raw = _base()
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {field}") and expected in message, message


def test_unreadable_and_malformed_files_are_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("links: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line 2, column 1: invalid YAML: "):
        load_config(broken)


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path):
    raw = _base()
    raw["links"][0]["block_pulses"] = "1e10"  # YAML 1.1 reads 1e10 as a string
    config = parse_config(raw, tmp_path / "x.yaml")
    assert config.links[0].block_pulses == 10 ** 10


def test_sites_without_a_listed_kme_get_one_with_a_default_sae(tmp_path: Path):
    raw = _base()
    raw["key_delivery"]["kmes"] = raw["key_delivery"]["kmes"][:1]
    config = parse_config(raw, tmp_path / "links.yaml")
    kmes = {k.site: k for k in config.key_delivery.kmes}
    assert set(kmes) == {s for link in config.links for s in (link.sites.alice, link.sites.bob)}
    assert kmes["lab-south"].port == 9831 and kmes["lab-south"].saes == ("sae-lab-south",)
    assert kmes["lab-south"].skip_port == 9931 and kmes["lab-north"].skip_port == kmes["lab-north"].port + 100
    assert config.key_delivery.site_of("sae-city-b") == "city-b" and config.key_delivery.site_of("nobody") is None


@pytest.mark.parametrize("command, option, value", [
    (["up"], "--duration", "inf"), (["emulate"], "--distance-km", "nan"), (["emulate"], "--block-pulses", "-inf"),
    (["keyrate"], "--pulses", "NaN"), (["dashboards", "render"], "--step", "infinity"),
])
def test_numeric_cli_options_refuse_nan_and_inf(command: list[str], option: str, value: str,
                                                capsys: pytest.CaptureFixture[str]):
    from qkdops_cli.cli import build_parser
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command, f"{option}={value}"])
    assert exited.value.code == 2
    assert f"argument {option}: not a finite number: '{value}'" in capsys.readouterr().err


def test_finite_float_reads_what_float_reads():
    from qkdops.config import finite_float
    assert finite_float("1e10") == 1e10 and finite_float(" -2.5 ") == -2.5


def test_a_link_s_qkdl_id_is_configured_or_derived_stably_from_its_id(tmp_path: Path):
    """ETSI GS QKD 015 names a key association link by a UUID: the one an operator's SDN controller
    knows (configured, normalised to lower case) or one derived from the link id — the same on every
    machine and restart, different per link."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["links"][1]["qkdl_id"] = "3FA85F64-5717-4562-B3FC-2C963F66AFA6"
    config = parse_config(raw, tmp_path / "links.yaml")
    derived = config.links[0].qkdl_uuid
    assert str(uuid.UUID(derived)) == derived and uuid.UUID(derived).version == 5
    assert derived == parse_config(yaml.safe_load(DEFAULT_CONFIG.read_text()), tmp_path / "x.yaml").links[0].qkdl_uuid
    assert config.links[1].qkdl_uuid == "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    assert len({link.qkdl_uuid for link in config.links}) == len(config.links)
