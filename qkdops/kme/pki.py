"""Development PKI for the KMEs and SAEs: a private CA, a server certificate per KME, a client
certificate per SAE (its common name is its SAE ID: how a KME knows who is calling), and a TLS
pre-shared key per SAE for the SKIP key providers (``skip/<SAE>.psk``: 32 random bytes in hex; the
PSK identity is the SAE ID — what a router's ``psk id <name> key hex …`` holds).

Made by ``qkdops pki init`` (and by ``qkdops up`` on first run) under ``<state_dir>/pki/``, which
is git-ignored: private keys never enter the repository. Idempotent: the CA and every existing
certificate are kept, only what the config adds (a new site or SAE) is issued. Directories 0700,
private keys and PSKs 0600. ECDSA P-256 keys, SHA-256 signatures, server certificates valid for
``localhost``, ``127.0.0.1``, ``::1``, ``kme-<site>`` and the compose service name ``qkdops``.

For development and tests only: a deployment's KMEs and SAEs get their certificates from the
operator's PKI, placed under the same file names.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qkdops.config import KeyDelivery
from qkdops.kme.etsi import kme_id

PSK_BYTES = 32                   # 256-bit PSKs: the strength of the AES-256 suites SKIP asks for
VALID_DAYS = 825                 # the CA/Browser-forum ceiling for leaf certificates
SERVER_NAMES = ("localhost", "qkdops")
SERVER_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class Pki:
    """File layout of a PKI directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    def kme(self, site: str) -> tuple[Path, Path]:
        return self.root / "kme" / f"{site}.crt", self.root / "kme" / f"{site}.key"

    def sae(self, sae: str) -> tuple[Path, Path]:
        return self.root / "sae" / f"{sae}.crt", self.root / "sae" / f"{sae}.key"

    def skip_psk(self, sae: str) -> Path:
        return self.root / "skip" / f"{sae}.psk"

    def missing(self, delivery: KeyDelivery) -> list[Path]:
        """Files the KMEs of ``delivery`` need that do not exist yet."""
        needed = [self.ca_cert, *(p for k in delivery.kmes for p in self.kme(k.site)),
                  *(p for k in delivery.kmes for sae in k.saes for p in (*self.sae(sae), self.skip_psk(sae)))]
        return [p for p in needed if not p.exists()]


def read_psk(path: Path) -> bytes:
    """A PSK file's key (hex, whitespace around it ignored); ValueError naming the file, never its content."""
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path}: expected a PSK in hexadecimal") from None
    if not 16 <= len(key) <= 64:
        raise ValueError(f"{path}: expected a PSK of 16 to 64 bytes, got {len(key)}")
    return key


def init_pki(pki: Pki, delivery: KeyDelivery) -> list[Path]:
    """Create the CA (if absent) and every missing KME and SAE certificate; returns the new files."""
    created: list[Path] = []
    for directory in (pki.root, pki.root / "kme", pki.root / "sae", pki.root / "skip"):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    if pki.ca_cert.exists() != pki.ca_key.exists():
        raise FileNotFoundError(f"{pki.root}: ca.crt and ca.key must both exist or both be absent "
                                "(remove the directory to start a new development PKI)")
    if not pki.ca_cert.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkdops development"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "qkdops development CA")])
        builder = _builder(name, name, key.public_key(), VALID_DAYS * 2)
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        builder = builder.add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                                      crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        created += _write(pki.ca_cert, pki.ca_key, builder.sign(key, hashes.SHA256()), key)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    for kme in delivery.kmes:
        names = [x509.DNSName(n) for n in (*SERVER_NAMES, kme_id(kme.site))] + \
                [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS]
        created += _leaf(pki.kme(kme.site), kme_id(kme.site), ca_cert, ca_key, ExtendedKeyUsageOID.SERVER_AUTH, names)
        for sae in kme.saes:
            created += _leaf(pki.sae(sae), sae, ca_cert, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH, [])
            if not pki.skip_psk(sae).exists():
                _private(pki.skip_psk(sae), secrets.token_bytes(PSK_BYTES).hex().encode("ascii") + b"\n")
                created.append(pki.skip_psk(sae))
    return created


def _leaf(paths: tuple[Path, Path], common_name: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
          usage: x509.ObjectIdentifier, names: list[x509.GeneralName]) -> list[Path]:
    cert_path, key_path = paths
    if cert_path.exists() and key_path.exists():
        return []
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "qkdops development"),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = _builder(subject, ca_cert.subject, key.public_key(), VALID_DAYS)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _write(cert_path, key_path, builder.sign(ca_key, hashes.SHA256()), key)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _write(cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> list[Path]:
    """Key first, created 0600 (never world-readable, not even briefly), then the certificate."""
    _private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return [cert_path, key_path]


def _private(path: Path, content: bytes) -> None:
    """A secret's file, created 0600 before a byte is written."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
