"""ETSI GS QKD 014 V1.1.1 (2019-02) for one site's KME: routing, validation, authorisation, JSON.

Transport-free: ``KMEService.handle`` takes the verified caller (its client certificate's common
name) and the request, and returns the status and the JSON object to send, so the rules are tested
without sockets and the HTTPS server (``server.py``) only moves bytes.

Endpoints (clause 5): ``GET /api/v1/keys/{slave_SAE_ID}/status`` → Status (6.1);
``GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys`` (``number``, ``size``) and ``GET|POST
/api/v1/keys/{master_SAE_ID}/dec_keys`` (``key_ID`` / ``key_IDs``) → Key container (6.3); every
error → Error (6.4: ``message`` and optional ``details``), with the codes of clause 5: 400 for a
malformed request, 401 for an SAE that may not have what it asks, 503 when the KME cannot serve it
(here: not enough key stored, or the key store could not commit — rolled back, nothing served).

Who may ask: the caller must be an SAE registered at this KME's site; ``enc_keys`` names a slave SAE
at the other end of a link from here; ``dec_keys`` returns only keys issued to the caller by the
named master. The spec's optional multicast (``additional_slave_SAE_IDs``) is not offered
(``max_SAE_ID_count`` 0) and no extension is supported, so a request that makes one mandatory is
refused (400), as clause 6.2 requires.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote

from qkdops.config import KeyDelivery, LinkSpec
from qkdops.json_input import JsonInputError, load_json
from qkdops.kme.store import InsufficientKey, KeyNotFound, KeyPoolStore, NotAddressee, StoreUnavailable

PATH = re.compile(r"^/api/v1/keys/(?P<sae>[^/]+)/(?P<call>status|enc_keys|dec_keys)$")
ENC_FIELDS = {"number", "size", "additional_slave_SAE_IDs", "extension_mandatory", "extension_optional"}
DEC_FIELDS = {"key_IDs", "key_IDs_extension"}
MAX_BODY_BYTES = 1 << 20


def kme_id(site: str) -> str:
    return f"kme-{site}"


class EtsiError(Exception):
    """An ETSI 014 Error object with its HTTP status; the message never carries key material."""

    def __init__(self, status: HTTPStatus, message: str, details: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.details = status, message, list(details)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.details:
            body["details"] = self.details
        return body


def bad_request(message: str, **detail: Any) -> EtsiError:
    """A 400 Error object (``detail``: one details entry naming the parameter); SKIP's 400s too."""
    return EtsiError(HTTPStatus.BAD_REQUEST, message, [detail] if detail else ())


@dataclass(frozen=True)
class Answer:
    status: HTTPStatus
    body: dict[str, Any]
    call: str          # status | enc_keys | dec_keys | other (for the request metrics)


