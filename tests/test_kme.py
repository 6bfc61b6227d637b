"""The sites' KMEs over real HTTPS with client certificates (ETSI GS QKD 014 V1.1.1)."""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import uuid
from pathlib import Path

import pytest
from kme_harness import kme_rig

from qkdops.kme.client import EtsiClient, EtsiClientError, client_context
from qkdops.kme.pki import Pki, init_pki

ERROR_FIELDS = {"message", "details"}


def _error(status_body: tuple[int, dict], status: int) -> str:
    code, body = status_body
    assert code == status, body
    assert set(body) <= ERROR_FIELDS and isinstance(body["message"], str) and body["message"]
    return body["message"]


def test_master_and_slave_get_identical_keys_by_key_id_and_each_key_once(tmp_path: Path):
    with kme_rig(tmp_path) as rig:
        master, slave = rig.client("sae-a"), rig.client("sae-b")
        status = master.status("sae-b")
        assert status["source_KME_ID"] == "kme-a" and status["target_KME_ID"] == "kme-b"
        assert status["master_SAE_ID"] == "sae-a" and status["slave_SAE_ID"] == "sae-b"
        assert status["key_size"] == 256 and status["max_key_per_request"] == 64 and status["stored_key_count"] > 100
        issued = master.enc_keys("sae-b", number=5) + master.enc_keys("sae-b", number=3, size=512)
        assert [len(k) for _, k in issued] == [32] * 5 + [64] * 3
        assert len({k for k, _ in issued}) == 8 and all(uuid.UUID(k).version == 4 for k, _ in issued)
        redeemed = slave.dec_keys("sae-a", [k for k, _ in issued][::-1])
        assert dict(redeemed) == dict(issued)                    # same bits under the same key_ID
        assert len({k for _, k in issued}) == 8                  # distinct keys
        # GET forms of the spec give the same service
        code, body = slave.request("GET", "/api/v1/keys/sae-a/enc_keys?number=2&size=128")
        assert code == 200 and [len(k["key"]) for k in body["keys"]] == [24, 24]  # 16 bytes in base64
        code, again = master.request("GET", f"/api/v1/keys/sae-b/dec_keys?key_ID={body['keys'][0]['key_ID']}")
        assert code == 200 and again["keys"] == body["keys"][:1]
        # delivered once: gone from both ends
        with pytest.raises(EtsiClientError) as gone:
            slave.dec_keys("sae-a", [issued[0][0]])
        assert gone.value.status == 400 and "already delivered" in gone.value.message
        assert master.status("sae-b")["stored_key_count"] < status["stored_key_count"]
        snapshot = {s.link: s for s in rig.fleet.snapshots()}["bb84-a"]
        assert snapshot.keys_served_total[("sae-a", "enc_keys")] == 8
        assert snapshot.keys_served_total[("sae-b", "dec_keys")] == 8


def test_third_sae_is_refused_with_401(tmp_path: Path):
    with kme_rig(tmp_path) as rig:
        issued = rig.client("sae-a").enc_keys("sae-b", number=2)
        ids = [k for k, _ in issued]
        # a valid certificate at the right KME, but the keys were issued to sae-b
        message = _error(rig.client("sae-mallory").request("POST", "/api/v1/keys/sae-a/dec_keys",
                                                           json.dumps({"key_IDs": [{"key_ID": ids[0]}]}).encode()), 401)
        assert "not issued by sae-a to sae-mallory" in message
        # an SAE of site a asking site b's KME
        _error(rig.client("sae-a", site="b").request("GET", "/api/v1/keys/sae-a/status"), 401)
        _error(rig.client("sae-a2", site="b").request("GET", f"/api/v1/keys/sae-a/dec_keys?key_ID={ids[0]}"), 401)
        # the refusals took nothing: the addressee still gets both keys
        assert dict(rig.client("sae-b").dec_keys("sae-a", ids)) == dict(issued)


