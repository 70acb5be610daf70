"""GPU requests that cannot be forgotten: CUDA trials need a reserved GPU on ray and slurm, paper
budgets reserve one, and a machine without GPUs refuses a GPU budget before any work."""

from __future__ import annotations

import pytest
import torch

from harness.config import load_sweep
from harness.sweep import main


def test_paper_budgets_reserve_gpus_and_the_user_override_wins():
    assert load_sweep("copy_lengths", ["budget=paper"]).resources.gpus_per_trial == 0.25
    assert load_sweep("pmnist", ["budget=paper"]).resources.gpus_per_trial == 0.5
    assert load_sweep("copy_lengths", ["budget=paper", "resources.gpus_per_trial=1"]).resources.gpus_per_trial == 1
    assert load_sweep("copy_lengths", ["budget=quick"]).resources.gpus_per_trial == 0


@pytest.mark.parametrize("executor", ["ray", "slurm"])
def test_cuda_trials_without_a_reserved_gpu_are_refused_before_work(tmp_path, monkeypatch, capsys, executor):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAB_SLURM_CLUSTER", "local")  # the check comes before any Slurm is needed
    code = main(["copy_lengths", "budget=smoke", "device=auto", "--executor", executor, "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "device='auto' may train on CUDA but resources.gpus_per_trial is 0" in err and "device=cpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_budget_on_a_machine_without_gpus_is_refused_by_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["copy_lengths", "budget=paper", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: resources.gpus_per_trial=0.25 but this machine has 0 CUDA GPU(s); set gpus_per_trial: 0 or run where GPUs are"
