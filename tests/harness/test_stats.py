"""Intervals over seeds, and differences called only when their interval excludes 0."""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats as scipy_stats

from harness.config import load_sweep
from harness.report import at_picked_lr, contrast, headline, lr_choice_table, main_table, natural_key, position_table, stopping_table
from harness.stats import difference, estimate


def test_estimate_is_the_t_interval_of_the_mean():
    found = estimate([0.5, 0.6, 0.7])
    lo, hi = scipy_stats.t.interval(0.95, 2, loc=0.6, scale=scipy_stats.sem([0.5, 0.6, 0.7]))
    assert found.n == 3 and math.isclose(found.mean, 0.6) and math.isclose(found.lo, lo) and math.isclose(found.hi, hi)
    assert found.text() == f"0.600 [{lo:.3f}, {hi:.3f}] (n=3)"
    assert estimate([0.4]).text() == "0.400 (n=1)"
    assert estimate([float("nan")]) is None


def test_a_difference_is_called_only_when_its_interval_excludes_zero():
    clear = difference("SAB", [0.95, 0.97, 0.99], "BPTT", [0.20, 0.22, 0.21])
    assert clear.lo > 0 and clear.verdict() == "SAB better"
    assert clear.verdict(higher_is_better=False) == "SAB worse"
    noisy = difference("SAB", [0.3, 0.9, 0.6], "BPTT", [0.5, 0.55, 0.45])
    assert noisy.lo < 0 < noisy.hi and noisy.verdict() == "not distinguishable at n=3"
    one_seed = difference("SAB", [0.9], "BPTT", [0.1])
    assert one_seed.verdict().startswith("not distinguishable at n=1,1")  # never a claim from one seed


def test_the_contrast_line_gives_each_difference_with_its_interval():
    rows = [
        {"method": m, "seq_len": 20, "seed": s, "status": "ok", "accuracy": a, "peak_bytes": p}
        for m, accs, p in (("sab", (0.95, 0.97, 0.99), 1.0), ("bptt", (0.2, 0.25, 0.22), 2.0), ("tbptt", (0.9, 0.99, 0.95), 0.5))
        for s, a in enumerate(accs)
    ]
    (line,) = contrast(pd.DataFrame(rows), "accuracy")
    assert line.startswith("T=20: accuracy SAB 0.970 [")
    assert "SAB - BPTT = +0.747 [" in line and "]: SAB better" in line
    assert "SAB - TBPTT = +0.023 [" in line and "not distinguishable at n=3" in line
    assert "peak memory SAB/BPTT = 0.50" in line


def test_transfer_lengths_get_their_own_contrast_lines_and_oom_is_shown_as_a_result():
    rows = [
        {"method": m, "seq_len": 100, "seed": s, "status": "ok", "accuracy": a, "peak_bytes": 1.0, "transfer_accuracy_1000": a - 0.1}
        for m, accs in (("sab", (0.6, 0.7, 0.8)), ("bptt", (0.12, 0.13, 0.11)))
        for s, a in enumerate(accs)
    ]
    rows += [
        {"method": "self_attention", "seq_len": 100, "seed": s, "status": "ok", "accuracy": 0.3, "transfer_oom_1000": 1.0} for s in range(3)
    ]
    cells = pd.DataFrame(rows)
    lines = contrast(cells, "accuracy")
    assert len(lines) == 2
    assert lines[1].startswith("T=100, evaluated at longer T: acc@T=1000 SAB 0.600 [")
    assert "SAB - BPTT = +0.580 [" in lines[1] and "SAB better" in lines[1]
    config = load_sweep("copy_long", ["budget=smoke"])
    table = main_table(cells, config).set_index("method")
    assert table.loc["self_attention", "acc@T=1000"] == "OOM (3 of 3)"
    assert table.loc["sab", "acc@T=1000"].startswith("0.600 [")


