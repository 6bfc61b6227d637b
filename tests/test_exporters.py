"""Device and post-processing exporters: catalogue equality, promtool, counters, labels, no key, HTTP.

Link states are fed the way the runtime feeds them — ``LinkState.record_*`` with real telemetry and
counts of an emulated ``Link`` of each protocol and the finite-key estimate of each block — and
the exporters' text exposition is parsed and checked against ``exporters/catalogue.yaml``.
"""

from __future__ import annotations

import gzip

import dataclasses
import logging
import math
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.parser import text_string_to_metric_families

from exporters import CATALOGUE, DeviceCollector, PostProcessingCollector, render, serve
from exporters.postprocessing import WorkerStatus
from exporters.catalogue import DEVICE, POSTPROCESSING, CatalogueError, Families, load
from qkdlink.settings import INTENSITY_OF_PARAMETER
from qkdlink.emulator import FrameRecord, Link, LinkConfig
from qkdlink.settings import intensity_parameters
from qkdlink.protocols import PROTOCOL_NAMES, get_protocol
from qkdlink.physics.entropy import binary_entropy
from qkdlink.protocols.base import FINITE
from qkdops.runtime.pipeline import BlockResult
from qkdops.kme.stats import KMEStats
from qkdops.runtime.faults import FAULTS
from qkdops.runtime.state import BLOCK_REASONS, CALIBRATION_ACTIONS, HANDOFF_OUTCOMES, STAGES, LinkObjectives, LinkSnapshot, LinkState
from tests.exposition_checks import assert_equals_catalogue, families

SITES = {"bb84-decoy": {"alice": "metro-a", "bob": "metro-b"},
         "mdi": {"alice": "site-a", "bob": "site-b", "charlie": "relay-c"},
         "tf": {"alice": "west", "bob": "east", "charlie": "relay-mid"}}
# (preset, distance km, pulses per block) at which each protocol makes key from every block.
SETTINGS = {"bb84-decoy": (None, 25.0, 10 ** 10), "mdi": ("snspd", 40.0, 10 ** 11), "tf": ("snspd", 200.0, 10 ** 10)}
START_UNIX_S = 1.7e9
KEY_MARKER = "KEYMATERIAL-0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
NUMBER_OR_TIME = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|\d{4}-\d{2}-\d{2}.*|\d+:\d{2}.*")
# What Prometheus sends: OpenMetrics preferred, text 0.0.4 accepted.
PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
COLLECTORS: dict[str, type] = {DEVICE: DeviceCollector, POSTPROCESSING: PostProcessingCollector}
# The runtime's two exporters (the calibration scheduler's is tested in tests/test_calibration_metrics.py).
EXPORTERS = tuple(COLLECTORS)


