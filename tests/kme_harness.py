"""A fleet with its sites' KMEs on HTTPS (free ports) and a client per SAE, for the KME tests.

Sites ``a`` (SAEs ``sae-a``, ``sae-a2``) and ``b`` (``sae-b``, ``sae-mallory``): every link of the
small fleet joins a and b, so sae-a → sae-b is a valid pair, and sae-mallory is the "third SAE"
with a valid certificate at the right KME but no right to sae-b's keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import write_fleet_config

from qkdops.config import FleetConfig, load_config
from qkdops.http_server import ServedService
from qkdops.kme.client import EtsiClient, SkipClient, client_context
from qkdops.kme.pki import Pki, init_pki, read_psk
from qkdops.kme.server import serve_kmes, shutdown_kmes
from qkdops.runtime.fleet import Fleet

KEY_DELIVERY = """
key_delivery:
  key_size_bits: 256
  max_key_per_request: 64
  kmes:
    - {site: a, port: 0, saes: [sae-a, sae-a2]}
    - {site: b, port: 0, saes: [sae-b, sae-mallory]}
"""


def kme_config(directory: Path, extra: str = "") -> FleetConfig:
    path = write_fleet_config(directory)
    path.write_text(path.read_text() + KEY_DELIVERY + extra)
    return load_config(path)


@dataclass
class KmeRig:
    fleet: Fleet
    pki: Pki
    urls: dict[str, str]          # site → https://127.0.0.1:PORT
    skip_urls: dict[str, str]     # site → its SKIP key provider's https://127.0.0.1:PORT
    servers: dict[str, ServedService]   # site → its KME's listener (a test may stop and start one)

    def client(self, sae: str, site: str | None = None) -> EtsiClient:
        """SAE ``sae`` (its own certificate) calling the KME of ``site`` (default: its own)."""
        site = site or self.fleet.config.key_delivery.site_of(sae)
        cert, key = self.pki.sae(sae)
        return EtsiClient(self.urls[site], client_context(self.pki.ca_cert, cert, key))

    def skip_client(self, sae: str, site: str | None = None) -> SkipClient:
        """System ``sae`` (its own PSK) calling the SKIP key provider of ``site`` (default: its own)."""
        site = site or self.fleet.config.key_delivery.site_of(sae)
        return SkipClient(self.skip_urls[site], sae, read_psk(self.pki.skip_psk(sae)))


@contextmanager
def kme_rig(directory: Path, frames: int = 4, extra: str = "", span_exporter: Any = None) -> Iterator[KmeRig]:
    config = kme_config(directory, extra)
    fleet = Fleet(config, span_exporter=span_exporter)
    servers: dict = {}
    skips: dict = {}
    try:
        fleet.run_frames(frames)
        pki = Pki(config.runtime.state_dir / "pki")
        init_pki(pki, config.key_delivery)
        servers = serve_kmes(fleet, pki)
        skips = serve_kmes(fleet, pki, skip=True)
        yield KmeRig(fleet, pki, _urls(servers), _urls(skips), servers)
    finally:
        shutdown_kmes([*servers.values(), *skips.values()])
        fleet.stop()


def _urls(servers: dict) -> dict[str, str]:
    return {site: f"https://127.0.0.1:{server.port}" for site, server in servers.items()}
