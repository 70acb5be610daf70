"""MLflow runs -> pandas -> `results/NAME/`: report.md, cells.csv, main_table.csv, curves.csv and PNG plots.

    sab-report copy_lengths                    # = python -m harness.report copy_lengths; budget quick
    sab-report copy_long --budget smoke --results-dir /tmp/results

Exit code: 0 when the report was written (or a fuller one kept), 2 for bad input (unknown sweep
or budget, unreachable store).

One row per cell (its latest run with a result status, else its latest failure). Accuracy is
the mean and 95% t interval over seeds of the ok cells (harness/stats.py). Where a method ran at
several lrs, its lr is picked on mean validation accuracy (among the lrs with the fewest cells not
ok) and every section shows only that lr's cells (no figure pools lrs); the lr table shows them
all. Time tables use concurrency-1 rows only.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness import logs
from harness.config import DEFAULT_BUDGET, LOWER_IS_BETTER, SweepConfig, SweepError, load_sweep
from harness.curves import curve_frame, curves_of, first_step_at, progress_table
from harness.equal_time import equal_time
from harness.figures import metric_plots
from harness.grid_drift import IDENTITY_COLUMN, current_grid, outside_grid, repeated_seeds, split_earlier_identities
from harness.late_blowups import count_late_blowups, late_blowup_lines
from harness.machine import machine
from harness.stats import INTERVAL_NAME, difference, estimate, plain
from harness.timing import DISTURBED, clean_seconds, disturbed, duration, timing_frame
from harness.tracking import Tracker
from sab.methods import METHODS, REFERENCES, SUBJECT
from sab.train import FAILURE_STATUSES, RESULT_STATUSES, spec_fields

GROUP_CANDIDATES = (
    "task",
    "seq_len",
    "k_trunc",
    "k_att",
    "k_top",
    "hidden_size",
    "attn_size",
    "scorer_init",
    "bias_init",
    "batch_size",
    "steps",
)
NOT_GROUPED = ("method", "seed", "lr", "inject_fault")
"""Parameters never split a group: seeds are its replicates, lr is picked per group on validation,
and a test hook is not an experiment."""
OTHER_CANDIDATES = tuple(f for f in (*spec_fields("experiment"), *spec_fields("method")) if f not in (*GROUP_CANDIDATES, *NOT_GROUPED))
"""Every other parameter of a cell's identity: one that varies across cells (lr_schedule, clip,
optimizer, ...) splits groups too, so cells that differ in it are never pooled."""
NUMERIC_PARAMS = ("seq_len", "k_trunc", "k_att", "k_top", "hidden_size", "attn_size", "batch_size", "steps", "seed", "lr")
CELL_TAGS = (
    "executor",
    "concurrency",
    "threads",
    "device",
    "device_name",
    "git_sha",
    "error_type",
    "error",
    "selected_step",
    "stop_reason",
    "continued_from_step",
)
"""The MLflow tags of a cell run that become cells.csv columns (provenance, failure, model selection)."""
PAPER_COLUMN = "paper (as quoted)"
MiB = 2**20


def load_cells(tracker: Tracker, budget: str) -> pd.DataFrame:
    """One tidy row per cell: params, metrics, status and provenance."""
    runs = tracker.cell_runs(budget)
    if runs.empty:
        return pd.DataFrame()
    runs = runs[runs["tags.status"] != "running"].sort_values("start_time")
    if runs.empty:
        return pd.DataFrame()
    runs["_result"] = runs["tags.status"].isin(RESULT_STATUSES)
    # a cell's row: its latest result run if it has one, else its latest failure
    runs = runs.sort_values(["_result", "start_time"]).groupby("tags.cell_id", as_index=False).tail(1)
    rows = pd.DataFrame({"cell_id": runs["tags.cell_id"], "name": runs["tags.mlflow.runName"], "status": runs["tags.status"]})
    # sorted: MLflow's column order varies between reads of one store, and cells.csv should not
    for prefix in ("params.", "metrics."):
        for column in sorted((c for c in runs.columns if c.startswith(prefix) and not c.startswith("metrics.curve_")), key=natural_key):
            rows[column[len(prefix) :]] = runs[column]
    for tag in CELL_TAGS:
        rows[tag] = runs.get(f"tags.{tag}")
    rows["run_id"] = runs["run_id"]
    rows["parent_run_id"] = runs.get("tags.mlflow.parentRunId")
    for column in NUMERIC_PARAMS + ("concurrency", "threads", "selected_step", "continued_from_step"):
        if column in rows:
            rows[column] = pd.to_numeric(rows[column], errors="coerce")
    return rows.sort_values([c for c in ("method", "seq_len", "seed") if c in rows]).reset_index(drop=True)


def natural_key(name: str) -> list:
    """Sort key that reads digit runs as numbers: recall_pos_2 before recall_pos_10, 60 before 100."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


