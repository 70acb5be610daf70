"""benchmarks/gpu_check.sh, the one command a lent GPU runs, rehearsed end to end on the CPU at small
sizes: every stage's arguments and code paths, so that a stage cannot fail in the first minutes of a
GPU that may be lent once."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd

from tests.conftest import ROOT


def test_every_stage_passes_on_the_cpu_at_small_sizes(tmp_path):
    env = dict(
        os.environ, DEVICE="cpu", T_SHORT="24", T_LONG="48", B="4", H="16", REPEATS="1", RESULTS=str(tmp_path), PYTHON=sys.executable
    )
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "gpu_check: every stage passed" in out.stdout
    for stage in ("parity", "launches", "launches-static", "cost-1000", "trial", "cost-5000", "cost-5000-graphed"):
        assert f"== {stage}: exit 0" in out.stdout, stage
    short = pd.read_csv(tmp_path / "gpu_cost_1000.csv")
    assert set(short["method"]) == {"bptt", "bptt_cell", "tbptt", "self_attention", "sab"}
    assert (short["status"] == "ok").all() and (short["seq_len"] == 24).all() and (short["hidden_size"] == 16).all()
    assert len(short) == 10  # each engine eager and (on a GPU) graphed
    long = pd.read_csv(tmp_path / "gpu_cost_5000.csv")
    assert set(long["method"]) == {"bptt", "bptt_cell", "tbptt", "sab"} and (long["seq_len"] == 48).all()
    assert set(pd.read_csv(tmp_path / "gpu_cost_5000_graphs.csv")["method"]) == {"bptt", "bptt_cell", "sab"}


def test_without_a_gpu_the_real_check_stops_at_once_and_says_so(tmp_path):
    env = dict(os.environ, RESULTS=str(tmp_path), PYTHON=sys.executable, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "NO GPU" in out.stdout and "== parity" not in out.stdout