def test_the_stopping_table_counts_solved_cells_and_gives_the_selected_steps():
    cells = pd.DataFrame(
        {
            "method": ["sab"] * 3 + ["bptt"] * 3,
            "seq_len": [30] * 6,
            "status": ["ok", "ok", "ok", "ok", "ok", "crashed"],
            "steps": [8000] * 6,
            "steps_done": [6500, 8000, 8000, 8000, 8000, 100],
            "stop_reason": ["solved", "steps", "steps", "steps", "steps", "crashed"],
            "selected_step": [6500, 4000, 7500, 0, 0, 0],
        }
    )
    rows = stopping_table(cells).set_index("method")
    assert rows.loc["sab", "stopped"] == "1 solved, 2 at the step budget (of 3)"
    assert rows.loc["sab", "test figures from step"] == "6000 [4000, 7500] (n=3)"
    assert rows.loc["bptt", "stopped"] == "0 solved, 2 at the step budget (of 2)"  # the crashed cell is not a stop
    assert rows.loc["bptt", "test figures from step"] == "the last"
    older = cells.drop(columns="stop_reason")  # cells logged before stop_reason was a tag: a short run was solved
    assert stopping_table(older).set_index("method").loc["sab", "stopped"] == "1 solved, 2 at the step budget (of 3)"


