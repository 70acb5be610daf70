"""Validation curves read back from a real MLflow store: the report's time to accuracy and its
"Validation over training" table (is a method converged, or stopped by its step budget?)."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.entities import Metric

from harness.curves import best_by, checkpoint_steps, curve_frame, curves_of, first_step_at, progress_table
from harness.tracking import Tracker


@pytest.fixture
def tracker(tmp_path) -> Tracker:
    tracker = Tracker("curves", tmp_path)
    tracker.open()
    return tracker


def _cell(tracker: Tracker, curve: dict[int, float], final: float, steps_done: int) -> str:
    """A run logged as tracking.Tracker logs a cell: the curve 1 ms before the final figure, which
    sits at the last step done."""
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    now = 1_000_000
    metrics = [Metric("val_accuracy", value, now - 1, step) for step, value in curve.items()]
    metrics.append(Metric("val_accuracy", final, now, steps_done))
    tracker.client.log_batch(run_id, metrics=metrics)
    return run_id


def test_the_curve_keeps_one_value_per_step_and_the_evaluation_over_a_final_at_its_step(tracker):
    run_id = _cell(tracker, {500: 0.1, 1000: 0.4, 1500: 0.3}, final=0.99, steps_done=1500)
    cells = pd.DataFrame({"cell_id": ["a"], "run_id": [run_id], "status": ["ok"], "val_accuracy": [0.99]})
    curve = curves_of(curve_frame(tracker, cells), cells)[run_id]
    assert curve == [(500, pytest.approx(0.1)), (1000, pytest.approx(0.4)), (1500, pytest.approx(0.3))]
    assert best_by(curve, 499) is None
    assert best_by(curve, 999) == pytest.approx(0.1)
    assert best_by(curve, 1500) == pytest.approx(0.4)  # the best so far, not the last
    assert first_step_at(curve, 0.35) == 1000 and first_step_at(curve, 0.5) is None


def test_checkpoints_fall_on_evaluations_and_end_at_the_budget():
    assert checkpoint_steps(24000, 500) == [6000, 8000, 12000, 16000, 24000]
    assert checkpoint_steps(6250, 250) == [1500, 2000, 3000, 4000, 6250]
    assert checkpoint_steps(20, 10) == [10, 20]


def test_progress_table_means_each_methods_best_so_far_and_leaves_steps_past_a_budget_empty(tracker):
    sab = [
        _cell(tracker, {10: 0.2, 20: 0.6, 30: 0.5, 40: 0.9}, final=0.9, steps_done=40),
        _cell(tracker, {10: 0.4, 20: 0.4, 30: 1.0, 40: 1.0}, final=1.0, steps_done=40),  # solved: stopped at 40
    ]
    bptt = [_cell(tracker, {10: 0.1, 20: 0.3}, final=0.3, steps_done=20)]
    failed = _cell(tracker, {10: 0.99}, final=0.99, steps_done=10)
    cells = pd.DataFrame(
        {
            "method": ["sab", "sab", "bptt", "sab"],
            "seq_len": [100] * 4,
            "status": ["ok", "ok", "ok", "error"],
            "steps": [80, 80, 20, 80],
            "eval_interval": [10] * 4,
            "run_id": [*sab, *bptt, failed],
            "cell_id": ["s0", "s1", "b0", "f0"],
            "val_accuracy": [0.9, 1.0, 0.3, 0.99],
        }
    )
    table = progress_table(cells, curves_of(curve_frame(tracker, cells), cells), ["method", "seq_len"]).set_index("method")
    # the checkpoints of both budgets (80 and bptt's 20), so the shorter budget keeps a row of figures
    assert list(table.columns) == ["seq_len", "by step 10", "by step 20", "by step 40", "by step 50", "by step 80"]
    assert table.loc["bptt", "by step 10"] == "0.100 (n=1)" and table.loc["sab", "by step 10"].startswith("0.300 [")
    assert table.loc["sab", "by step 20"].startswith("0.500 [") and table.loc["sab", "by step 20"].endswith("(n=2)")
    assert table.loc["sab", "by step 40"].startswith("0.950 [")
    assert table.loc["sab", "by step 80"] == table.loc["sab", "by step 40"]  # a solved cell keeps its figure
    assert table.loc["bptt", "by step 20"] == "0.300 (n=1)"
    assert table.loc["bptt", "by step 40"] == "—"  # past bptt's budget: nothing to show


def test_the_curve_frame_keeps_every_cells_evaluations_and_reads_the_old_curve_name(tracker):
    run_id = _cell(tracker, {10: 0.2, 20: 0.6}, final=0.6, steps_done=20)
    now = 1_000_000
    tracker.client.log_batch(run_id, metrics=[Metric("val_loss", v, now - 1, s) for s, v in ((10, 1.5), (20, 0.9))])
    tracker.client.log_batch(run_id, metrics=[Metric("train_loss", v, now - 1, s) for s, v in ((10, 1.7), (20, 1.0))])
    old = tracker.client.create_run(tracker.experiment_id).info.run_id  # a run from before stepped curves
    tracker.client.log_batch(old, metrics=[Metric("curve_val_accuracy", 0.4, now, 10), Metric("val_accuracy", 0.4, now + 1, 10)])
    failed = _cell(tracker, {10: 0.1}, final=0.1, steps_done=15)
    cells = pd.DataFrame(
        {
            "cell_id": ["a", "b", "c"],
            "run_id": [run_id, old, failed],
            "status": ["ok", "ok", "error"],
            "val_accuracy": [0.6, 0.4, 0.1],
            "val_loss": [0.9, None, None],
        }
    )
    frame = curve_frame(tracker, cells)
    assert list(frame.columns) == ["cell_id", "run_id", "step", "val_accuracy", "val_loss", "train_loss", "elapsed_s"]
    assert frame[["cell_id", "step"]].values.tolist() == [["a", 10], ["a", 20], ["b", 10], ["c", 10], ["c", 15]]
    assert frame.loc[frame["cell_id"] == "a", "val_loss"].tolist() == pytest.approx([1.5, 0.9])
    assert frame.loc[frame["cell_id"] == "c", "val_accuracy"].tolist() == pytest.approx([0.1, 0.1])  # a failed cell is kept, its final too
    assert curves_of(frame, cells) == {run_id: [(10, pytest.approx(0.2)), (20, pytest.approx(0.6))], old: [(10, pytest.approx(0.4))]}
    assert curves_of(frame, cells, "val_loss")[old] == []
    assert curves_of(frame, cells, "val_bpc") == {run_id: [], old: []}  # a figure this sweep never logged
