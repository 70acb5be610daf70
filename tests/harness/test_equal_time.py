"""Accuracy at equal wall-clock: each method's best validation within BPTT's whole budget of CPU time."""

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


def test_each_method_gets_the_steps_its_own_cost_allows_within_bptts_budget():
    cells = _cells([("bptt", 0, "b0"), ("bptt", 1, "b1"), ("sab", 0, "s0"), ("sab", 1, "s1"), ("tbptt", 0, "t0")])
    curves = {  # evaluations every 10 steps; SAB learns faster per step, BPTT is 5x cheaper per step
        "b0": [(s, s / 200) for s in range(10, 101, 10)],
        "b1": [(s, s / 250) for s in range(10, 101, 10)],
        "s0": [(s, min(1.0, s / 25)) for s in range(10, 101, 10)],
        "s1": [(s, min(1.0, s / 30)) for s in range(10, 101, 10)],
        "t0": [(s, s / 1000) for s in range(10, 101, 10)],
    }
    table, lines = equal_time(cells, curves, _timing({"bptt": 0.01, "sab": 0.05, "tbptt": 0.005}), KEYS)
    rows = table.set_index("method")
    assert (rows["time"] == "1 s").all()  # BPTT's whole budget sets the time, not TBPTT's cheaper one (0.5 s)
    assert rows.at["bptt", "steps in that time"] == "100 of 100"
    assert rows.at["sab", "steps in that time"] == "20 of 100"  # 1 s at 0.05 s/step
    assert rows.at["tbptt", "steps in that time"] == "100 of 100 (its whole budget)"  # it ended at 0.5 s
    assert rows.at["sab", "best validation accuracy by then"].startswith("0.733")  # steps 20: 0.8 and 0.667
    assert rows.at["bptt", "best validation accuracy by then"].startswith("0.450")  # steps 100: 0.5 and 0.4
    assert lines == ["T=50, within 1 s (BPTT's whole budget): sab - bptt = +0.283 [-0.104, +0.670]: not distinguishable at n=2"]


def test_sab_without_an_evaluation_inside_the_time_is_said_so_and_no_timing_means_no_table():
    cells = _cells([("bptt", 0, "b0"), ("sab", 0, "s0")])
    curves = {"b0": [(10, 0.2)], "s0": [(50, 0.9)]}  # SAB's first evaluation comes after its 20 steps
    table, lines = equal_time(cells, curves, _timing({"bptt": 0.01, "sab": 0.05}), KEYS)
    assert table.set_index("method").at["sab", "best validation accuracy by then"] == "—"
    assert lines == ["T=50: within 1 s (BPTT's whole budget) SAB ran 20 steps, before its first evaluation; BPTT reached 0.200 (n=1)"]
    assert equal_time(cells, curves, pd.DataFrame(columns=["method", "seq_len", "step_seconds"]), KEYS)[0].empty


def test_sab_configurations_are_named_by_the_settings_that_tell_them_apart():
    cells = pd.concat(
        [_cells([("bptt", 0, "b0")]), _cells([("sab", 0, "s0")]).assign(k_att=5), _cells([("sab", 0, "s1")]).assign(k_att=10)]
    )
    cells["scorer_init"] = ["—", "zero", "zero"]  # the same for both SAB cells: not named
    curves = {"b0": [(100, 0.5)], "s0": [(20, 0.6)], "s1": [(20, 0.7)]}
    timing = pd.DataFrame(
        [{"method": "bptt", "seq_len": 50.0, "step_seconds": 0.01}]
        + [{"method": "sab", "seq_len": 50.0, "k_att": k, "step_seconds": 0.05} for k in (5, 10)]
    )
    _, lines = equal_time(cells, curves, timing, ["method", "seq_len", "k_att", "scorer_init"])
    assert [line.split(", within")[0] for line in lines] == ["T=50, SAB at k_att=5", "T=50, SAB at k_att=10"]


def test_where_bptt_ran_longer_than_sab_a_second_line_sets_both_at_sabs_whole_time():
    cells = pd.concat([_cells([("bptt", 0, "b0"), ("bptt", 1, "b1")], steps=600), _cells([("sab", 0, "s0"), ("sab", 1, "s1")])])
    curves = {  # BPTT (6x SAB's steps, 1/5 of its cost) evaluated every 100 steps, still rising at SAB's 2 s
        "b0": [(s, s / 1000) for s in range(100, 601, 100)],
        "b1": [(s, s / 1200) for s in range(100, 601, 100)],
        "s0": [(50, 0.5), (100, 0.9)],
        "s1": [(50, 0.6), (100, 0.8)],
    }
    table, lines = equal_time(cells, curves, _timing({"bptt": 0.004, "sab": 0.02}), KEYS)
    rows = table.set_index("method")
    assert rows.at["sab", "steps in that time"] == "100 of 100 (its whole budget)"  # 2 s of BPTT's 2.4 s
    assert lines[0].startswith("T=50, within 2.4 s (BPTT's whole budget): sab - bptt = +0.300")  # BPTT at 600: 0.6, 0.5
    # at SAB's 2 s BPTT ran 500 steps: 0.5 and 0.417, not its last evaluation's 0.6 and 0.5
    assert (
        lines[1] == "T=50, within 2 s (SAB's whole budget; BPTT ran 500 of 600 steps): sab - bptt = +0.392 [+0.103, +0.681]: sab better"
    )  # Welch, df 1.9
    assert len(lines) == 2


def test_no_second_line_where_sabs_budget_took_as_long_as_bptts_or_longer():
    cells = _cells([("bptt", 0, "b0"), ("sab", 0, "s0"), ("bptt", 1, "b1"), ("sab", 1, "s1")])
    curves = {"b0": [(100, 0.5)], "b1": [(100, 0.4)], "s0": [(20, 0.6)], "s1": [(20, 0.7)]}
    _, lines = equal_time(cells, curves, _timing({"bptt": 0.01, "sab": 0.05}), KEYS)
    assert len(lines) == 1 and "SAB's whole budget" not in lines[0]