def _lr_study_cells() -> pd.DataFrame:
    """SAB best at 3e-3, BPTT best at 1e-2 on validation; test figures follow validation."""
    rows = []
    for method, by_lr in (
        ("sab", {0.003: (0.9, 0.8, 0.85), 0.01: (0.3, 0.2, 0.25)}),
        ("bptt", {0.003: (0.2, 0.1, 0.15), 0.01: (0.4, 0.3, 0.35)}),
    ):
        for lr, vals in by_lr.items():
            for seed, val in enumerate(vals):
                rows.append({"method": method, "seq_len": 100, "lr": lr, "seed": seed, "status": "ok", "val_accuracy": val,
                             "accuracy": val - 0.01, "peak_bytes": 1.0 if method == "sab" else 4.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_every_section_but_the_lr_table_sees_each_method_at_its_lr_picked_on_validation():
    cells = _lr_study_cells()
    picked = at_picked_lr(cells, "accuracy")
    assert picked.groupby("method")["lr"].unique().map(list).to_dict() == {"bptt": [0.01], "sab": [0.003]}
    assert len(picked) == 6
    assert contrast(cells, "accuracy")[0].startswith("T=100: several configurations per method (varying lr)")
    (line,) = contrast(picked, "accuracy")  # a real contrast, not the pooled lrs
    assert line.startswith("T=100: accuracy SAB 0.840 [") and "BPTT 0.340 [" in line and "SAB better" in line
    assert headline(picked, "accuracy")["accuracy.bptt.T100"] == 0.34  # the MLflow summary does not pool lrs
    single = cells[cells["lr"] == 0.003]
    assert at_picked_lr(single, "accuracy").equals(single)  # one lr: nothing to pick


def test_the_lr_table_shows_every_lr_the_pick_and_its_validation_lead_with_an_interval():
    cells = _lr_study_cells()
    cells.loc[len(cells)] = {"method": "bptt", "seq_len": 100, "lr": 0.003, "seed": 3, "status": "crashed", "val_accuracy": float("nan")}
    table = lr_choice_table(cells, "accuracy").set_index(["method", "lr"])
    assert list(table.index) == [("bptt", "0.003"), ("bptt", "0.01"), ("sab", "0.003"), ("sab", "0.01")]
    assert table["picked"].to_dict() == {
        ("bptt", "0.003"): "",
        ("bptt", "0.01"): "yes (largest tried)",  # an lr beyond the axis may do better, and the table says so
        ("sab", "0.003"): "yes (smallest tried)",
        ("sab", "0.01"): "",
    }
    assert table.loc[("sab", "0.01"), "val_accuracy (choice)"].startswith("0.250 [")
    assert table.loc[("sab", "0.01"), "accuracy (not used to choose)"].startswith("0.240 [")
    lead = table.loc[("sab", "0.01"), "picked - this, validation"]
    assert lead.startswith("0.003 - 0.01 = +0.600 [") and lead.endswith("0.003 better")
    assert table.loc[("bptt", "0.003"), "val_accuracy (choice)"].endswith("(n=3)")  # the crashed cell has no figure
    assert table.loc[("bptt", "0.003"), "cells not ok"] == "1 of 4"
    assert table.loc[("sab", "0.003"), "picked - this, validation"] == "—"
    assert lr_choice_table(cells[cells["lr"] == 0.003], "accuracy").empty


def test_an_lr_whose_seeds_partly_failed_cannot_win_on_its_survivors():
    cells = _lr_study_cells()  # sab: 0.003 best on validation (0.85 against 0.25)
    diverged = (cells["method"] == "sab") & (cells["lr"] == 0.003) & (cells["seed"] == 0)
    cells.loc[diverged, ["status", "val_accuracy"]] = ["diverged", float("nan")]
    picked = at_picked_lr(cells, "accuracy")
    assert picked.groupby("method")["lr"].unique().map(list).to_dict() == {"bptt": [0.01], "sab": [0.01]}
    table = lr_choice_table(cells, "accuracy").set_index(["method", "lr"])
    assert table.loc[("sab", "0.003"), "cells not ok"] == "1 of 3" and table.loc[("sab", "0.01"), "cells not ok"] == "0 of 3"
    assert table.loc[("sab", "0.01"), "picked"] == "yes (largest tried)"
    assert table.loc[("sab", "0.003"), "picked - this, validation"].startswith("0.01 - 0.003 = -")  # the cost, shown


def test_recall_by_position_tells_a_weak_memory_everywhere_from_some_positions_solved():
    rows = []
    for seed in range(2):
        rows.append({"method": "sab", "seq_len": 100, "seed": seed, "status": "ok", **{f"recall_pos_{i}": 0.3 for i in range(1, 11)}})
        rows.append({"method": "bptt", "seq_len": 100, "seed": seed, "status": "ok",
                     **{f"recall_pos_{i}": 1.0 if i <= 3 else 0.0 for i in range(1, 11)}})  # fmt: skip
    rows.append({"method": "bptt", "seq_len": 100, "seed": 2, "status": "diverged", **{f"recall_pos_{i}": 0.5 for i in range(1, 11)}})
    table = position_table(pd.DataFrame(rows)).set_index("method")
    assert list(table.columns[:3]) == ["seq_len", "n", "pos 1"] and list(table.columns[-2:]) == ["pos 10", "lowest / highest"]
    assert table.loc["bptt", "n"] == 2  # the diverged cell is not in it
    assert table.loc["bptt", "pos 3"] == "1.00" and table.loc["bptt", "pos 4"] == "0.00"
    assert table.loc["sab", "lowest / highest"] == "0.30 / 0.30" and table.loc["bptt", "lowest / highest"] == "0.00 / 1.00"
    assert position_table(pd.DataFrame(rows).filter(regex="^(?!recall_pos)")).empty  # tasks without a breakdown


def test_natural_key_orders_digit_runs_as_numbers():
    names = ["recall_pos_10", "recall_pos_2", "transfer_accuracy_100", "recall_pos_1", "transfer_accuracy_60", "k_top"]
    assert sorted(names, key=natural_key) == ["k_top", "recall_pos_1", "recall_pos_2", "recall_pos_10", "transfer_accuracy_60",
                                              "transfer_accuracy_100"]  # fmt: skip


def test_the_summary_memory_ratio_is_per_configuration_not_pooled():
    rows = [
        {"method": "sab", "seq_len": 100, "k_top": k_top, "seed": seed, "status": "ok", "accuracy": 0.9, "peak_bytes": peak}
        for k_top, peak in ((1, 1.0), (5, 3.0))
        for seed in range(2)
    ]
    rows += [
        {"method": "bptt", "seq_len": 100, "k_top": None, "seed": s, "status": "ok", "accuracy": 0.3, "peak_bytes": 4.0} for s in range(2)
    ]
    figures = headline(pd.DataFrame(rows), "accuracy")
    ratios = {name: value for name, value in figures.items() if name.startswith("peak_memory.")}
    assert ratios == {"peak_memory.sab_over_bptt.T100.k_top_1": 0.25, "peak_memory.sab_over_bptt.T100.k_top_5": 0.75}
    assert "accuracy.bptt.T100" in figures  # a reference without the knob is not named after it


def test_a_pick_inside_the_lr_axis_is_not_marked_as_an_edge():
    cells = _lr_study_cells()
    middle = cells[cells["lr"] == 0.003].assign(lr=0.006, val_accuracy=lambda f: f["val_accuracy"] + 0.5)
    table = lr_choice_table(pd.concat([cells, middle], ignore_index=True), "accuracy").set_index(["method", "lr"])
    assert table.loc[("sab", "0.006"), "picked"] == "yes" and table.loc[("bptt", "0.006"), "picked"] == "yes"


def test_time_to_accuracy_says_why_it_is_empty_for_a_metric_other_than_accuracy():
    """A bits-per-character sweep records curves, but the accuracy target does not apply to it."""
    from harness.report import _no_time_to_accuracy

    assert "No validation curves" in _no_time_to_accuracy("accuracy")
    assert "measured in bpc" in _no_time_to_accuracy("bpc") and "No validation curves" not in _no_time_to_accuracy("bpc")


def test_each_sab_configuration_is_contrasted_with_the_reference_configuration_it_matches():
    """SAB at two k_trunc x two k_top, TBPTT at each k_trunc, BPTT once: every SAB setting gets its own
    line against the TBPTT of its k_trunc and the one BPTT (which ignores both knobs)."""
    rows = []
    for seed in range(3):
        for k_trunc in (2, 5):
            rows.append({"method": "tbptt", "k_trunc": k_trunc, "accuracy": 0.1 * k_trunc + 0.01 * seed})
            for k_top in (2, 3):
                rows.append({"method": "sab", "k_trunc": k_trunc, "k_top": k_top, "accuracy": 0.5 + 0.1 * k_top + 0.01 * seed})
        rows.append({"method": "bptt", "accuracy": 0.6 + 0.01 * seed})
    cells = pd.DataFrame(rows).assign(seq_len=20, lr=0.01, status="ok", peak_bytes=1.0)
    cells["seed"] = [i // 7 for i in range(len(cells))]
    lines = contrast(cells, "accuracy")
    assert len(lines) == 5 and lines[-1].startswith("T=20: 4 SAB configurations compared; each interval holds for its own")
    by_setting = {line.split(":")[0]: line for line in lines[:4]}
    assert set(by_setting) == {f"T=20, SAB at k_trunc={t}, k_top={k}" for t in (2, 5) for k in (2, 3)}
    line = by_setting["T=20, SAB at k_trunc=5, k_top=3"]
    assert "SAB 0.810 [" in line and "TBPTT 0.510 [" in line and "BPTT 0.610 [" in line  # TBPTT of its own k_trunc
    assert "SAB - BPTT = +0.200" in line and "SAB - TBPTT = +0.300" in line
    assert "TBPTT 0.210 [" in by_setting["T=20, SAB at k_trunc=2, k_top=3"]
    mixed = pd.concat([cells, cells.assign(lr=0.003)])  # cells not narrowed to one lr: nothing pooled across lrs
    assert contrast(mixed, "accuracy") == [
        "T=20: several configurations per method (varying k_trunc, k_top, lr); compare them in the table below"
    ]


def test_the_contrast_never_pools_cells_of_an_earlier_identity_with_current_ones():
    rows = [
        {"method": method, "seed": seed, "cell_identity": identity, "accuracy": base + (0.5 if identity == "current" else 0) + 0.01 * seed}
        for identity in ("current", "earlier")
        for method, base in (("sab", 0.3), ("bptt", 0.1))
        for seed in range(3)
    ]
    cells = pd.DataFrame(rows).assign(seq_len=20, lr=0.01, status="ok", peak_bytes=1.0)
    lines = contrast(cells, "accuracy")
    assert [line.split(":")[0] for line in lines[:2]] == ["T=20, SAB at cell_identity=current", "T=20, SAB at cell_identity=earlier"]
    assert "SAB 0.810 [" in lines[0] and "(n=3)" in lines[0] and "BPTT 0.610 [" in lines[0]
