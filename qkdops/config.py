"""``links.yaml``: the fleet of emulated links and the runtime's ports, state and tracing settings.

Validated on load; every error names the file, the field (``links[1].detector.efficiency``) and what
was expected, and nothing starts from a config that does not validate. See the shipped
``links.yaml`` for the format; ``qkdops up --config FILE`` loads another.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qkdlink.protocols import PROTOCOL_NAMES, get_protocol
from qkdlink.protocols.base import ParameterError
from qkdlink.settings import DeviceSettings, LinkConfig
from qkdops.assets import asset
from qkdops.yaml_fields import FieldError, FieldReader
from qkdops.yaml_input import excerpt

DEFAULT_CONFIG = asset("links.yaml")
LINK_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
TRACING = ("none", "console", "otlp")
SAE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # also a certificate common name and a file name
UUID_TEXT = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")  # RFC 4122 text form
# The namespace of the qkdl_ids qkdops derives from link ids (LinkSpec.qkdl_uuid): UUIDv5 of this name.
QKDL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "links.qkdops")

# Detector families (physics.md, "Device ranges"): defaults a link's `detector:` section starts from.
DETECTOR_TYPES: Mapping[str, Mapping[str, float]] = {
    "ingaas-spad": {"detector_efficiency": 0.15, "dark_count_probability": 5e-6,
                    "afterpulse_probability": 0.03, "dead_time_s": 1e-6},
    "snspd": {"detector_efficiency": 0.85, "dark_count_probability": 1e-8,
              "afterpulse_probability": 0.0, "dead_time_s": 5e-8},
}
# `detector:` keys → protocol parameters
DETECTOR_FIELDS = {"efficiency": "detector_efficiency", "dark_count_probability": "dark_count_probability",
                   "afterpulse_probability": "afterpulse_probability", "dead_time_s": "dead_time_s"}
THRESHOLD_FIELDS = {"qber_abort": "qber_abort_threshold"}
SECURITY_FIELDS = {"epsilon_sec": "epsilon_sec", "epsilon_cor": "epsilon_cor"}


class ConfigError(FieldError):
    """Invalid configuration; the message is ``FILE: FIELD: what was expected, got what``."""


@dataclass(frozen=True)
class Sites:
    """Where the link's ends are; ``charlie`` is the relay of MDI and TF links."""

    alice: str
    bob: str
    charlie: str | None = None


ENGINES = ("bits", "model")
EC_METHODS = ("cascade", "ldpc")


@dataclass(frozen=True)
class PostProcessingSpec:
    """How a link's blocks are post-processed (``postprocessing:`` of a link in links.yaml).

    ``bits``: both ends' sifted strings are built and really reconciled over the emulated classical
    channel by ``error_correction`` — ``cascade`` (interactive; f ≈ 1.05, a thousand-odd round trips)
    or ``ldpc`` (blind syndrome decoding; one round trip per blind round, higher f) — then verified
    and privacy-amplified, each end on its own bits; the leak is what was disclosed. ``model``: no
    bits — the leak is f·n·H2(E) with the efficiency f the bits engine measured for the link's
    ``error_correction`` at that QBER (``qkdlink.postprocessing.efficiency``), and the key is
    random bytes given to both ends: for fleets too large to reconcile every link's bits in real
    time. ``verification: false`` skips the verification hash (a misconfiguration the key-confirmation
    check at hand-off must catch).
    """

    engine: str = "bits"
    error_correction: str = "cascade"
    verification: bool = True


