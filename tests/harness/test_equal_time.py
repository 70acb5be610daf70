"""Accuracy at equal wall-clock: each method's best validation within the shortest whole budget's CPU time."""

from __future__ import annotations

import pandas as pd

from harness.equal_time import equal_time

KEYS = ["method", "seq_len"]


def _cells(rows: list[tuple[str, int, str]], steps: int = 100) -> pd.DataFrame:
    return pd.DataFrame(
        [{"method": m, "seq_len": 50, "seed": seed, "run_id": run_id, "status": "ok", "steps": steps} for m, seed, run_id in rows]
    )


def _timing(seconds: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "seq_len": 50.0, "step_seconds": s} for m, s in seconds.items()])


def test_each_method_gets_the_steps_its_own_cost_allows_within_the_cheapest_budget():
    cells = _cells([("bptt", 0, "b0"), ("bptt", 1, "b1"), ("sab", 0, "s0"), ("sab", 1, "s1")])
    curves = {  # evaluations every 10 steps; SAB learns faster per step, BPTT is 5x cheaper per step
        "b0": [(s, s / 200) for s in range(10, 101, 10)],
        "b1": [(s, s / 250) for s in range(10, 101, 10)],
        "s0": [(s, min(1.0, s / 25)) for s in range(10, 101, 10)],
        "s1": [(s, min(1.0, s / 30)) for s in range(10, 101, 10)],
    }
    table, lines = equal_time(cells, curves, _timing({"bptt": 0.01, "sab": 0.05}), KEYS)
    rows = table.set_index("method")
    assert rows.at["bptt", "steps in that time"] == "100 of 100"  # BPTT's whole budget, 1 s, is the shortest
    assert rows.at["sab", "steps in that time"] == "20 of 100"  # 1 s at 0.05 s/step
    assert rows.at["sab", "best validation accuracy by then"].startswith("0.733")  # steps 20: 0.8 and 0.667
    assert rows.at["bptt", "best validation accuracy by then"].startswith("0.450")  # steps 100: 0.5 and 0.4
    assert rows.at["sab", "time"] == "1 s"
    assert len(lines) == 1 and lines[0].startswith("T=50, within 1 s: sab - bptt = +0.283")


def test_a_method_with_no_evaluation_inside_the_time_shows_none_and_no_timing_means_no_table():
    cells = _cells([("bptt", 0, "b0"), ("sab", 0, "s0")])
    curves = {"b0": [(10, 0.2)], "s0": [(50, 0.9)]}  # SAB's first evaluation comes after its 20 steps
    table, lines = equal_time(cells, curves, _timing({"bptt": 0.01, "sab": 0.05}), KEYS)
    assert table.set_index("method").at["sab", "best validation accuracy by then"] == "—" and lines == []
    assert equal_time(cells, curves, pd.DataFrame(columns=["method", "seq_len", "step_seconds"]), KEYS)[0].empty
