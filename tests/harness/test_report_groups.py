"""The report never pools cells that differ in a parameter of their identity (real sweep, local executor, MLflow on SQLite)."""

from __future__ import annotations

import pandas as pd

from harness.report import headline
from tests.conftest import cli


def test_cells_differing_in_lr_schedule_get_rows_of_their_own(tmp_path):
    args = ["harness.sweep", "copy_lengths", "budget=smoke", "method=[sab,bptt]", "grid.lr_schedule=[constant,cosine]"]
    out = cli([*args, "--executor", "local", "--no-timing"], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = tmp_path / "results" / "copy_lengths" / "smoke"
    table = pd.read_csv(report / "main_table.csv")
    assert sorted(zip(table["method"], table["lr_schedule"])) == [
        ("bptt", "constant"),
        ("bptt", "cosine"),
        ("sab", "constant"),
        ("sab", "cosine"),
    ]
    assert set(table["accuracy"].str.extract(r"\(n=(\d+)\)")[0]) == {"1"}  # one seed each, not two pooled
    text = (report / "report.md").read_text()
    for schedule in ("constant", "cosine"):  # each SAB schedule against BPTT at the same schedule
        assert f"- T=5, SAB at lr_schedule={schedule}: accuracy SAB " in text
    assert "- T=5: 2 SAB configurations compared; each interval holds for its own comparison" in text
    figures = headline(pd.read_csv(report / "cells.csv"), "accuracy")  # the runs page's summary metrics
    assert {"accuracy.sab.T5.lr_schedule_constant", "accuracy.sab.T5.lr_schedule_cosine"} <= set(figures)
    assert "accuracy.sab.T5" not in figures
    for section in ("## Time to accuracy", "## Attention on the copy task"):  # every table, not only the main one
        table = text.split(section)[1].split("\n## ")[0]
        assert "| lr_schedule |" in table and "| cosine |" in table and "| constant |" in table, section


DRIFT = """
fixed: {task: copy, seq_len: 5, hidden_size: 8, batch_size: 4, eval_batches: 1, method: bptt, steps: 4, eval_interval: 2}
grid: {seed: [0, 1]}
budgets: {quick: {}}
"""


def test_cells_outside_the_current_grid_are_named_and_an_earlier_identity_is_never_pooled(tmp_path, monkeypatch):
    """A store outlives its sweep file: after a METHOD_VERSION bump every cell runs again under a new
    id with the same parameters and seed, and a narrowed axis leaves cells that --dry-run no longer
    counts. The report names both and never counts one seed twice."""
    import harness.cells
    from harness.config import load_sweep
    from harness.report import write_report
    from harness.sweep import main
    from harness.tracking import Tracker

    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "drift.yaml").write_text(DRIFT)
    monkeypatch.setenv("SAB_SWEEPS_DIR", str(sweeps))
    monkeypatch.chdir(tmp_path)
    assert main(["drift", "--executor", "local", "--no-timing", "--quiet"]) == 0
    monkeypatch.setattr(harness.cells, "METHOD_VERSION", harness.cells.METHOD_VERSION + 1)  # as after a bump
    assert main(["drift", "--executor", "local", "--no-timing", "--quiet"]) == 0  # both seeds run again
    report = tmp_path / "results" / "drift" / "quick"
    cells = pd.read_csv(report / "cells.csv")
    assert len(cells) == 4 and sorted(cells["cell_identity"]) == ["current", "current", "earlier", "earlier"]
    table = pd.read_csv(report / "main_table.csv")
    assert sorted(table["cell_identity"]) == ["current", "earlier"]
    assert set(table["accuracy"].str.extract(r"\(n=(\d+)\)")[0]) == {"2"}  # two seeds each, never four
    text = (report / "report.md").read_text()
    assert "2 of these cells lie outside the grid the sweep composes now" in text
    assert "recorded under an older cell identity" in text and "`cell_identity` earlier" in text

    narrowed = load_sweep("drift", ["seed=[0]"])  # the axis loses seed 1
    tracker = Tracker("drift", tmp_path / "results", None)
    tracker.open()
    text = write_report(narrowed, tracker, tmp_path / "results").path.read_text()
    assert "3 of these cells lie outside the grid the sweep composes now" in text
    assert "seed=1 (2)" in text  # both identities' seed 1, named by the value the grid dropped
