"""Bad input is one line and exit 2 before any work, with nothing written; divergence is a status."""

from __future__ import annotations

import pytest
import torch

from harness.sweep import main
from sab.train import TrialSpec, run_trial

SECTIONS = [
    ("grid: 5", "'grid' must be a mapping"),
    ("fixed: [1, 2]", "'fixed' must be a mapping"),
    ("budgets: 5", "'budgets' must be a mapping"),
    ("resources: 5", "'resources' must be a mapping"),
    ("union: 5", "'union' must be a list"),
]


@pytest.mark.parametrize("body,message", SECTIONS)
def test_a_section_of_the_wrong_kind_is_one_line(tmp_path, monkeypatch, capsys, body, message):
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    text = f"name: bad\n{body}\n"
    text += "" if body.startswith("budgets") else "budgets: {quick: {}}\n"
    text += "" if body.startswith("grid") else "grid: {method: [sab]}\n"
    (sweeps / "bad.yaml").write_text(text)
    monkeypatch.setenv("SAB_SWEEPS_DIR", str(sweeps))
    monkeypatch.chdir(tmp_path)
    assert main(["bad", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("seq_len=true", "seq_len must be an integer >= 1, got True"),
        ("lr=inf", "lr must be a finite number > 0, got inf"),
        ("time_limit_s=-1", "time_limit_s must be a finite number of seconds > 0"),
        ("lr_schedule=linear", "unknown lr_schedule 'linear'; valid: constant, cosine"),
        ("lr_schedule=cosine cuda_graphs=on", "lr_schedule='cosine' needs cuda_graphs off or auto"),
    ],
)
def test_bad_values_are_refused_before_work(tmp_path, monkeypatch, capsys, override, message):
    monkeypatch.chdir(tmp_path)
    assert main(["copy_lengths", "budget=smoke", *override.split(), "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["copy_lengths", "budget=smoke", "device=cuda", "--executor", "local"]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_corrupt_store_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mlflow.db").write_bytes(b"this is not a SQLite database\n" * 100)
    assert main(["copy_lengths", "budget=smoke", "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be read" in err and "move it aside" in err


def test_an_uncreatable_results_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").write_text("a file where the folder should be")
    assert main(["copy_lengths", "budget=smoke", "--executor", "local"]) == 2
    assert "cannot create the results folder" in capsys.readouterr().err


def test_dry_run_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["copy_lengths", "budget=smoke", "--dry-run"]) == 0
    assert "4 cells: 0 done, 0 running, 4 missing, 0 failed" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_a_loss_that_explodes_is_diverged_not_ok():
    spec = TrialSpec(task="copy", method="bptt", seq_len=5, lr=1e6, clip=0.0, optimizer="sgd", steps=30, eval_interval=10, batch_size=8)
    result = run_trial(spec)
    assert result.status == "diverged", (result.status, result.curve)
    assert "started at" in result.error


def test_a_huge_grid_needs_yes_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lengths, seeds = ",".join(map(str, range(1, 101))), ",".join(map(str, range(51)))
    assert main(["copy_lengths", "budget=smoke", f"seq_len=[{lengths}]", f"seed=[{seeds}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has 20400 cells" in err and "--yes" in err
    assert list(tmp_path.iterdir()) == []


def test_a_one_seed_budget_says_its_report_calls_no_difference(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["copy_lengths", "budget=smoke", "--dry-run"]) == 0
    assert "note: budget 'smoke' runs one seed per configuration" in capsys.readouterr().out
    assert main(["copy_lengths", "budget=smoke", "seed=[0,1]", "--dry-run"]) == 0
    assert "runs one seed" not in capsys.readouterr().out


def test_a_k_top_that_attends_every_memory_is_said_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["ktop_ktrunc", "grid.k_top=[2,3,5]", "--dry-run"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "memories a step" in line]
    assert [line.split(" >= ")[0] for line in notes] == ["note: 9 cells: k_top=3", "note: 9 cells: k_top=5"]
    assert main(["copy_lengths", "--dry-run"]) == 0
    assert "memories a step" not in capsys.readouterr().out  # the main job's k_top is sparse at every T


@pytest.mark.parametrize(
    "flags,named", [(["--no-timing"], "--no-timing"), (["--executor", "ray", "--address", "127.0.0.1:1"], "--executor ray --address")]
)
def test_retime_where_it_cannot_time_here_is_one_line(tmp_path, monkeypatch, capsys, flags, named):
    monkeypatch.chdir(tmp_path)
    assert main(["copy_lengths", "budget=smoke", "--retime", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--retime measures the clean timing pass on this machine" in err and named in err
    assert not (tmp_path / "results").exists()
