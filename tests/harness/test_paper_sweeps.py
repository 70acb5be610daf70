"""The paper's experiments as named sweeps: transfer columns, the primary metric, data checked up front."""

from __future__ import annotations

import pandas as pd

from harness.config import load_sweep
from harness.sweep import main
from tests.conftest import cli


def test_copy_transfer_smoke_has_a_column_per_evaluated_length(fresh_dir):
    out = cli(["harness.sweep", "copy_transfer", "budget=smoke", "--executor", "local"], fresh_dir)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = pd.read_csv(fresh_dir / "results" / "copy_transfer" / "smoke" / "main_table.csv")
    assert [c for c in table.columns if c.startswith("acc@T=")] == ["acc@T=10", "acc@T=40", "acc@T=80"]
    report = (fresh_dir / "results" / "copy_transfer" / "smoke" / "report.md").read_text()
    assert "## Notes" in report and "no_grad" in report  # whether self-attention fits at T=5000, and why
    assert "## Attention on the copy task" in report


def test_language_model_sweeps_report_bits_per_character():
    for name in ("text8", "ptb", "text8_local"):
        assert load_sweep(name).metric == "bpc"


def test_missing_dataset_fails_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pmnist", "budget=smoke", f"data_dir={tmp_path / 'nowhere'}", "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "nowhere/train-images-idx3-ubyte: missing; expected MNIST IDX files" in err
    assert f"python -m sab.data fetch mnist --to {tmp_path / 'nowhere'}" in err  # the fix, named
    assert not (tmp_path / "results").exists()


def test_dry_run_names_the_fetch_command_for_missing_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pmnist", "budget=smoke", f"data_dir={tmp_path / 'nowhere'}", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "python -m sab.data fetch mnist --to " in err and "python -m sab.data verify mnist --in " in err
