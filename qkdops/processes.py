"""Facts about processes on this machine, by pid: the one place the stack, ``qkdops status`` and the
calibration store's lease ask whether a recorded process still runs."""

from __future__ import annotations

import os

UP_FILE = "up.json"
"""What a running ``qkdops up`` records in its state dir — endpoints, pids of itself and its children
(replicas under their own names), parts left out — for ``qkdops status``, the next ``up`` and game days."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine. A zombie (exited, not yet reaped: in a container
    pid 1 may never reap an orphan) does not; without /proc, signal 0 says whether it exists."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        if os.path.isdir("/proc"):
            return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def command_line(pid: int) -> str:
    """Process ``pid``'s command line, arguments joined by spaces (empty if unknown)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
