"""The Secure Key Integration Protocol (IETF draft-cisco-skip-02) key provider of one site.

Transport-free, like ``etsi.py``: ``SkipService.answer`` takes the verified caller (the PSK identity
its TLS session authenticated, ``psk.py``) and the request, and returns the status and JSON object;
``server.py`` serves it over TLS-PSK beside the site's ETSI 014 KME, on the same key store.

SKIP's systems are our SAEs: an encryptor's PSK identity is its SAE ID, its ``localSystemID``; the
``remoteSystemID`` it names is the SAE at the other end of a QKD link. The API (§4, Table 2), every
method GET, no path prefix:

* ``/capabilities`` → ``{entropy, key, algorithm, localSystemID, remoteSystemID[]}`` (§4.1);
* ``/key?remoteSystemID=R[&size=BITS]`` → ``{keyId, key}`` (§4.2.1): a new key for R, taken from the
  link's store exactly as ETSI 014's ``enc_keys`` takes one (the caller's copy leaves the store, R's
  waits at R's key provider under the key ID);
* ``/key/{keyId}?remoteSystemID=I`` → ``{keyId, key}`` (§4.2.2): the key initiator I got, at the
  responder's end, once — then zeroized (the store deletes it, as ``dec_keys`` does);
* ``/entropy[?minentropy=BITS]`` → ``{randomStr, minentropy}`` (§4.3), from the operating system's CSPRNG
  (``secrets``; this KP has no hardware RNG of its own).

``keyId`` and ``key`` are hexadecimal (§4.2); a key ID is 128 bits (the draft's default length): the
hex of the UUID ETSI 014 shows as ``key_ID``, so one key store serves both APIs and a key taken
through one is gone from the other. Status codes (Tables 3, 7, 9): 400 for a malformed request, a
malformed key ID or a key not held for this pair; 404 for a path outside Table 2; 405 for a method
other than GET (with ``Allow``); 503 when not enough key is stored or the store cannot commit (the
draft lists 503 for entropy; a key provider out of key is the same condition). The draft defines no
error body: errors carry ``{"message"}``, as ETSI 014's do, never key material.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs

from qkdops.config import KeyDelivery, LinkSpec
from qkdops.kme.etsi import Answer, EtsiError, bad_request, kme_id
from qkdops.kme.store import InsufficientKey, KeyNotFound, KeyPoolStore, NotAddressee, StoreUnavailable

ALGORITHM = "QKD"          # how the KPs agree keys: QKD-distilled, confirmed equal at hand-off
DEFAULT_ENTROPY_BITS = 256  # §4.3
KEY_ID = re.compile(r"^[0-9A-Fa-f]{32}$")
CALLS = {"capabilities": set(), "key": {"remoteSystemID", "size"}, "key_by_id": {"remoteSystemID"},
         "entropy": {"minentropy"}}   # call → the query parameters it takes


def skip_id(site: str) -> str:
    """The key provider's name in logs and metrics (its site's KME is ``kme-<site>``)."""
    return f"skip-{site}"


class SkipService:
    """One site's SKIP key provider over the shared store (see module docstring)."""

    def __init__(self, site: str, delivery: KeyDelivery, links: Sequence[LinkSpec], store: KeyPoolStore,
                 changed: Callable[[str], None] = lambda link: None, entropy: Callable[[int], bytes] = secrets.token_bytes) -> None:
        spec = delivery.kme(site)
        if spec is None:
            raise ValueError(f"no KME configured for site {site!r}")
        self.site, self.delivery, self.store, self.changed, self.entropy = site, delivery, store, changed, entropy
        self.local_systems = frozenset(spec.saes)
        self.links = tuple(links)

    def answer(self, method: str, call: str, key_id: str | None, query: str, caller: str | None) -> Answer:
        """``call`` (capabilities | key | key_by_id | entropy) by ``caller`` (its PSK identity)."""
        try:
            if method != "GET":
                raise EtsiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed: SKIP is GET only")
            if caller not in self.local_systems:   # a PSK of this site whose SAE was since removed from the config
                raise EtsiError(HTTPStatus.BAD_REQUEST, f"system {caller!r} is not served by {skip_id(self.site)}")
            params = _params(query, CALLS[call])
            if call == "capabilities":
                return Answer(HTTPStatus.OK, self._capabilities(caller), call)
            if call == "entropy":
                return Answer(HTTPStatus.OK, self._entropy(params), call)
            if call == "key":
                return Answer(HTTPStatus.OK, self._new_key(caller, params), call)
            return Answer(HTTPStatus.OK, self._key_by_id(caller, key_id or "", params), call)
        except EtsiError as exc:
            return Answer(exc.status, {"message": exc.message}, call)

    # ---- calls ------------------------------------------------------------------------------------------
    def _capabilities(self, caller: str) -> dict[str, Any]:
        remotes = sorted({sae for spec in self.delivery.kmes if spec.site in self._peer_sites() for sae in spec.saes})
        return {"entropy": True, "key": True, "algorithm": ALGORITHM, "localSystemID": caller, "remoteSystemID": remotes}

    def _entropy(self, params: Mapping[str, str]) -> dict[str, Any]:
        bits = _bits(params.get("minentropy"), "minentropy", DEFAULT_ENTROPY_BITS, 8, self.delivery.max_key_size_bits)
        return {"randomStr": self.entropy(bits // 8).hex().upper(), "minentropy": bits}

    def _new_key(self, caller: str, params: Mapping[str, str]) -> dict[str, Any]:
        d = self.delivery
        size = _bits(params.get("size"), "size", d.key_size_bits, d.min_key_size_bits, d.max_key_size_bits)
        remote = _required(params, "remoteSystemID")
        remote_site, links = self._route(remote)
        try:
            ((key_id, key),) = self.store.issue(links, self.site, remote_site, caller, remote, 1, size // 8, call="key")
        except InsufficientKey as exc:
            raise EtsiError(HTTPStatus.SERVICE_UNAVAILABLE, f"not enough key stored for {caller} → {remote}: {exc}") from None
        except StoreUnavailable as exc:
            raise EtsiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        self._changed(links)
        return {"keyId": uuid.UUID(key_id).hex.upper(), "key": key.hex().upper()}

    def _key_by_id(self, caller: str, key_id: str, params: Mapping[str, str]) -> dict[str, Any]:
        initiator = _required(params, "remoteSystemID")
        if not KEY_ID.match(key_id):
            raise bad_request(f"keyId must be 32 hexadecimal digits (128 bits), got {key_id[:64]!r}")
        _, links = self._route(initiator)
        try:
            ((_, key),) = self.store.redeem(self.site, initiator, caller, [str(uuid.UUID(hex=key_id))], call="key_by_id")
        except (KeyNotFound, NotAddressee):
            raise bad_request(f"keyId {key_id.upper()} is not held for {initiator} → {caller} (unknown or already delivered)") from None
        except StoreUnavailable as exc:
            raise EtsiError(HTTPStatus.SERVICE_UNAVAILABLE, str(exc)) from None
        self._changed(links)
        return {"keyId": key_id.upper(), "key": key.hex().upper()}

    # ---- routing ----------------------------------------------------------------------------------------
    def _peer_sites(self) -> set[str]:
        return {end for s in self.links for end in (s.sites.alice, s.sites.bob)
                if self.site in (s.sites.alice, s.sites.bob) and end != self.site}

    def _route(self, remote: str) -> tuple[str, list[str]]:
        """The remote system's site and the links joining it to this site, or 400."""
        remote_site = self.delivery.site_of(remote)
        links = [s.id for s in self.links if remote_site is not None and {s.sites.alice, s.sites.bob} == {self.site, remote_site}]
        if remote_site is None or remote_site == self.site or not links:
            raise bad_request(f"remoteSystemID {remote[:64]!r} is not a system at the other end of a QKD link from "
                       f"{kme_id(self.site)}")
        return remote_site, links

    def _changed(self, links: Sequence[str]) -> None:
        for link in links:
            self.changed(link)


def _params(query: str, allowed: set[str]) -> dict[str, str]:
    try:
        raw = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise bad_request("malformed query string") from None
    for name, values in raw.items():
        if name not in allowed:
            raise bad_request(f"unknown query parameter {name[:64]!r} (allowed: {', '.join(sorted(allowed)) or 'none'})")
        if len(values) != 1:
            raise bad_request(f"query parameter {name!r} given {len(values)} times")
    return {name: values[0] for name, values in raw.items()}


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise bad_request(f"the {name} query parameter is required")
    return value


def _bits(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise bad_request(f"{name} must be a whole number of bits, got {raw[:64]!r}")
    bits = int(raw)
    if not low <= bits <= high or bits % 8:
        raise bad_request(f"{name} must be a multiple of 8 within [{low}, {high}] bits, got {bits}")
    return bits
