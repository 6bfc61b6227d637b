"""``qkdops kme-probe``: a blackbox exporter for any ETSI GS QKD 014 KME — ours or a vendor's.

An operator's QKD network runs vendors' KMEs that expose no metrics qkdops can read; what every one
of them offers is the ETSI 014 API. So this exporter watches a KME the way an application uses it,
over the network only (it imports no KME code of ours: an import contract says so), like
Prometheus's blackbox_exporter: a config of targets, each a KME URL with the CA that signed it and
an SAE's client certificate and key, and the SAE at the other end. Every ``interval_s`` each target is
probed in turn:

1. ``GET …/{peer}/status`` (ETSI 014 §5.1): up, latency, HTTP code, ``stored_key_count``,
   ``max_key_count`` and the key size limits; the KME's TLS certificate expiry (and the SAE's own);
2. with ``peer.kme`` set, a round trip: ``enc_keys`` (one key) here, ``dec_keys`` of its key ID at the
   peer's KME with the peer SAE's credentials, and whether both ends handed out the same key (the
   SHA-256 digests compared in constant time). It costs one key per interval; the key bytes are
   dropped at once and never logged.

Probes run on the exporter's own clock, not per scrape, so two Prometheus replicas scraping it do not
double the keys it takes; ``qkd_kme_probe_last_probe_timestamp_seconds`` shows how fresh each result
is. Each call is bounded by ``timeout_s``; a target that hangs delays only the probes after it.
Errors are logged with the target, call and status — never a key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from exporters.catalogue import Families
from qkdops.kme.client import EtsiClient, EtsiClientError, client_context
from qkdops.yaml_fields import FieldError, FieldReader

log = logging.getLogger("qkdops.kme_probe")
EXPORTER = "kme_probe"
DEFAULT_PORT = 9813
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
CALLS = ("status", "enc_keys", "dec_keys")
SAE_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")   # a vendor's SAE ids are theirs to choose: any printable text
SAE_ID_TEXT = "an SAE id (printable, at most 256 characters)"


class ProbeConfigError(FieldError):
    """A bad probe config; the message names the file and the field."""


@dataclass(frozen=True)
class Credentials:
    """The files an SAE authenticates with: the CA that signs its KME's certificate, its own certificate and key."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Peer:
    sae: str
    kme: str | None = None                   # with credentials: the round trip's dec_keys end
    credentials: Credentials | None = None


@dataclass(frozen=True)
class Target:
    name: str
    kme: str
    sae: str
    credentials: Credentials
    peer: Peer

    @property
    def round_trip(self) -> bool:
        return self.peer.kme is not None


@dataclass(frozen=True)
class ProbeConfig:
    targets: tuple[Target, ...]
    interval_s: float = 10.0
    timeout_s: float = 3.0
    source: Path = Path("kme-probe.yaml")


def load_probe_config(path: Path) -> ProbeConfig:
    """Read and validate a probe config; relative paths are relative to the file. ProbeConfigError names
    the file and field; files a target names must exist (a probe with a missing key would only fail later)."""
    reader = FieldReader(path, ProbeConfigError)
    top = reader.mapping(reader.load(), "", {"interval_s", "timeout_s", "targets"}, required=("targets",))
    interval = reader.number(top.get("interval_s", ProbeConfig.interval_s), "interval_s", 1.0, 3600.0)
    timeout = reader.number(top.get("timeout_s", ProbeConfig.timeout_s), "timeout_s", 0.1, 60.0)
    if timeout >= interval:
        reader.fail("timeout_s", f"less than interval_s ({interval:g})", timeout)
    raw_targets = reader.sequence(top.get("targets"), "targets", "a non-empty list of targets")
    targets: list[Target] = []
    for i, raw in enumerate(raw_targets):
        where = f"targets[{i}]"
        entry = reader.mapping(raw, where, {"name", "kme", "sae", "ca", "cert", "key", "peer"},
                               required=("name", "kme", "sae", "ca", "cert", "key", "peer"))
        name = reader.string(entry["name"], f"{where}.name", TARGET_NAME, "a name of letters, digits, '.', '_' or '-'")
        if name in {t.name for t in targets}:
            reader.fail(f"{where}.name", "a name no other target has", name)
        peer_raw = reader.mapping(entry["peer"], f"{where}.peer", {"sae", "kme", "ca", "cert", "key"}, required=("sae",))
        peer_kme = _kme_url(reader, peer_raw["kme"], f"{where}.peer.kme") if "kme" in peer_raw else None
        peer_credentials = None
        if peer_kme is not None:
            missing = [f for f in ("ca", "cert", "key") if f not in peer_raw]
            if missing:
                reader.fail(f"{where}.peer", f"the peer SAE's {', '.join(missing)} beside peer.kme (the round trip's dec_keys)",
                            sorted(peer_raw))
            peer_credentials = _credentials(reader, peer_raw, f"{where}.peer", path.parent)
        elif set(peer_raw) & {"ca", "cert", "key"}:
            reader.fail(f"{where}.peer.kme", "the peer's KME URL (its credentials are given for the round trip)", None)
        targets.append(Target(
            name, _kme_url(reader, entry["kme"], f"{where}.kme"),
            reader.string(entry["sae"], f"{where}.sae", SAE_ID, SAE_ID_TEXT),
            _credentials(reader, entry, where, path.parent),
            Peer(reader.string(peer_raw["sae"], f"{where}.peer.sae", SAE_ID, SAE_ID_TEXT), peer_kme, peer_credentials)))
    return ProbeConfig(tuple(targets), interval, timeout, path)


