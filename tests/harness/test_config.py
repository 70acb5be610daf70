"""Sweep files compose and validate; overrides follow the documented rule; bad input is one line."""

from __future__ import annotations

import pytest

from harness.cells import expand
from harness.config import SweepError, list_sweeps, load_sweep
from harness.sweep import main


@pytest.mark.parametrize("name", list_sweeps())
@pytest.mark.parametrize("budget", ["smoke", "quick", "paper"])
def test_every_sweep_composes_and_validates(name, budget):
    config = load_sweep(name, [f"budget={budget}"])
    cells = expand(config)
    assert cells, (name, budget)
    if budget == "smoke":
        assert len(cells) <= 4


def test_list_names_every_sweep(capsys):
    assert main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list_sweeps()


def test_unknown_sweep_is_one_line_naming_the_valid_ones(capsys):
    assert main(["nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("error: unknown sweep 'nope'; valid: ") and "copy_lengths" in err


def test_budget_and_short_form_overrides():
    quick = load_sweep("copy_lengths")
    assert quick.budget == "quick"
    smoke = load_sweep("copy_lengths", ["budget=smoke"])
    assert smoke.grid["seq_len"] == [5] and smoke.fixed["steps"] == 20
    # the user's override beats the budget's value; a bare axis name means grid.NAME
    mine = load_sweep("copy_lengths", ["budget=smoke", "seq_len=[7,8]", "steps=3", "grid.seed=[4]"])
    assert mine.grid["seq_len"] == [7, 8] and mine.fixed["steps"] == 3 and mine.grid["seed"] == [4]
    # a parameter that is not an axis becomes an axis with grid.NAME
    axis = load_sweep("copy_lengths", ["budget=smoke", "grid.k_top=[1,2]"])
    assert axis.grid["k_top"] == [1, 2] and "k_top" not in axis.fixed


def test_k_top_only_multiplies_the_methods_that_use_it():
    config = load_sweep("copy_lengths", ["budget=smoke", "grid.k_top=[1,2,3]"])
    names = sorted(c.name for c in expand(config))
    assert sum(n.startswith("sab__") for n in names) == 3
    assert sum(n.startswith("bptt__") for n in names) == 1


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["budget=huge"], "unknown budget 'huge' for sweep 'copy_lengths'; valid: smoke, quick, schedule, bptt_time, paper"),
        (["colour=3"], "unknown parameter 'colour'"),
        (["grid.method=[sab,magic]"], "unknown method 'magic'; valid: bptt"),
        (["k_top=0"], "k_top must be an integer >= 1, got 0"),
    ],
)
def test_bad_overrides_fail_with_one_line(overrides, message):
    with pytest.raises(SweepError, match=message.replace("[", r"\[").replace("(", r"\(")):
        expand(load_sweep("copy_lengths", overrides))


def _sweep_dir(tmp_path, text: str):
    folder = tmp_path / "sweeps"
    folder.mkdir()
    (folder / "mine.yaml").write_text(text)
    return folder


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    folder = _sweep_dir(tmp_path, "fixed:\n  task: copy\ngrid:\n  method: [sab, bptt\n  seq_len: [5]\n")
    with pytest.raises(SweepError, match=r"mine\.yaml:\d+:\d+: YAML syntax error"):
        load_sweep("mine", [], folder)


@pytest.mark.parametrize(
    "text,message",
    [
        ("grid: {colour: [1]}\nbudgets: {quick: {}}\n", "grid axis 'colour' is not a parameter"),
        ("fixed: {_target_: os.system}\nbudgets: {quick: {}}\n", "'_target_' at fixed is not allowed"),
        ("fixed: {device: '${oc.env:HOME}'}\nbudgets: {quick: {}}\n", "resolver interpolation"),
        ("grid: {method: [sab]}\n", "unknown budget 'quick'"),
        ("grid: {method: [sab]}\nbudgets: {quick: {}}\nresources: {cpus_per_trial: 0}\n", "cpus_per_trial must be an integer >= 1"),
        ("grid: {method: [sab]}\nbudgets: {quick: {}}\nslurm: {script: evil}\n", "slurm key 'script' is not allowed"),
        ("grdi: {method: [sab]}\nbudgets: {quick: {}}\n", "unknown top-level key 'grdi'"),
        (
            "grid: {method: [sab]}\nbudgets: {quick: {}}\nper_method: {sap: {lr: 0.1}}\n",
            "per_method names unknown method 'sap'; valid: bptt",
        ),
        ("grid: {method: [sab]}\nbudgets: {quick: {}}\nper_method: {sab: {rate: 0.1}}\n", "per_method.sab key 'rate' is not a parameter"),
        ("grid: {method: [sab]}\nbudgets: {quick: {}}\nper_method: {sab: 0.1}\n", "per_method.sab must be a mapping"),
    ],
)
def test_bad_sweep_files_fail_with_one_line(tmp_path, text, message):
    folder = _sweep_dir(tmp_path, text)
    with pytest.raises(SweepError, match=message.replace("(", r"\(").replace("[", r"\[").replace("$", r"\$").replace("{", r"\{")):
        expand(load_sweep("mine", [], folder))


def test_per_method_values_lie_over_fixed_under_the_grid_and_yield_to_the_user(tmp_path):
    """Each method at its own lr (chosen on validation) while one method axis still selects methods."""
    folder = _sweep_dir(
        tmp_path,
        "fixed: {task: copy, seq_len: 5, lr: 0.003}\ngrid: {method: [bptt, tbptt, sab], seed: [0, 1]}\n"
        "per_method: {sab: {lr: 0.006}, bptt: {lr: 0.006}}\nbudgets: {quick: {}, other: {per_method: {sab: {lr: 0.01}}}}\n",
    )
    lrs = {(c.spec.method, c.spec.seed): c.spec.lr for c in expand(load_sweep("mine", [], folder))}
    assert lrs == {("bptt", 0): 0.006, ("bptt", 1): 0.006, ("tbptt", 0): 0.003, ("tbptt", 1): 0.003, ("sab", 0): 0.006, ("sab", 1): 0.006}
    only_sab = expand(load_sweep("mine", ["method=[sab]"], folder))
    assert [(c.spec.method, c.spec.lr) for c in only_sab] == [("sab", 0.006)] * 2
    assert {c.spec.lr for c in expand(load_sweep("mine", ["budget=other"], folder)) if c.spec.method != "sab"} == {
        0.003
    }  # a budget's per_method replaces the file's
    assert {c.spec.lr for c in expand(load_sweep("mine", ["lr=0.001"], folder))} == {0.001}  # the command line's lr is every method's
    assert {c.spec.lr for c in expand(load_sweep("mine", ["grid.lr=[0.02]"], folder))} == {0.02}  # an lr axis beats per_method
