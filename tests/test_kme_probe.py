"""`qkdops kme-probe`: the blackbox exporter of ETSI 014 KMEs, against our KMEs over the network only.

The probe imports no KME code (an import contract in pyproject.toml); these tests start our KMEs
(kme_harness) and give the probe nothing but URLs and credential files, as an operator would for a
vendor's KME.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kme_harness import KmeRig, kme_rig

from exporters.kme_probe import KmeProbe, ProbeConfigError, load_probe_config
from qkdops.kme.pki import Pki
from qkdops_cli.stack import KME_PROBE_INTERVAL_S
from tests.exposition_checks import assert_equals_catalogue, families


def _target(pki: Pki, name: str, url: str, sae: str, peer: str, peer_url: str | None = None) -> dict:
    cert, key = pki.sae(sae)
    target = {"name": name, "kme": url, "sae": sae, "ca": str(pki.ca_cert), "cert": str(cert), "key": str(key), "peer": {"sae": peer}}
    if peer_url is not None:
        peer_cert, peer_key = pki.sae(peer)
        target["peer"].update(kme=peer_url, ca=str(pki.ca_cert), cert=str(peer_cert), key=str(peer_key))
    return target


def _config(directory: Path, targets: list[dict], **extra: float) -> Path:
    path = directory / "kme-probe.yaml"
    path.write_text(yaml.safe_dump({"interval_s": 5, "timeout_s": 2, **extra, "targets": targets}))
    return path


def _probe_of(rig: KmeRig, directory: Path) -> KmeProbe:
    targets = [_target(rig.pki, "a-to-b", rig.urls["a"], "sae-a", "sae-b", rig.urls["b"]),
               _target(rig.pki, "b-status", rig.urls["b"], "sae-b", "sae-a")]
    return KmeProbe(load_probe_config(_config(directory, targets)))


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(name, tuple(sorted(s.labels.items()))): s.value for name, (_, ss) in families(text).items() for s in ss}


def _value(text: str, name: str, **labels: str) -> float:
    return _samples(text)[(name, tuple(sorted(labels.items())))]


def test_a_healthy_pair_is_up_agrees_and_shows_the_kmes_own_counts(tmp_path: Path):
    with kme_rig(tmp_path, frames=8) as rig:
        probe = _probe_of(rig, tmp_path)
        stored_before = rig.client("sae-a").status("sae-b")["stored_key_count"]
        for target in probe.config.targets:
            probe.probe(target)
        text = probe.render().decode()
        assert_equals_catalogue(text, "kme_probe")
        assert _value(text, "qkd_kme_probe_up", target="a-to-b") == 1 == _value(text, "qkd_kme_probe_up", target="b-status")
        assert _value(text, "qkd_kme_probe_keys_match", target="a-to-b") == 1
        # the status the probe read, before its round trip took one key
        assert _value(text, "qkd_kme_probe_stored_keys", target="a-to-b") == stored_before
        assert rig.client("sae-a").status("sae-b")["stored_key_count"] == stored_before - 1
        assert _value(text, "qkd_kme_probe_capacity_keys", target="a-to-b") == rig.fleet.config.key_delivery.max_key_count
        assert _value(text, "qkd_kme_probe_key_size_bytes", target="a-to-b", bound="default") == 32
        for call in ("status", "enc_keys", "dec_keys"):
            assert _value(text, "qkd_kme_probe_success", target="a-to-b", call=call) == 1
            assert _value(text, "qkd_kme_probe_http_status_code", target="a-to-b", call=call) == 200
            assert 0 < _value(text, "qkd_kme_probe_duration_seconds", target="a-to-b", call=call) < 2
        assert ("qkd_kme_probe_keys_match", (("target", "b-status"),)) not in _samples(text)   # no round trip configured
        now = datetime.datetime.now(datetime.UTC).timestamp()
        for certificate in ("kme", "sae"):   # the development PKI's 825-day leaves
            expiry = _value(text, "qkd_kme_probe_tls_certificate_expiry_timestamp_seconds", target="a-to-b", certificate=certificate)
            assert 820 * 86400 < expiry - now < 826 * 86400


def test_a_stopped_kme_is_down_with_no_http_answer_and_a_wrong_key_is_a_disagreement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with kme_rig(tmp_path, frames=8) as rig:
        probe = _probe_of(rig, tmp_path)
        a_to_b, b_status = probe.config.targets
        # a KME that hands the slave other bits than the master got (a broken vendor KME, simulated
        # behind the network: the probe sees only what dec_keys answers)
        redeem = rig.fleet.key_pool.redeem
        monkeypatch.setattr(rig.fleet.key_pool, "redeem", lambda *a, **k: [(i, bytes(len(key))) for i, key in redeem(*a, **k)])
        assert probe.probe(a_to_b).keys_match is False
        monkeypatch.undo()
        assert probe.probe(a_to_b).keys_match is True
        servers = rig.servers
        servers["b"].stop(1.0)
        probe.probe(a_to_b)
        probe.probe(b_status)
        text = probe.render().decode()
        assert _value(text, "qkd_kme_probe_up", target="b-status") == 0
        assert _value(text, "qkd_kme_probe_http_status_code", target="b-status", call="status") == 0
        assert _value(text, "qkd_kme_probe_success", target="a-to-b", call="dec_keys") == 0   # its peer is down
        assert _value(text, "qkd_kme_probe_up", target="a-to-b") == 1
        assert _value(text, "qkd_kme_probe_calls_total", target="a-to-b", call="dec_keys", outcome="failed") == 1
        assert _value(text, "qkd_kme_probe_calls_total", target="a-to-b", call="dec_keys", outcome="ok") == 2
        assert _value(text, "qkd_kme_probe_keys_match", target="a-to-b") == 1   # the last completed round trip


def test_once_prints_the_exposition_and_exits_by_health(tmp_path: Path):
    with kme_rig(tmp_path, frames=8) as rig:
        path = _config(tmp_path, [_target(rig.pki, "a-to-b", rig.urls["a"], "sae-a", "sae-b", rig.urls["b"])])
        run = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "kme-probe", "--config", str(path), "--once"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert 'qkd_kme_probe_keys_match{target="a-to-b"} 1.0' in run.stdout
        if shutil.which("promtool"):
            lint = subprocess.run(["promtool", "check", "metrics"], input=run.stdout, capture_output=True, text=True, timeout=60)
            assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr
        rig.servers["a"].stop(1.0)
        down = subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "kme-probe", "--config", str(path), "--once"],
                              capture_output=True, text=True, timeout=60)
        assert down.returncode == 1 and 'qkd_kme_probe_up{target="a-to-b"} 0.0' in down.stdout
        assert "a-to-b: status failed" in down.stderr


def _expiring_certificate(pki: Pki, directory: Path, days: float) -> tuple[Path, Path]:
    """An SAE certificate of the PKI's CA valid for ``days`` more."""
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "sae-a")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    paths = directory / "short.crt", directory / "short.key"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def test_the_probing_saes_own_certificate_expiry_is_read_from_its_file(tmp_path: Path):
    with kme_rig(tmp_path, frames=4) as rig:
        cert, key = _expiring_certificate(rig.pki, tmp_path, days=3)
        target = _target(rig.pki, "short", rig.urls["a"], "sae-a", "sae-b")
        target.update(cert=str(cert), key=str(key))
        probe = KmeProbe(load_probe_config(_config(tmp_path, [target])))
        result = probe.probe(probe.config.targets[0])
        assert result.up and result.sae_cert_expiry is not None
        left = result.sae_cert_expiry - datetime.datetime.now(datetime.UTC).timestamp()
        assert 2.9 * 86400 < left < 3.1 * 86400


