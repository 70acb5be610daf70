"""Shared helpers: run the real entry points in subprocesses, in fresh temp folders."""

from __future__ import annotations

import os
import subprocess
import sys
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


def pytest_configure(config) -> None:
    """Under pytest-xdist each worker computes with one thread: two workers share the 2 cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
