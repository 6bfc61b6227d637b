"""`qkdops pki init` and `qkdops keys fetch` (the ETSI 014 and SKIP demo client) against a running `qkdops up`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from stack_helpers import RunningStack, kme_profile, wait_for

from qkdops.config import load_config
from qkdops.kme.pki import Pki


def _qkdops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qkdops_cli.cli", *args], capture_output=True, text=True, timeout=60)


def test_pki_init_issues_what_is_missing_privately_and_only_once(tmp_path: Path):
    config_path = kme_profile(tmp_path, {"a": ["sae-a"], "b": ["sae-b", "sae-b2"]})
    first = _qkdops("pki", "init", "--config", str(config_path))
    assert first.returncode == 0, first.stderr
    assert "15 file(s) issued, 2 KME(s), 3 SAE(s)" in first.stdout and "sae/sae-b2.key" in first.stdout
    assert "skip/sae-b2.psk" in first.stdout
    pki = Pki(load_config(config_path).runtime.state_dir / "pki")
    assert len(bytes.fromhex(pki.skip_psk("sae-a").read_text())) == 32 != pki.skip_psk("sae-b").read_text()
    for path in (pki.ca_key, *pki.kme("a")[1:], *pki.sae("sae-b")[1:], pki.skip_psk("sae-b")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pki.root).st_mode) == 0o700
    ca_before = pki.ca_cert.read_bytes()
    again = _qkdops("pki", "init", "--config", str(config_path))
    assert again.returncode == 0 and "0 file(s) issued" in again.stdout and pki.ca_cert.read_bytes() == ca_before
    (pki.sae("sae-b2")[0]).unlink()
    assert "sae/sae-b2.crt" in _qkdops("pki", "init", "--config", str(config_path)).stdout  # re-issued alone


@pytest.mark.slow
def test_keys_fetch_shows_both_saes_obtaining_the_same_keys(tmp_path: Path):
    config_path = kme_profile(tmp_path, {"a": ["sae-a"], "b": ["sae-b", "sae-b2"]})
    stack = RunningStack(config_path, "--no-prometheus")
    try:
        stack.wait_up()
        fetch = ("keys", "fetch", "--config", str(config_path), "--sae", "sae-a", "--peer", "sae-b")
        result = wait_for(lambda: (r := _qkdops(*fetch, "--number", "3")).returncode == 0 and r, 30, "key to fetch", stack)
        lines = result.stdout.splitlines()
        assert lines[0] == "sae-a (enc_keys) and sae-b (dec_keys): 3 key(s)"
        assert len(lines) == 4 and all(line.endswith("same key") and " 256 bits " in line for line in lines[1:])
        as_json = json.loads(_qkdops(*fetch, "--number", "2", "--size", "512", "--json").stdout)
        assert as_json["match"] is True and [k["bits"] for k in as_json["keys"]] == [512, 512]
        assert all(k["sae_sha256"] == k["peer_sha256"] for k in as_json["keys"])
        reverse = _qkdops("keys", "fetch", "--config", str(config_path), "--sae", "sae-b2", "--peer", "sae-a")
        assert reverse.returncode == 0 and "same key" in reverse.stdout  # either end may be the master
        unknown = _qkdops("keys", "fetch", "--config", str(config_path), "--sae", "sae-z", "--peer", "sae-b")
        assert unknown.returncode == 2 and "--sae: unknown SAE 'sae-z'" in unknown.stderr and "sae-b2" in unknown.stderr
        same_site = _qkdops("keys", "fetch", "--config", str(config_path), "--sae", "sae-b", "--peer", "sae-b2")
        assert same_site.returncode == 1 and "HTTP 400" in same_site.stderr and "not at the other end" in same_site.stderr
        status = _qkdops("status", "--config", str(config_path))
        assert "kme-a" in status.stdout and "KME stores: a " in status.stdout
        # the same through the SKIP key providers (TLS-PSK), on the same stores
        skip = json.loads(_qkdops(*fetch, "--api", "skip", "--number", "2", "--json").stdout)
        assert skip["api"] == "skip" and skip["match"] is True and [k["bits"] for k in skip["keys"]] == [256, 256]
        assert all(len(k["key_ID"]) == 32 and k["sae_sha256"] == k["peer_sha256"] for k in skip["keys"])
        skip_text = _qkdops(*fetch, "--api", "skip", "--size", "128")
        assert skip_text.returncode == 0 and skip_text.stdout.startswith("sae-a (key) and sae-b (key by ID): 1 key(s)")
        refused = _qkdops("keys", "fetch", "--config", str(config_path), "--sae", "sae-b", "--peer", "sae-b2", "--api", "skip")
        assert refused.returncode == 1 and "SKIP key provider refused: HTTP 400" in refused.stderr
    finally:
        stack.stop()
    down = _qkdops("keys", "fetch", "--config", str(config_path), "--sae", "sae-a", "--peer", "sae-b")
    assert down.returncode == 1 and "KME unreachable" in down.stderr
    down = _qkdops("keys", "fetch", "--config", str(config_path), "--sae", "sae-a", "--peer", "sae-b", "--api", "skip")
    assert down.returncode == 1 and "SKIP key provider unreachable" in down.stderr
