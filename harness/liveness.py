"""Which driver holds a cell, and whether it is still alive (so a dead driver's claims can be reaped)."""

from __future__ import annotations

import os
import socket
import time

HEARTBEAT_S = 60.0
"""How often a driver stamps its invocation run (tag `heartbeat`, epoch seconds)."""
HEARTBEAT_EXPIRY_S = 600.0
"""A driver on another host whose stamp is older than this is taken for dead, and its claims are rerun."""


def _start_ticks(pid: int) -> str:
    """Process start time in clock ticks since boot (tells a live pid from a reused one)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def this_driver() -> dict[str, str]:
    """Tags naming the current process as a cell's driver."""
    pid = os.getpid()
    return {"driver_host": socket.gethostname(), "driver_pid": str(pid), "driver_start": _start_ticks(pid)}


def driver_alive(tags: dict, heartbeat: float | None = None) -> bool:
    """True unless the driver is known dead: on this host, its pid gone or reused; on another
    host, its last heartbeat (epoch seconds) older than HEARTBEAT_EXPIRY_S. Another host's driver
    without a heartbeat (an older version) is never taken for dead."""
    if tags.get("driver_host") != socket.gethostname():
        return heartbeat is None or time.time() - heartbeat < HEARTBEAT_EXPIRY_S
    try:
        pid = int(tags.get("driver_pid") or 0)
    except ValueError:
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = tags.get("driver_start") or ""
    return not started or _start_ticks(pid) == started


def holder_alive(tags: dict, heartbeat: float | None = None) -> bool:
    """Whether a claimed cell is still held: by its Slurm job (collected, never reaped, by a
    rerun with --executor slurm), else by its driver process (see driver_alive)."""
    return bool(tags.get("held_by")) or driver_alive(tags, heartbeat)  # a claim handed to a job outlives its driver