SPLITTING = (*GROUP_CANDIDATES, *OTHER_CANDIDATES, IDENTITY_COLUMN)
"""Every column that splits a group when it varies: the tables and the contrast use the same list,
so cells of an earlier identity are never pooled in either."""


def _group_keys(cells: pd.DataFrame) -> list[str]:
    """method, seq_len, and every other parameter that varies across the cells (not seed or lr)."""
    keys = ["method"]
    for column in SPLITTING:
        if column in cells and (column == "seq_len" or cells[column].nunique(dropna=True) > 1):
            keys.append(column)
    return keys


def _fmt(values: pd.Series, scale: float = 1.0, digits: int = 3) -> str:
    """Mean [95% interval] (n) over seeds, or '—'."""
    found = estimate(pd.to_numeric(values, errors="coerce"))
    return found.text(digits, scale) if found else "—"


def _validation_column(metric: str) -> str:
    return metric if metric.startswith("val_") else f"val_{metric}"


def _best_lr(group: pd.DataFrame, metric: str) -> float | None:
    """The lr picked on validation, None without a choice: among the lrs with the smallest share of
    cells that are not ok (diverged, out of memory, crashed), the best mean over their ok cells, so
    that an lr cannot win on the seeds it survived."""
    if "lr" not in group or group["lr"].nunique(dropna=True) <= 1:
        return None
    ok = group[group["status"] == "ok"]
    column = _validation_column(metric)
    if ok.empty or column not in ok or ok[column].isna().all():
        return None
    means = ok.groupby("lr")[column].mean().dropna()
    not_ok_share = (group["status"] != "ok").groupby(group["lr"]).mean().reindex(means.index)
    means = means[not_ok_share == not_ok_share.min()]
    return float(means.idxmin() if metric in LOWER_IS_BETTER else means.idxmax())


