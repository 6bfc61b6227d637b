"""ETSI GS QKD 014 V1.1.1 (2019-02), clause by clause, against our KMEs over real HTTPS.

Each test names the clause (and table) it checks. Where the spec is silent (unknown query parameters,
HEAD, paths outside the API) the test says which choice we made and why. Error bodies are the Error
object of §6.5 throughout: ``message`` (string) and optional ``details`` (array of objects).
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kme_harness import KmeRig, kme_rig

from qkdops.kme.client import EtsiClient

STATUS_FIELDS = {"source_KME_ID": str, "target_KME_ID": str, "master_SAE_ID": str, "slave_SAE_ID": str, "key_size": int,
                 "stored_key_count": int, "max_key_count": int, "max_key_per_request": int, "max_key_size": int,
                 "min_key_size": int, "max_SAE_ID_count": int}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with kme_rig(tmp_path_factory.mktemp("etsi014"), frames=8) as rig:
        yield rig


def _error_object(answer: tuple[int, dict[str, Any]], status: int) -> dict[str, Any]:
    """§6.5 Table 13: an Error object — ``message`` a string, ``details`` (optional) an array of objects."""
    code, body = answer
    assert code == status, body
    assert isinstance(body.get("message"), str) and body["message"]
    assert set(body) <= {"message", "details"}
    assert all(isinstance(d, dict) for d in body.get("details", []))
    return body


def _stored(rig: KmeRig) -> int:
    return int(rig.client("sae-a").status("sae-b")["stored_key_count"])


def _container(body: dict[str, Any], size_bits: int) -> list[tuple[str, bytes]]:
    """§6.3 Table 11: a Key container — ``keys``, each with a UUID ``key_ID`` and a base64 ``key``."""
    assert isinstance(body["keys"], list) and body["keys"]
    keys = []
    for entry in body["keys"]:
        assert set(entry) <= {"key_ID", "key_ID_extension", "key", "key_extension"}
        assert str(uuid.UUID(entry["key_ID"])) == entry["key_ID"]
        key = base64.b64decode(entry["key"], validate=True)
        assert len(key) * 8 == size_bits
        keys.append((entry["key_ID"], key))
    return keys


# ---- §4, §5.1: transport -----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_clause_5_1_table_1_https_with_tls_1_2_or_higher_only(rig: KmeRig) -> None:
    host, port = rig.urls["a"].removeprefix("https://").split(":")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection((host, int(port)), timeout=5) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw).do_handshake()
    with socket.create_connection((host, int(port)), timeout=5) as raw:   # plain HTTP gets no HTTP answer
        raw.sendall(b"GET /api/v1/keys/sae-b/status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not raw.recv(64).startswith(b"HTTP/")


def test_clause_5_1_mutual_authentication_the_sae_id_comes_from_its_certificate(rig: KmeRig) -> None:
    context = ssl.create_default_context(cafile=str(rig.pki.ca_cert))   # the KME's certificate checked, none presented
    client = EtsiClient(rig.urls["a"], context)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        client.status("sae-b")
    # the caller is whoever its certificate names: sae-a2 asking sae-b's status is master sae-a2
    assert rig.client("sae-a2").status("sae-b")["master_SAE_ID"] == "sae-a2"


# ---- §5.1 Table 2 and §5.2: Get status -----------------------------------------------------------------

def test_clause_5_2_table_9_get_status_returns_every_status_field_with_its_type(rig: KmeRig) -> None:
    status = rig.client("sae-a").status("sae-b")
    for name, kind in STATUS_FIELDS.items():
        assert isinstance(status[name], kind) and not isinstance(status[name], bool), name
    assert set(status) - set(STATUS_FIELDS) <= {"status_extension"}
    assert status["master_SAE_ID"] == "sae-a" and status["slave_SAE_ID"] == "sae-b"
    assert status["min_key_size"] <= status["key_size"] <= status["max_key_size"]
    assert status["stored_key_count"] <= status["max_key_count"] and status["max_SAE_ID_count"] == 0


def test_clause_5_1_table_2_status_is_get_only(rig: KmeRig) -> None:
    body = _error_object(rig.client("sae-a").request("POST", "/api/v1/keys/sae-b/status", b"{}"), 405)
    assert "GET" in body["message"]


def test_clause_5_1_table_3_the_sae_id_in_the_path_is_url_decoded(rig: KmeRig) -> None:
    status = rig.client("sae-a").get("/api/v1/keys/sae%2Db/status")
    assert status["slave_SAE_ID"] == "sae-b"


# ---- §5.3, §6.2: Get key (enc_keys) -------------------------------------------------------------------

def test_clause_6_2_table_10_number_defaults_to_1_and_size_to_key_size(rig: KmeRig) -> None:
    key_size = rig.client("sae-a").status("sae-b")["key_size"]
    code, body = rig.client("sae-a").request("POST", "/api/v1/keys/sae-b/enc_keys", b"{}")
    assert code == 200 and len(_container(body, key_size)) == 1
    code, body = rig.client("sae-a").request("POST", "/api/v1/keys/sae-b/enc_keys")   # every field optional: no body at all
    assert code == 200 and len(_container(body, key_size)) == 1
    code, body = rig.client("sae-a").request("GET", "/api/v1/keys/sae-b/enc_keys")
    assert code == 200 and len(_container(body, key_size)) == 1


def test_clause_6_2_the_get_form_carries_number_and_size(rig: KmeRig) -> None:
    code, body = rig.client("sae-a").request("GET", "/api/v1/keys/sae-b/enc_keys?number=3&size=1024")
    assert code == 200 and len(_container(body, 1024)) == 3


def test_clause_6_2_other_query_parameters_are_ignored(rig: KmeRig) -> None:
    """The spec defines only number and size for the GET form and says nothing of others: ignored (a
    proxy's cache-buster must not cost an SAE its key), where a repeated one is ambiguous: 400."""
    code, body = rig.client("sae-a").request("GET", "/api/v1/keys/sae-b/enc_keys?number=2&_=1700000000&trace=abc")
    assert code == 200 and len(body["keys"]) == 2
    _error_object(rig.client("sae-a").request("GET", "/api/v1/keys/sae-b/enc_keys?number=1&number=2"), 400)


def test_clause_6_2_a_size_not_a_multiple_of_8_is_refused_in_the_specs_words(rig: KmeRig) -> None:
    before = _stored(rig)
    body = _error_object(rig.client("sae-a").request("POST", "/api/v1/keys/sae-b/enc_keys", b'{"size": 100}'), 400)
    assert body["message"] == "size shall be a multiple of 8"
    assert _stored(rig) == before


def test_clause_6_2_unsupported_extension_mandatory_is_400_with_the_specs_message_and_details(rig: KmeRig) -> None:
    answer = rig.client("sae-a").request("POST", "/api/v1/keys/sae-b/enc_keys",
                                         b'{"extension_mandatory": [{"abc_route_type": "direct"}]}')
    body = _error_object(answer, 400)
    assert body["message"] == "not all extension_mandatory parameters are supported"
    assert "abc_route_type" in body["details"][0]["extension_mandatory_unsupported"]


def test_clause_6_2_extension_optional_may_be_ignored(rig: KmeRig) -> None:
    code, body = rig.client("sae-a").request("POST", "/api/v1/keys/sae-b/enc_keys",
                                             b'{"number": 1, "extension_optional": [{"abc_route_type": "direct"}]}')
    assert code == 200 and len(body["keys"]) == 1


def test_clause_6_2_additional_slave_sae_ids_beyond_max_sae_id_count_are_refused(rig: KmeRig) -> None:
    body = _error_object(rig.client("sae-a").request("POST", "/api/v1/keys/sae-b/enc_keys",
                                                     b'{"additional_slave_SAE_IDs": ["sae-mallory"]}'), 400)
    assert "max_SAE_ID_count" in body["message"]


def test_clause_5_3_table_6_limits_and_unknown_saes_are_bad_requests_taking_nothing(rig: KmeRig) -> None:
    before = _stored(rig)
    for path, body in (("/api/v1/keys/sae-b/enc_keys", b'{"number": 65}'), ("/api/v1/keys/sae-b/enc_keys", b'{"size": 16}'),
                       ("/api/v1/keys/sae-nobody/enc_keys", b"{}"), ("/api/v1/keys/sae-b/enc_keys", b'{"number": "2"}')):
        _error_object(rig.client("sae-a").request("POST", path, body), 400)
    assert _stored(rig) == before


def test_clause_5_3_table_6_not_enough_key_is_503_taking_nothing(tmp_path: Path) -> None:
    with kme_rig(tmp_path, frames=0) as empty:
        _error_object(empty.client("sae-a").request("POST", "/api/v1/keys/sae-b/enc_keys", b'{"number": 1}'), 503)
        assert empty.client("sae-a").status("sae-b")["stored_key_count"] == 0


# ---- §5.4, §6.4: Get key with key IDs (dec_keys) ------------------------------------------------------

def test_clause_5_4_the_slave_gets_the_same_keys_once_by_get_or_post(rig: KmeRig) -> None:
    issued = rig.client("sae-a").enc_keys("sae-b", 3)
    slave = rig.client("sae-b")
    code, body = slave.request("GET", f"/api/v1/keys/sae-a/dec_keys?key_ID={issued[0][0]}")   # §6.4: GET for one key ID
    assert code == 200 and _container(body, 256) == issued[:1]
    assert slave.dec_keys("sae-a", [k for k, _ in issued[1:]]) == issued[1:]                   # POST for several
    # §5.4 post-condition: removed from the pool; §6.4: the spec's message for keys not found
    body = _error_object(slave.request("GET", f"/api/v1/keys/sae-a/dec_keys?key_ID={issued[0][0]}"), 400)
    assert body["message"].startswith("one or more keys specified are not found on KME")


def test_clause_5_4_table_7_a_requester_the_keys_were_not_issued_to_gets_401(rig: KmeRig) -> None:
    ((key_id, _),) = rig.client("sae-a").enc_keys("sae-b", 1)
    answer = rig.client("sae-mallory").request("GET", f"/api/v1/keys/sae-a/dec_keys?key_ID={key_id}")
    _error_object(answer, 401)
    assert rig.client("sae-b").dec_keys("sae-a", [key_id])[0][0] == key_id   # and the key is still the slave's


def test_clause_6_4_key_ids_are_uuids_and_more_than_one_needs_post(rig: KmeRig) -> None:
    _error_object(rig.client("sae-b").request("GET", "/api/v1/keys/sae-a/dec_keys?key_ID=not-a-uuid"), 400)
    _error_object(rig.client("sae-b").request("GET", "/api/v1/keys/sae-a/dec_keys"), 400)
    _error_object(rig.client("sae-b").request("POST", "/api/v1/keys/sae-a/dec_keys", b'{"key_IDs": []}'), 400)


# ---- where the spec is silent ------------------------------------------------------------------------

def test_silent_head_on_status_is_a_get_without_body_and_on_key_calls_is_refused_taking_nothing(rig: KmeRig) -> None:
    """HTTP (RFC 9110) lets a server answer HEAD as GET; a GET of enc_keys or dec_keys hands out keys, so a
    HEAD — whose answer has no body — would lose them: 405 with ``Allow`` naming GET and POST."""
    client = rig.client("sae-a")
    before = _stored(rig)
    connection = client._connection()
    connection.request("HEAD", "/api/v1/keys/sae-b/status")
    response = connection.getresponse()
    assert response.status == 200 and response.read() == b""
    for call in ("enc_keys", "dec_keys"):
        connection.request("HEAD", f"/api/v1/keys/sae-b/{call}?number=5")
        response = connection.getresponse()
        response.read()
        assert response.status == 405 and response.getheader("Allow") == "GET, POST"
    assert _stored(rig) == before


def test_silent_other_methods_and_paths_get_405_with_allow_and_404_with_error_objects(rig: KmeRig) -> None:
    client = rig.client("sae-a")
    connection = client._connection()
    connection.request("DELETE", "/api/v1/keys/sae-b/enc_keys")
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 405 and "GET" in response.getheader("Allow", "") and "POST" in response.getheader("Allow", "")
    assert isinstance(body["message"], str)
    _error_object(client.request("GET", "/api/v1/keys/sae-b/keys"), 404)


def test_clause_5_1_answers_are_json_in_utf8(rig: KmeRig) -> None:
    connection = rig.client("sae-a")._connection()
    connection.request("GET", "/api/v1/keys/sae-b/status")
    response = connection.getresponse()
    response.read()
    assert response.getheader("Content-Type", "").split(";")[0].strip() == "application/json"
    assert "utf-8" in response.getheader("Content-Type", "").lower()


def test_keys_issued_but_never_fetched_expire(tmp_path: Path) -> None:
    """Not in the spec (it only removes fetched keys): a slave that never calls dec_keys must not hold its
    store forever — key_delivery.pending_key_ttl_s (README, Key delivery)."""
    with kme_rig(tmp_path, frames=4, extra="  pending_key_ttl_s: 1.0\n") as rig:
        ((key_id, _),) = rig.client("sae-a").enc_keys("sae-b", 1)
        time.sleep(1.2)
        rig.fleet.key_pool.expire()
        body = _error_object(rig.client("sae-b").request("GET", f"/api/v1/keys/sae-a/dec_keys?key_ID={key_id}"), 400)
        assert "not found on KME" in body["message"]
