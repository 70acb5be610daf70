"""`python -m harness.ui` serves the project's store on loopback only."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness.tracking import Tracker
from tests.conftest import ROOT, free_port, stop_server


def _listening_hosts(port: int) -> set[str]:
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                hosts.add(address)
    return hosts


def test_ui_serves_the_store_on_loopback(tmp_path):
    results = tmp_path / "results"
    Tracker("copy_lengths", results).open()
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-m", "harness.ui", "--results-dir", str(results), "--port", str(port)],
        cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline, body = time.monotonic() + 90, ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=copy_lengths", timeout=2
                ) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert '"name": "copy_lengths"' in body or '"name":"copy_lengths"' in body, body
        assert _listening_hosts(port) == {"0100007F"}  # 127.0.0.1, nothing else
    finally:
        stop_server(server)


def test_ui_without_a_store_says_so(tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness.ui", "--results-dir", str(tmp_path / "none")], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)  # fmt: skip
    assert out.returncode == 2 and "no store at" in out.stderr
