"""Validation curves of the cells, read back from MLflow: when a target was first reached, and how
far each method had come by a given step (is it converged, or stopped by the step budget?).

A cell's curve is its stepped `val_accuracy` (runs logged before stepped curves kept it as
`curve_val_accuracy`). The trainer's lr is constant, so the first s steps of a longer budget are
exactly a budget of s steps on the same CPU: the best validation figure by step s is what that
shorter budget would have selected (select_on_validation).
"""

from __future__ import annotations

import pandas as pd

from harness.stats import estimate
from harness.tracking import Tracker

FRACTIONS = (4, 3, 2, 1.5, 1)
"""The progress table's columns: the step budget divided by these, rounded down to an evaluation."""


def stepped_metric(tracker: Tracker, run_id: str, names: tuple[str, ...]) -> list[tuple[int, float]]:
    """(step, value) of a metric logged under any of `names`, in step order, one value per step.
    Where a final figure shares the last evaluation's step, the curve's point (logged first) is kept."""
    history = [m for name in names for m in tracker.client.get_metric_history(run_id, name)]
    first: dict[int, tuple[int, float]] = {}
    for m in history:
        if m.step not in first or m.timestamp < first[m.step][0]:
            first[m.step] = (m.timestamp, m.value)
    return [(step, value) for step, (_, value) in sorted(first.items())]


TRAINING_CURVE = ("train_loss", "elapsed_s")
"""What the trainer logs at each evaluation besides its `val_*` figures (sab/train.py)."""


def curve_frame(tracker: Tracker, cells: pd.DataFrame) -> pd.DataFrame:
    """Every cell's evaluations, one row per (run, step) with each stepped figure as a column: read
    from the store once per report, and written beside cells.csv (curves.csv) so that a report folder
    keeps the curves, and what is computed from them, once the store is gone."""
    names = sorted(c for c in cells.columns if c.startswith("val_")) + list(TRAINING_CURVE)
    rows: dict[tuple[str, int], dict] = {}
    for cell in cells.dropna(subset=["run_id"]).itertuples(index=False):
        for name in names:
            for step, value in stepped_metric(tracker, cell.run_id, (name, f"curve_{name}")):
                rows.setdefault((cell.run_id, step), {"cell_id": cell.cell_id, "run_id": cell.run_id, "step": step})[name] = value
    frame = pd.DataFrame(list(rows.values()), columns=["cell_id", "run_id", "step", *names])
    return frame.sort_values(["cell_id", "run_id", "step"], kind="stable").reset_index(drop=True)


def curves_of(frame: pd.DataFrame, cells: pd.DataFrame, metric: str = "val_accuracy") -> dict[str, list[tuple[int, float]]]:
    """run_id -> (step, `metric`) in step order, for every ok cell of `cells`, from a curve_frame."""
    ok = set(cells.loc[cells["status"] == "ok", "run_id"])
    if metric not in frame:
        return {run_id: [] for run_id in ok}
    found = frame[frame["run_id"].isin(ok) & frame[metric].notna()]
    by_run = {run_id: list(zip(group["step"].astype(int), group[metric].astype(float))) for run_id, group in found.groupby("run_id")}
    return {run_id: by_run.get(run_id, []) for run_id in ok}


def first_step_at(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first step whose validation accuracy reached `target`; None if none did."""
    return next((step for step, value in curve if value >= target), None)


def best_by(curve: list[tuple[int, float]], step: int) -> float | None:
    """The best validation accuracy of the evaluations at or before `step`; None before the first."""
    seen = [value for at, value in curve if at <= step]
    return max(seen) if seen else None


def checkpoint_steps(steps: int, eval_interval: int) -> list[int]:
    """The steps the progress table shows: the budget over FRACTIONS, each on an evaluation step."""
    interval = max(int(eval_interval), 1)
    found = {int(steps / f) // interval * interval for f in FRACTIONS}
    return sorted(s for s in found | {int(steps)} if s > 0)


def progress_table(cells: pd.DataFrame, curves: dict[str, list[tuple[int, float]]], keys: list[str]) -> pd.DataFrame:
    """Per group of `keys` (ok cells): the best validation accuracy by each checkpoint step of every step
    budget among them, mean [95% t interval] (n) over seeds; '—' past a group's step budget. `curves`:
    run_id -> (step, validation accuracy), as curves_of gives them."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty or not {"steps", "eval_interval", "run_id"} <= set(ok.columns):
        return pd.DataFrame()
    budgets = pd.to_numeric(ok["steps"], errors="coerce")
    intervals = pd.to_numeric(ok["eval_interval"], errors="coerce")
    if budgets.isna().all() or intervals.isna().all():
        return pd.DataFrame()
    pairs = pd.DataFrame({"steps": budgets, "interval": intervals}).dropna().drop_duplicates()
    # each step budget's own checkpoints: a method given fewer steps (a bptt_time budget's SAB) keeps its row
    columns = sorted(set().union(*(checkpoint_steps(int(b), int(i)) for b, i in pairs.itertuples(index=False))))
    rows = []
    for values, group in ok.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        budget = pd.to_numeric(group["steps"], errors="coerce").max()
        for step in columns:
            found = estimate(best_by(curves[run_id], step) for run_id in group["run_id"]) if step <= budget else None
            row[f"by step {step}"] = found.text(3) if found else "—"
        rows.append(row)
    return pd.DataFrame(rows)