@dataclass(frozen=True)
class LinkSpec:
    """One link of the fleet, resolved: protocol parameters complete and range-checked."""

    id: str
    protocol: str
    preset: str | None
    sites: Sites
    parameters: Mapping[str, float]
    repetition_rate_hz: float
    block_pulses: int
    key_rate_target_bps: float
    seed: int
    devices: DeviceSettings
    postprocessing: PostProcessingSpec = field(default_factory=PostProcessingSpec)
    qkdl_id: str = ""   # ETSI GS QKD 015 key association link id as configured ("": derived, see qkdl_uuid)

    @property
    def qkdl_uuid(self) -> str:
        """The link's ``qkdl_id`` in ETSI GS QKD 015's SDN model (a UUID): the one configured — the id
        the operator's SDN controller knows the link by — or one derived from the link id (UUIDv5), so
        it is stable across restarts and machines without configuration."""
        return self.qkdl_id or str(uuid.uuid5(QKDL_NAMESPACE, self.id))

    def emulator_config(self, frame_pulses: int) -> LinkConfig:
        """The emulator steps in frames; post-processing blocks are ``block_pulses`` long."""
        overrides = {k: v for k, v in self.parameters.items() if k != "repetition_rate_hz"}
        return LinkConfig(link_id=self.id, protocol=self.protocol, preset=self.preset, overrides=overrides,
                          frame_pulses=frame_pulses, repetition_rate_hz=self.repetition_rate_hz,
                          seed=self.seed, devices=self.devices)

    @property
    def block_seconds(self) -> float:
        return self.block_pulses / self.repetition_rate_hz


@dataclass(frozen=True)
class RuntimeSettings:
    """Where the runtime listens, keeps its state and sends traces."""

    bind: str = "127.0.0.1"
    control_port: int = 9800
    device_exporter_port: int = 9810
    postprocessing_exporter_port: int = 9811
    state_dir: Path = Path("var/qkdops")
    frame_seconds: float = 1.0
    tracing: str = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    key_store_capacity_bits: int = 10 ** 10
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    # `qkdops up --ha` (qkdops_cli.stack): the second Prometheus replica, the second and third
    # Alertmanager peers, and the three peers' gossip (cluster) ports. Reserved, and held distinct,
    # whether or not --ha runs, so turning it on never finds a port taken by the stack itself.
    prometheus_replica_port: int = 9091
    alertmanager_b_port: int = 9095
    alertmanager_c_port: int = 9096
    alertmanager_cluster_port: int = 9094
    alertmanager_b_cluster_port: int = 9097
    alertmanager_c_cluster_port: int = 9098
    victoria_metrics_port: int = 8428   # the long-term store, when `qkdops up --victoria-metrics` runs it
    scrape_interval_s: float = 5.0
    pager_sink_port: int = 9820
    calibration_exporter_port: int = 9812
    kme_probe_port: int = 9813   # `qkdops up`'s kme-probe (the KMEs watched over ETSI 014), with Prometheus
    # `qkdops up --workers N`: worker i's control API, device and post-processing exporters listen on
    # worker_port_base + 3i, + 3i + 1 and + 3i + 2 (fixed, so a restarted worker is the same target).
    worker_port_base: int = 9900
    # Where the alerts' runbook links point (the control API's /runbooks/, as whoever reads the page
    # reaches it); empty: this runtime's own control API address.
    runbook_base_url: str = ""


PORT_FIELDS = ("control_port", "device_exporter_port", "postprocessing_exporter_port", "prometheus_port", "alertmanager_port",
               "pager_sink_port", "calibration_exporter_port", "kme_probe_port", "victoria_metrics_port", "prometheus_replica_port",
               "alertmanager_b_port", "alertmanager_c_port", "alertmanager_cluster_port", "alertmanager_b_cluster_port",
               "alertmanager_c_cluster_port")
"""Every port field of RuntimeSettings: each is validated as a port and all must differ."""


@dataclass(frozen=True)
class KMESpec:
    """The key management entity of one site: where it listens — ETSI GS QKD 014 on ``port``, the SKIP
    key provider (IETF draft-cisco-skip) on ``skip_port`` — and the SAEs (applications, SKIP's
    systems) it serves."""

    site: str
    port: int
    saes: tuple[str, ...]
    skip_port: int = 0


