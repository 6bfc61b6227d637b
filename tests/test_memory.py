"""qkdops.runtime.memory: after retain_freed_memory, a freed block-sized buffer is reused, not faulted in again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# In a fresh process (no thread has picked a malloc arena yet, as in the runtime): allocate and free a
# 256 MiB buffer on a worker thread (where the post-processing pool hashes), then allocate it again
# there and count the page faults of the second allocation against the first.
_PROBE = """
import json, resource, sys, threading
sys.path.insert(0, {root!r})
import numpy as np
from qkdops.runtime.memory import retain_freed_memory
applied = retain_freed_memory() if {retain} else None
faults = []
def work():
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = np.ones(1 << 25)          # 256 MiB of float64, every page written
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del buf
t = threading.Thread(target=work)
t.start(); t.join()
print(json.dumps({{"applied": applied, "faults": faults}}))
"""


def _probe(retain: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT), retain=retain)],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_not_faulted_again() -> None:
    default = _probe(retain=False)
    first, second = default["faults"]
    assert second > first / 2, f"glibc default should map the buffer afresh each time: faults {default['faults']}"
    kept = _probe(retain=True)
    assert kept["applied"] is True
    first, second = kept["faults"]
    assert first > 50 and second < first / 20, f"freed buffer should be reused: faults {kept['faults']}"
