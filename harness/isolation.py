"""Run one trial in a spawned child process, under a memory limit and a hard time limit.

The child can crash, be killed or blow its memory without taking the caller (the local
executor, a Ray actor or a Slurm job) with it: whatever happens comes back as a TrialResult
with a status. Progress reports of the trial reach the caller as they happen.
"""

from __future__ import annotations

import multiprocessing
import resource
import signal
import time
from collections.abc import Callable

from sab.train import TrialResult, TrialSpec, run_trial


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


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a killed driver or worker leaves no orphan trial."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(spec: TrialSpec, mem_gb: float | None, conn) -> None:
    """Child side: cap the address space at what it uses now plus mem_gb, run, send the result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _die_with_parent()
    if mem_gb is not None:
        limit = _address_space_bytes() + int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = run_trial(spec, on_report=lambda point: conn.send(("report", point)))
    conn.send(("result", result))
    conn.close()


def run_isolated(
    spec: TrialSpec,
    mem_gb: float | None = None,
    on_report: Callable[[dict], None] | None = None,
    hard_timeout_s: float | None = None,
) -> TrialResult:
    """Run `spec` in a fresh spawned process; a crash, kill or overrun becomes a status."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(spec, mem_gb, send), name=f"trial-{spec.method}")
    started = time.monotonic()
    process.start()
    send.close()
    limit = hard_limit_s(spec) if hard_timeout_s is None else hard_timeout_s
    result: TrialResult | None = None
    killed_for_time = False
    try:
        while result is None:
            if receive.poll(0.2):
                try:
                    kind, payload = receive.recv()
                except (EOFError, OSError):
                    break
                if kind == "report" and on_report is not None:
                    on_report(payload)
                elif kind == "result":
                    result = payload
            elif not process.is_alive():
                if not receive.poll(0.5):
                    break
            if limit is not None and time.monotonic() - started > limit and result is None:
                killed_for_time = True
                process.kill()
                break
    finally:
        if result is None and process.is_alive():
            process.kill()
        process.join()
    if result is not None:
        return result
    return _lost(process.exitcode, killed_for_time, limit, spec)


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