@dataclass(frozen=True)
class KeyDelivery:
    """``key_delivery:``: the sites' ETSI GS QKD 014 KMEs and their key stores (``qkdops/kme``).

    ``max_key_count`` bounds each end's store per link, counted in keys of ``key_size_bits`` (the
    ETSI Status object's ``max_key_count``); ``handoff_timeout_s`` is how long post-processing waits
    for a KME to take a block's key before counting the attempt ``kme_timeout``; ``pending_key_ttl_s``
    how long a key issued by ``enc_keys`` waits for the slave's ``dec_keys`` before it expires (deleted
    at the slave's KME, counted in ``qkd_kme_keys_expired_total``).

    ``full_store`` is what a hand-off does to a store already holding ``max_key_count``: a full store is
    the healthy idle state of a link whose applications take less key than it makes, so the surplus is
    discarded by policy and counted (``qkd_key_store_discarded_bytes_total``), never refused —
    ``discard_oldest`` makes room by discarding the oldest unissued key at both ends (the store keeps
    the freshest key: the least time at rest), ``discard_newest`` discards the arriving block's key
    (no store write at all while full). When unissued key cannot make room (keys issued and awaiting
    ``dec_keys`` fill the store), the arriving key is discarded under either policy.
    """

    kmes: tuple[KMESpec, ...] = ()
    key_size_bits: int = 256
    min_key_size_bits: int = 64
    max_key_size_bits: int = 8192
    max_key_per_request: int = 1024
    max_key_count: int = 10_000_000
    handoff_timeout_s: float = 5.0
    pending_key_ttl_s: float = 3600.0
    full_store: str = "discard_oldest"

    def kme(self, site: str) -> KMESpec | None:
        return next((k for k in self.kmes if k.site == site), None)

    def site_of(self, sae: str) -> str | None:
        return next((k.site for k in self.kmes if sae in k.saes), None)

    def ports(self) -> list[int]:
        """Every fixed port the KMEs listen on (ETSI 014 and SKIP; 0, any free port, left out)."""
        return [p for k in self.kmes for p in (k.port, k.skip_port) if p]


FULL_STORE_POLICIES = ("discard_oldest", "discard_newest")   # key_delivery.full_store (KeyDelivery says what each does)
KME_PORT_BASE = 9830  # KMEs not listed in key_delivery.kmes: site i (first appearance in links) on 9830 + i
SKIP_PORT_OFFSET = 100  # a KME's SKIP key provider listens on its ETSI port + 100 unless skip_port says otherwise


def default_skip_port(port: int) -> int:
    """The SKIP port beside an ETSI 014 port (0, any free port, stays 0)."""
    return port + SKIP_PORT_OFFSET if port else 0


@dataclass(frozen=True)
class FleetConfig:
    links: tuple[LinkSpec, ...]
    runtime: RuntimeSettings
    source: Path = field(default=DEFAULT_CONFIG)
    key_delivery: KeyDelivery = field(default_factory=KeyDelivery)

    def shard(self, index: int, workers: int) -> FleetConfig:
        """The links worker ``index`` of ``workers`` runs: every ``workers``-th link in configuration
        order, starting at the ``index``-th, so each worker gets a share of every protocol and distance.

        Which worker runs a link does not matter for its history: every worker opens the same archive,
        key buffer and KME store in the state dir, so a link resumes where it stopped whatever the
        number of workers. The key delivery section stays whole (the KMEs serve every link's sites).
        """
        if not 0 <= index < workers:
            raise ValueError(f"shard {index} of {workers}: expected 0 <= shard < workers")
        return dataclasses.replace(self, links=self.links[index::workers])

    def link(self, link_id: str) -> LinkSpec:
        for spec in self.links:
            if spec.id == link_id:
                return spec
        raise KeyError(link_id)


@dataclass(frozen=True)
class WorkerPorts:
    """Where one worker of a sharded fleet (``qkdops up --workers N``) listens."""

    control: int
    device: int
    postprocessing: int


def worker_ports(config: FleetConfig, workers: int) -> list[WorkerPorts]:
    """The ports of workers 0 … ``workers`` - 1 from ``runtime.worker_port_base`` (three each, in a row).

    ConfigError naming the file and ``runtime.worker_port_base`` when they leave the port range or
    meet another port of the config (a runtime port or a KME's), which would only show later as a
    worker that cannot listen.
    """
    rt = config.runtime
    reader = FieldReader(config.source, ConfigError)
    if workers < 1:
        raise ValueError(f"--workers: expected at least 1, got {workers}")
    base = rt.worker_port_base
    if base + 3 * workers - 1 > 65535:
        reader.fail("runtime.worker_port_base", f"a base leaving room for {workers} workers (3 ports each, up to 65535)", base)
    taken = {*(getattr(rt, name) for name in PORT_FIELDS), *config.key_delivery.ports()}
    if clash := sorted(taken & set(range(base, base + 3 * workers))):
        reader.fail("runtime.worker_port_base", f"worker ports {base}-{base + 3 * workers - 1} clear of the other ports", clash)
    return [WorkerPorts(base + 3 * i, base + 3 * i + 1, base + 3 * i + 2) for i in range(workers)]


