"""End to end on the real stack: a link whose verification is switched off (a misconfiguration)
suffers an error-correction bug (reconciliation_fault); the key confirmation at hand-off discards
every mismatched key, QKDKeyMismatch pages through Alertmanager to the pager sink, and the keys the
KMEs serve are still the same at both ends.

`qkdops up` as a process with the shipped fleet plus one 1-s-block bits-engine link with `verification: false`
and the shipped rules; every wait is bounded (the page arrives within about 10 s of the fault).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stack_helpers import BITS_LINK, RunningStack, e2e_profile, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None,
    reason="Prometheus/Alertmanager not installed: `bash scripts/setup.sh` installs them (CI always has them)")]

UNVERIFIED = {**BITS_LINK, "id": "e2e-unverified", "seed": 11, "postprocessing": {"engine": "bits", "verification": False}}
LINK = UNVERIFIED["id"]


def test_key_mismatch_pages_and_no_mismatched_key_is_served(tmp_path: Path):
    config_path = e2e_profile(tmp_path, [UNVERIFIED])
    stack = RunningStack(config_path)

    notifications = stack.notifications

    def fetch_keys() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qkdops_cli.cli", "keys", "fetch", "--config", str(config_path),
                               "--sae", "sae-a", "--peer", "sae-b", "--number", "4", "--json"],
                              capture_output=True, text=True, timeout=60)

    try:
        stack.wait_up(30)
        wait_for(lambda: stack.by_link(f'increase(qkd_secret_key_bits_total{{link="{LINK}"}}[3s]) > 0'), 30, f"key on {LINK}", stack)
        wait_for(lambda: stack.by_link(f'qkd_key_store_keys{{link="{LINK}"}} > 8'), 30, f"keys at {LINK}'s KMEs", stack)
        fault_at_unix = time.time()
        stack.api("POST", f"/api/v1/links/{LINK}/faults", {"fault": "reconciliation_fault"})
        fault_at = time.monotonic()
        page = wait_for(lambda: notifications(alertname="QKDKeyMismatch", link=LINK, status="firing", since=fault_at_unix), 60,
                        "the QKDKeyMismatch page at the pager sink", stack)[0]
        paged_after = time.monotonic() - fault_at
        assert page["kind"] == "page" and [a["labels"]["severity"] for a in page["alerts"]] == ["page"]
        mismatches = stack.by_link(f'qkd_key_confirmation_failures_total{{link="{LINK}"}}')
        assert mismatches.get(LINK, 0) >= 1, mismatches
        # blocks keep "succeeding" (nothing verifies them), and not one of their keys reaches a KME: once the
        # blocks post-processed before the fault are handed off, the hand-off counter stands still
        handoffs = f'qkd_key_handoffs_total{{link="{LINK}", outcome="success"}}'
        time.sleep(3.0)
        handed = stack.by_link(handoffs)
        blocks = stack.by_link(f'qkd_blocks_total{{link="{LINK}", outcome="success"}}')
        wait_for(lambda: stack.by_link(f'qkd_blocks_total{{link="{LINK}", outcome="success"}}')[LINK] >= blocks[LINK] + 3, 30,
                 "three more blocks", stack)
        assert stack.by_link(handoffs) == handed, (handed, stack.by_link(handoffs))
        # what the KMEs hold is from before the fault: both ends serve the same keys
        fetched = fetch_keys()
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        served = json.loads(fetched.stdout)
        assert served["match"] and len(served["keys"]) == 4, served
        assert all(k["sae_sha256"] == k["peer_sha256"] for k in served["keys"]), served
        assert not notifications(alertname="QKDVerificationFailing", link=LINK), "verification is off on this link"
        stack.api("DELETE", f"/api/v1/links/{LINK}/faults/reconciliation_fault")
        print(f"\nreconciliation_fault on an unverified link → QKDKeyMismatch page at the sink {paged_after:.1f} s; "
              f"{mismatches[LINK]:.0f} mismatched block key(s) discarded, none served")
    finally:
        status = stack.stop()
    assert status == 0, stack.output()[-2000:]
