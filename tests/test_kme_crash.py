"""Kill -9 of the process hosting the KMEs while two SAEs stream keys, then restart: no key lost,
none served twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from kme_stream import Stream, assert_no_key_lost_or_served_twice
from stack_helpers import RunningStack, kme_profile, wait_for

from qkdops.kme.pki import Pki

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("api", ["etsi014", "skip"])
def test_kill_9_mid_stream_loses_no_key_and_serves_none_twice(tmp_path: Path, api: str):
    """Over either API: the SKIP key provider commits on the same store transactions as the KME."""
    config_path = kme_profile(tmp_path, {"a": ["sae-a"], "b": ["sae-b"]})
    raw = yaml.safe_load(config_path.read_text())
    ports = {k["site"]: k["port" if api == "etsi014" else "skip_port"] for k in raw["key_delivery"]["kmes"]}
    state = Path(raw["runtime"]["state_dir"])
    stack = RunningStack(config_path, "--no-prometheus")
    stream: Stream | None = None
    try:
        stack.wait_up()
        stream = Stream(Pki(state / "pki"), ports, api)
        stream.thread.start()
        wait_for(lambda: len(stream.redeemed) >= 400, 60, "keys streaming before the kill", stack)
        stack.kill9()
        before_kill = len(stream.issued)
        time.sleep(1.0)
        stack = RunningStack(config_path, "--no-prometheus")
        stack.wait_up()
        wait_for(lambda: len(stream.issued) >= before_kill + 400 and stream.settled, 60,
                 "keys streaming after the restart", stack)
    finally:
        if stream is not None:
            stream.stop.set()
            stream.thread.join(10)
        stack.stop()

    assert stream.failures >= 1  # the kill did interrupt the stream
    assert_no_key_lost_or_served_twice(stream, state)
