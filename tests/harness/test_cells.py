"""Grid expansion is deterministic; cell ids are content-addressed as docs/design.md says."""

from __future__ import annotations

import dataclasses

import harness.cells as cells_module
from harness.cells import Cell, cell_id, expand, fewest_seeds
from harness.config import list_sweeps, load_sweep
from sab.train import TrialSpec


def test_expansion_is_deterministic_and_deduplicated():
    config = load_sweep("copy_lengths", ["budget=quick", "grid.seed=[0,1]"])
    first = [c.cell_id for c in expand(config)]
    second = [c.cell_id for c in expand(load_sweep("copy_lengths", ["budget=quick", "grid.seed=[0,1]"]))]
    assert first == second
    assert len(first) == len(set(first)) == 3 * 3 * 2  # {bptt, tbptt, sab} x T 10/20/30 x 2 seeds


def test_id_ignores_what_the_method_ignores_and_execution_details():
    base = TrialSpec(method="bptt", seq_len=10)
    assert cell_id(base, "quick") == cell_id(dataclasses.replace(base, k_top=9, k_att=2, k_trunc=3), "quick")
    assert cell_id(base, "quick") == cell_id(dataclasses.replace(base, threads=4, weights_path="/x"), "quick")
    sab = TrialSpec(method="sab", seq_len=10)
    assert cell_id(sab, "quick") != cell_id(dataclasses.replace(sab, k_top=9), "quick")
    tbptt = TrialSpec(method="tbptt", seq_len=10)
    assert cell_id(tbptt, "quick") != cell_id(dataclasses.replace(tbptt, k_trunc=9), "quick")
    assert cell_id(tbptt, "quick") == cell_id(dataclasses.replace(tbptt, k_top=9), "quick")


def test_id_changes_with_budget_task_and_method_version(monkeypatch):
    spec = TrialSpec(method="sab", seq_len=10)
    ids = {cell_id(spec, "quick"), cell_id(spec, "paper"), cell_id(dataclasses.replace(spec, task="adding"), "quick")}
    assert len(ids) == 3
    before = cell_id(spec, "quick")
    monkeypatch.setattr(cells_module, "METHOD_VERSION", cells_module.METHOD_VERSION + 1)
    assert cell_id(spec, "quick") != before


def test_id_does_not_hold_the_git_sha():
    assert "git" not in str(cells_module.identity(TrialSpec(), "quick"))


def test_union_and_exclude():
    config = load_sweep("copy_lengths", ["budget=smoke"])
    config = dataclasses.replace(
        config,
        union=[{"method": ["sab"], "k_top": [1, 2]}],
        exclude=[{"method": "self_attention"}],
    )
    names = [c.name for c in expand(config)]
    assert not any(n.startswith("self_attention") for n in names)
    assert sum(n.startswith("sab__") for n in names) == 3  # k_top 3 (main grid), 1 and 2 (union)


def test_names_carry_the_grid_point():
    cell = Cell("s", "quick", TrialSpec(method="sab", seq_len=30, seed=2, k_top=3), axes=("method", "seq_len", "k_top", "seed"))
    assert cell.name == "sab__seq_len=30__k_top=3__seed=2"
    plain = Cell("s", "quick", TrialSpec(method="bptt", seq_len=30, seed=2), axes=("method", "seq_len", "k_top", "seed"))
    assert plain.name == "bptt__seq_len=30__seed=2"


def test_clean_timing_times_the_engine_path_the_cells_ran():
    """The timing pass measures sab with its cells' replay group and shape-static path (execution
    fields: not in the cell id, but they change the step's cost)."""
    from harness.timing import timing_configs

    plain = TrialSpec(method="sab", seq_len=20)
    tuned = dataclasses.replace(plain, replay_group=4, static_shapes=True)
    assert cell_id(plain, "quick") == cell_id(tuned, "quick")
    configs = timing_configs([Cell("s", "quick", plain), Cell("s", "quick", tuned)])
    assert [(c.replay_group, c.static_shapes) for c in configs] == [(None, False), (4, True)]


def test_a_budget_dependent_schedule_gives_each_budget_its_own_lineage():
    from harness.states import lineage

    def cell(**values):
        return Cell("s", "b", TrialSpec(method="sab", **values))

    assert lineage(cell(steps=100)) == lineage(cell(steps=200)) != lineage(cell(steps=100, lr=0.01))
    assert lineage(cell(steps=100, lr_schedule="cosine")) != lineage(cell(steps=200, lr_schedule="cosine"))


def test_fewest_seeds_counts_seeds_per_configuration_not_per_sweep():
    config = load_sweep("copy_lengths", ["budget=smoke", "method=[bptt,sab]", "seq_len=[5,6]", "seed=[0,1]"])
    assert fewest_seeds(expand(config)) == 2
    lopsided = expand(config) + expand(load_sweep("copy_lengths", ["budget=smoke", "method=[sab]", "seq_len=[5]", "seed=[7]"]))
    assert fewest_seeds(lopsided) == 2  # sab at T=5 now has three seeds; the others keep two
    one = expand(load_sweep("copy_lengths", ["budget=smoke", "method=[bptt,sab]", "seq_len=[5]", "seed=[0]", "grid.lr=[1e-3,3e-3]"]))
    assert len(one) == 4 and fewest_seeds(one) == 1  # two lrs are two configurations, not two seeds


def test_every_shipped_budget_but_smoke_runs_three_seeds_per_configuration():
    """A report calls a difference only from an interval; 3 seeds is the fewest that gives a usable one."""
    short = {}
    for name in list_sweeps():
        for budget in load_sweep(name).budgets:
            seeds = fewest_seeds(expand(load_sweep(name, [f"budget={budget}"])))
            if budget != "smoke" and seeds < 3:
                short[f"{name}/{budget}"] = seeds
    assert short == {}
