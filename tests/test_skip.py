"""The sites' SKIP key providers (IETF draft-cisco-skip-02) over real TLS-PSK, beside the ETSI 014 KMEs.

Three clients, three TLS stacks: ours (tlslite-ng, TLS 1.3 with TLS_AES_256_GCM_SHA384 and a SHA-384
PSK, the draft's REQUIRED suite), OpenSSL's own ``s_client`` (TLS 1.2 DHE-PSK, the draft's RECOMMENDED
TLS 1.2 suite) speaking HTTP by hand, and PyPI's ``skip-qkd`` client (sslpsk3, TLS 1.2 PSK). The server
is OpenSSL through Python's ssl module (``qkdops.kme.psk``).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest
from kme_harness import kme_rig

from qkdops.kme.client import EtsiClientError, SkipClient
from qkdops.kme.pki import read_psk

HEX = set("0123456789ABCDEF")


def _call_error(client: SkipClient, path: str, status: int) -> str:
    code, body = client.request("GET", path)
    assert code == status, body
    assert set(body) == {"message"} and body["message"]
    return str(body["message"])


def test_initiator_and_responder_get_the_same_key_once_through_tls13_psk(tmp_path: Path):
    with kme_rig(tmp_path, frames=8) as rig:
        alice, bob = rig.skip_client("sae-a"), rig.skip_client("sae-b")
        caps = alice.capabilities()
        assert caps == {"entropy": True, "key": True, "algorithm": "QKD", "localSystemID": "sae-a",
                        "remoteSystemID": ["sae-b", "sae-mallory"]}
        key_id, key = alice.new_key("sae-b")
        assert len(key_id) == 32 and set(key_id) <= HEX and len(key) == 32          # 128-bit ID, 256-bit default key
        assert bob.key_by_id(key_id, "sae-a") == (key_id, key)
        message = _call_error(bob, f"/key/{key_id}?remoteSystemID=sae-a", 400)       # zeroized after delivery
        assert "already delivered" in message
        sized_id, sized = alice.new_key("sae-b", size=512)
        assert len(sized) == 64 and bob.key_by_id(sized_id.lower(), "sae-a") == (sized_id, sized)
        # the session really is TLS 1.3 with the required suite
        connection = alice._connection()
        assert connection.sock.version == (3, 4) and connection.sock.getCipherName() == "aes256gcm"
        snapshot = {s.link: s for s in rig.fleet.snapshots()}["bb84-a"]
        assert snapshot.keys_served_total[("sae-a", "key")] == 2 and snapshot.keys_served_total[("sae-b", "key_by_id")] == 2
        requests = rig.fleet.kme_stats.snapshot().requests_total
        assert requests[("a", "skip", "key", "200")] == 2 and requests[("b", "skip", "key_by_id", "400")] == 1


def test_one_store_behind_both_apis_a_key_goes_out_once(tmp_path: Path):
    with kme_rig(tmp_path, frames=8) as rig:
        skip_a, skip_b = rig.skip_client("sae-a"), rig.skip_client("sae-b")
        etsi_a, etsi_b = rig.client("sae-a"), rig.client("sae-b")
        # SKIP's key fetched by the responder through ETSI 014 ...
        key_id, key = skip_a.new_key("sae-b")
        assert etsi_b.dec_keys("sae-a", [str(uuid.UUID(hex=key_id))]) == [(str(uuid.UUID(hex=key_id)), key)]
        assert "already delivered" in _call_error(skip_b, f"/key/{key_id}?remoteSystemID=sae-a", 400)
        # ... and ETSI's key through SKIP, then gone from ETSI
        ((etsi_id, etsi_key),) = etsi_a.enc_keys("sae-b", 1)
        assert skip_b.key_by_id(uuid.UUID(etsi_id).hex, "sae-a") == (uuid.UUID(etsi_id).hex.upper(), etsi_key)
        with pytest.raises(EtsiClientError) as gone:
            etsi_b.dec_keys("sae-a", [etsi_id])
        assert gone.value.status == 400
        # keys issued through either API are distinct bits
        assert key != etsi_key


def test_requests_the_draft_does_not_define_are_refused_with_its_codes(tmp_path: Path):
    with kme_rig(tmp_path, frames=4) as rig:
        alice, mallory = rig.skip_client("sae-a"), rig.skip_client("sae-mallory")
        issued, _ = alice.new_key("sae-b")
        cases = [("/key", "remoteSystemID query parameter is required"),
                 ("/key?remoteSystemID=sae-a2", "not a system at the other end"),
                 ("/key?remoteSystemID=nobody", "not a system at the other end"),
                 ("/key?remoteSystemID=sae-b&size=100", "multiple of 8"),
                 ("/key?remoteSystemID=sae-b&size=16", "multiple of 8 within [64, 8192]"),
                 ("/key?remoteSystemID=sae-b&size=9" + "9" * 5000, "whole number of bits"),
                 ("/key?remoteSystemID=sae-b&remoteSystemID=sae-b", "given 2 times"),
                 ("/key?remoteSystemId=sae-b", "unknown query parameter 'remoteSystemId'"),
                 ("/key/XYZ?remoteSystemID=sae-b", "32 hexadecimal digits"),
                 ("/capabilities?x=1", "unknown query parameter"),
                 ("/entropy?minentropy=-8", "whole number of bits"),
                 ("/entropy?minentropy=1000000", "within [8, 8192]")]
        for path, fragment in cases:
            assert fragment in _call_error(alice, path, 400), path
        # a key issued to sae-b is no one else's: mallory (same site, own PSK) gets "not held", not the key
        assert "not held for sae-a → sae-mallory" in _call_error(mallory, f"/key/{issued}?remoteSystemID=sae-a", 400)
        assert _call_error(alice, "/keys", 404)
        code, body = alice.request("POST", "/key?remoteSystemID=sae-b", b"{}")
        assert code == 405 and "GET" in body["message"]
        assert len(alice.entropy()) == 32 and len(alice.entropy(1024)) == 128
        # HEAD is a GET without its answer: on /key it would take a key and drop it, so it is refused
        connection = alice._connection()
        connection.request("HEAD", "/key?remoteSystemID=sae-b")
        response = connection.getresponse()
        response.read()
        assert response.status == 405 and response.getheader("Allow") == "GET"


def test_an_unknown_identity_or_a_wrong_psk_gets_no_session(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    from tlslite.errors import TLSError
    with kme_rig(tmp_path, frames=2) as rig:
        url = rig.skip_urls["a"]
        for client in (SkipClient(url, "sae-nobody", bytes(32)),                     # identity unknown here
                       SkipClient(url, "sae-b", read_psk(rig.pki.skip_psk("sae-b"))),  # a system of the other site
                       SkipClient(url, "sae-a", bytes(32))):                          # right identity, wrong key
            with caplog.at_level("INFO", logger="qkdops.kme"), pytest.raises((TLSError, OSError)):
                client.capabilities()
        assert "unknown PSK identity 'sae-nobody'" in caplog.text and "TLS handshake refused" in caplog.text
        # a certificate-based TLS client (no PSK) finds no certificate to trust and no suite to share
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        host, port = url.removeprefix("https://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as raw, pytest.raises(ssl.SSLError):
            context.wrap_socket(raw).do_handshake()
        assert rig.fleet.kme_stats.snapshot().requests_total == {}                   # refused handshakes are not requests


def _s_client(url: str, identity: str, psk: bytes, request: str) -> str:
    """One HTTP/1.1 request through OpenSSL's s_client: TLS 1.2, DHE-PSK-AES256-CBC-SHA384."""
    host_port = url.removeprefix("https://")
    result = subprocess.run(["openssl", "s_client", "-connect", host_port, "-tls1_2", "-cipher", "DHE-PSK-AES256-CBC-SHA384",
                             "-psk_identity", identity, "-psk", psk.hex(), "-quiet", "-ign_eof"],
                            input=f"{request} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n",
                            capture_output=True, text=True, timeout=20)
    return result.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="OpenSSL's command-line tool is not installed")
