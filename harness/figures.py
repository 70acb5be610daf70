"""Figures of the reports: metrics against T, and attention maps (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd

from harness.stats import estimate

MiB = 2**20


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_plots(cells: pd.DataFrame, out: Path) -> list[Path]:
    """Accuracy, peak memory and s/step against T, a line per method: the mean with its 95% t
    interval over seeds as error bars, and every seed as a point (PNG)."""
    plt = _pyplot()
    made = []
    ok = cells[cells["status"] == "ok"]
    specs = [
        ("accuracy", "accuracy", ok, 1.0),
        ("peak_memory", "peak_bytes", ok, 1 / MiB),
        ("seconds_per_step", "seconds_per_step", ok[ok["concurrency"] == 1], 1.0),
    ]
    for name, column, rows, scale in specs:
        if rows.empty or column not in rows:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, group in rows.groupby("method"):
            lengths, means, below, above = [], [], [], []
            for seq_len, values in sorted(group.groupby("seq_len")[column]):
                found = estimate(values * scale)
                if found is None:
                    continue
                lengths.append(seq_len)
                means.append(found.mean)
                below.append(found.mean - found.lo if found.lo == found.lo else 0.0)
                above.append(found.hi - found.mean if found.hi == found.hi else 0.0)
            line = ax.errorbar(lengths, means, yerr=[below, above], marker="o", capsize=3, label=method)
            ax.scatter(group["seq_len"], group[column] * scale, s=10, alpha=0.5, color=line[0].get_color())  # every seed
        ax.set_xlabel("T (seq_len)")
        ax.set_ylabel(
            {"accuracy": "test accuracy", "peak_memory": "peak training MiB", "seconds_per_step": "s / step (concurrency 1)"}[name]
        )
        if name != "accuracy":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def attention_png(name: str, result, folder: Path) -> Path:
    """A trial's attention map (one test sequence) as folder/attention.png, with what its task marks."""
    share = result.metrics.get("attention_share")
    title = name + (f" — {share:.0%} of recall attention on the marked memories" if share is not None else "")
    marks = result.attention_marks or {}
    return attention_heatmap(result.attention, folder / "attention.png", title, marks.get("recall_steps", 0), marks.get("memory_slots"))


def attention_heatmap(
    attention: list[list[float]], path: Path, title: str, recall_steps: int = 0, symbol_slots: list[int] | None = None
) -> Path:
    """Attention weights (step x memory slot) of one sequence; recall steps and symbol slots marked."""
    import numpy as np

    plt = _pyplot()
    weights = np.asarray(attention, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * weights.shape[1] + 2), 4.5))
    image = ax.imshow(weights, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="attention weight")
    ax.set_xlabel("memory slot")
    ax.set_ylabel("step")
    if recall_steps:
        ax.axhline(weights.shape[0] - recall_steps - 0.5, color="white", linestyle="--", linewidth=1)
        ax.text(0, weights.shape[0] - recall_steps - 1, "recall steps below", color="white", fontsize=7, va="bottom")
    for slot in symbol_slots or []:
        ax.axvline(slot, color="red", alpha=0.35, linewidth=3)
    ax.set_title(textwrap.fill(title, width=48), fontsize=8)  # a cell name and the share: wrapped, never clipped
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
