"""One trial end to end: metrics, cost figures, statuses, saved weights, the CLI, and the import boundary."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from sab.tasks import make_task
from sab.train import TrialSpec, attention_note, load_weights, run_trial

TINY = dict(task="copy", seq_len=5, hidden_size=8, batch_size=4, steps=6, eval_interval=3, eval_batches=1, k_trunc=3, k_att=2, k_top=2)


@pytest.mark.parametrize("method", ["bptt", "bptt_cell", "tbptt", "self_attention", "sab_reference", "sab", "transformer"])
def test_every_method_runs_a_trial(method):
    result = run_trial(TrialSpec(method=method, **TINY))
    assert result.status == "ok", result.traceback
    assert result.steps_done == 6
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert {"val_accuracy", "val_loss", "loss"} <= set(result.metrics)
    assert [p["step"] for p in result.curve] == [3, 6]
    assert result.seconds_per_step > 0 and result.tokens_per_second > 0
    assert result.peak_bytes > 0 and result.peak_saved_bytes > 0


def test_transfer_lengths_are_evaluated():
    result = run_trial(TrialSpec(method="sab", transfer_lengths=(10, 40), **TINY))
    assert result.status == "ok"
    assert {"transfer_accuracy_10", "transfer_accuracy_40"} <= set(result.metrics)


def test_out_of_memory_at_a_transfer_length_is_a_result():
    """A real failed allocation at the longest transfer length: the trial stays ok, the shorter
    length keeps its figure and the longest is marked transfer_oom_T (the paper's OOM column)."""
    result = run_trial(TrialSpec(method="sab", transfer_lengths=(10, 40), inject_fault="transfer_oom", **TINY))
    assert result.status == "ok", result.traceback
    assert "transfer_accuracy_10" in result.metrics
    assert result.metrics["transfer_oom_40"] == 1.0
    assert "transfer_accuracy_40" not in result.metrics


def test_adding_task_trial():
    spec = TrialSpec(method="sab", **{**TINY, "task": "adding", "seq_len": 12})
    result = run_trial(spec)
    assert result.status == "ok", result.traceback
    assert math.isfinite(result.metrics["mse"])
    assert not any(key.startswith("recall_pos_") for key in result.metrics)  # copy's breakdown only


def test_copy_breakdown_is_the_recall_at_each_position_and_averages_to_the_accuracy():
    task = make_task("copy", 6)
    targets = task.sample(4, torch.Generator().manual_seed(0)).targets
    logits = torch.nn.functional.one_hot(targets, 10).float()
    logits[:, -7:, :] = logits[:, -7:, :].roll(1, dims=-1)  # positions 4..10 wrong, 1..3 right
    recall = task.breakdown(logits, targets)
    assert list(recall) == [f"recall_pos_{i}" for i in range(1, 11)]
    assert list(recall.values()) == [1.0] * 3 + [0.0] * 7
    assert task.metrics(logits, targets)["accuracy"] == pytest.approx(0.3)
    result = run_trial(TrialSpec(method="sab", **{**TINY, "eval_batches": 3}))
    positions = [result.metrics[f"recall_pos_{i}"] for i in range(1, 11)]
    assert sum(positions) / 10 == pytest.approx(result.metrics["accuracy"], abs=1e-6)  # test set only, not val or transfer
    assert "val_recall_pos_1" not in result.metrics and "transfer_recall_pos_1_40" not in result.metrics


def test_same_seed_same_metrics():
    a = run_trial(TrialSpec(method="sab", **TINY))
    b = run_trial(TrialSpec(method="sab", **TINY))
    assert a.metrics == pytest.approx(b.metrics, rel=1e-6)


def test_weights_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "w" / "model.pt"
    spec = TrialSpec(method="sab", weights_path=str(path), **TINY)
    assert run_trial(spec).status == "ok"
    model, loaded_spec = load_weights(str(path))
    assert loaded_spec == spec
    task = make_task("copy", 5)
    batch = task.sample(2, torch.Generator().manual_seed(0))
    torch.load(str(path), weights_only=True)  # plain data only
    logits = model.infer(batch.inputs)
    assert logits.shape == (2, task.length, 10)


def test_bad_spec_becomes_an_error_status_not_an_exception():
    result = run_trial(TrialSpec(method="sab", **{**TINY, "k_top": 0}))
    assert result.status == "error"
    assert "k_top must be an integer >= 1, got 0" in result.error


def test_cli_runs_one_trial():
    out = subprocess.run(
        [sys.executable, "-m", "sab.train", "--task", "copy", "--method", "sab", "--seq-len", "5", "--steps", "4",
         "--hidden-size", "8", "--batch-size", "4", "--eval-interval", "2", "--eval-batches", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["status"] == "ok" and summary["steps_done"] == 4
    assert "step=2" in out.stderr


def test_cli_bad_method_is_one_line():
    out = subprocess.run([sys.executable, "-m", "sab.train", "--method", "nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert (
        out.stderr.strip() == "error: unknown method 'nope'; valid: bptt, bptt_cell, tbptt, self_attention, sab_reference, sab, transformer"
    )


def test_import_sab_pulls_no_harness_framework():
    code = (
        "import sys, sab, sab.train, sab.credit, sab.model, sab.tasks, sab.measure, sab.sparse_attention\n"
        "print([m for m in ('ray', 'mlflow', 'hydra', 'submitit', 'omegaconf', 'harness') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_sab_learns_copy_where_tbptt_cannot():
    """Copy with delay 10 > k_trunc = 5: SAB's memories carry credit across the delay, TBPTT's cannot."""
    common = dict(
        task="copy", seq_len=10, hidden_size=64, batch_size=32, k_trunc=5, k_att=5, k_top=3, lr=3e-3, steps=1000, eval_interval=1000, seed=0
    )
    sab = run_trial(TrialSpec(method="sab", **common))
    tbptt = run_trial(TrialSpec(method="tbptt", **common))
    assert sab.status == tbptt.status == "ok"
    assert sab.metrics["accuracy"] > tbptt.metrics["accuracy"] + 0.1, (sab.metrics, tbptt.metrics)
    assert tbptt.metrics["accuracy"] < 0.2


def test_replay_group_is_resolved_recorded_and_checked():
    """The sab engine's replay group: the device's default unless the spec names one, recorded on
    the result; a grouped replay trains to the same figures (the same gradient, other roundings)."""
    spec = dict(TINY, seq_len=20, steps=4, eval_interval=2)
    default, grouped = run_trial(TrialSpec(method="sab", **spec)), run_trial(TrialSpec(method="sab", replay_group=4, **spec))
    assert (default.status, grouped.status) == ("ok", "ok"), grouped.traceback
    assert (default.replay_group, grouped.replay_group) == (1, 4)
    assert grouped.metrics["loss"] == pytest.approx(default.metrics["loss"], rel=1e-4)
    assert run_trial(TrialSpec(method="bptt", **spec)).replay_group == 0
    with pytest.raises(ValueError, match="replay_group must be an integer >= 1 or None"):
        TrialSpec(replay_group=0).validate()


def test_static_shapes_is_recorded_and_a_bad_value_is_one_line():
    result = run_trial(TrialSpec(method="sab", static_shapes=True, **TINY))
    assert result.status == "ok" and result.static_shapes is True, result.traceback
    with pytest.raises(ValueError, match="static_shapes must be true or false"):
        TrialSpec(static_shapes="yes").validate()
    cli = subprocess.run([sys.executable, "-m", "sab.train", "--static-shapes", "maybe"], capture_output=True, text=True)
    assert cli.returncode == 2 and cli.stderr.strip() == "error: argument --static-shapes: 'maybe' is not a boolean; valid: true, false"


def test_select_on_validation_reports_the_best_evaluations_weights():
    """Model selection on validation: the final figures come from the weights of the best
    validation evaluation (the earliest of equals), so a collapse in the last steps does not decide
    the result; off by default (the last step's weights)."""
    sizes = dict(TINY, hidden_size=16, batch_size=8, steps=60, eval_interval=10)
    result = run_trial(TrialSpec(method="sab", select_on_validation=True, lr=0.05, **sizes))
    assert result.status == "ok", result.traceback
    best = max(result.curve, key=lambda point: point["val_accuracy"])
    assert result.selected_step == best["step"] < 60  # this seed's validation recall drops after its best
    assert result.metrics["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-9)
    last = run_trial(TrialSpec(method="sab", lr=0.05, **sizes))
    assert last.selected_step == 0 and last.metrics["val_accuracy"] == pytest.approx(result.curve[-1]["val_accuracy"], abs=1e-9)
    with pytest.raises(ValueError, match="select_on_validation must be true or false"):
        TrialSpec(select_on_validation=1).validate()


def test_the_best_weights_survive_a_checkpoint_read_with_weights_only(tmp_path):
    from sab.checkpoint import Checkpointer

    weights = {"w": torch.ones(2)}
    checkpointer = Checkpointer(str(tmp_path / "state.pt"), 1)
    checkpointer.save({"step": 3, "best": (0.5, 3, weights)})
    score, step, loaded = checkpointer.load()["best"]
    assert (score, step) == (0.5, 3) and torch.equal(loaded["w"], weights["w"])


@pytest.mark.parametrize("method", ["bptt", "sab", "self_attention", "transformer"])
def test_zero_bias_init_zeroes_every_bias_and_keeps_every_weight(method):
    """bias_init=zero: every bias of the model is zero at start and every other parameter is the
    default draw of the same seed (the zeroing comes after the draws), for every method alike."""
    from sab.train import build

    task = make_task("copy", 5, None, 0)
    default = build(TrialSpec(method=method, **TINY), task, torch.device("cpu"), torch.float32)
    zero = build(TrialSpec(method=method, bias_init="zero", **TINY), task, torch.device("cpu"), torch.float32)
    biases = 0
    for (name, before), (_, after) in zip(default.named_parameters(), zero.named_parameters(), strict=True):
        if "bias" in name.rsplit(".", 1)[-1]:
            biases += 1
            assert torch.count_nonzero(after) == 0, name
        else:
            assert torch.equal(before, after), name
    assert biases >= 3
    with pytest.raises(ValueError, match="unknown bias_init 'small'; valid: default, zero"):
        TrialSpec(bias_init="small").validate()


def test_every_step_scored_names_the_tasks_whose_loss_scores_every_step():
    from sab.tasks import EVERY_STEP_SCORED

    for name, length in (("copy", 25), ("adding", 20), ("mnist1d", 40), ("permuted_digits", 64), ("pixel_digits", 64), ("pydoc_chars", 20)):
        task = make_task(name, length)
        assert (len(task.positions) == task.length) == (name in EVERY_STEP_SCORED), name


@pytest.mark.parametrize(("task", "seq_len"), [("mnist1d", 40), ("adding", 20)])
def test_auto_scorer_init_keeps_sabs_scorer_alive_where_only_the_last_step_is_scored(task, seq_len):
    """From w = 0 a last-step loss never reaches w (every score ties past k_top memories and the
    tie passes no gradient): `zero` leaves w exactly 0 after training, `auto` (uniform there) moves it."""
    from sab.methods import METHODS
    from sab.train import build, resolved_scorer_init

    assert resolved_scorer_init(task, "sab", "auto") == "uniform"
    assert resolved_scorer_init(task, "self_attention", "auto") == "zero"  # dense softmax: no tie
    assert resolved_scorer_init("copy", "sab", "auto") == "zero"
    weights = {}
    for init in ("zero", "auto"):
        spec = TrialSpec(
            task=task, method="sab", seq_len=seq_len, hidden_size=16, batch_size=8, k_trunc=4, k_att=4, k_top=2, scorer_init=init
        )
        data = make_task(task, seq_len)
        model = build(spec, data, torch.device("cpu"), torch.float32)
        start = model.scorer.weight.detach().clone()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        for _ in range(10):
            optimizer.zero_grad()
            METHODS["sab"].engine(model, data.sample(8, generator), data.loss, spec.k_trunc)
            optimizer.step()
        weights[init] = (start, model.scorer.weight.detach())
    assert torch.count_nonzero(weights["zero"][1]) == 0
    assert not torch.equal(weights["auto"][0], weights["auto"][1])


def test_a_cell_records_the_scorer_init_auto_resolved_to():
    from harness.cells import canonical, identity

    sab_copy = canonical(TrialSpec(task="copy", method="sab", seq_len=10))
    sab_adding = canonical(TrialSpec(task="adding", method="sab", seq_len=10))
    assert (sab_copy.scorer_init, sab_adding.scorer_init) == ("zero", "uniform")
    assert identity(TrialSpec(task="adding", method="sab", seq_len=10), "quick")["spec"]["scorer_init"] == "uniform"
    assert "scorer_init" not in identity(TrialSpec(task="adding", method="bptt", seq_len=10), "quick")["spec"]


def test_a_k_top_at_or_above_the_readable_memories_is_dense_and_the_note_says_so():
    """Copy at T = 20 is 40 steps; with k_att = 10 a step reads at most 3 memories, so k_top = 3 and
    5 train the same model (a softmax over all of them) and k_top = 2 does not."""
    base = dict(
        task="copy", seq_len=20, method="sab", hidden_size=8, batch_size=4, k_att=10, k_trunc=10, steps=4, eval_interval=2, eval_batches=1
    )
    curves = {k: [{m: v for m, v in p.items() if m != "elapsed_s"} for p in run_trial(TrialSpec(**base, k_top=k)).curve] for k in (2, 3, 5)}
    assert curves[3] == curves[5] and curves[2] != curves[3]
    length = make_task("copy", 20).length
    assert [bool(attention_note(TrialSpec(**base, k_top=k), length)) for k in (2, 3, 5)] == [False, True, True]
    assert "the 3 memories a step of a 40-step sequence can read" in attention_note(TrialSpec(**base, k_top=3), length)


def test_k_top_1_with_a_zero_scorer_never_moves_the_scorer_and_the_note_says_so():
    """One kept memory weighs relu(d1 - d2) / (relu(d1 - d2) + eps): with w = 0 every score ties, the
    weight is 0 and its relu passes no gradient, so the scorer stays at zero for good; k_top = 2 moves it."""
    from sab.credit import training_step
    from sab.methods import METHODS, build_model

    task = make_task("copy", 20)
    batch = task.sample(4, torch.Generator().manual_seed(0))
    scorer_grads = {}
    for k_top in (1, 2):
        torch.manual_seed(0)
        model = build_model("sab", task.input_size, 16, task.output_size, k_top=k_top, k_att=5, scorer_init="zero")
        training_step(METHODS["sab"].engine, model, torch.optim.SGD(model.parameters(), lr=0.0), batch, task.loss, 5)
        scorer_grads[k_top] = sum(p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith("scorer."))
    assert scorer_grads[1] == 0 and scorer_grads[2] > 0
    spec = dict(task="copy", seq_len=20, method="sab", k_att=5)
    assert "scorer never gets a gradient" in attention_note(TrialSpec(**spec, k_top=1), task.length)
    assert "only through the normaliser" in attention_note(TrialSpec(**spec, k_top=1, scorer_init="uniform"), task.length)
    assert attention_note(TrialSpec(**spec, k_top=2), task.length) == ""


@pytest.mark.parametrize("select", [False, True])
def test_a_late_blowup_is_diverged_unless_a_best_validation_model_was_kept(select):
    """The validation rule (sab.divergence) stops the trial at the evaluation after the fault. With
    select_on_validation the model of the first evaluation stands, as early stopping's does."""
    spec = TrialSpec(task="adding", method="bptt", seq_len=5, hidden_size=8, batch_size=4, steps=30, eval_interval=10, eval_batches=1)
    result = run_trial(TrialSpec(**{**spec.__dict__, "inject_fault": "blowup", "select_on_validation": select}))
    assert result.error.startswith("validation loss reached") and result.steps_done == 20
    if select:
        assert (result.status, result.stop_reason, result.selected_step) == ("ok", "diverged", 10)
        clean = run_trial(TrialSpec(**{**spec.__dict__, "steps": 10}))  # the same seed's model at step 10
        assert result.metrics["accuracy"] == clean.metrics["accuracy"] and result.metrics["mse"] == clean.metrics["mse"]
    else:
        assert (result.status, result.stop_reason) == ("diverged", "diverged")
