"""Run one trial in a child process, under a memory limit and a hard time limit.

The child can crash, be killed or blow its memory without taking the caller (the local
executor, a Ray actor or a Slurm job) with it: whatever happens comes back as a TrialResult
with a status. Progress reports of the trial reach the caller as they happen, as JSON lines on a
pipe of their own.

No orphans, by construction: the child's first statements, before it imports anything beyond
the standard library's basics, ask the kernel for SIGKILL when its parent dies
(PR_SET_PDEATHSIG) and then check that its parent is still the one that started it (a parent
that died before that line left the child to init: it exits). A trial run for a driver on the
same host (a Ray trial) also watches that driver's pid and exits within a second of its death.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from sab.train import TrialResult, TrialSpec, run_trial

CHILD_MARK = "sab-trial"
"""The child's argv[1]: tells its processes apart in ps (and in the tests)."""

_GUARD = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG, before any import
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[2]):
    os._exit(70)  # the parent died before the line above: nobody waits for this trial
import json
request = json.loads(sys.stdin.read() or "null")
if request is None:
    os._exit(70)
sys.path[:0] = [p for p in request["path"] if p not in sys.path]
from harness.isolation import child_main
child_main(request, int(sys.argv[3]))
"""
WATCH_INTERVAL_S = 1.0


def hard_limit_s(spec: TrialSpec) -> float | None:
    """When to kill a trial that does not stop itself at its time cap (it normally does, between
    steps): the cap plus half of it, at least 10 s more (for start-up and the final evaluation)."""
    return None if spec.time_limit_s is None else spec.time_limit_s + max(10.0, 0.5 * spec.time_limit_s)


def _address_space_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _watch_driver(tags: dict) -> None:
    """Exit this process within WATCH_INTERVAL_S of the death of the driver `tags` names."""
    from harness.liveness import driver_alive

    def watch() -> None:
        while driver_alive(tags):
            time.sleep(WATCH_INTERVAL_S)
        os._exit(71)

    threading.Thread(target=watch, name="driver-watch", daemon=True).start()


def child_main(request: dict, fd: int) -> None:
    """Child side: watch the driver, cap the address space at what it uses now plus mem_gb, run,
    write each report and then the result as one JSON line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if request.get("watch"):
        _watch_driver(request["watch"])
    out = os.fdopen(fd, "w", buffering=1)
    if request.get("mem_gb") is not None:
        limit = _address_space_bytes() + int(request["mem_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = run_trial(TrialSpec.from_dict(request["spec"]), on_report=lambda point: out.write(json.dumps({"report": point}) + "\n"))
    out.write(json.dumps({"result": result.to_dict()}) + "\n")
    out.close()


def run_isolated(
    spec: TrialSpec,
    mem_gb: float | None = None,
    on_report: Callable[[dict], None] | None = None,
    hard_timeout_s: float | None = None,
    watch: dict | None = None,
) -> TrialResult:
    """Run `spec` in a fresh child process; a crash, kill or overrun becomes a status. `watch`:
    the driver's liveness tags (harness.liveness.this_driver) when the caller is not the driver."""
    read_end, write_end = os.pipe()
    request = {"spec": dataclasses.asdict(spec), "mem_gb": mem_gb, "watch": watch, "path": sys.path}
    process = subprocess.Popen(
        [sys.executable, "-c", _GUARD, CHILD_MARK, str(os.getpid()), str(write_end)], stdin=subprocess.PIPE, pass_fds=(write_end,)
    )
    os.close(write_end)
    started = time.monotonic()
    limit = hard_limit_s(spec) if hard_timeout_s is None else hard_timeout_s
    result: TrialResult | None = None
    killed_for_time = False
    try:
        process.stdin.write(json.dumps(request).encode())
        process.stdin.close()
        for message in _messages(read_end, started, limit):
            if "report" in message and on_report is not None:
                on_report(message["report"])
            elif "result" in message:
                result = TrialResult.from_dict(message["result"])
                break
        else:
            killed_for_time = limit is not None and time.monotonic() - started > limit
    except BrokenPipeError:  # the child died before reading its request
        pass
    finally:
        os.close(read_end)
        if result is None and process.poll() is None:
            process.kill()
        process.wait()
    if result is not None:
        return result
    return _lost(process.returncode, killed_for_time, limit, spec)


def _messages(fd: int, started: float, limit: float | None):
    """The child's JSON lines as they come; ends when the pipe closes or the hard limit passes."""
    buffer = b""
    while limit is None or time.monotonic() - started <= limit:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:  # every writer closed: the child is gone
            return
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _lost(exitcode: int | None, killed_for_time: bool, limit: float | None, spec: TrialSpec) -> TrialResult:
    """The result of a child that never reported one."""
    result = TrialResult(threads=spec.threads)
    if killed_for_time:
        result.status, result.error_type = "timeout", "HardTimeLimit"
        result.error = f"trial killed after {limit:.0f} s (time cap {spec.time_limit_s} s did not stop it)"
    elif exitcode == -signal.SIGKILL:
        result.status, result.error_type = "oom", "Killed"
        result.error = "trial process was killed (SIGKILL), most likely by the kernel's out-of-memory killer"
    else:
        result.status, result.error_type = "error", "ProcessDied"
        what = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        result.error = f"trial process died with {what} before reporting a result"
    return result