def _pick_lr(group: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
    """Rows of the lr with the best mean validation metric (all rows when there is no lr choice)."""
    best = _best_lr(group, metric)
    return (group, "") if best is None else (group[group["lr"] == best], f"{best:g}")


def at_picked_lr(cells: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each method's cells at its lr picked on validation (per method and configuration): what
    every section but the lr table reports, so that no figure pools several lrs."""
    if cells.empty or "lr" not in cells or "method" not in cells:
        return cells
    kept = [_pick_lr(group, metric)[0] for _, group in cells.groupby(_group_keys(cells), sort=True, dropna=False)]
    return pd.concat(kept).sort_index()


def lr_choice_table(cells: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every lr of each method that ran at several: its validation (and test) metric over seeds, the
    picked one, and the picked lr's validation lead over each other lr with its interval."""
    if cells.empty or "lr" not in cells or "method" not in cells:
        return pd.DataFrame()
    keys, column = _group_keys(cells), _validation_column(metric)
    higher_is_better = metric not in LOWER_IS_BETTER
    rows = []
    for values, group in cells.groupby(keys, sort=True, dropna=False):
        best = _best_lr(group, metric)
        if best is None:
            continue
        ok = group[group["status"] == "ok"]
        picked = ok[ok["lr"] == best][column]
        tried = sorted(group["lr"].dropna().unique())
        edge = " (largest tried)" if best == tried[-1] else " (smallest tried)" if best == tried[0] else ""
        for lr, every in group.groupby("lr", sort=True):
            runs = every[every["status"] == "ok"]
            row = dict(zip(keys, values if isinstance(values, tuple) else (values,)), lr=f"{lr:g}")
            row[f"{column} (choice)"] = _fmt(runs[column])
            if column != metric:
                row[f"{metric} (not used to choose)"] = _fmt(runs[metric])
            row["cells not ok"] = f"{len(every) - len(runs)} of {len(every)}"
            row["picked"] = f"yes{edge}" if lr == best else ""
            lead = difference(f"{best:g}", picked, f"{lr:g}", runs[column]) if lr != best else None
            row["picked - this, validation"] = lead.text(higher_is_better=higher_is_better) if lead else "—"
            rows.append(row)
    return pd.DataFrame(rows)


def _paper_value(config: SweepConfig, method: str, seq_len, metric: str, transfer: list[str]) -> str:
    """The paper's figures for this row, else '—': those at this T, and transfer figures
    (`transfer: T`, any training T) where this table has that transfer column."""
    evaluated = {int(c.rsplit("_", 1)[1]) for c in transfer}
    shown = []
    for figure in config.paper:
        if figure.get("method") != method or figure.get("metric", "accuracy") != metric:
            continue
        value = figure["value"]  # a figure, or a word such as OOM
        value = f"{float(value):.2f}" if isinstance(value, int | float) else str(value)
        if "transfer" in figure and int(figure["transfer"]) in evaluated:
            shown.append(f"{value} (@T={int(figure['transfer'])})")
        elif "transfer" not in figure and int(figure.get("seq_len", -1)) == int(seq_len):
            shown.append(value)
    return "; ".join(shown) or "—"


def main_table(cells: pd.DataFrame, config: SweepConfig) -> pd.DataFrame:
    """The sweep's metric (test, mean ± std over seeds), transfer columns, the paper's figure, statuses."""
    keys, metric = _group_keys(cells), config.metric
    lengths = {int(c.rsplit("_", 1)[1]) for c in cells if c.startswith((f"transfer_{metric}_", "transfer_oom_"))}
    transfer = [f"transfer_{metric}_{length}" for length in sorted(lengths)]
    rows = []
    for values, group in cells.groupby(keys, sort=True, dropna=False):
        group, lr = _pick_lr(group, metric)
        ok = group[group["status"] == "ok"]
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        if lr:
            row["lr (picked on val)"] = lr
        row[metric] = _accuracy_cell(group, ok, metric)
        for column in transfer:
            row[f"{'acc' if metric == 'accuracy' else metric}@T={column.rsplit('_', 1)[1]}"] = _transfer_cell(group, ok, column)
        row[PAPER_COLUMN] = _paper_value(config, row["method"], row["seq_len"], metric, transfer)
        row["status"] = ", ".join(f"{s}:{n}" for s, n in group["status"].value_counts().sort_index().items())
        rows.append(row)
    return pd.DataFrame(rows)


def _accuracy_cell(group: pd.DataFrame, ok: pd.DataFrame, column: str) -> str:
    if ok.empty:
        statuses = set(group["status"])
        return "OOM" if statuses == {"oom"} else "/".join(sorted(s.upper() for s in statuses))
    return _fmt(ok[column]) if column in ok else "—"


def _transfer_cell(group: pd.DataFrame, ok: pd.DataFrame, column: str) -> str:
    """A transfer length's figure over the seeds that fitted in memory, and how many did not
    (`transfer_oom_T`): out of memory at a length is a result, shown as OOM."""
    oom_column = f"transfer_oom_{column.rsplit('_', 1)[1]}"
    out_of_memory = int((ok[oom_column] == 1).sum()) if oom_column in ok else 0
    if out_of_memory == 0:
        return _accuracy_cell(group, ok, column)
    fitted = ok[column].dropna() if column in ok else pd.Series(dtype=float)
    if fitted.empty:
        return f"OOM ({out_of_memory} of {len(ok)})"
    return f"{_fmt(fitted)}; OOM in {out_of_memory} of {len(ok)}"


def memory_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Peak training memory (saved-for-backward + held, MiB) and peak RSS growth per method x seq_len."""
    keys = _group_keys(cells)
    measured = cells[cells["status"].isin(("ok", "diverged", "timeout"))]
    rows = []
    for values, group in measured.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        row["peak MiB"] = _fmt(group.get("peak_bytes", pd.Series(dtype=float)), 1 / MiB, 2)
        row["peak RSS MiB"] = _fmt(group.get("peak_rss_bytes", pd.Series(dtype=float)), 1 / MiB, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def stopping_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per method x seq_len: how the ok cells stopped (the step budget, or solved early) and, with
    select_on_validation, the steps whose weights gave their test figures (mean [min, max])."""
    keys = _group_keys(cells)
    ok = cells[cells["status"] == "ok"]
    if ok.empty or "steps_done" not in ok:
        return pd.DataFrame()
    rows = []
    for values, group in ok.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        done = pd.to_numeric(group["steps_done"], errors="coerce")
        reasons = group["stop_reason"] if "stop_reason" in group and group["stop_reason"].notna().any() else None
        solved = (reasons == "solved") if reasons is not None else done < group["steps"]
        diverged = (reasons == "diverged") if reasons is not None else solved & False
        row["stopped"] = f"{int(solved.sum())} solved, {int((~solved & ~diverged).sum())} at the step budget (of {len(group)})" + (
            f", {int(diverged.sum())} stopped when training diverged (its best validation model kept)" if diverged.any() else ""
        )
        row["steps done"] = f"{done.mean():.0f} [{done.min():.0f}, {done.max():.0f}]"
        selected = pd.to_numeric(group.get("selected_step", pd.Series(dtype=float)), errors="coerce").dropna()
        selected = selected[selected > 0]
        row["test figures from step"] = (
            f"{selected.mean():.0f} [{selected.min():.0f}, {selected.max():.0f}] (n={len(selected)})" if len(selected) else "the last"
        )
        rows.append(row)
    return pd.DataFrame(rows)


def time_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Seconds per step and tokens/s, from cells run one at a time (concurrency 1) only."""
    keys = _group_keys(cells)
    alone = cells[(cells["status"] == "ok") & (cells.get("concurrency") == 1)]
    rows = []
    for values, group in alone.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        row["s/step"] = _fmt(group["seconds_per_step"], 1, 4)
        row["tokens/s"] = _fmt(group["tokens_per_second"], 1, 0)
        row["threads"] = ",".join(str(int(t)) for t in sorted(group["threads"].dropna().unique()))
        rows.append(row)
    return pd.DataFrame(rows)


def contrast(cells: pd.DataFrame, metric: str = "accuracy") -> list[str]:
    """Per seq_len (and per SAB configuration where SAB ran several): SAB against each reference
    method in the metric (differences with their 95% intervals, called only when the interval
    excludes 0) and peak memory; a reference that ignores a knob matches every SAB setting of it."""
    lines = []
    ok = cells[cells["status"] == "ok"]
    higher_is_better = metric not in LOWER_IS_BETTER
    for seq_len, group in ok.groupby("seq_len"):
        by = {name: rows for name, rows in group.groupby("method")}
        references = [name for name in REFERENCES if name in by]
        if SUBJECT not in by or not references:
            continue
        varying = [c for c in (*SPLITTING, "lr") if c in group and any(by[m][c].nunique(dropna=True) > 1 for m in (SUBJECT, *references))]
        if not varying:
            lines += _contrast_lines(f"T={int(seq_len)}", by, references, metric, higher_is_better)
            continue
        configured = _per_configuration(group, [c for c in varying if c != "lr"], metric, higher_is_better)
        lines += configured or [
            f"T={int(seq_len)}: several configurations per method (varying {', '.join(varying)}); compare them in the table below"
        ]
    return lines


def _per_configuration(group: pd.DataFrame, keys: list[str], metric: str, higher_is_better: bool) -> list[str]:
    """The contrast of each SAB configuration (a setting of `keys`) with the one configuration of
    each reference that matches it; none where a method's configuration still spans several lrs
    (cells not yet narrowed to their picked lr: figures across lrs are never pooled)."""
    if not keys:
        return []
    by_configuration = [
        (dict(zip(keys, values)), method, rows) for (method, *values), rows in group.groupby(["method", *keys], sort=True, dropna=False)
    ]
    if any(rows["lr"].nunique(dropna=True) > 1 for *_, rows in by_configuration if "lr" in rows):
        return []
    lines = []
    for setting, method, rows in by_configuration:
        if method != SUBJECT:
            continue
        by = {SUBJECT: rows}
        for reference in REFERENCES:
            matches = [r for other, m, r in by_configuration if m == reference and _same_configuration(setting, other)]
            if len(matches) == 1:
                by[reference] = matches[0]
        if len(by) > 1:
            shown = ", ".join(f"{k}={plain(v)}" for k, v in setting.items() if not pd.isna(v))
            lines += _contrast_lines(
                f"T={int(rows['seq_len'].iloc[0])}, SAB at {shown}", by, [m for m in REFERENCES if m in by], metric, higher_is_better
            )
    compared = sum(method == SUBJECT for _, method, _ in by_configuration)
    if lines and compared > 1:
        lines.append(
            f"T={int(group['seq_len'].iloc[0])}: {compared} SAB configurations compared; each interval holds for its own comparison, "
            "not adjusted for the others (where there is no real difference, about 1 in 20 excludes 0 by chance), so a configuration picked as best here needs fresh seeds to confirm it"
        )
    return lines


def _contrast_lines(label: str, by: dict[str, pd.DataFrame], references: list[str], metric: str, higher_is_better: bool) -> list[str]:
    """The metric's line (with SAB's peak memory over the first reference's) and one per longer
    length the cells were also evaluated at."""
    subject, first = by[SUBJECT], by[references[0]]
    memory = f"; peak memory {SUBJECT.upper()}/{references[0].upper()} = {subject['peak_bytes'].mean() / first['peak_bytes'].mean():.2f}"
    lines = [f"{label}: {_differences(by, references, metric, metric, higher_is_better)}{memory}"]
    transfer = sorted((c for c in subject if c.startswith(f"transfer_{metric}_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    for column in transfer:
        length = column.rsplit("_", 1)[1]
        present = [name for name in references if column in by[name] and by[name][column].notna().any()]
        if subject[column].notna().any() and present:
            text = _differences(by, present, column, f"{'acc' if metric == 'accuracy' else metric}@T={length}", higher_is_better)
            lines.append(f"{label}, evaluated at longer T: {text}")
    return lines


def _differences(by: dict[str, pd.DataFrame], references: list[str], column: str, label: str, higher_is_better: bool) -> str:
    """'label SAB m [ci] (n), REF ...; SAB - REF d [ci]: verdict' over the seeds with a figure."""
    values = {name: by[name][column].dropna() for name in (SUBJECT, *references)}
    text = f"{label} " + ", ".join(f"{name.upper()} {estimate(values[name]).text()}" for name in values)
    for name in references:
        found = difference(SUBJECT.upper(), values[SUBJECT], name.upper(), values[name])
        text += f"; {found.text(higher_is_better=higher_is_better)}"
    return text


def headline(cells: pd.DataFrame, metric: str) -> dict[str, float]:
    """The figures a runs page should show without a click: each method's mean metric over its ok
    seeds per T (`accuracy.sab.T30`; a configuration that varies is named after it:
    `accuracy.sab.T30.lr_schedule_cosine`), and each SAB configuration's peak memory over that of
    the reference configuration it matches (`peak_memory.sab_over_bptt.T30.k_top_5`)."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty or metric not in ok:
        return {}
    keys = _group_keys(ok)
    groups = [(dict(zip(keys, values)), group) for values, group in ok.groupby(keys, sort=True, dropna=False)]
    figures = {}
    for row, group in groups:
        figures[f"{metric}.{row['method']}.T{int(row['seq_len'])}{_configuration_suffix(row)}"] = float(group[metric].mean())
    if "peak_bytes" not in ok:
        return figures
    for row, group in groups:
        if row["method"] != SUBJECT:
            continue
        for reference in REFERENCES:
            matches = [g for other, g in groups if other["method"] == reference and _same_configuration(row, other)]
            if len(matches) == 1 and matches[0]["peak_bytes"].mean() > 0:
                name = f"peak_memory.{SUBJECT}_over_{reference}.T{int(row['seq_len'])}{_configuration_suffix(row)}"
                figures[name] = float(group["peak_bytes"].mean() / matches[0]["peak_bytes"].mean())
    return figures


def _configuration_suffix(row: dict) -> str:
    """'.k_top_5.lr_schedule_cosine': a group's varying fields beyond method and T, for a metric name."""
    shown = {k: plain(v) for k, v in row.items() if not pd.isna(v)}
    return "".join(f".{k}_{v}" for k, v in shown.items() if k not in ("method", "seq_len"))


def _same_configuration(row: dict, other: dict) -> bool:
    """Two groups that agree on every field both set (a reference leaves the knobs it ignores unset)."""
    return all(pd.isna(row[k]) or pd.isna(other[k]) or row[k] == other[k] for k in row if k != "method")


TARGET_ACCURACY = 0.9
"""Time to accuracy counts the steps until validation accuracy first reaches this."""


def wall_clock_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The clean timing pass (`timing_frame` of the store's timing runs): s/step (median [min, max] over
    interleaved repetitions), tokens/s, and the ratio to BPTT's median at the same T."""
    if frame.empty:
        return pd.DataFrame()
    varying = [k for k in ("hidden_size", "batch_size", "k_trunc", "k_top", "k_att") if frame[k].nunique(dropna=True) > 1]
    rows = []
    for _, r in frame.sort_values(["seq_len", "method"]).iterrows():
        reference = frame[(frame["method"] == REFERENCES[0]) & (frame["seq_len"] == r["seq_len"])]["step_seconds"]
        reads = METHODS[r["method"]].reads if r["method"] in METHODS else ()
        row = {
            "method": r["method"],
            "seq_len": int(r["seq_len"]),
            **{k: (int(r[k]) if k in reads or k in ("hidden_size", "batch_size") else "—") for k in varying},
        }
        row["s/step [min, max]"] = f"{r['step_seconds']:.4f} [{r['step_seconds_min']:.4f}, {r['step_seconds_max']:.4f}]"
        row["tokens/s"] = f"{r['tokens_per_second']:,.0f}"
        row[f"/{REFERENCES[0].upper()}"] = f"{r['step_seconds'] / reference.median():.2f}" if not reference.empty else "—"
        faults = r.get("minor_faults_per_step")
        row["page faults/step"] = "—" if pd.isna(faults) else f"{faults:,.0f}"  # timings recorded before the column: —
        rows.append(row)
    return pd.DataFrame(rows)


def _disturbed_lines(frame: pd.DataFrame, config: SweepConfig) -> list[str]:
    """A warning under the wall-clock table naming each configuration timed on a busy machine, and the
    command that measures the pass again."""
    found = disturbed(frame)
    if not found:
        return []
    return [
        "",
        f"**Timed on a busy machine** (a median more than {DISTURBED}x the fastest repetition; on an idle machine they agree "
        "within ~10-20 %): " + "; ".join(found) + ". Their ratios, and the sections below that use them, are not the steps' "
        f"cost: `python -m harness.sweep {config.name} budget={config.budget} --retime` measures the pass again, with nothing else running.",
    ]


def time_to_accuracy(cells: pd.DataFrame, curves: dict[str, list[tuple[int, float]]], frame: pd.DataFrame) -> pd.DataFrame:
    """Per method and T: how many seeds' validation accuracy reached TARGET_ACCURACY, the steps it
    took (mean [95% interval] over those seeds) and that many steps at the clean s/step (`frame`: timing_frame)."""
    ok = cells[cells["status"] == "ok"]
    if ok.empty or "val_accuracy" not in ok:
        return pd.DataFrame()
    rows, keys = [], _group_keys(ok)
    for values, group in ok.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, values))
        steps = [first_step_at(curves[run_id], TARGET_ACCURACY) for run_id in group["run_id"]]
        reached = [s for s in steps if s is not None]
        clean = clean_seconds(frame, row)
        row.update(seq_len=int(row["seq_len"]), reached=f"{len(reached)} of {len(steps)} seeds")
        found = estimate(reached)
        row["steps to reach"] = found.text(0) if found else "not reached"
        row["wall-clock at clean s/step"] = duration(found.mean * clean) if found and clean == clean else ("—" if found else "not reached")
        rows.append(row)
    return pd.DataFrame(rows)