def test_certificates_from_another_ca_or_none_fail_the_handshake(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with kme_rig(tmp_path) as rig, caplog.at_level(logging.INFO, logger="qkdops.kme"):
        other = Pki(tmp_path / "other-pki")
        init_pki(other, rig.fleet.config.key_delivery)
        port = int(rig.urls["a"].rsplit(":", 1)[1])
        foreign = client_context(rig.pki.ca_cert, *other.sae("sae-a"))  # trusts the KME, presents a foreign cert
        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anonymous.load_verify_locations(rig.pki.ca_cert)
        for context in (foreign, anonymous):
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
            with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
                conn.request("GET", "/api/v1/keys/sae-b/status")
                conn.getresponse().read()
            conn.close()
        refused = [r.getMessage() for r in caplog.records if "TLS handshake refused" in r.getMessage()]
        assert len(refused) == 2 and all(m.startswith("kme-a: ") for m in refused), refused   # logged, one line each
        # the client checks the KME too: a KME certificate from another CA is refused by the SAE
        distrustful = client_context(other.ca_cert, *rig.pki.sae("sae-a"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=distrustful, timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.request("GET", "/api/v1/keys/sae-b/status")
        conn.close()


@pytest.mark.parametrize(("method", "path", "body", "fragment"), [
    ("POST", "/api/v1/keys/sae-b/enc_keys", b"{not json", "not valid JSON"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper than 32"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": NaN}', "NaN is not a JSON number"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b"\xff\xfe", "not UTF-8"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b"[1, 2]", "JSON object"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": "3"}', "number must be an integer"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": 65}', "number must be within [1, 64]"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b'{"size": 100}', "multiple of 8"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b'{"size": 16}', "size must be within"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b'{"numbr": 1}', "unknown field 'numbr'"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b'{"additional_slave_SAE_IDs": ["sae-b"]}', "not supported"),
    ("POST", "/api/v1/keys/sae-b/enc_keys", b'{"extension_mandatory": [{"x": 1}]}', "not all extension_mandatory parameters"),
    ("GET", "/api/v1/keys/sae-b/enc_keys?number=two", None, "number must be an integer"),
    ("GET", "/api/v1/keys/sae-nobody/status", None, "not a known SAE"),
    ("GET", "/api/v1/keys/sae-a2/status", None, "not at the other end"),
    ("GET", "/api/v1/keys/sae-b/dec_keys", None, "needs the key_ID"),
    ("GET", "/api/v1/keys/sae-b/dec_keys?key_ID=not-a-uuid", None, "must be a UUID"),
    ("POST", "/api/v1/keys/sae-b/dec_keys", b'{"key_IDs": []}', "non-empty array"),
    ("POST", "/api/v1/keys/sae-b/dec_keys", b'{"key_IDs": [{"id": "x"}]}', "key_IDs[0] must be an object with a key_ID"),
])
def test_malformed_requests_get_400_with_an_error_object(tmp_path: Path, method: str, path: str, body: bytes | None, fragment: str):
    with kme_rig(tmp_path, frames=2) as rig:
        client = rig.client("sae-a")
        before = client.status("sae-b")["stored_key_count"]
        assert fragment in _error(client.request(method, path, body), 400)
        assert client.status("sae-b")["stored_key_count"] == before  # nothing taken


def test_unknown_paths_and_methods_get_error_objects(tmp_path: Path):
    with kme_rig(tmp_path, frames=2) as rig:
        client = rig.client("sae-a")
        _error(client.request("GET", "/api/v1/keys/sae-b/keys"), 404)
        _error(client.request("DELETE", "/api/v1/keys/sae-b/enc_keys"), 405)
        _error(client.request("POST", "/api/v1/keys/sae-b/status", b"{}"), 405)


def test_empty_store_answers_503_and_recovers_when_key_arrives(tmp_path: Path):
    with kme_rig(tmp_path, frames=0) as rig:
        client = rig.client("sae-a")
        assert client.status("sae-b")["stored_key_count"] == 0
        message = _error(client.request("POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": 1}'), 503)
        assert "not enough key" in message and "0 available" in message
        rig.fleet.run_frames(2)  # one BB84 block: key handed off to both ends
        assert len(rig.client("sae-a").enc_keys("sae-b", number=1)) == 1
        # asking for more than is stored is refused whole, not served in part
        big = json.dumps({"number": 64, "size": 8192}).encode()  # 64 KiB a request; one block holds ~115 KiB
        codes = [client.request("POST", "/api/v1/keys/sae-b/enc_keys", big)[0] for _ in range(2)]
        stored = client.status("sae-b")["stored_key_count"]
        assert codes == [200, 503] and 0 < stored < 64 * 8192 // 256
        assert client.status("sae-b")["stored_key_count"] == stored
        assert len(client.enc_keys("sae-b", number=64)) == 64  # what is left is still served


def test_requests_are_counted_by_site_call_and_code(tmp_path: Path):
    with kme_rig(tmp_path, frames=2) as rig:
        client = rig.client("sae-a")
        client.status("sae-b")
        client.enc_keys("sae-b", 1)
        client.request("GET", "/api/v1/keys/sae-b/enc_keys?number=0")
        rig.client("sae-mallory").request("GET", "/api/v1/keys/sae-a/dec_keys?key_ID=" + str(uuid.uuid4()))
        stats = rig.fleet.kme_stats.snapshot()
        assert stats.requests_total == {("a", "etsi014", "status", "200"): 1, ("a", "etsi014", "enc_keys", "200"): 1,
                                        ("a", "etsi014", "enc_keys", "400"): 1, ("b", "etsi014", "dec_keys", "400"): 1}
        assert stats.request_seconds[("a", "etsi014", "enc_keys")].count == 2


def test_a_kme_dying_mid_answer_is_a_connection_error_and_is_not_retried() -> None:
    """A truncated enc_keys answer (the KME killed while writing it) must read as the KME going away,
    which SAEs handle, not as an HTTP library error; and it is not retried: the keys may be spent."""
    sent: list[str] = []

    class Truncated:
        status, will_close = 200, False

        def read(self) -> bytes:
            raise http.client.IncompleteRead(b'{"keys": [', 824)

    class Connection:
        def request(self, method: str, path: str, **_: object) -> None:
            sent.append(f"{method} {path}")

        def getresponse(self) -> Truncated:
            return Truncated()

        def close(self) -> None:
            pass

    client = EtsiClient("https://127.0.0.1:9", ssl.create_default_context())
    client._connection = Connection  # type: ignore[method-assign]
    with pytest.raises(ConnectionResetError, match="10 bytes into its answer"):
        client.enc_keys("sae-b", 1)
    assert sent == ["POST /api/v1/keys/sae-b/enc_keys"]


def test_an_internal_error_is_answered_500_with_an_error_object_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from qkdops.kme.etsi import KMEService

    def broken(self, method, call, sae, query, body, caller):
        raise RuntimeError("a bug")
    with kme_rig(tmp_path, frames=2) as rig:
        client = rig.client("sae-a")
        monkeypatch.setattr(KMEService, "answer", broken)
        message = _error(client.request("GET", "/api/v1/keys/sae-b/status"), 500)
        assert "internal error" in message and "a bug" not in message
        monkeypatch.undo()
        assert rig.client("sae-a").status("sae-b")["stored_key_count"] > 0      # the KME still serves
        assert rig.fleet.kme_stats.snapshot().requests_total[("a", "etsi014", "status", "500")] == 1   # counted under its call