@pytest.mark.parametrize("edit, field, fragment", [
    (lambda t: t.update(kme="http://127.0.0.1:1"), "targets[0].kme", "https://"),
    (lambda t: t.update(cert="/nonexistent.crt"), "targets[0].cert", "an existing file"),
    (lambda t: t.update(name="a b"), "targets[0].name", "letters, digits"),
    (lambda t: t.update(extra=1), "targets[0]", "extra"),
    (lambda t: t["peer"].update(kme="https://127.0.0.1:2"), "targets[0].peer", "ca, cert, key"),
    (lambda t: t["peer"].update(cert="x.crt"), "targets[0].peer.kme", "KME URL"),
    (lambda t: t.pop("peer"), "targets[0]", "peer"),
])
def test_a_bad_config_names_the_file_and_field(tmp_path: Path, edit, field: str, fragment: str):
    pki = Pki(tmp_path / "pki")
    for path in (pki.ca_cert, *pki.sae("sae-a")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    target = _target(pki, "t", "https://127.0.0.1:9830", "sae-a", "sae-b")
    edit(target)
    with pytest.raises(ProbeConfigError) as error:
        load_probe_config(_config(tmp_path, [target]))
    assert "kme-probe.yaml" in str(error.value) and field in str(error.value) and fragment in str(error.value)


def test_timeout_must_be_shorter_than_the_interval(tmp_path: Path):
    with pytest.raises(ProbeConfigError, match="timeout_s"):
        load_probe_config(_config(tmp_path, [], interval_s=5, timeout_s=5))


def test_credentials_that_do_not_load_fail_the_probe_not_the_prober(tmp_path: Path):
    with kme_rig(tmp_path, frames=4) as rig:
        mismatched = _target(rig.pki, "renewal", rig.urls["a"], "sae-a", "sae-b", rig.urls["b"])
        mismatched["key"] = str(rig.pki.sae("sae-a2")[1])            # a new certificate beside an old key
        healthy = _target(rig.pki, "healthy", rig.urls["a"], "sae-a", "sae-b")
        probe = KmeProbe(load_probe_config(_config(tmp_path, [mismatched, healthy])))
        probe.probe_all()
        text = probe.render().decode()
        assert _value(text, "qkd_kme_probe_up", target="renewal") == 0
        assert _value(text, "qkd_kme_probe_http_status_code", target="renewal", call="status") == 0
        assert _value(text, "qkd_kme_probe_up", target="healthy") == 1   # the next target is still probed


def _short_lived_kme_certificate(pki: Pki, site: str, days: float) -> None:
    """Re-issue the KME's server certificate (same key, same names) valid for ``days`` more."""
    cert_path, key_path = pki.kme(site)
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject).public_key(key.public_key())  # type: ignore[arg-type]
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days)))
    for extension in old.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    cert_path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_running_stack_probes_its_own_kmes_through_config_alone(tmp_path: Path):
    """`qkdops up` runs the probe on the KMEs it serves, from a config of URLs and credential files: every
    pair is up and agrees in Prometheus, the counts are the KMEs' own, a KME whose certificate expires
    in 5 days raises QKDKMECertificateExpiring (pending here: its 10-m `for` is promtool-tested), and a
    KME stopped through the control API pages QKDKMEUnreachable within the probe interval, the rule's
    30-s window and its 30-s `for` (plus a scrape and an evaluation), for its targets only."""
    from qkdops.config import load_config
    from qkdops.kme.client import EtsiClient, client_context
    from qkdops.kme.pki import init_pki
    from stack_helpers import RunningStack, e2e_profile, wait_for

    path = e2e_profile(tmp_path)
    config = load_config(path)
    pki = Pki(config.runtime.state_dir / "pki")
    init_pki(pki, config.key_delivery)
    short_site = config.links[0].sites.alice
    _short_lived_kme_certificate(pki, short_site, days=5)
    pairs = {(link.sites.alice, link.sites.bob) for link in config.links}
    stack = RunningStack(path)
    try:
        stack.wait_up()

        def all_of(query: str, want: float) -> bool:
            values = {r["metric"]["target"]: float(r["value"][1]) for r in stack.prometheus(query)}
            return len(values) == len(pairs) and all(v == want for v in values.values())
        wait_for(lambda: all_of("qkd_kme_probe_up", 1) and all_of("qkd_kme_probe_keys_match", 1), 90,
                 "every pair up and agreeing in Prometheus", stack)
        # the stored count the probe reports is the KME's: between two status calls around a probe
        probe = KmeProbe(load_probe_config(config.runtime.state_dir / "kme-probe.yaml"))
        target = probe.config.targets[0]
        client = EtsiClient(target.kme, client_context(target.credentials.ca, target.credentials.cert, target.credentials.key))
        before = client.status(target.peer.sae)["stored_key_count"]
        seen = probe.probe(target).status["stored_key_count"]
        after = client.status(target.peer.sae)["stored_key_count"]
        assert before <= seen <= after + 1 and before > 0      # (+1: the probe's own round trip took one)
        # the short-lived certificate: the alert's condition holds for that KME's targets only
        alerts = wait_for(lambda: stack.prometheus('ALERTS{alertname="QKDKMECertificateExpiring"}'), 60,
                          "QKDKMECertificateExpiring pending", stack)
        assert {(a["metric"]["target"].startswith(short_site), a["metric"]["certificate"]) for a in alerts} == {(True, "kme")}
        days = stack.prometheus(f'min(qkd_kme_probe_tls_certificate_expiry_timestamp_seconds{{target=~"{short_site}-.*",certificate="kme"}}'
                                ' - time()) / 86400')
        assert 4.9 < float(days[0]["value"][1]) < 5.1
        # one KME down (its listener stopped; the store behind it untouched): its targets' alert fires
        down = f"kme-{short_site}"
        listed = {k["name"]: k for k in stack.api("GET", "/api/v1/kmes")["kmes"]}
        assert listed[down]["serving"] is True and f"skip-{short_site}" in listed
        assert stack.api("DELETE", f"/api/v1/kmes/{down}") == {"name": down, "serving": False}
        stopped = time.monotonic()
        firing = wait_for(lambda: stack.prometheus('ALERTS{alertname="QKDKMEUnreachable",alertstate="firing"}'), 150,
                          "QKDKMEUnreachable firing", stack, interval_s=1.0)
        took = time.monotonic() - stopped
        budget = KME_PROBE_INTERVAL_S + 30 + 30 + 2 * config.runtime.scrape_interval_s + 20   # + slack for a loaded machine
        assert took < budget, f"QKDKMEUnreachable took {took:.0f} s (budget {budget:.0f} s)"
        port = config.key_delivery.kme(short_site).port   # type: ignore[union-attr]
        assert {a["metric"]["target"] for a in firing} == {t.name for t in probe.config.targets if t.kme.endswith(f":{port}")}
        print(f"QKDKMEUnreachable firing {took:.0f} s after the KME stopped (budget {budget:.0f} s)")
        assert stack.api("POST", f"/api/v1/kmes/{down}") == {"name": down, "serving": True}
        wait_for(lambda: all_of("qkd_kme_probe_up", 1), 60, "every target up again", stack)
    finally:
        stack.stop()