def _no_time_to_accuracy(metric: str) -> str:
    """Why the time-to-accuracy table is empty: no curves, or a metric the accuracy target does not apply to."""
    if metric == "accuracy":
        return "_No validation curves recorded._"
    return f"_Not computed: the target is a validation accuracy, and this sweep is measured in {metric}._"


def lr_provenance(cells: pd.DataFrame, config: SweepConfig) -> list[str]:
    """Where each method's learning rate came from: the sweep's lr_source, or the lr axis, or a warning."""
    lines = []
    for method in sorted(cells["method"].dropna().unique()):
        lrs = sorted(cells[cells["method"] == method]["lr"].dropna().unique())
        used = ", ".join(f"{lr:g}" for lr in lrs)
        if method in config.lr_source:
            source = config.lr_source[method]
        elif len(lrs) > 1:
            source = "picked per T on validation from the lr axis of this sweep"
        else:
            source = "**not chosen on validation** (no lr_source in the sweep file)"
        lines.append(f"- {method}: lr {used}: {source}")
    return lines


def invocation_times(cells: pd.DataFrame, tracker: Tracker) -> list[str]:
    """The wall time of the invocations whose cells the report shows (their parent runs), for a
    report rebuilt later by `python -m harness.report`."""
    minutes = []
    for parent in cells["parent_run_id"].dropna().unique():
        try:
            info = tracker.client.get_run(parent).info
        except Exception:  # a parent from another store, or deleted
            continue
        if info.end_time and info.start_time:
            minutes.append((info.end_time - info.start_time) / 60_000)
    if not minutes:
        return []
    each = ", ".join(f"{m:.1f}" for m in minutes)
    return [f"Wall time of the {len(minutes)} invocation(s) that ran these cells: {each} min (training and logging; without the report)."]


