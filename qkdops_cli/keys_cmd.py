"""``qkdops pki init`` (the KMEs' development PKI) and ``qkdops keys fetch`` (a small ETSI 014 client).

Contract::

    qkdops pki init [--config links.yaml]
    qkdops keys fetch --sae SAE --peer SAE [--api etsi014|skip] [--number N] [--size BITS] [--config links.yaml] [--json]

``pki init`` issues, under ``<state_dir>/pki``, a CA, a server certificate per KME and a client
certificate per SAE of the config's ``key_delivery`` — only what is missing (``qkdops up`` does the
same on start). ``keys fetch`` plays both applications of a demo: SAE (the master) asks its site's
KME for N keys for PEER (``enc_keys``), then PEER (the slave) redeems those key IDs at its own KME
(``dec_keys``), each with its own client certificate from the PKI; with ``--api skip`` the same
through the sites' SKIP key providers (draft-cisco-skip: SAE asks for a new key for PEER, PEER gets
it by key ID), each SAE with its pre-shared key from the PKI (TLS 1.3, TLS_AES_256_GCM_SHA384). It
prints each key ID with both sides' SHA-256 fingerprints (never the keys) and whether they match. Exit 0 when every key
matches, 1 when a KME refuses or is unreachable or a key differs, 2 on bad input (unknown SAE,
bad number).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from qkdops.config import DEFAULT_CONFIG, FleetConfig, KMESpec, load_config
from qkdops.kme.client import EtsiClient, EtsiClientError, SkipClient, client_context
from qkdops.kme.pki import Pki, init_pki, read_psk
from qkdops.http_client import http_url


def register(sub: argparse._SubParsersAction) -> None:
    pki = sub.add_parser("pki", help="the KMEs' development PKI", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pki_verbs = pki.add_subparsers(dest="pki_command", required=True, metavar="{init}")
    init = pki_verbs.add_parser("init", help="create the CA and every missing KME/SAE certificate")
    init.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="links.yaml (default: the shipped fleet)")
    init.set_defaults(handler=_init)

    keys = sub.add_parser("keys", help="ETSI GS QKD 014 client: fetch keys as two SAEs", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = keys.add_subparsers(dest="keys_command", required=True, metavar="{fetch}")
    fetch = verbs.add_parser("fetch", help="SAE gets keys for PEER (enc_keys); PEER gets the same keys (dec_keys)")
    fetch.add_argument("--sae", required=True, help="the master SAE (calls enc_keys at its site's KME)")
    fetch.add_argument("--peer", required=True, help="the slave SAE (calls dec_keys at its site's KME)")
    fetch.add_argument("--api", choices=("etsi014", "skip"), default="etsi014",
                       help="ETSI GS QKD 014 at the KMEs (default) or SKIP at the key providers")
    fetch.add_argument("--number", type=int, default=1, help="keys to fetch (default 1)")
    fetch.add_argument("--size", type=int, help="key size in bits (default: the KME's key_size)")
    fetch.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="links.yaml (default: the shipped fleet)")
    fetch.add_argument("--json", action="store_true", help="print the result as JSON")
    fetch.set_defaults(handler=_fetch)


def _init(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    pki = Pki(config.runtime.state_dir / "pki")
    created = init_pki(pki, config.key_delivery)
    print(f"qkdops pki init: {pki.root}: {len(created)} file(s) issued, "
          f"{len(config.key_delivery.kmes)} KME(s), {sum(len(k.saes) for k in config.key_delivery.kmes)} SAE(s)")
    for path in created:
        print(f"  {path.relative_to(pki.root)}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.number < 1:
        raise ValueError(f"--number must be at least 1, got {args.number}")
    skip = args.api == "skip"
    server = "SKIP key provider" if skip else "KME"
    try:
        issued, redeemed = (_through_skip if skip else _through_etsi)(config, args)
    except EtsiClientError as exc:
        print(f"qkdops keys fetch: error: {server} refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"qkdops keys fetch: error: {server} unreachable: {exc}", file=sys.stderr)
        return 1
    rows = [{"key_ID": key_id, "bits": 8 * len(key), "sae_sha256": _fingerprint(key),
             "peer_sha256": _fingerprint(redeemed[key_id]) if key_id in redeemed else None,
             "match": redeemed.get(key_id) == key} for key_id, key in issued]
    ok = all(r["match"] for r in rows)
    if args.json:
        print(json.dumps({"api": args.api, "sae": args.sae, "peer": args.peer, "keys": rows, "match": ok}, indent=2))
    else:
        calls = ("key", "key by ID") if skip else ("enc_keys", "dec_keys")
        print(f"{args.sae} ({calls[0]}) and {args.peer} ({calls[1]}): {len(rows)} key(s)")
        for r in rows:
            print(f"  {r['key_ID']}  {r['bits']} bits  sha256 {r['sae_sha256']} | {r['peer_sha256']}  "
                  f"{'same key' if r['match'] else 'DIFFERENT'}")
    return 0 if ok else 1


Keys = list[tuple[str, bytes]]


def _through_etsi(config: FleetConfig, args: argparse.Namespace) -> tuple[Keys, dict[str, bytes]]:
    """SAE's enc_keys at its KME, then PEER's dec_keys of those key IDs at its own."""
    master, slave = _sae_client(config, args.sae, "--sae"), _sae_client(config, args.peer, "--peer")
    try:
        issued = master.enc_keys(args.peer, args.number, args.size)
        return issued, dict(slave.dec_keys(args.sae, [key_id for key_id, _ in issued]))
    finally:
        master.close()
        slave.close()


def _through_skip(config: FleetConfig, args: argparse.Namespace) -> tuple[Keys, dict[str, bytes]]:
    """SAE's new keys for PEER at its SKIP key provider (one per call), then PEER's keys by ID at its own."""
    master, slave = _skip_client(config, args.sae, "--sae"), _skip_client(config, args.peer, "--peer")
    try:
        issued = [master.new_key(args.peer, args.size) for _ in range(args.number)]
        return issued, dict(slave.key_by_id(key_id, args.sae) for key_id, _ in issued)
    finally:
        master.close()
        slave.close()


def _site_kme(config: FleetConfig, sae: str, option: str) -> tuple[KMESpec, Pki]:
    """The KME that serves ``sae`` and the PKI it authenticates with; ValueError naming the option."""
    site = config.key_delivery.site_of(sae)
    if site is None:
        known = ", ".join(s for k in config.key_delivery.kmes for s in k.saes)
        raise ValueError(f"{option}: unknown SAE {sae!r} in {config.source} (SAEs: {known})")
    kme = config.key_delivery.kme(site)
    assert kme is not None
    return kme, Pki(config.runtime.state_dir / "pki")


def _sae_client(config: FleetConfig, sae: str, option: str) -> EtsiClient:
    kme, pki = _site_kme(config, sae, option)
    cert, key = pki.sae(sae)
    if not (pki.ca_cert.exists() and cert.exists() and key.exists()):
        raise ValueError(f"{option}: no certificate for {sae} under {pki.root} (run `qkdops pki init`, or `qkdops up` once)")
    return EtsiClient(http_url(config.runtime.bind, kme.port, "https"), client_context(pki.ca_cert, cert, key))


def _skip_client(config: FleetConfig, sae: str, option: str) -> SkipClient:
    kme, pki = _site_kme(config, sae, option)
    psk = pki.skip_psk(sae)
    if not psk.exists():
        raise ValueError(f"{option}: no pre-shared key for {sae} at {psk} (run `qkdops pki init`, or `qkdops up` once)")
    return SkipClient(http_url(config.runtime.bind, kme.skip_port, "https"), sae, read_psk(psk))


def _fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]