def read_yaml(path: Path) -> Any:
    """The parsed YAML of a config file (``qkdops.yaml_input``: no alias bombs, no deep nesting, no
    duplicate keys), or ConfigError naming the file."""
    return FieldReader(path, ConfigError).load()


def load_config(path: str | Path = DEFAULT_CONFIG) -> FleetConfig:
    """Read and validate ``path``; relative ``state_dir`` is relative to the config file."""
    path = Path(path)
    return parse_config(read_yaml(path), path)


def parse_config(raw: Any, path: Path) -> FleetConfig:
    reader = FieldReader(path, ConfigError)
    top = reader.mapping(raw, "", {"runtime", "links", "key_delivery"})
    runtime = _runtime(reader, top.get("runtime", {}), path)
    links_raw = reader.sequence(top.get("links"), "links", "a non-empty list of links")
    links = tuple(_link(reader, item, f"links[{i}]") for i, item in enumerate(links_raw))
    seen: set[str] = set()
    for i, spec in enumerate(links):
        if spec.id in seen:
            reader.fail(f"links[{i}].id", "a unique link id", spec.id)
        seen.add(spec.id)
    ports = [getattr(runtime, name) for name in PORT_FIELDS]
    if len(set(ports)) != len(ports):
        reader.fail("runtime", "distinct control, exporter, Prometheus (and replica), Alertmanager (peers' HTTP and cluster), "
                    "pager sink, calibration and VictoriaMetrics ports", ports)
    delivery = _key_delivery(reader, top.get("key_delivery", {}), links)
    taken = [port for port in delivery.ports() if port in ports]
    if taken:
        reader.fail("key_delivery.kmes", "KME (ETSI 014 and SKIP) ports distinct from the runtime's ports", taken)
    return FleetConfig(links, runtime, path, delivery)


DELIVERY_INTEGERS = {"key_size_bits": (8, 2 ** 16), "min_key_size_bits": (8, 2 ** 16), "max_key_size_bits": (8, 2 ** 16),
                     "max_key_per_request": (1, 100_000), "max_key_count": (1, 2 ** 50)}


