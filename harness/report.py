"""MLflow runs -> pandas -> `results/NAME/`: report.md, cells.csv, main_table.csv and PNG plots.

    python -m harness.report copy_lengths [--budget quick] [--results-dir results] [--tracking-uri URI]

One row per cell (its latest run with a result status, else its latest failure). Accuracy is
mean ± std over seeds of the ok cells; where the sweep has an lr axis, each method's lr is picked
on validation accuracy and its test accuracy shown. Time tables use concurrency-1 rows only.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from harness.config import DEFAULT_BUDGET, LOWER_IS_BETTER, SweepConfig, SweepError, load_sweep
from harness.figures import metric_plots
from harness.tracking import Tracker
from sab.train import FAILURE_STATUSES, RESULT_STATUSES

GROUP_CANDIDATES = ("task", "seq_len", "k_trunc", "k_att", "k_top", "hidden_size", "attn_size", "batch_size", "steps")
NUMERIC_PARAMS = ("seq_len", "k_trunc", "k_att", "k_top", "hidden_size", "attn_size", "batch_size", "steps", "seed", "lr")
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
    for column in runs.columns:
        if column.startswith("params."):
            rows[column[len("params.") :]] = runs[column]
        elif column.startswith("metrics.") and not column.startswith("metrics.curve_"):
            rows[column[len("metrics.") :]] = runs[column]
    for tag in ("executor", "concurrency", "threads", "device", "device_name", "git_sha", "error_type", "error"):
        rows[tag] = runs.get(f"tags.{tag}")
    rows["run_id"] = runs["run_id"]
    rows["parent_run_id"] = runs.get("tags.mlflow.parentRunId")
    for column in NUMERIC_PARAMS + ("concurrency", "threads"):
        if column in rows:
            rows[column] = pd.to_numeric(rows[column], errors="coerce")
    return rows.sort_values([c for c in ("method", "seq_len", "seed") if c in rows]).reset_index(drop=True)


def _group_keys(cells: pd.DataFrame) -> list[str]:
    """method, seq_len, and every other parameter that varies across the cells (not seed or lr)."""
    keys = ["method"]
    for column in GROUP_CANDIDATES:
        if column in cells and (column == "seq_len" or cells[column].nunique(dropna=True) > 1):
            keys.append(column)
    return keys


def _fmt(values: pd.Series, scale: float = 1.0, digits: int = 3) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna() * scale
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f} (n=1)"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f} (n={len(values)})"


def _pick_lr(group: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
    """Rows of the lr with the best mean validation metric (all rows when there is no lr choice)."""
    if "lr" not in group or group["lr"].nunique(dropna=True) <= 1:
        return group, ""
    ok = group[group["status"] == "ok"]
    column = f"val_{metric}"
    if ok.empty or column not in ok:
        return group, ""
    means = ok.groupby("lr")[column].mean()
    best = means.idxmin() if metric in LOWER_IS_BETTER else means.idxmax()
    return group[group["lr"] == best], f"{best:g}"


def _paper_value(config: SweepConfig, method: str, seq_len, metric: str, transfer: list[str]) -> str:
    """The paper's figures for this row, else '—': those at this T, and transfer figures
    (`transfer: T`, any training T) where this table has that transfer column."""
    evaluated = {int(c.rsplit("_", 1)[1]) for c in transfer}
    shown = []
    for figure in config.paper:
        if figure.get("method") != method or figure.get("metric", "accuracy") != metric:
            continue
        if "transfer" in figure and int(figure["transfer"]) in evaluated:
            shown.append(f"{float(figure['value']):.2f} (@T={int(figure['transfer'])})")
        elif "transfer" not in figure and int(figure.get("seq_len", -1)) == int(seq_len):
            shown.append(f"{float(figure['value']):.2f}")
    return "; ".join(shown) or "—"


def main_table(cells: pd.DataFrame, config: SweepConfig) -> pd.DataFrame:
    """The sweep's metric (test, mean ± std over seeds), transfer columns, the paper's figure, statuses."""
    keys, metric = _group_keys(cells), config.metric
    transfer = sorted((c for c in cells if c.startswith(f"transfer_{metric}_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    rows = []
    for values, group in cells.groupby(keys, sort=True, dropna=False):
        group, lr = _pick_lr(group, metric)
        ok = group[group["status"] == "ok"]
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        if lr:
            row["lr (picked on val)"] = lr
        row[metric] = _accuracy_cell(group, ok, metric)
        for column in transfer:
            row[f"{'acc' if metric == 'accuracy' else metric}@T={column.rsplit('_', 1)[1]}"] = _accuracy_cell(group, ok, column)
        row[PAPER_COLUMN] = _paper_value(config, row["method"], row["seq_len"], metric, transfer)
        row["status"] = ", ".join(f"{s}:{n}" for s, n in group["status"].value_counts().sort_index().items())
        rows.append(row)
    return pd.DataFrame(rows)


def _accuracy_cell(group: pd.DataFrame, ok: pd.DataFrame, column: str) -> str:
    if ok.empty:
        statuses = set(group["status"])
        return "OOM" if statuses == {"oom"} else "/".join(sorted(s.upper() for s in statuses))
    return _fmt(ok[column]) if column in ok else "—"


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
    """One line per seq_len: what SAB buys over BPTT in the metric, memory and (clean) time."""
    lines = []
    ok = cells[cells["status"] == "ok"]
    for seq_len, group in ok.groupby("seq_len"):
        by = group.groupby("method")
        if "sab" not in by.groups or "bptt" not in by.groups:
            continue
        sab, bptt = by.get_group("sab"), by.get_group("bptt")
        text = f"T={int(seq_len)}: {metric} SAB {sab[metric].mean():.3f} vs BPTT {bptt[metric].mean():.3f}"
        if "tbptt" in by.groups:
            text += f" (TBPTT {by.get_group('tbptt')[metric].mean():.3f})"
        text += f"; peak memory SAB/BPTT = {sab['peak_bytes'].mean() / bptt['peak_bytes'].mean():.2f}"
        sab_alone, bptt_alone = sab[sab["concurrency"] == 1], bptt[bptt["concurrency"] == 1]
        if not sab_alone.empty and not bptt_alone.empty:
            text += f"; s/step SAB/BPTT = {sab_alone['seconds_per_step'].mean() / bptt_alone['seconds_per_step'].mean():.2f}"
        lines.append(text)
    return lines


def machine() -> str:
    """This machine in one line: OS, CPU model, cores, memory, torch."""
    import os
    import platform

    import torch

    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} CPUs, {memory:.0f} GiB RAM{gpu}, torch {torch.__version__}"


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
    table = rated.groupby(["method", "seq_len"])["attention_share"].mean().reset_index()
    table["attention_share"] = table["attention_share"].map(lambda share: f"{share:.3f}")
    lines.append(_markdown(table.rename(columns={"attention_share": "share on symbol memories"})))
    shown = rated[rated["method"] == "sab"].sort_values(["seq_len", "seed"], ascending=[False, True]).head(1)
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


def write_report(config: SweepConfig, tracker: Tracker, out_root: Path, wall_seconds: float | None = None) -> Path:
    """Build the report of one sweep and budget into out_root/NAME/; returns the report path."""
    out = out_root / config.name
    out.mkdir(parents=True, exist_ok=True)
    cells = load_cells(tracker, config.budget)
    if cells.empty:
        (out / "report.md").write_text(f"# {config.name} ({config.budget})\n\nNo runs recorded yet.\n")
        return out / "report.md"
    cells.to_csv(out / "cells.csv", index=False)
    table = main_table(cells, config)
    table.to_csv(out / "main_table.csv", index=False)
    memory, timing = memory_table(cells), time_table(cells)
    made = metric_plots(cells, out)
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
    lines.append(f"Report written on: {machine()}.")
    if wall_seconds is not None:
        lines.append(f"Wall time of the invocation that wrote this report: {wall_seconds / 60:.1f} min.")
    else:
        lines += invocation_times(cells, tracker)
    summary = contrast(cells, config.metric)
    if summary:
        lines += ["", "## What SAB buys over BPTT", "", *[f"- {s}" for s in summary]]
    lines += [
        "", f"## {config.metric} (test set, mean ± std over seeds{'; lower is better' if config.metric in LOWER_IS_BETTER else ''})", "",
        f"`{PAPER_COLUMN}`: the paper's figure as quoted by secondary sources (shared/research/paper_figures.md); '—' where none.",
        "", _markdown(table),
        "", "## Peak training memory", "",
        "Peak of (bytes saved for backward + bytes the engine holds outside autograd) over one training step; "
        "RSS: peak resident growth of the trial process over training.",
        "", _markdown(memory),
        "", "## Time (cells run one at a time only)", "",
    ]  # fmt: skip
    if timing.empty:
        lines.append("_No concurrency-1 rows: these cells ran several at once, so their times are not comparable. "
                     "Rerun with `--executor local` (one cell at a time) for clean times, or see `python -m benchmarks.cost`._")  # fmt: skip
    else:
        lines.append(_markdown(timing))
    if not failures.empty:
        lines += ["", "## Cells that did not finish ok", "", _markdown(failures[["name", "status", "error_type", "error"]].fillna(""))]
    lines += attention_section(cells, tracker, out)
    if config.notes:
        lines += ["", "## Notes", "", config.notes]
    lines += [
        "",
        "## Plots",
        "",
        *[f"![{p.stem}]({p.name})" for p in made],
        "",
        "Per-cell rows: `cells.csv`; main table: `main_table.csv`.",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI: rebuild a sweep's report from the store."""
    parser = argparse.ArgumentParser(prog="python -m harness.report", description="Tables and plots of a sweep from its MLflow runs.")
    parser.add_argument("sweep", help="sweep name (a file in sweeps/)")
    parser.add_argument("--budget", default=DEFAULT_BUDGET, help="which budget's runs (default: quick)")
    parser.add_argument("--results-dir", default="results", help="where the store and reports live")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the local store under results/)")
    args = parser.parse_args(argv)
    try:
        config = load_sweep(args.sweep, [f"budget={args.budget}"])
        tracker = Tracker(config.name, Path(args.results_dir), args.tracking_uri)
        tracker.open()
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    path = write_report(config, tracker, Path(args.results_dir))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