class FedLink:
    """An emulated link and the LinkState the runtime would keep for it."""

    def __init__(self, protocol: str, seed: int = 3, name: str | None = None) -> None:
        preset, distance_km, frame_pulses = SETTINGS[protocol]
        self.link = Link(LinkConfig(name or f"{protocol}-lab", protocol=protocol, preset=preset, frame_pulses=frame_pulses,
                                    seed=seed, overrides={"distance_km": distance_km}))
        classes = self.link.protocol.pulse_classes(self.link.nominal)
        self.state = LinkState(self.link.config.link_id, protocol, SITES[protocol],
                               intensities=sorted({c.intensity for c in classes}), bases=("Z", "X"),
                               handoff_buffer_capacity_bits=1e8, key_store_capacity_keys=1e6,
                               objectives=LinkObjectives(10.0, 1e4, self.link.nominal["qber_abort_threshold"],
                                                         self.link.nominal["dark_count_probability"] * 1e9,
                                                         0.2 * distance_km))
        self.rng = np.random.default_rng(seed)
        self.store_bits = 0.0

    def step(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            self._record(self.link.step_frame())

    def _record(self, r: FrameRecord) -> None:
        t = r.telemetry
        decoy_pulses: dict[str, float] = {}
        decoy_detections: dict[str, float] = {}
        sifted = dict.fromkeys(("Z", "X"), 0.0)
        errors = dict.fromkeys(("Z", "X"), 0.0)
        for (intensity, basis), c in r.counts.classes.items():
            decoy_pulses[intensity] = decoy_pulses.get(intensity, 0.0) + c.sent
            decoy_detections[intensity] = decoy_detections.get(intensity, 0.0) + c.detected
            sifted[basis] += c.detected
            errors[basis] += c.errors
        self.state.record_frame(t, r.active_faults, r.counts.pulses, r.detected_total, decoy_pulses, decoy_detections,
                                jitter_samples=self.rng.normal(0.0, t.timing_jitter_s, 64),
                                rng_failures=t.rng_apt_failures)
        stage_seconds = {s: 1e-4 * (i + 1) for i, s in enumerate(STAGES)}
        if not t.classical_channel_up:  # no sifting without the classical channel: nothing else to record
            result = BlockResult(self.link.config.link_id, r.index, "classical_channel", {}, {}, None, None, None, 0, 0.0, None)
            self.state.record_block(result, START_UNIX_S + r.end_s, {"sifting": stage_seconds["sifting"]})
            return
        estimate = self.link.protocol.estimate(r.counts, r.nominal, FINITE)
        reason = estimate.abort_reason or "none"
        key = int(estimate.secret_key_bits) if reason == "none" and estimate.secret_key_bits else 0
        # What the bits engine reports for such a block: Cascade at f ≈ 1.1 on frames of 2^16 bits.
        n, wrong = self.link.protocol.key_bits(r.counts)
        leak = 1.1 * n * binary_entropy(wrong / n) if n and wrong else 0.0
        result = BlockResult(self.link.config.link_id, r.index, reason, sifted, errors, estimate.qber, estimate.y1_lower,
                             estimate.e1_upper, key, leak, estimate.qber, "bits", n, wrong, 120, 60, -(-n // 65536), 0,
                             1.1 if wrong else None)
        self.state.record_block(result, START_UNIX_S + r.end_s, stage_seconds, {s: 1e-3 for s in STAGES[:-1]}, 0.05)
        if key:
            self.store_bits += key
            self.state.record_handoff("success", 2e-3, self.store_bits)
            ends = (self.state.sites["alice"], self.state.sites["bob"])
            self.state.set_key_stores({site: self.store_bits / 256 for site in ends}, {("sae-a", "enc_keys"): self.store_bits / 512},
                                      0.0, {"accepted": self.store_bits // 8, "discarded": 0, "issued": self.store_bits // 16})


@pytest.fixture(scope="module")
def fleet() -> list[FedLink]:
    """One link of each protocol, a few blocks in; the MDI link has its classical channel cut."""
    links = [FedLink(protocol) for protocol in PROTOCOL_NAMES]
    for fed in links:
        fed.step(2)
        fed.state.record_calibration("relock_phase", True)
    links[1].link.inject("classical_channel_outage")
    links[1].step()
    return links


def snapshots_of(links: list[FedLink]) -> Callable[[], list[LinkSnapshot]]:
    return lambda: [fed.state.snapshot() for fed in links]


def kme_stats() -> KMEStats:
    """Two sites' KMEs that answered a few requests (site-level series of the post-processing exporter)."""
    stats = KMEStats()
    for site, api, call, code in (("metro-a", "etsi014", "enc_keys", 200), ("metro-b", "etsi014", "dec_keys", 200),
                                  ("metro-b", "etsi014", "dec_keys", 401), ("metro-a", "skip", "key", 200)):
        stats.request(site, api, call, code, 2e-3)
    return stats


WORKERS = [WorkerStatus("worker-0", True, 0, 2), WorkerStatus("worker-1", False, 3, 1)]   # a sharded fleet's supervisor's view


def exposition(exporter: str, snapshots: Callable[[], list[LinkSnapshot]]) -> str:
    if exporter == POSTPROCESSING:
        return render(PostProcessingCollector(snapshots, kme_stats().snapshot, lambda: WORKERS)).decode()
    return render(COLLECTORS[exporter](snapshots)).decode()


def series(text: str) -> Iterator[tuple[str, str, dict[str, str], float]]:
    """(exposed metric name, type, labels without le, value) for every sample."""
    for name, (kind, samples) in families(text).items():
        for s in samples:
            yield name, kind, {k: v for k, v in s.labels.items() if k != "le"}, s.value


# ---- catalogue ------------------------------------------------------------------------------------

def test_catalogue_closed_sets_match_the_code() -> None:
    """The catalogue's closed sets are the runtime's and emulator's, so no value can go unlisted."""
    labels = CATALOGUE.labels
    assert labels["protocol"] == set(PROTOCOL_NAMES)
    assert labels["reason"] == set(BLOCK_REASONS)
    assert labels["stage"] == set(STAGES)
    assert labels["fault"] == set(FAULTS)
    assert labels["action"] == set(CALIBRATION_ACTIONS)
    assert CATALOGUE.metrics["qkd_key_handoffs_total"].label_values["outcome"] == set(HANDOFF_OUTCOMES)
    for name in PROTOCOL_NAMES:
        protocol = get_protocol(name)
        for preset in protocol.presets:
            classes = protocol.pulse_classes(protocol.resolve(preset=preset))
            assert {c.intensity for c in classes} <= labels["intensity"], (name, preset)
            assert {c.basis for c in classes} <= labels["basis"], (name, preset)
        assert {INTENSITY_OF_PARAMETER[p] for p in intensity_parameters(protocol)} <= labels["intensity"]


def test_catalogue_rejects_malformed_entries() -> None:
    good = "labels: {link: null, protocol: [tf]}\nmetrics:\n  qkd_x_total: {type: counter, unit: bits, exporter: device, " \
           "labels: [link, protocol], help: h}\n"
    assert "qkd_x_total" in load(good).metrics
    for bad, field in ((good.replace("counter", "summary"), "qkd_x_total.type"),
                       (good.replace("qkd_x_total", "qkd_xy"), "only counters"),
                       (good.replace("device", "both"), "qkd_x_total.exporter"),
                       (good.replace("[link, protocol]", "[link, basis]"), "qkd_x_total.labels"),
                       (good.replace("help: h", "help: ''"), "qkd_x_total.help")):
        with pytest.raises(CatalogueError, match=re.escape(field)):
            load(bad, "cat.yaml")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_exposition_equals_catalogue(fleet: list[FedLink], exporter: str) -> None:
    """(a) Names, types and label names exposed == the catalogue, in both directions; HELP from it."""
    assert_equals_catalogue(exposition(exporter, snapshots_of(fleet)), exporter)


def _prometheus_client_exposition(exporter: str, snapshots: list, names: set[str] | None = None) -> bytes:
    """The reference: the same samples as prometheus_client metric families, rendered by its
    ``generate_latest`` (restricted like its servers' ``name[]``) — what the exporters served before
    they wrote the text format themselves."""
    kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}

    class Reference(Families):
        """Families that also keep every sample as prometheus_client objects."""

        def __init__(self) -> None:
            super().__init__(exporter)
            self.metrics = {m.name: kinds[m.type](m.name, m.help, labels=m.labels) for m in CATALOGUE.for_exporter(exporter)}

        def add(self, name, labels, value):
            if value is not None and not math.isnan(value):
                self.metrics[name].add_metric(labels, value)

        def add_histogram(self, name, labels, histogram):
            self.metrics[name].add_metric(labels, [(floatToGoString(b), n) for b, n in histogram.buckets], histogram.sum)

    reference = Reference()
    collector = COLLECTORS[exporter](lambda: snapshots)
    for snapshot in snapshots:
        collector.add_link(reference, snapshot)

    class Registered:
        def describe(self):
            return list(reference.metrics.values())

        collect = describe

    registry = CollectorRegistry()
    registry.register(Registered())
    return generate_latest(registry.restricted_registry(names) if names else registry)


@pytest.mark.parametrize("exporter", (DEVICE, POSTPROCESSING))
def test_the_exposition_is_byte_for_byte_what_prometheus_client_writes(fleet: list[FedLink], exporter: str) -> None:
    """Families writes the text format itself (5× cheaper at 1,000 links); the bytes are prometheus_client's,
    whole and restricted by name[] (a counter, a histogram's buckets, a histogram's count)."""
    snapshots = snapshots_of(fleet)()
    collector = COLLECTORS[exporter](lambda: snapshots)
    assert collector.render() == _prometheus_client_exposition(exporter, snapshots)
    names = {"qkd_pulses_sent_total", "qkd_timing_jitter_seconds_bucket", "qkd_secret_key_bits_total",
             "qkd_postprocessing_duration_seconds_count", "qkd_not_a_metric"}
    assert collector.render(names) == _prometheus_client_exposition(exporter, snapshots, names) != b""
    assert COLLECTORS[exporter](lambda: []).render() == _prometheus_client_exposition(exporter, [])


# ---- exposition quality -----------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_promtool_check_metrics_reports_nothing_but_bits(fleet: list[FedLink], exporter: str) -> None:
    """(b) promtool's linter (naming, units, counters, HELP, types in names) has nothing to say …

    … except one thing it says of every name with a ``bits`` token (promlint maps bits → bytes):
    only the fixed contract names ``qkd_secret_key_bits_total`` and ``qkd_sifted_bits_total`` carry one;
    every other quantity of key is published in bytes, the base unit.
    """
    text = exposition(exporter, snapshots_of(fleet))
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    bits = {m.name for m in CATALOGUE.for_exporter(exporter) if m.unit == "bits" and "bits" in m.name.split("_")}
    assert bits == ({"qkd_secret_key_bits_total", "qkd_sifted_bits_total"} if exporter != DEVICE else set())
    expected = "".join(sorted(f'{name} use base unit "bytes" instead of "bits"\n' for name in bits))
    assert (result.returncode, result.stdout, "".join(sorted(result.stderr.splitlines(keepends=True)))) \
        == (3 if bits else 0, "", expected)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_counters_never_decrease_across_renders(exporter: str) -> None:
    """(c) Every counter and histogram series survives and never goes down while links run."""
    links = [FedLink(protocol, seed=11) for protocol in PROTOCOL_NAMES]
    previous: dict[tuple, float] = {}
    for _ in range(4):
        text = exposition(exporter, snapshots_of(links))
        current = {}
        for kind, samples in families(text).values():
            if kind in ("counter", "histogram"):
                current.update({(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples})
        assert set(previous) <= set(current)
        assert all(current[k] >= v for k, v in previous.items()), [k for k, v in previous.items() if current[k] < v]
        previous = current
        for fed in links:
            fed.step()
    key = ("qkd_secret_key_bits_total" if exporter == POSTPROCESSING else "qkd_pulses_sent_total",
           (("link", "bb84-decoy-lab"), ("protocol", "bb84-decoy")))
    assert previous[key] > 0


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_label_values_are_closed_and_never_numbers(fleet: list[FedLink], exporter: str) -> None:
    """(d) Every label value is in its metric's closed set; none looks like a number or a time."""
    links = {fed.state.link for fed in fleet}
    sites = {v for fed in fleet for v in fed.state.sites.values()} | {""}
    for name, _, labels, _ in series(exposition(exporter, snapshots_of(fleet))):
        for label, value in labels.items():
            allowed = CATALOGUE.metrics[name].label_values[label]
            if allowed is None:
                allowed = (links if label == "link" else {"sae-a"} if label == "sae" else {w.worker for w in WORKERS}
                           if label == "worker" else sites)
            assert value in allowed, (name, label, value)
            if label != "code":  # HTTP status codes: a closed set, numeric by Prometheus convention (promhttp)
                assert not NUMBER_OR_TIME.fullmatch(value), (name, label, value)


def test_fixed_contract_names(fleet: list[FedLink]) -> None:
    """(e) The names other tools depend on, with basis Z and X on the sifted ones, for every link."""
    exposed = families(exposition(POSTPROCESSING, snapshots_of(fleet)))
    assert exposed["qkd_secret_key_bits_total"][0] == "counter"
    for name in ("qkd_sifted_bits_total", "qkd_sifted_bit_errors_total"):
        kind, samples = exposed[name]
        assert kind == "counter"
        assert {(s.labels["link"], s.labels["basis"]) for s in samples} == {
            (fed.state.link, basis) for fed in fleet for basis in ("Z", "X")}
    key = {s.labels["link"]: s.value for s in exposed["qkd_secret_key_bits_total"][1]}
    assert key == {fed.state.link: pytest.approx(fed.store_bits) for fed in fleet} and all(key.values())


def test_missing_values_are_omitted_never_nan(fleet: list[FedLink]) -> None:
    """No phase reference on BB84, no bounds before a block, no latency while the channel is down."""
    fresh = FedLink("tf", name="tf-fresh")
    both = snapshots_of([*fleet, fresh])
    device, post = exposition(DEVICE, both), exposition(POSTPROCESSING, both)
    for text in (device, post):
        assert all(value == value for *_, value in series(text))  # no NaN
    links_with = {}
    for text in (device, post):
        for name, _, labels, _ in series(text):
            if "link" in labels:  # KME request series are per site
                links_with.setdefault(name, set()).add(labels["link"])
    assert links_with["qkd_phase_locked"] == links_with["qkd_phase_relocks_total"] == {"mdi-lab", "tf-lab"}
    assert links_with["qkd_classical_channel_latency_seconds"] == {"bb84-decoy-lab", "tf-lab"}
    for name in ("qkd_single_photon_yield_lower_bound_ratio", "qkd_block_qber_ratio", "qkd_last_block_timestamp_seconds",
                 "qkd_detection_rate_hertz", "qkd_channel_loss_decibels"):
        assert "tf-fresh" not in links_with[name]  # nothing measured or estimated yet
    for name in ("qkd_single_photon_yield_lower_bound_ratio", "qkd_single_photon_phase_error_upper_bound_ratio",
                 "qkd_block_qber_ratio"):
        assert links_with[name] == {"bb84-decoy-lab", "tf-lab"}  # MDI's last block aborted before estimation
    assert "tf-fresh" in links_with["qkd_secret_key_bits_total"] and "tf-fresh" in links_with["qkd_pulses_sent_total"]
    fresh_only = exposition(POSTPROCESSING, snapshots_of([fresh]))
    blocks = {s.labels["reason"]: s.labels["outcome"] for s in families(fresh_only)["qkd_blocks_total"][1]}
    assert blocks == {r: "success" if r == "none" else "aborted" for r in BLOCK_REASONS}  # zeros published
    faults = families(device)["qkd_fault_active"][1]
    assert {(s.labels["link"], s.labels["fault"]) for s in faults if s.value == 1} == {("mdi-lab", "classical_channel_outage")}
    assert len(faults) == len(FAULTS) * (len(fleet) + 1)


def test_no_key_material_in_metrics_or_logs(fleet: list[FedLink], caplog: pytest.LogCaptureFixture) -> None:
    """(f) Data-derived keys outside the closed sets are dropped: a marker fed in anywhere never shows."""
    fed = FedLink("bb84-decoy", seed=5, name="bb84-marked")
    fed.step()
    marked = dataclasses.replace(
        fed.state.snapshot(), sites={**SITES["bb84-decoy"], "key": KEY_MARKER},
        active_faults=(KEY_MARKER,), decoy_pulses_total={KEY_MARKER: 1.0}, decoy_detections_total={KEY_MARKER: 1.0},
        sifted_bits_total={"Z": 1.0, KEY_MARKER: 1.0}, sifted_bit_errors_total={KEY_MARKER: 1.0},
        telemetry=dataclasses.replace(fed.state.snapshot().telemetry, mean_photon_number_commanded={KEY_MARKER: 0.5},
                                      mean_photon_number_measured={KEY_MARKER: 0.5}))
    snapshots = snapshots_of(fleet)
    with caplog.at_level(logging.DEBUG):
        texts = [exposition(e, lambda: [*snapshots(), marked]) for e in EXPORTERS]
    assert caplog.records  # the drops are reported …
    assert all(KEY_MARKER not in r.getMessage() for r in caplog.records)  # … without the value
    for exporter, text in zip(EXPORTERS, texts):
        assert KEY_MARKER not in text and KEY_MARKER[:16] not in text
        label_names = {label for m in CATALOGUE.for_exporter(exporter) for label in m.labels} | {"le"}
        for f in text_string_to_metric_families(text):
            for s in f.samples:
                assert set(s.labels) <= label_names
                assert all(len(v) <= 64 for v in s.labels.values())


# ---- HTTP ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("exporter", EXPORTERS)
def test_server_binds_loopback_and_serves_text(fleet: list[FedLink], exporter: str) -> None:
    """(g) Own registry on 127.0.0.1, ephemeral port; text/plain (even when OpenMetrics is preferred), catalogue names."""
    server = serve(COLLECTORS[exporter](snapshots_of(fleet)), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert server.server_address[0] == "127.0.0.1" and server.serving
        request = urllib.request.Request(f"{base}/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
        with urllib.request.urlopen(request, timeout=10) as response:
            content_type = response.headers["Content-Type"]
            body = response.read().decode()
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"  # the format promtool checked
        assert set(families(body)) == {m.name for m in CATALOGUE.for_exporter(exporter)}  # no process_* etc.
        # gzip when asked (Prometheus asks), the same exposition inside
        request = urllib.request.Request(f"{base}/metrics", headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            assert set(families(gzip.decompress(response.read()).decode())) == set(families(body))
        # ?name[]= restricts the scrape to those families
        one = sorted(families(body))[0]
        with urllib.request.urlopen(f"{base}/metrics?{urllib.parse.urlencode({'name[]': one})}", timeout=10) as response:
            assert set(families(response.read().decode())) == {one}
    finally:
        server.stop()
    with pytest.raises(OSError):   # stopped: the port refuses, as a crashed exporter's would
        urllib.request.urlopen(f"{base}/healthz", timeout=5)