def _key_delivery(reader: FieldReader, raw: Any, links: tuple[LinkSpec, ...]) -> KeyDelivery:
    """Every site at an end of a link gets a KME: listed ones as given, the others on
    ``KME_PORT_BASE + i`` with one SAE ``sae-<site>``; sizes are whole bytes."""
    data = reader.mapping(raw, "key_delivery", {*DELIVERY_INTEGERS, "handoff_timeout_s", "pending_key_ttl_s", "full_store", "kmes"})
    values: dict[str, Any] = {}
    for name, (low, high) in DELIVERY_INTEGERS.items():
        if name in data:
            values[name] = reader.integer(data[name], f"key_delivery.{name}", low, high)
            if name.endswith("size_bits") and values[name] % 8:
                reader.fail(f"key_delivery.{name}", "a multiple of 8 bits (keys are whole bytes)", data[name])
    if "handoff_timeout_s" in data:
        values["handoff_timeout_s"] = reader.number(data["handoff_timeout_s"], "key_delivery.handoff_timeout_s", 0.01, 600.0)
    if "pending_key_ttl_s" in data:
        values["pending_key_ttl_s"] = reader.number(data["pending_key_ttl_s"], "key_delivery.pending_key_ttl_s", 1.0, 30 * 86400.0)
    if "full_store" in data:
        values["full_store"] = reader.choice(data["full_store"], "key_delivery.full_store", FULL_STORE_POLICIES)
    delivery = dataclasses.replace(KeyDelivery(), **values)
    if not delivery.min_key_size_bits <= delivery.key_size_bits <= delivery.max_key_size_bits:
        reader.fail("key_delivery.key_size_bits", f"a size within [min_key_size_bits, max_key_size_bits] = "
                    f"[{delivery.min_key_size_bits}, {delivery.max_key_size_bits}]", delivery.key_size_bits)
    listed: dict[str, KMESpec] = {}
    saes: dict[str, str] = {}
    kmes_raw = reader.sequence(data.get("kmes", []), "key_delivery.kmes", "a list of {site, port, saes[, skip_port]}", empty=True)
    for i, item in enumerate(kmes_raw):
        where = f"key_delivery.kmes[{i}]"
        entry = reader.mapping(item, where, {"site", "port", "saes", "skip_port"})
        site = reader.string(entry.get("site"), f"{where}.site")
        if site in listed:
            reader.fail(f"{where}.site", "one KME per site", site)
        port = reader.integer(entry.get("port"), f"{where}.port", 0, 65535)
        names = reader.sequence(entry.get("saes"), f"{where}.saes", "a non-empty list of SAE ids")
        for j, sae in enumerate(names):
            reader.string(sae, f"{where}.saes[{j}]", SAE_ID, "an SAE id of letters, digits, '.', '-' or '_' (at most 63)")
            if sae in saes:
                reader.fail(f"{where}.saes[{j}]", f"an SAE id not already served by site {saes[sae]}", sae)
            saes[sae] = site
        skip_port = (reader.integer(entry["skip_port"], f"{where}.skip_port", 0, 65535) if "skip_port" in entry
                     else default_skip_port(port))
        if skip_port > 65535:
            reader.fail(f"{where}.skip_port", f"a port up to 65535 (the default is port + {SKIP_PORT_OFFSET}: set skip_port)", skip_port)
        listed[site] = KMESpec(site, port, tuple(names), skip_port)
    ends = list(dict.fromkeys(s for spec in links for s in (spec.sites.alice, spec.sites.bob)))
    kmes = list(listed.values())
    for i, site in enumerate(ends):
        if site in listed:
            continue
        sae = f"sae-{site}"
        if not SAE_ID.match(sae) or sae in saes:
            reader.fail("key_delivery.kmes", f"a KME listed for site {site!r} (its default SAE id {sae!r} is unusable)", None)
        kmes.append(KMESpec(site, KME_PORT_BASE + i, (sae,), default_skip_port(KME_PORT_BASE + i)))
    result = dataclasses.replace(delivery, kmes=tuple(kmes))
    ports = result.ports()
    if len(set(ports)) != len(ports):
        reader.fail("key_delivery.kmes", "a distinct port per KME and per SKIP key provider", ports)
    return result


def _runtime(reader: FieldReader, raw: Any, path: Path) -> RuntimeSettings:
    defaults = RuntimeSettings()
    data = reader.mapping(raw, "runtime", {f.name for f in dataclasses.fields(RuntimeSettings)})
    values: dict[str, Any] = {}
    for name in (*PORT_FIELDS, "worker_port_base"):   # a base: the workers' ports follow it
        if name in data:
            values[name] = reader.integer(data[name], f"runtime.{name}", 1, 65535)
    if "bind" in data:
        values["bind"] = reader.host(data["bind"], "runtime.bind")
    if "state_dir" in data:
        state = reader.fs_path(data["state_dir"], "runtime.state_dir")
        values["state_dir"] = state if state.is_absolute() else path.parent / state
    else:
        values["state_dir"] = path.parent / defaults.state_dir
    if "frame_seconds" in data:
        values["frame_seconds"] = reader.number(data["frame_seconds"], "runtime.frame_seconds", 0.01, 60.0)
    if "scrape_interval_s" in data:
        values["scrape_interval_s"] = reader.number(data["scrape_interval_s"], "runtime.scrape_interval_s", 0.5, 300.0)
    if "tracing" in data:
        values["tracing"] = reader.choice(data["tracing"], "runtime.tracing", TRACING)
    if "otlp_endpoint" in data:
        values["otlp_endpoint"] = reader.http_url(data["otlp_endpoint"], "runtime.otlp_endpoint")
    if "runbook_base_url" in data:
        values["runbook_base_url"] = reader.http_url(data["runbook_base_url"], "runtime.runbook_base_url").rstrip("/")
    if "key_store_capacity_bits" in data:
        values["key_store_capacity_bits"] = reader.integer(data["key_store_capacity_bits"],
                                                           "runtime.key_store_capacity_bits", 1, 2 ** 62)
    return dataclasses.replace(defaults, **values)


