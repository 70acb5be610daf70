"""Shared helpers: run the real entry points in subprocesses, in fresh temp folders."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m ...args` from cwd with the project importable; capture its output."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full_env.pop("MLFLOW_TRACKING_URI", None)  # mlflow.set_tracking_uri in a test sets it; a command gets it only when asked
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def fresh_dir(tmp_path: Path) -> Path:
    """An empty working folder, as on a fresh machine."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture
def gpu_path(monkeypatch) -> None:
    """The sab engine's GPU path, run on the CPU: top-k by a stable sort (no tie read-back) and G's
    credit summed as on CUDA (sab.replay.accumulate_rows); benchmarks.launches takes the same path."""
    import sab.replay
    import sab.sparse_attention

    monkeypatch.setattr(sab.sparse_attention, "TIE_CHECK_ON_CPU", False)
    monkeypatch.setattr(sab.replay, "SORTED_CREDIT_DEVICES", {"cpu", "cuda"})


def sigint_as_from_a_terminal() -> None:
    """`preexec_fn` for a driver a test will Ctrl-C: SIGINT at its default, as a terminal's foreground
    job has it. A shell's background job (`bash .ci/run &`) starts with SIGINT ignored, and a child
    Python keeps an inherited ignore, which would leave the driver deaf to the test's SIGINT."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _sigint_left_alone(request):
    """Report a test that leaves SIGINT changed in this process (subprocesses would inherit an ignore)."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        print(f"\nwarning: {request.node.nodeid} left SIGINT as {after!r} (was {before!r})")


@pytest.fixture(autouse=True)
def _no_tracking_uri_from_earlier_tests(monkeypatch):
    """The harness honours MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri (used by tests to
    read a store) also sets: each test starts without it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def free_port() -> int:
    """A TCP port free on loopback now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_server(server: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, and everything it started: TERM, then KILL."""
    import signal

    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def output_or_stacks(driver: subprocess.Popen, timeout: float) -> str:
    """A sweep driver's output once it exits; if it has not exited within `timeout`, fail with every
    thread's stack (the driver dumps them on SIGUSR1) so a rare hang says where it hung."""
    import signal
    import time

    try:
        return driver.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        driver.send_signal(signal.SIGUSR1)
        time.sleep(3)
        driver.kill()
        pytest.fail(f"the driver did not exit within {timeout:.0f} s; its output and stacks:\n{driver.communicate()[0][-6000:]}")


def read_until(
    process: subprocess.Popen, wanted: Callable[[str], bool], timeout: float = 240, stream: str = "stdout", stacks: bool = True
) -> str:
    """Read `process`'s text `stream` line by line up to the first line for which `wanted(line)` holds; return it.

    A bare `for line in process.stdout` waits for ever on a process that stalls before the line: here the
    wait has a deadline, after which the process is killed (a sweep driver first dumps its threads'
    stacks on SIGUSR1 when `stacks`) and the test fails with what it printed. Lines after the one
    wanted stay unread, for the test to read next.
    """
    import queue
    import signal
    import threading

    lines: queue.Queue = queue.Queue()
    pipe = getattr(process, stream)

    def reader() -> None:  # stops at the wanted line or at the end of the stream, so the pipe is the test's again
        try:
            for line in pipe:
                lines.put(line)
                if wanted(line):
                    return
        finally:
            lines.put(None)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    timed_out = thread.is_alive()
    if timed_out:  # stacks, then kill, which ends the stream and with it the reader
        if stacks and process.poll() is None:
            process.send_signal(signal.SIGUSR1)
            thread.join(3)
        process.kill()
        thread.join(10)
    seen = []
    while not lines.empty() and (line := lines.get_nowait()) is not None:
        seen.append(line)
        if wanted(line) and not timed_out:
            return line
    if timed_out:
        reason = f"no wanted line within {timeout:.0f} s"
    else:
        try:
            reason = f"its {stream} ended (exit {process.wait(timeout=10)}) without the wanted line"
        except subprocess.TimeoutExpired:
            reason = f"its {stream} ended without the wanted line (the process still runs)"
    pytest.fail(f"{reason}; it printed:\n{''.join(seen)[-6000:]}")


def pytest_configure(config) -> None:
    """Under pytest-xdist each worker computes with one thread: two workers share the 2 cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