class KMEService:
    """One site's KME over the shared store (see module docstring)."""

    def __init__(self, site: str, delivery: KeyDelivery, links: Sequence[LinkSpec], store: KeyPoolStore,
                 changed: Callable[[str], None] = lambda link: None) -> None:
        spec = delivery.kme(site)
        if spec is None:
            raise ValueError(f"no KME configured for site {site!r}")
        self.site, self.delivery, self.store, self.changed = site, delivery, store, changed
        self.local_saes = frozenset(spec.saes)
        self.links = tuple(links)

    # ---- entry point ----------------------------------------------------------------------------------
    def handle(self, method: str, target: str, body: bytes | None, caller: str | None) -> Answer:
        """One request by its target (``path?query``), as sent: the transport-free form tests use."""
        path, _, query = target.partition("?")
        match = PATH.match(path)
        if match is None:
            return Answer(HTTPStatus.NOT_FOUND, EtsiError(HTTPStatus.NOT_FOUND, f"no such resource {path!r}: the API is "
                                                          "/api/v1/keys/{SAE_ID}/status|enc_keys|dec_keys").body(), "other")
        return self.answer(method, match["call"], unquote(match["sae"]), query, body, caller)

    def answer(self, method: str, call: str, sae: str, query: str, body: bytes | None, caller: str | None) -> Answer:
        """``call`` (status | enc_keys | dec_keys) about the URL-decoded SAE ID of the path, by ``caller``
        (its verified certificate's common name)."""
        try:
            allowed = ("GET",) if call == "status" else ("GET", "POST")
            if method not in allowed:
                raise EtsiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on {call} (use {' or '.join(allowed)})")
            if caller not in self.local_saes:
                raise EtsiError(HTTPStatus.UNAUTHORIZED, f"SAE {caller!r} is not registered with {kme_id(self.site)}")
            params = self._params(method, query, body, call)
            result = getattr(self, f"_{call}")(caller, sae, params)
            return Answer(HTTPStatus.OK, result, call)
        except EtsiError as exc:
            return Answer(exc.status, exc.body(), call)

    # ---- calls ------------------------------------------------------------------------------------------
    def _status(self, caller: str, slave: str, params: Mapping[str, Any]) -> dict[str, Any]:
        slave_site, links = self._route(slave, "slave_SAE_ID")
        d = self.delivery
        return {"source_KME_ID": kme_id(self.site), "target_KME_ID": kme_id(slave_site),
                "master_SAE_ID": caller, "slave_SAE_ID": slave, "key_size": d.key_size_bits,
                "stored_key_count": self.store.available_bytes(self.site, links) * 8 // d.key_size_bits,
                "max_key_count": d.max_key_count, "max_key_per_request": d.max_key_per_request,
                "max_key_size": d.max_key_size_bits, "min_key_size": d.min_key_size_bits, "max_SAE_ID_count": 0}

    def _enc_keys(self, caller: str, slave: str, params: Mapping[str, Any]) -> dict[str, Any]:
        d = self.delivery
        number = _integer(params.get("number", 1), "number", 1, d.max_key_per_request)
        size = _integer(params.get("size", d.key_size_bits), "size", d.min_key_size_bits, d.max_key_size_bits)
        if size % 8:
            raise bad_request("size shall be a multiple of 8", parameter="size", value=size)   # §6.2, its words
        if params.get("additional_slave_SAE_IDs"):
            raise bad_request("additional_slave_SAE_IDs is not supported by this KME (max_SAE_ID_count is 0)",
                       parameter="additional_slave_SAE_IDs")
        if mandatory := params.get("extension_mandatory"):   # §6.2: the spec's message and details
            names = sorted({str(k) for e in mandatory if isinstance(e, dict) for k in e}) if isinstance(mandatory, list) else []
            raise EtsiError(HTTPStatus.BAD_REQUEST, "not all extension_mandatory parameters are supported",
                            [{"extension_mandatory_unsupported": f"{', '.join(names)[:200] or 'extension_mandatory'} "
                                                                 "is not supported (this KME supports no extension)"}])
        slave_site, links = self._route(slave, "slave_SAE_ID")
        try:
            keys = self.store.issue(links, self.site, slave_site, caller, slave, number, size // 8)
        except InsufficientKey as exc:
            raise EtsiError(HTTPStatus.SERVICE_UNAVAILABLE, f"not enough key stored for {caller} → {slave}: {exc}") from None
        except StoreUnavailable as exc:
            raise EtsiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        self._changed(links)
        return _container(keys)

    def _dec_keys(self, caller: str, master: str, params: Mapping[str, Any]) -> dict[str, Any]:
        _, links = self._route(master, "master_SAE_ID")
        key_ids = params["key_IDs"]
        try:
            keys = self.store.redeem(self.site, master, caller, key_ids)
        except NotAddressee as exc:
            raise EtsiError(HTTPStatus.UNAUTHORIZED, str(exc)) from None
        except KeyNotFound as exc:   # §6.4: the spec's message, then which key
            raise bad_request(f"one or more keys specified are not found on KME: {exc}", parameter="key_ID") from None
        except StoreUnavailable as exc:
            raise EtsiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        self._changed(links)
        return _container(keys)

    def _changed(self, links: Sequence[str]) -> None:
        for link in links:
            self.changed(link)

    # ---- parsing and routing ----------------------------------------------------------------------------
    def _route(self, peer: str, field: str) -> tuple[str, list[str]]:
        """The peer SAE's site and the links joining it to this site, or 400."""
        peer_site = self.delivery.site_of(peer)
        if peer_site is None:
            raise bad_request(f"{field} {peer!r} is not a known SAE", parameter=field)
        links = [s.id for s in self.links if {s.sites.alice, s.sites.bob} == {self.site, peer_site}]
        if peer_site == self.site or not links:
            raise bad_request(f"{field} {peer!r} (site {peer_site}) is not at the other end of a QKD link from {self.site}",
                       parameter=field)
        return peer_site, links

    def _params(self, method: str, query: str, body: bytes | None, call: str) -> dict[str, Any]:
        if method == "GET":
            raw = parse_qs(query, keep_blank_values=True)
            # §6.2, §6.4: the GET forms carry number and size (enc_keys) or one key_ID (dec_keys); the spec
            # says nothing of other parameters, so they are ignored (as lenient as it allows). A parameter
            # given twice is ambiguous: 400.
            allowed = {"status": set(), "enc_keys": {"number", "size"}, "dec_keys": {"key_ID"}}[call]
            for name, values in raw.items():
                if name in allowed and len(values) != 1:
                    raise bad_request(f"query parameter {name!r} given {len(values)} times", parameter=name)
            params: dict[str, Any] = {k: v[0] for k, v in raw.items() if k in allowed}
            if call == "dec_keys":
                if "key_ID" not in params:
                    raise bad_request("dec_keys needs the key_ID query parameter", parameter="key_ID")
                params = {"key_IDs": [_key_id(params["key_ID"], "key_ID")]}
            return params
        # §6.2: every field of a Key request is optional, so an empty POST body is the empty request
        data = _json_object(body) if body or call != "enc_keys" else {}
        if call == "enc_keys":
            _only(data, ENC_FIELDS)
            for name in ("number", "size"):
                if name in data and (isinstance(data[name], bool) or not isinstance(data[name], int)):
                    raise bad_request(f"{name} must be an integer, got {data[name]!r}", parameter=name)
            return data
        _only(data, DEC_FIELDS)
        entries = data.get("key_IDs")
        if not isinstance(entries, list) or not entries:
            raise bad_request("key_IDs must be a non-empty array of {\"key_ID\": UUID}", parameter="key_IDs")
        if len(entries) > self.delivery.max_key_per_request:
            raise bad_request(f"at most {self.delivery.max_key_per_request} key_IDs per request, got {len(entries)}", parameter="key_IDs")
        ids = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "key_ID" not in entry:
                raise bad_request(f"key_IDs[{i}] must be an object with a key_ID", parameter=f"key_IDs[{i}]")
            ids.append(_key_id(entry["key_ID"], f"key_IDs[{i}].key_ID"))
        if len(set(ids)) != len(ids):
            raise bad_request("key_IDs lists a key_ID twice", parameter="key_IDs")
        return {"key_IDs": ids}


def _json_object(body: bytes | None) -> dict[str, Any]:
    if not body:
        raise bad_request("POST needs a JSON object body")
    try:
        data = load_json(body)
    except JsonInputError as exc:
        raise bad_request(str(exc)) from None
    if not isinstance(data, dict):
        raise bad_request("body must be a JSON object")
    return data


def _only(data: Mapping[str, Any], allowed: set[str]) -> None:
    for name in data:
        if name not in allowed:
            raise bad_request(f"unknown field {name!r} (allowed: {', '.join(sorted(allowed))})", parameter=name)


def _integer(raw: Any, name: str, low: int, high: int) -> int:
    try:
        value = int(raw) if not isinstance(raw, bool) else None
    except (TypeError, ValueError):
        value = None
    if value is None or (isinstance(raw, str) and not raw.strip().lstrip("-").isdigit()):
        raise bad_request(f"{name} must be an integer, got {raw!r}", parameter=name)
    if not low <= value <= high:
        raise bad_request(f"{name} must be within [{low}, {high}], got {value}", parameter=name, minimum=low, maximum=high)
    return value


def _key_id(raw: Any, name: str) -> str:
    try:
        return str(uuid.UUID(str(raw))) if isinstance(raw, str) else _fail_key_id(raw, name)
    except ValueError:
        return _fail_key_id(raw, name)


def _fail_key_id(raw: Any, name: str) -> str:
    raise bad_request(f"{name} must be a UUID, got {str(raw)[:64]!r}", parameter=name)


def _container(keys: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    return {"keys": [{"key_ID": key_id, "key": base64.b64encode(material).decode("ascii")} for key_id, material in keys]}