LINK_FIELDS = {"id", "protocol", "preset", "sites", "distance_km", "distances_km", "fiber_loss_db_per_km",
               "detector", "source", "thresholds", "security", "parameters", "repetition_rate_hz",
               "block_pulses", "key_rate_target_bps", "seed", "devices", "postprocessing", "qkdl_id"}


def _link(reader: FieldReader, raw: Any, where: str) -> LinkSpec:
    data = reader.mapping(raw, where, LINK_FIELDS)
    link_id = reader.string(data.get("id"), f"{where}.id", LINK_ID, "lower-case letters, digits, '-' or '_' (at most 63)")
    protocol = reader.choice(data.get("protocol"), f"{where}.protocol", PROTOCOL_NAMES)
    model = get_protocol(protocol)
    preset = data.get("preset")
    if preset is not None and (not isinstance(preset, str) or preset not in model.presets):
        reader.fail(f"{where}.preset", f"one of {', '.join(sorted(model.presets))} for {protocol}", preset)
    sites = _sites(reader, data.get("sites"), f"{where}.sites", relay=protocol != "bb84-decoy")

    overrides: dict[str, tuple[float, str]] = {}  # protocol parameter → (value, field it came from)

    def put(param: str, value: Any, field_name: str) -> None:
        overrides[param] = (reader.number(value, field_name), field_name)

    if "distances_km" in data:
        if protocol == "bb84-decoy":
            reader.fail(f"{where}.distances_km", "distance_km for a point-to-point bb84-decoy link", data["distances_km"])
        legs = reader.mapping(data["distances_km"], f"{where}.distances_km", {"alice_charlie", "charlie_bob"})
        a = reader.number(legs.get("alice_charlie"), f"{where}.distances_km.alice_charlie", 0.0)
        b = reader.number(legs.get("charlie_bob"), f"{where}.distances_km.charlie_bob", 0.0)
        if a + b <= 0:
            reader.fail(f"{where}.distances_km", "a positive total distance", a + b)
        overrides["distance_km"] = (a + b, f"{where}.distances_km")
        overrides["relay_position"] = (a / (a + b), f"{where}.distances_km")
    if "distance_km" in data:
        if "distances_km" in data:
            reader.fail(f"{where}.distance_km", "either distance_km or distances_km, not both", data["distance_km"])
        put("distance_km", data["distance_km"], f"{where}.distance_km")
    if "fiber_loss_db_per_km" in data:
        put("fiber_loss_db_per_km", data["fiber_loss_db_per_km"], f"{where}.fiber_loss_db_per_km")
    if "detector" in data:
        detector = reader.mapping(data["detector"], f"{where}.detector", {"type", *DETECTOR_FIELDS})
        if "type" in detector:
            kind = reader.choice(detector["type"], f"{where}.detector.type", tuple(DETECTOR_TYPES))
            for param, value in DETECTOR_TYPES[kind].items():
                overrides[param] = (value, f"{where}.detector.type")
        for key, param in DETECTOR_FIELDS.items():
            if key in detector:
                put(param, detector[key], f"{where}.detector.{key}")
    for section, table in (("thresholds", THRESHOLD_FIELDS), ("security", SECURITY_FIELDS)):
        if section in data:
            values = reader.mapping(data[section], f"{where}.{section}", set(table))
            for key, param in table.items():
                if key in values:
                    put(param, values[key], f"{where}.{section}.{key}")
    for section in ("source", "parameters"):
        if section in data:
            for key, value in reader.mapping(data[section], f"{where}.{section}", None).items():
                put(str(key), value, f"{where}.{section}.{key}")

    repetition = reader.number(data.get("repetition_rate_hz", 1e9), f"{where}.repetition_rate_hz", 1.0, 1e11)
    overrides["repetition_rate_hz"] = (repetition, f"{where}.repetition_rate_hz")
    for param, (value, field_name) in overrides.items():
        try:
            spec = model.parameter(param)
        except ParameterError:
            reader.fail(field_name, f"a parameter of protocol {protocol} (see qkdops keyrate --protocol "
                        f"{protocol} --show-params)", param)
        try:
            spec.check(value)
        except ParameterError as exc:
            reader.problem(field_name, str(exc))
    try:
        parameters = model.resolve({k: v for k, (v, _) in overrides.items()}, preset)
    except ParameterError as exc:
        reader.problem(where, str(exc))
    block_pulses = reader.integer(data.get("block_pulses", 10 ** 10), f"{where}.block_pulses", 1, 2 ** 62)
    target = reader.number(data.get("key_rate_target_bps", 0.0), f"{where}.key_rate_target_bps", 0.0)
    seed = reader.integer(data.get("seed", 0), f"{where}.seed", 0, 2 ** 63)
    devices = _devices(reader, data.get("devices", {}), f"{where}.devices")
    postprocessing = _postprocessing(reader, data.get("postprocessing", {}), f"{where}.postprocessing")
    qkdl_id = ""
    if "qkdl_id" in data:
        qkdl_id = reader.string(data["qkdl_id"], f"{where}.qkdl_id", UUID_TEXT,
                                "a UUID (ETSI GS QKD 015 qkdl_id), e.g. 3fa85f64-5717-4562-b3fc-2c963f66afa6") or ""
        qkdl_id = qkdl_id.lower()
    return LinkSpec(link_id, protocol, preset, sites, parameters, repetition, block_pulses, target, seed, devices,
                    postprocessing, qkdl_id)