def position_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Per method x T: mean test recall at each recalled position over the ok cells that logged it
    (copy), so that a recall of 0.3 reads as 0.3 everywhere or as 3 of 10 positions solved."""
    columns = sorted((c for c in cells if c.startswith("recall_pos_")), key=natural_key)
    if not columns:
        return pd.DataFrame()
    rated = cells[(cells["status"] == "ok") & cells[columns[0]].notna()]
    rows, keys = [], _group_keys(rated)
    for values, group in rated.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)), n=len(group))
        means = group[columns].mean()
        row.update({f"pos {c.rsplit('_', 1)[1]}": f"{means[c]:.2f}" for c in columns})
        row["lowest / highest"] = f"{means.min():.2f} / {means.max():.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def attention_section(cells: pd.DataFrame, tracker: Tracker, out: Path) -> list[str]:
    """Where SAB looks: recall-step attention on the symbols' memories, and one attention map."""
    if "attention_share" not in cells:
        return []
    rated = cells[(cells["status"] == "ok") & cells["attention_share"].notna()]
    if rated.empty:
        return []
    lines = ["", "## Attention on the copy task", "",
             "Share of the recall steps' attention that lands on the memories written while the 10 symbols "
             "were read (the paper's claim: SAB attends to them).", ""]  # fmt: skip
    table = rated.groupby(_group_keys(rated), sort=True, dropna=False)["attention_share"].mean().reset_index()
    table["attention_share"] = table["attention_share"].map(lambda share: f"{share:.3f}")
    lines.append(_markdown(table.rename(columns={"attention_share": "share on symbol memories"})))
    shown = rated[rated["method"] == SUBJECT].sort_values(["seq_len", "seed"], ascending=[False, True]).head(1)
    for _, row in shown.iterrows():
        try:
            local = tracker.client.download_artifacts(row["run_id"], "attention.png", str(out))
        except Exception:  # an older run without the artifact
            continue
        name = f"attention_{row['name']}.png"
        Path(local).replace(out / name)
        lines += ["", f"![attention map of {row['name']}]({name})"]
    return lines


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(no rows)_"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_cell_text(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _cell_text(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else (f"{int(value)}" if value.is_integer() else f"{value:g}")
    return str(value)


