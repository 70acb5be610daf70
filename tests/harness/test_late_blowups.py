"""A store written before the validation-loss rule: its late blow-ups are counted as diverged by
the report, as a rerun would record them (real sweep, local executor, MLflow on SQLite)."""

from __future__ import annotations

import pandas as pd

LATE = """
fixed: {task: adding, seq_len: 5, hidden_size: 8, batch_size: 4, eval_batches: 1, method: bptt, steps: 6, eval_interval: 3}
grid: {seed: [0, 1], inject_fault: ["", blowup]}
budgets: {quick: {}}
"""


def test_a_cell_recorded_ok_before_the_rule_is_counted_as_diverged_and_named(tmp_path, monkeypatch):
    from harness.config import load_sweep
    from harness.late_blowups import RELABELLED
    from harness.report import write_report
    from harness.sweep import main
    from harness.tracking import Tracker

    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "late.yaml").write_text(LATE)
    monkeypatch.setenv("SAB_SWEEPS_DIR", str(sweeps))
    monkeypatch.chdir(tmp_path)
    assert main(["late", "--executor", "local", "--no-timing", "--quiet"]) == 0
    tracker = Tracker("late", tmp_path / "results", None)
    tracker.open()
    runs = tracker.cell_runs("quick")
    late = runs[runs["params.inject_fault"] == "blowup"]
    assert set(late["tags.status"]) == {"diverged"}  # the trainer's own rule, today
    seed0 = late[late["params.seed"] == "0"]["run_id"].iloc[0]
    tracker.client.set_tag(seed0, "status", "ok")  # as the trainer recorded it before the rule existed
    tracker.client.set_tag(seed0, "error", "")

    report = write_report(load_sweep("late", []), tracker, tmp_path / "results").path
    cells = pd.read_csv(report.parent / "cells.csv").set_index("run_id")
    assert cells.at[seed0, "status"] == "diverged" and cells.at[seed0, "error"].endswith(RELABELLED)
    assert (cells[cells["inject_fault"].isna()]["status"] == "ok").all()  # the healthy cells stay ok
    text = report.read_text()
    name = cells.at[seed0, "name"]
    assert "Counted as diverged though recorded ok: 1 cell(s)" in text and name in text
    table = pd.read_csv(report.parent / "main_table.csv")
    assert "diverged:2" in table["status"].str.cat(sep=" ")  # the relabelled cell beside the one the trainer stopped
