"""End to end with the local stack: a fibre cut pages QKDFiberCut through Alertmanager to the pager sink,
QKDLinkDown and the link's symptom alerts fire but are inhibited, and clearing the cut sends the
resolved notification.

`qkdops up` as a process with the shipped rules (alert_rules/), 1-s scrapes and the e2e-fast link
(1-s blocks); Alertmanager's timers scale with the scrape interval (page group_wait 2 s,
group_interval 12 s). Every wait is bounded. The page arrives in seconds, but the first symptom of a
fibre cut takes minutes: QKDSessionAbortRateHigh (half the blocks of 10 minutes aborted, `for: 5m`)
about 5 minutes after the cut (measured: 304 s), the block-success SLO's 1h burn tier 1h × 14.4 % =
8.6 minutes after it plus its `for: 2m` (slo/README.md, "Coverage": the young stack's hour is judged
as a whole hour, as a mature stack's — before coverage it fired after ~130 s, judging two minutes of
data as an hour). The test takes about five and a half minutes.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from stack_helpers import FAST_LINK, RunningStack, e2e_profile, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None and shutil.which("alertmanager") is None,
    reason="Prometheus/Alertmanager not installed: `bash scripts/setup.sh` installs them (CI always has them)")]

LINK = FAST_LINK["id"]
SYMPTOM_WAIT_S = 720.0  # from the cut: the 1h burn tier's 518 s and `for: 2m` (~640 s), the latest first symptom, and slack


def test_fibre_cut_pages_inhibits_symptoms_and_resolves(tmp_path: Path):
    config_path = e2e_profile(tmp_path, [FAST_LINK])
    stack = RunningStack(config_path)
    notifications = stack.notifications

    def symptoms(**flags: str) -> list[dict]:   # Alertmanager with its basic auth, as every client reads it
        return stack.get_json("alertmanager_port", "/api/v2/alerts", filter=[f'link="{LINK}"', 'class="symptom"'], **flags)

    try:
        stack.wait_up(30)
        wait_for(lambda: stack.by_link(f'increase(qkd_secret_key_bits_total{{link="{LINK}"}}[3s]) > 0'), 30, f"key on {LINK}", stack)
        assert not notifications(link=LINK), "paged before the fault"

        # fibre cut → QKDFiberCut reaches the pager sink as a page
        cut_at_unix = time.time()
        stack.api("POST", f"/api/v1/links/{LINK}/faults", {"fault": "fiber_cut"})
        cut_at = time.monotonic()
        page = wait_for(lambda: notifications(alertname="QKDFiberCut", link=LINK, status="firing", since=cut_at_unix), 30,
                        "the QKDFiberCut page at the pager sink", stack)[0]
        paged_after = time.monotonic() - cut_at
        assert page["kind"] == "page" and page["receiver"] == "pager-sink-page"
        assert [a["labels"]["severity"] for a in page["alerts"]] == ["page"]

        # QKDLinkDown (three aborted 1-s blocks) fires too, but the cut explains it: inhibited.
        down = wait_for(lambda: stack.get_json("alertmanager_port", "/api/v2/alerts", filter=[f'link="{LINK}"', 'alertname="QKDLinkDown"']),
                        30, "QKDLinkDown in Alertmanager", stack)
        assert all(a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"] for a in down), down

        # The link's symptoms: in Alertmanager, inhibited, and never at the sink. The first to fire is
        # QKDSessionAbortRateHigh (`for: 5m`) or the block-success SLO's 1h burn tier (8.6 min, `for: 2m`).
        firing = wait_for(symptoms, cut_at + SYMPTOM_WAIT_S - time.monotonic(), f"a symptom alert on {LINK}", stack)
        symptom_after = time.monotonic() - cut_at
        # let each symptom's route pass its group_wait (2 s page, 12 s ticket at 1-s scrapes), when it would be sent
        time.sleep((12.0 if any(s["labels"]["severity"] == "ticket" for s in firing) else 2.0) + 2.0)
        firing = symptoms()
        names = sorted({s["labels"]["alertname"] for s in firing})
        assert firing and all(s["status"]["state"] == "suppressed" and s["status"]["inhibitedBy"] for s in firing), firing
        assert not symptoms(inhibited="false")
        at_sink = {(a["labels"]["alertname"], a["labels"].get("class")) for n in notifications(link=LINK, since=cut_at_unix)
                   for a in n["alerts"]}
        assert ("QKDFiberCut", "cause") in at_sink and ("QKDLinkDown", "cause") not in at_sink, at_sink
        assert not {name for name, cls in at_sink if cls == "symptom"}, at_sink

        # clearing the cut sends the resolved notification
        clear_at_unix = time.time()
        stack.api("DELETE", f"/api/v1/links/{LINK}/faults/fiber_cut")
        cleared_at = time.monotonic()
        resolved = wait_for(lambda: notifications(alertname="QKDFiberCut", link=LINK, status="resolved", since=clear_at_unix), 30,
                            "the resolved QKDFiberCut notification", stack)[0]
        resolved_after = time.monotonic() - cleared_at
        assert resolved["kind"] == "page" and resolved["status"] == "resolved"
        print(f"\nfibre cut → QKDFiberCut page at the sink {paged_after:.1f} s; first symptom in Alertmanager "
              f"{symptom_after:.1f} s, inhibited: {names}; clear → resolved at the sink {resolved_after:.1f} s")
    finally:
        status = stack.stop()
    assert status == 0, stack.output()[-2000:]
