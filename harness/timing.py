"""The clean timing pass every default sweep run ends with: wall-clock a researcher can compare.

Cells of a sweep run side by side and share the machine, so their own s/step are not comparable.
This pass times each distinct (method, task, T, sizes, knobs) of the sweep with the benchmarks'
code (benchmarks/cost.py): one fresh process per configuration, one thread, warm-up excluded,
repetitions interleaved across the methods of a length, medians with their min and max.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

from benchmarks.cost import CostConfig, measure
from harness.cells import Cell
from sab.methods import KNOBS, METHODS

REPEATS = 5
"""Interleaved repetitions per configuration."""
STEPS_PER_REPEAT = 10
"""Training steps per repetition (their mean is one sample; the median over repetitions is reported)."""


def timing_configs(cells: list[Cell]) -> list[CostConfig]:
    """One configuration per distinct training setup of the cells (seeds and lrs do not change a step's cost)."""
    configs: dict[CostConfig, None] = {}
    for cell in cells:
        spec = cell.spec
        reads = METHODS[spec.method].reads
        knobs = {name: getattr(spec, name) for name in KNOBS if name in reads}
        base = CostConfig(
            method=spec.method,
            seq_len=spec.seq_len,
            task=spec.task,
            data_dir=spec.data_dir,
            threads=1,
            device="cpu",
            replay_group=spec.replay_group,
            static_shapes=spec.static_shapes,
            cuda_graphs=spec.cuda_graphs,  # as the trial ran (a graphed sab takes its static path; on the CPU the step is eager)
        )
        configs[dataclasses.replace(base, hidden_size=spec.hidden_size, batch_size=spec.batch_size, **knobs)] = None
    return list(configs)


def clean_timing(cells: list[Cell], repeats: int = REPEATS, steps: int = STEPS_PER_REPEAT, log=print) -> list[dict]:
    """Time every configuration of the cells, one process at a time; rows with step_seconds (median),
    its min and max over repetitions, and tokens per step."""
    configs = timing_configs(cells)
    log(f"clean timing: {len(configs)} configurations, one process at a time, one thread, {repeats} x {steps} steps each")
    rows = measure(configs, repeats, steps, log=lambda line: None)
    for row in rows:
        seconds = row.get("step_seconds")
        row["tokens_per_second"] = (
            row["tokens_per_step"] / seconds if seconds and seconds == seconds and row.get("tokens_per_step") else float("nan")
        )
    return rows


def timing_key(row: dict) -> str:
    """What identifies a timing row in the store: its method, task, T and sizes."""
    fields = ("method", "task", "seq_len", "hidden_size", "batch_size", *KNOBS)
    return "__".join(f"{name}={row.get(name)}" for name in fields)


def timing_frame(timing: pd.DataFrame) -> pd.DataFrame:
    """The store's timing runs (Tracker.timing_runs) as one row per timed configuration."""
    if timing.empty:
        return pd.DataFrame(columns=["method", "seq_len", "step_seconds"])
    frame = pd.DataFrame({"method": timing["params.method"]})
    for key in ("seq_len", "hidden_size", "batch_size", "k_trunc", "k_top", "k_att"):
        frame[key] = pd.to_numeric(timing.get(f"params.{key}"), errors="coerce")
    for key in ("step_seconds", "step_seconds_min", "step_seconds_max", "tokens_per_second", "minor_faults_per_step"):
        frame[key] = timing.get(f"metrics.{key}")
    return frame.reset_index(drop=True)


def clean_seconds(frame: pd.DataFrame, configuration: dict) -> float:
    """The clean s/step of one configuration (a report group's keys and values), as far as the timing
    rows name its keys; NaN when none was timed."""
    timed = frame
    for key, value in configuration.items():
        if key in frame and not pd.isna(value):
            timed = (
                timed[timed[key].astype(str) == str(value)]
                if key == "method"
                else timed[pd.to_numeric(timed[key], errors="coerce") == value]
            )
    return float(timed["step_seconds"].median()) if not timed.empty else float("nan")


DISTURBED = 1.25
"""A configuration whose median s/step exceeds its fastest repetition by this factor was timed on a
busy machine: on an idle one the interleaved repetitions agree within ~10-20 %."""


def disturbed(frame: pd.DataFrame, limit: float = DISTURBED) -> list[str]:
    """One line per timed configuration (a `timing_frame` row) whose median lies more than `limit` x
    above its fastest repetition: most of its repetitions were slowed, so its median and its ratios
    are not the step's cost."""
    lines = []
    for _, row in frame.iterrows():
        median, fastest = row.get("step_seconds"), row.get("step_seconds_min")
        if pd.notna(median) and pd.notna(fastest) and fastest > 0 and median > limit * fastest:
            lines.append(
                f"{row['method']} at T={int(row['seq_len'])}: median {median:.4f} s/step is {median / fastest:.2f}x its fastest "
                f"repetition ({fastest:.4f})"
            )
    return lines


def duration(seconds: float) -> str:
    """Seconds as a reader takes them: '0.05 s', '46 s', or '2.4 min' from two minutes on."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
