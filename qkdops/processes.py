"""Facts about processes on this machine, by pid: the one place the stack, ``qkdops status`` and the
calibration store's lease ask whether a recorded process still runs; and the servers' binaries and
logs, which the stack and the history's private Prometheus both start and explain."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

INSTALL_HINT = "run `bash scripts/setup.sh` (installs Debian's prometheus, prometheus-alertmanager and victoria-metrics)"
"""How to get the servers' binaries, for every error that misses one."""

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


PARENT_CHECK_S = 1.0


def stop_on_signals() -> threading.Event:
    """An event SIGINT and SIGTERM set: installed before a long start-up, so a stop asked for during it
    is honoured once the process runs, not by the default handler's abrupt exit."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_until_stopped(stop: threading.Event, exit_with_parent: bool) -> int | None:
    """Block until ``stop`` is set (None) or — with ``exit_with_parent`` — the process that started
    this one is gone (its pid, returned): a child of ``qkdops up`` (scheduler, worker) must not outlive
    an ``up`` killed with SIGKILL, holding its ports and state. Checked every ``PARENT_CHECK_S``."""
    parent = os.getppid()
    while not stop.wait(PARENT_CHECK_S):
        if exit_with_parent and os.getppid() != parent:
            return parent
    return None


def find_binary(names: tuple[str, ...], error: type[Exception]) -> str:
    """The first of ``names`` on PATH (Debian and upstream name some servers differently), else
    ``error`` — the caller's own, so its command reports it as it reports its other failures."""
    for name in names:
        if (path := shutil.which(name)) is not None:
            return path
    raise error(f"{' or '.join(names)} not found on PATH: {INSTALL_HINT}")


def log_tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` of a server's log on one line, for the error that says why it stopped."""
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