@dataclass(frozen=True)
class Report:
    """Where a report is, and the files this call wrote (none when it kept a fuller one): only
    those go to MLflow."""

    path: Path
    files: tuple[Path, ...] = ()


def write_report(config: SweepConfig, tracker: Tracker, out_root: Path, wall_seconds: float | None = None) -> Report:
    """Build the report of one sweep and budget into out_root/NAME/BUDGET/.

    A report is never replaced by one of fewer cells (another store, a fresh clone, a second
    driver that started later): that one is kept, and the call says so.
    """
    out = report_folder(out_root, config)
    current = current_grid(config)
    cells = split_earlier_identities(load_cells(tracker, config.budget), current)
    kept = _cells_in(out)
    if len(cells) < kept or (cells.empty and (out / "report.md").exists()):
        print(
            f"kept {out / 'report.md'}: it shows {kept} cells and this store has {len(cells)} for budget {config.budget!r}", file=sys.stderr
        )
        return Report(out / "report.md")
    out.mkdir(parents=True, exist_ok=True)
    if cells.empty:
        (out / "report.md").write_text(f"# {config.name} ({config.budget})\n\nNo runs recorded yet.\n")
        return Report(out / "report.md", (out / "report.md",))
    stepped = curve_frame(tracker, cells)  # every cell's curve, read once: for the relabelling, the sections and curves.csv
    cells = count_late_blowups(cells, stepped)
    cells.to_csv(out / "cells.csv", index=False)
    stepped.to_csv(out / "curves.csv", index=False)
    picked = at_picked_lr(cells, config.metric)  # every section but the lr table: one lr per method
    lr_table = lr_choice_table(cells, config.metric)
    tracker.log_summary(headline(picked, config.metric))
    table = main_table(cells, config)
    table.to_csv(out / "main_table.csv", index=False)
    memory, timing = memory_table(picked), time_table(picked)
    timed = timing_frame(tracker.timing_runs(config.budget))  # one row per timed configuration, for every section
    clean = wall_clock_table(timed)
    curves = curves_of(stepped, picked) if config.metric == "accuracy" else {}
    reaching = time_to_accuracy(picked, curves, timed) if curves else pd.DataFrame()
    made = metric_plots(picked, out)
    statuses = cells["status"].value_counts().sort_index()
    failures = cells[cells["status"].isin(FAILURE_STATUSES + ("oom", "diverged"))]
    devices = cells["device_name"].dropna().unique().tolist()
    lines = [
        f"# {config.name} — budget `{config.budget}`",
        "",
        config.description,
        "",
        f"Cells: {len(cells)} ({', '.join(f'{s}: {n}' for s, n in statuses.items())}). "
        f"Executors: {', '.join(sorted(cells['executor'].dropna().unique()))}. Devices: {', '.join(devices) or '—'}. "
        f"git: {', '.join(sorted(cells['git_sha'].dropna().unique()))}.",
    ]
    lines += outside_grid(cells, current) + repeated_seeds(cells) + late_blowup_lines(cells)
    lines.append(f"Report written on: {machine()}.")
    if wall_seconds is not None:
        lines.append(f"Wall time of the invocation that wrote this report: {wall_seconds / 60:.1f} min.")
    else:
        lines += invocation_times(cells, tracker)
    summary = contrast(picked, config.metric)
    if summary:
        lines += [
            "",
            "## What SAB buys over BPTT",
            "",
            f"Mean [{INTERVAL_NAME}] (n); a difference is called only when its interval excludes 0."
            + (" Each method at its lr picked on validation (section Learning rates)." if not lr_table.empty else ""),
            "",
            *[f"- {s}" for s in summary],
        ]
    lines += [
        "", f"## {config.metric} ({'validation' if config.metric.startswith('val_') else 'test'} set, mean [{INTERVAL_NAME}] (n){'; lower is better' if config.metric in LOWER_IS_BETTER else ''})", "",
        f"`{PAPER_COLUMN}`: the paper's figure as quoted by secondary sources (docs/paper_figures.md); '—' where none.",
        "", _markdown(table),
        "", "## Peak training memory", "",
        "Peak of (bytes saved for backward + bytes the engine holds outside autograd) over one training step; "
        "RSS: peak resident growth of the trial process over training.",
        "", _markdown(memory),
        "", "## Wall-clock (clean timing pass)", "",
        "Each (method, T) timed after the cells, one process at a time, one thread, warm-up excluded, "
        "repetitions interleaved across methods (harness/timing.py, benchmarks/cost.py): median s/step [min, max] of "
        "the repetitions. Measured on the machine in the header; compare the ratios, not the absolute figures. "
        "Page faults/step: memory the step mapped afresh and touched (glibc's default malloc, as a trial runs), part of "
        "its time; at T = 1000 (H = 128) they are ~40 % of fused BPTT's step (`python -m benchmarks.cost --allocators default retain`).",
        "", _markdown(clean) if not clean.empty else "_No clean timing recorded for this budget (a run with --no-timing, or trials on a cluster)._",
        *_disturbed_lines(timed, config),
        "", f"## Time to accuracy (validation accuracy >= {TARGET_ACCURACY})", "",
        "Steps until a seed's validation accuracy first reached the target (mean [95% t interval] over the seeds that reached "
        "it), and that many steps at the clean s/step above.",
        "", _markdown(reaching) if not reaching.empty else _no_time_to_accuracy(config.metric),
    ]  # fmt: skip
    progress = progress_table(picked, curves, _group_keys(picked)) if curves else pd.DataFrame()
    if not progress.empty:
        lines += [
            "", "## Validation over training", "",
            "The best validation accuracy reached by each step, mean [" + INTERVAL_NAME + "] (n). The lr is constant, so "
            "a column is what a budget of that many steps would have selected (select_on_validation) on this machine. "
            "A method still rising in its last column was stopped by the step budget, not converged. Where methods ran "
            "different step budgets, the columns are each budget's.",
            "", _markdown(progress),
        ]  # fmt: skip
    same_time, same_time_lines = equal_time(picked, curves, timed, _group_keys(picked)) if curves else (pd.DataFrame(), [])
    if not same_time.empty:
        lines += [
            "", "## At equal wall-clock", "",
            "Each method's best validation accuracy within the same CPU time: BPTT's whole step budget at that T (its "
            "steps x its clean s/step above), each method getting as many steps as its own s/step allows, read from its "
            "validation curve at its last evaluation inside that time; mean [" + INTERVAL_NAME + "] (n); '—': no evaluation "
            "inside that time. The other tables compare equal steps. Where SAB's whole budget took longer than BPTT's, what "
            "BPTT would reach in that longer time is not measured here (a sweep's bptt_time budget measures it: copy_lengths, "
            "pmnist_local, cifar10_local); a method whose whole budget took less time is marked '(its whole budget)', and "
            "where that is SAB, a second line sets SAB and BPTT at SAB's whole time.",
            "", *[f"- {line}" for line in same_time_lines], "" if same_time_lines else "", _markdown(same_time),
        ]  # fmt: skip
    lines += [
        "", "## Learning rates", "", *lr_provenance(cells, config),
    ]  # fmt: skip
    if not lr_table.empty:
        lines += [
            "", "Every lr of the methods that ran at several, mean [" + INTERVAL_NAME + "] (n). Among the lrs with the "
            "smallest share of cells not ok (diverged, out of memory, crashed), the one with the best mean validation figure "
            "is picked, and every other section of this report shows only its cells; the last column "
            "says whether the pick beats each other lr by more than the seeds' spread. A pick marked largest (or smallest) "
            "tried sits at the edge of the axis: an lr beyond it was not tried and may do better.",
            "", _markdown(lr_table),
        ]  # fmt: skip
    stopping = stopping_table(picked)
    if not stopping.empty:
        lines += [
            "", "## Stopping and model selection", "",
            "How each cell stopped: solved (validation accuracy 1.0 at solved_patience evaluations in a row) or at the step "
            "budget; with select_on_validation, the training step whose weights (the best validation evaluation) gave the "
            "test and transfer figures, mean [min, max] over the cells (docs/design.md).",
            "", _markdown(stopping),
        ]  # fmt: skip
    if not timing.empty:
        lines += ["", "## Time of cells run one at a time", "", _markdown(timing)]
    if not failures.empty:
        lines += ["", "## Cells that did not finish ok", "", _markdown(failures[["name", "status", "error_type", "error"]].fillna(""))]
    positions = position_table(picked)
    if not positions.empty:
        lines += ["", "## Recall by position", "",
                  "Mean test recall at each of the recalled positions (1: the first symbol written back) over the ok cells "
                  "(n): a partial recall spread evenly is a weak memory of every symbol, one concentrated on some positions "
                  "is those symbols solved.", "", _markdown(positions)]  # fmt: skip
    lines += attention_section(picked, tracker, out)
    if config.notes:
        lines += ["", "## Notes", "", config.notes]
    lines += [
        "",
        "## Plots",
        "",
        *[f"![{p.stem}]({p.name})" for p in made],
        "",
        "Per-cell rows: `cells.csv`; main table: `main_table.csv`; every cell's evaluations by step (validation "
        "figures, training loss, elapsed seconds; run_id as in cells.csv): `curves.csv`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    attention_files = re.findall(r"\]\((attention_[^)]+\.png)\)", "\n".join(lines))
    written = (path, out / "cells.csv", out / "main_table.csv", out / "curves.csv", *made, *(out / name for name in attention_files))
    return Report(path, tuple(p for p in written if p.exists()))


def report_folder(out_root: Path, config: SweepConfig) -> Path:
    """Where a sweep's report for its budget lives: results/NAME/BUDGET/."""
    return out_root / config.name / config.budget


def _cells_in(folder: Path) -> int:
    """How many cells the report in `folder` shows (0 when there is none)."""
    try:
        return len(pd.read_csv(folder / "cells.csv"))
    except (OSError, pd.errors.EmptyDataError):
        return 0


def main(argv: list[str] | None = None) -> int:
    """CLI: rebuild a sweep's report from the store."""
    parser = argparse.ArgumentParser(prog="sab-report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="sweep name (a file in sweeps/)")
    parser.add_argument("--budget", default=DEFAULT_BUDGET, help="which budget's runs (default: quick)")
    parser.add_argument("--results-dir", default="results", help="where the store and reports live")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///RESULTS_DIR/mlflow.db)"
    )
    args = parser.parse_args(argv)
    logs.configure()
    try:
        config = load_sweep(args.sweep, [f"budget={args.budget}"])
        tracker = Tracker(config.name, Path(args.results_dir), args.tracking_uri)
        tracker.open()
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = write_report(config, tracker, Path(args.results_dir)).path
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