def _postprocessing(reader: FieldReader, raw: Any, where: str) -> PostProcessingSpec:
    data = reader.mapping(raw, where, {"engine", "error_correction", "verification"})
    default = PostProcessingSpec()
    engine = reader.choice(data.get("engine", default.engine), f"{where}.engine", ENGINES)
    method = reader.choice(data.get("error_correction", default.error_correction), f"{where}.error_correction", EC_METHODS)
    verification = reader.boolean(data.get("verification", default.verification), f"{where}.verification")
    return PostProcessingSpec(engine, method, verification)


def _sites(reader: FieldReader, raw: Any, where: str, relay: bool) -> Sites:
    data = reader.mapping(raw, where, {"alice", "bob", "charlie"})
    alice = reader.string(data.get("alice"), f"{where}.alice")
    bob = reader.string(data.get("bob"), f"{where}.bob")
    charlie = data.get("charlie")
    if relay:
        charlie = reader.string(charlie, f"{where}.charlie")
    elif charlie is not None:
        reader.fail(f"{where}.charlie", "no relay site for a point-to-point bb84-decoy link", charlie)
    return Sites(alice, bob, charlie)


def _devices(reader: FieldReader, raw: Any, where: str) -> DeviceSettings:
    """``devices: {phase: {drift_rad_per_s: 0.2}, ...}`` over the healthy defaults."""
    defaults = DeviceSettings()
    sections = {f.name for f in dataclasses.fields(DeviceSettings)}
    data = reader.mapping(raw, where, sections)
    replaced: dict[str, Any] = {}
    for name, value in data.items():
        current = getattr(defaults, name)
        allowed = {f.name for f in dataclasses.fields(current)}
        values = reader.mapping(value, f"{where}.{name}", allowed)
        numbers = {k: reader.number(v, f"{where}.{name}.{k}") for k, v in values.items()}
        try:
            replaced[name] = dataclasses.replace(current, **numbers)
        except ValueError as exc:
            reader.problem(f"{where}.{name}", str(exc))
    return dataclasses.replace(defaults, **replaced)


def finite_float(text: str) -> float:
    """argparse ``type`` of every numeric command-line option: a finite number (``nan`` and ``inf``,
    which ``float`` accepts, are refused like in the config files)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {excerpt(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {excerpt(text)}")
    return value
