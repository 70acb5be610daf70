"""Accuracy at equal wall-clock: what each method reached within the same CPU time.

A report's tables compare methods at equal steps, but a SAB step costs several BPTT steps. Here the
time is fixed instead: BPTT's whole budget at a length (its steps x its clean s/step; without BPTT,
the shortest whole budget), and each method's best validation accuracy within that time (steps =
time / its own s/step, read from its validation curve). The evaluation interval sets the resolution:
a method is credited with its last evaluation inside the time, and one that had none shows '—'.
Where SAB's whole budget took less time than BPTT's (a `bptt_time` budget gives BPTT several times
SAB's steps), a second line sets the two at SAB's whole time, where both curves are measured.
"""

from __future__ import annotations

import math

import pandas as pd

from harness.curves import best_by
from harness.stats import difference, estimate, plain
from harness.timing import clean_seconds, duration
from sab.methods import REFERENCES, SUBJECT

REFERENCE = REFERENCES[0]
"""The method whose whole budget sets the time, and that SAB is set against (full BPTT)."""


def _budgets(ok: pd.DataFrame, keys: list[str], frame: pd.DataFrame) -> list[dict]:
    """One entry per configuration: its keys, clean s/step, step budget (the largest of its cells), their product (its whole time) and runs."""
    found = []
    for values, group in ok.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        seconds = clean_seconds(frame, row)
        steps = pd.to_numeric(group["steps"], errors="coerce").max()
        if math.isfinite(seconds) and steps == steps:
            found.append(
                {"row": row, "seconds": seconds, "steps": int(steps), "whole": int(steps) * seconds, "runs": list(group["run_id"])}
            )
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
        references = [b for b in budgets if b["row"].get("method") == REFERENCE]
        if len(budgets) < 2:
            continue
        seconds = min(b["whole"] for b in (references if len(references) == 1 else budgets))
        for b in budgets:
            b["done"] = min(b["steps"], int(seconds / b["seconds"] + 1e-6))  # the budget-setting method: all of it
            b["reached"] = [v for v in (best_by(curves[run_id], b["done"]) for run_id in b["runs"]) if v is not None]
            found = estimate(b["reached"])
            ended = " (its whole budget)" if b["done"] == b["steps"] and b["whole"] < seconds * (1 - 1e-9) else ""
            rows.append({
                **b["row"], "seq_len": int(length), "clean s/step": f"{b['seconds']:.4f}", "time": duration(seconds),
                "steps in that time": f"{b['done']} of {b['steps']}{ended}", "best validation accuracy by then": found.text(3) if found else "—",
            })  # fmt: skip
        if len(references) == 1:
            sab = [b for b in budgets if b["row"].get("method") == SUBJECT]
            lines += _contrasts(int(length), sab, references[0], seconds)
            lines += _at_sabs_time(int(length), sab, references[0], curves)
    return pd.DataFrame(rows), lines


def _labels(sab: list[dict]) -> list[str]:
    """Each SAB configuration's name in a line: the settings that tell them apart, none where there is one."""
    varying = [k for k in (sab[0]["row"] if sab else {}) if k not in ("method", "seq_len") and len({str(b["row"][k]) for b in sab}) > 1]
    return [", SAB at " + ", ".join(f"{k}={plain(b['row'][k])}" for k in varying) if varying else "" for b in sab]


def _contrasts(length: int, sab: list[dict], reference: dict, seconds: float) -> list[str]:
    """SAB - BPTT within the time, one line per SAB configuration (named where there are several)."""
    lines = []
    for b, label in zip(sab, _labels(sab)):
        gap = difference(SUBJECT, b["reached"], REFERENCE, reference["reached"])
        if gap is not None:
            lines.append(f"T={length}{label}, within {duration(seconds)} ({REFERENCE.upper()}'s whole budget): {gap.text()}")
        elif not b["reached"]:
            lines.append(
                f"T={length}{label}: within {duration(seconds)} ({REFERENCE.upper()}'s whole budget) SAB ran {b['done']} steps, "
                f"before its first evaluation; {REFERENCE.upper()} reached {_text(reference['reached'])}"
            )
    return lines


def _at_sabs_time(length: int, sab: list[dict], reference: dict, curves: dict[str, list[tuple[int, float]]]) -> list[str]:
    """SAB - BPTT at SAB's whole time, for each SAB configuration whose whole budget took less time than
    BPTT's: BPTT credited with its last evaluation inside that time."""
    lines = []
    for b, label in zip(sab, _labels(sab)):
        whole = b["whole"]
        if whole >= reference["whole"] * (1 - 1e-9):
            continue
        done = min(reference["steps"], int(whole / reference["seconds"] + 1e-6))
        reached = [v for v in (best_by(curves[run_id], done) for run_id in reference["runs"]) if v is not None]
        gap = difference(SUBJECT, b["reached"], REFERENCE, reached)  # SAB's all of its budget here: it ended sooner
        where = f"T={length}{label}, within {duration(whole)} (SAB's whole budget; {REFERENCE.upper()} ran {done} of {reference['steps']} steps)"
        lines.append(f"{where}: {gap.text()}" if gap is not None else f"{where}: {REFERENCE.upper()} reached {_text(reached)}")
    return lines


def _text(values: list[float]) -> str:
    found = estimate(values)
    return found.text(3) if found else "no evaluation either"