def _kme_url(reader: FieldReader, raw: Any, where: str) -> str:
    url = reader.http_url(raw, where)
    if not url.startswith("https://"):
        reader.fail(where, "an https:// URL (ETSI 014 runs over TLS)", url)
    return url.rstrip("/")


def _credentials(reader: FieldReader, entry: Mapping[str, Any], where: str, base: Path) -> Credentials:
    paths = {}
    for name in ("ca", "cert", "key"):
        path = reader.fs_path(entry[name], f"{where}.{name}")
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            reader.fail(f"{where}.{name}", "an existing file", str(path))
        paths[name] = path
    return Credentials(**paths)


@dataclass
class Result:
    """What the last probe of one target saw (None: not measured, or no answer)."""

    up: bool = False
    at: float | None = None
    calls: dict[str, tuple[bool, float, int]] = dataclasses.field(default_factory=dict)   # call → (ok, seconds, HTTP code)
    status: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    keys_match: bool | None = None
    kme_cert_expiry: float | None = None
    sae_cert_expiry: float | None = None
    outcomes: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)      # (call, ok|failed) → count


class KmeProbe:
    """Probes ``config``'s targets every ``interval_s`` on a thread; ``render`` is its exposition."""

    def __init__(self, config: ProbeConfig, clock: Callable[[], float] = time.time) -> None:
        self.config, self.clock = config, clock
        self._results = {t.name: Result() for t in config.targets}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- schedule -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="qkdops-kme-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.timeout_s * 4 + 5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.probe_all()
            self._stop.wait(max(0.0, self.config.interval_s - (time.monotonic() - started)))

    def probe_all(self) -> None:
        for target in self.config.targets:
            if self._stop.is_set():
                return
            self.probe(target)

    # ---- one probe ----------------------------------------------------------------------------------------
    def probe(self, target: Target) -> Result:
        with self._lock:
            previous = self._results[target.name]
        result = Result(outcomes=dict(previous.outcomes), keys_match=previous.keys_match)
        result.sae_cert_expiry = _file_expiry(target.credentials.cert)
        client = self._call(result, target, "status", lambda: self._client(target.kme, target.credentials), count=False)
        try:
            status = None if client is None else self._call(result, target, "status", lambda: client.status(target.peer.sae))
            if status is not None:
                result.up, result.status = _status_object(status), status
                if not result.up:
                    log.warning("%s: status answered 200 without a Status object", target.name)
            if client is not None:
                result.kme_cert_expiry = _peer_expiry(client)
            if client is not None and result.up and target.round_trip:
                self._round_trip(result, target, client)
        finally:
            if client is not None:
                client.close()
        result.at = self.clock()
        with self._lock:
            self._results[target.name] = result
        return result

    def _round_trip(self, result: Result, target: Target, client: EtsiClient) -> None:
        issued = self._call(result, target, "enc_keys", lambda: client.enc_keys(target.peer.sae, 1))
        if not issued:
            return
        assert target.peer.kme is not None and target.peer.credentials is not None
        peer_kme, peer_credentials = target.peer.kme, target.peer.credentials
        peer = self._call(result, target, "dec_keys", lambda: self._client(peer_kme, peer_credentials), count=False)
        if peer is None:
            return
        try:
            ((key_id, key),) = issued
            fetched = self._call(result, target, "dec_keys", lambda: peer.dec_keys(target.sae, [key_id]))
        finally:
            peer.close()
        if fetched is not None:
            mine = hashlib.sha256(key).digest()
            theirs = hashlib.sha256(dict(fetched).get(key_id, b"")).digest()
            result.keys_match = hmac.compare_digest(mine, theirs)
            if not result.keys_match:
                log.error("%s: key %s differs between %s and %s (SHA-256 digests compared)", target.name, key_id,
                          target.kme, target.peer.kme)

    def _client(self, url: str, credentials: Credentials) -> EtsiClient:
        return EtsiClient(url, client_context(credentials.ca, credentials.cert, credentials.key), self.config.timeout_s)

    def _call(self, result: Result, target: Target, call: str, do: Callable[[], Any], count: bool = True) -> Any:
        """Run one ETSI call, recording success, latency and HTTP code; its answer, or None on failure.
        ``count=False``: a step before the call (its TLS context: unreadable files, a certificate that
        does not match its key), recorded only if it fails."""
        started = time.monotonic()
        code, answer, ok = 0, None, False
        try:
            answer, code, ok = do(), 200, True
            if not count:
                return answer
        except EtsiClientError as exc:
            code = exc.status
            log.warning("%s: %s at %s → HTTP %d: %s", target.name, call, target.kme if call != "dec_keys" else target.peer.kme,
                        exc.status, exc.message[:200])
        except (OSError, ValueError, KeyError, TypeError) as exc:   # unreachable, TLS refused, not JSON, malformed
            log.warning("%s: %s failed: %s", target.name, call, type(exc).__name__ + (f": {exc}"[:200] if str(exc) else ""))
        result.calls[call] = (ok, time.monotonic() - started, code)
        outcome = (call, "ok" if ok else "failed")
        result.outcomes[outcome] = result.outcomes.get(outcome, 0.0) + 1
        return answer

    # ---- exposition ---------------------------------------------------------------------------------------
    def render(self, names: Collection[str] | None = None) -> bytes:
        families = Families(EXPORTER)
        with self._lock:
            results = dict(self._results)
        for name, r in results.items():
            families.add("qkd_kme_probe_up", (name,), float(r.up) if r.at is not None else None)
            families.add("qkd_kme_probe_last_probe_timestamp_seconds", (name,), r.at)
            for call, (ok, seconds, code) in r.calls.items():
                families.add("qkd_kme_probe_success", (name, call), float(ok))
                families.add("qkd_kme_probe_duration_seconds", (name, call), seconds)
                families.add("qkd_kme_probe_http_status_code", (name, call), float(code))
            for call in CALLS:
                for outcome in ("ok", "failed"):
                    if (call, outcome) in r.outcomes or call == "status":
                        families.add("qkd_kme_probe_calls_total", (name, call, outcome), r.outcomes.get((call, outcome), 0.0))
            s = r.status if r.up else {}
            families.add("qkd_kme_probe_stored_keys", (name,), _number(s.get("stored_key_count")))
            families.add("qkd_kme_probe_capacity_keys", (name,), _number(s.get("max_key_count")))
            for bound, field in (("default", "key_size"), ("min", "min_key_size"), ("max", "max_key_size")):
                bits = _number(s.get(field))
                families.add("qkd_kme_probe_key_size_bytes", (name, bound), None if bits is None else bits / 8)
            families.add("qkd_kme_probe_keys_match", (name,), None if r.keys_match is None else float(r.keys_match))
            families.add("qkd_kme_probe_tls_certificate_expiry_timestamp_seconds", (name, "kme"), r.kme_cert_expiry)
            families.add("qkd_kme_probe_tls_certificate_expiry_timestamp_seconds", (name, "sae"), r.sae_cert_expiry)
        return families.render(names)


STATUS_FIELDS = ("stored_key_count", "max_key_count", "key_size", "min_key_size", "max_key_size")


def _status_object(data: Any) -> bool:
    """Whether an answer is an ETSI 014 Status object (§6.1): its counts and sizes are integers."""
    return isinstance(data, dict) and all(isinstance(data.get(f), int) and not isinstance(data.get(f), bool)
                                          for f in STATUS_FIELDS)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _peer_expiry(client: EtsiClient) -> float | None:
    cert = client.peer_certificate()
    return float(ssl.cert_time_to_seconds(cert["notAfter"])) if cert and "notAfter" in cert else None


def _file_expiry(path: Path) -> float | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read the certificate's expiry: %s", path, type(exc).__name__)
        return None