def test_openssl_s_client_over_tls12_dhe_psk_gets_the_same_key(tmp_path: Path):
    import json
    with kme_rig(tmp_path, frames=8) as rig:
        psk_a, psk_b = read_psk(rig.pki.skip_psk("sae-a")), read_psk(rig.pki.skip_psk("sae-b"))
        answer = _s_client(rig.skip_urls["a"], "sae-a", psk_a, "GET /key?remoteSystemID=sae-b")
        assert answer.startswith("HTTP/1.1 200"), answer[:200]
        issued = json.loads(answer.split("\n\n", 1)[1])
        fetched = json.loads(_s_client(rig.skip_urls["b"], "sae-b", psk_b,
                                       f"GET /key/{issued['keyId']}?remoteSystemID=sae-a").split("\n\n", 1)[1])
        assert fetched == issued and len(bytes.fromhex(issued["key"])) == 32
        assert _s_client(rig.skip_urls["a"], "sae-a", bytes(32), "GET /capabilities") == ""   # wrong PSK: no answer


def test_the_pypi_skip_qkd_client_gets_identical_keys_at_both_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """skip-qkd 1.0.0's PSK mode builds its context with check_hostname on, then sets CERT_NONE, which
    Python refuses (ValueError) before connecting: its context is made here with check_hostname off,
    everything else (TLS 1.2, OpenSSL's "PSK" suites, its HTTP and JSON handling) as it ships."""
    skip_qkd = pytest.importorskip("skip_qkd.skip_qkd")
    from sslpsk3 import SSLPSKContext

    class Context(SSLPSKContext):
        def __setattr__(self, name: str, value: object) -> None:
            super().__setattr__(name, False if name == "check_hostname" else value)

    monkeypatch.setattr(skip_qkd, "SSLPSKContext", Context)
    with kme_rig(tmp_path, frames=8) as rig:
        def client(sae: str, site: str) -> object:
            return skip_qkd.SkipQKDClient(rig.skip_urls[site].removeprefix("https://"), sae,
                                          psk_config=skip_qkd.PSKConfig(sae, read_psk(rig.pki.skip_psk(sae))))
        assert client("sae-a", "a").capabilities()["remoteSystemID"] == ["sae-b", "sae-mallory"]
        issued = client("sae-a", "a").request_key("sae-b", 256)
        assert client("sae-b", "b").fetch_key_by_id(issued["keyId"], "sae-a") == issued
        with pytest.raises(RuntimeError, match="400"):
            client("sae-b", "b").fetch_key_by_id(issued["keyId"], "sae-a")
        assert len(bytes.fromhex(client("sae-a", "a").entropy(512)["randomStr"])) == 64
