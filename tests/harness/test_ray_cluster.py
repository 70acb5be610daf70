"""A Ray cluster already running on the machine: the default executor never joins it; --address does."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import cli


@pytest.fixture(scope="module")
def ray_head():
    """A token-protected Ray head in its own process group, stopped by signalling that group
    (never `ray stop`); its token lives in a file of its own, as on a team cluster. Its folder is
    a short one under /tmp: Ray's socket paths must fit 107 bytes, which pytest's (and xdist's
    popen-gwN) temp folders can exceed."""
    with tempfile.TemporaryDirectory(prefix="sab-rayhead-", ignore_cleanup_errors=True) as name:
        temp = Path(name)
        token = temp / "auth_token"
        token.write_text(secrets.token_hex(32))
        ray = str(Path(sys.executable).with_name("ray"))
        head = subprocess.Popen(
            [ray, "start", "--head", "--port=0", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"],
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token)),
        )  # fmt: skip
        output, _ = head.communicate(timeout=120)
        assert head.returncode == 0, output
        address = (temp / "ray_current_cluster").read_text().strip()
        yield address, token
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)


def _locations(folder: Path) -> set[str]:
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["copy_lengths"], filter_string="tags.cell_id != ''")
    return set(runs["tags.location"])


def test_default_executor_does_not_join_a_running_cluster(ray_head, fresh_dir):
    address, _ = ray_head
    home = fresh_dir / "home"
    home.mkdir()
    env = {"RAY_ADDRESS": address, "HOME": str(home)}
    out = cli(["harness.sweep", "copy_lengths", "budget=smoke", "grid.method=[sab]"], fresh_dir, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    locations = _locations(fresh_dir)
    assert len(locations) == 1 and address not in next(iter(locations))
    # the private Ray ran with a token of its own: none was left in the user's ~/.ray, where it
    # would make later clients send a token to clusters that have none
    assert not (home / ".ray" / "auth_token").exists()


def test_address_runs_the_trials_on_that_cluster(ray_head, fresh_dir):
    address, token = ray_head
    out = cli(["harness.sweep", "copy_lengths", "budget=smoke", "grid.method=[sab,bptt]", "--address", address], fresh_dir,
              env={"RAY_AUTH_TOKEN_PATH": str(token)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert _locations(fresh_dir) == {f"ray://{address}"}
