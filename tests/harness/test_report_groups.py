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
    assert "several configurations per method (varying lr_schedule)" in text
    figures = headline(pd.read_csv(report / "cells.csv"), "accuracy")  # the runs page's summary metrics
    assert {"accuracy.sab.T5.lr_schedule_constant", "accuracy.sab.T5.lr_schedule_cosine"} <= set(figures)
    assert "accuracy.sab.T5" not in figures
    for section in ("## Time to accuracy", "## Attention on the copy task"):  # every table, not only the main one
        table = text.split(section)[1].split("\n## ")[0]
        assert "| lr_schedule |" in table and "| cosine |" in table and "| constant |" in table, section
