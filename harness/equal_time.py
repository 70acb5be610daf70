"""Accuracy at equal wall-clock: what each method reached within the same CPU time.

A report's tables compare methods at equal steps, but a SAB step costs several BPTT steps. Here the
time is fixed instead: the shortest whole budget of any method at a length (its steps x its clean
s/step), and each method's best validation accuracy within that time (steps = time / its own s/step,
read from its validation curve). The evaluation interval sets the resolution: a method is credited
with its last evaluation inside the time.
"""

from __future__ import annotations

import math

import pandas as pd

from harness.curves import best_by
from harness.stats import difference, estimate
from harness.timing import clean_seconds, duration

REFERENCE = "bptt"
"""The method SAB is set against at equal time."""


def _budgets(ok: pd.DataFrame, keys: list[str], frame: pd.DataFrame) -> list[dict]:
    """One entry per configuration: its keys, clean s/step and step budget (the largest of its cells)."""
    found = []
    for values, group in ok.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        seconds = clean_seconds(frame, row)
        steps = pd.to_numeric(group["steps"], errors="coerce").max()
        if math.isfinite(seconds) and steps == steps:
            found.append({"row": row, "seconds": seconds, "steps": int(steps), "runs": list(group["run_id"])})
    return found


def equal_time(
    cells: pd.DataFrame, curves: dict[str, list[tuple[int, float]]], frame: pd.DataFrame, keys: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """The equal-time table (one row per configuration) and a SAB - BPTT line per SAB configuration
    and length; empty without curves or clean timing."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty or frame.empty or not {"steps", "run_id", "seq_len"} <= set(ok.columns):
        return pd.DataFrame(), []
    rows, lines = [], []
    for length, at_length in ok.groupby("seq_len", sort=True):
        budgets = _budgets(at_length, keys, frame)
        if len(budgets) < 2:
            continue
        seconds = min(b["steps"] * b["seconds"] for b in budgets)
        reached = {}
        for b in budgets:
            steps = min(b["steps"], int(seconds / b["seconds"] + 1e-6))  # the budget-setting method gets its whole budget
            values = [best_by(curves[run_id], steps) for run_id in b["runs"]]
            reached[id(b)] = [v for v in values if v is not None]
            found = estimate(reached[id(b)])
            rows.append({
                **b["row"], "seq_len": int(length), "clean s/step": f"{b['seconds']:.4f}", "time": duration(seconds),
                "steps in that time": f"{steps} of {b['steps']}", "best validation accuracy by then": found.text(3) if found else "—",
            })  # fmt: skip
        references = [b for b in budgets if b["row"].get("method") == REFERENCE]
        for b in budgets:
            if b["row"].get("method") != "sab" or len(references) != 1:
                continue
            gap = difference("sab", reached[id(b)], REFERENCE, reached[id(references[0])])
            if gap is not None:
                setting = ", ".join(f"{k}={_plain(v)}" for k, v in b["row"].items() if k not in ("method", "seq_len") and not pd.isna(v))
                lines.append(f"T={int(length)}{', SAB at ' + setting if setting else ''}, within {duration(seconds)}: {gap.text()}")
    return pd.DataFrame(rows), lines


def _plain(value) -> object:
    """A setting as its axis names it (3, not 3.0)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
