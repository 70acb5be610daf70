"""A longer budget of a finished cell continues from its kept final state, through the real
sweep command (local executor, MLflow on SQLite), and ends where a run from step 0 ends."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from tests.conftest import cli

SMOKE = ["harness.sweep", "copy_lengths", "budget=smoke", "method=[sab,bptt]", "--executor", "local", "--no-timing", "--no-report"]


def _cells(folder: Path) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'results' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["copy_lengths"], filter_string="tags.cell_id != ''")
    return runs.set_index(["params.method", "params.steps"]).sort_index()


def _ok(out) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_a_longer_budget_continues_each_cell_and_matches_a_run_from_step_0(tmp_path):
    continued, scratch = tmp_path / "continued", tmp_path / "scratch"
    continued.mkdir(), scratch.mkdir()
    _ok(cli([*SMOKE, "steps=20"], continued))
    kept = sorted((continued / "results" / "states").glob("*/20.pt"))
    assert len(kept) == 2  # one lineage per cell (sab and bptt)

    plan = cli([*SMOKE, "steps=40", "--dry-run"], continued)
    assert plan.stdout.count("(continues from step 20)") == 2, plan.stdout
    longer = cli([*SMOKE, "steps=40"], continued)
    _ok(longer)
    assert "2 to run on local (2 continue from a shorter budget's final state)" in longer.stdout
    _ok(cli([*SMOKE, "steps=40"], scratch))

    ours, theirs = _cells(continued), _cells(scratch)
    for method in ("sab", "bptt"):
        run, reference = ours.loc[(method, "40")], theirs.loc[(method, "40")]
        assert run["tags.continued_from_step"] == "20" and reference["tags.continued_from_step"] == "0"
        for metric in ("metrics.accuracy", "metrics.val_accuracy", "metrics.loss", "metrics.transfer_accuracy_20"):
            assert run[metric] == reference[metric], (method, metric)
        client = mlflow.tracking.MlflowClient(f"sqlite:///{continued / 'results' / 'mlflow.db'}")
        history = client.get_metric_history(run["run_id"], "val_accuracy")
        assert sorted({m.step for m in history}) == [10, 20, 30, 40]  # the shorter run's curve is part of the cell's
    assert "params.final_state_path" not in ours.columns and "params.continue_from" not in ours.columns

    again = cli([*SMOKE, "steps=60", "--from-scratch"], continued)
    _ok(again)
    assert "continue from" not in again.stdout
    assert set(_cells(continued).loc[(slice(None), "60"), "tags.continued_from_step"]) == {"0"}
