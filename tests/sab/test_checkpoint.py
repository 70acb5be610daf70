"""A trial stopped by a signal resumes from its checkpoint and ends exactly as an uninterrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from sab.train import TrialSpec, run_trial
from tests.conftest import ROOT, read_until

ARGS = ["--method", "sab", "--seq-len", "5", "--hidden-size", "8", "--batch-size", "4", "--steps", "400",
        "--eval-interval", "100", "--eval-batches", "1", "--k-trunc", "3", "--k-att", "2", "--k-top", "2"]  # fmt: skip


def _trial(extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sab.train", *ARGS, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_preempted_trial_resumes_to_the_same_metrics(tmp_path):
    checkpoint = tmp_path / "ck" / "trial.pt"
    uninterrupted = _trial([])
    want = json.loads(uninterrupted.communicate(timeout=300)[0])

    first = _trial(["--checkpoint-path", str(checkpoint), "--checkpoint-every", "1000"])
    read_until(first, lambda line: True, stream="stderr", stacks=False)  # the first progress line (step 100): training is under way
    first.send_signal(signal.SIGUSR2)  # preemption: save at the next step boundary, then stop
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGUSR2
    assert checkpoint.exists()

    resumed = _trial(["--checkpoint-path", str(checkpoint)])
    got = json.loads(resumed.communicate(timeout=300)[0])
    assert resumed.returncode == 0
    assert got["metrics"] == want["metrics"]
    assert got["steps_done"] == want["steps_done"] == 400
    assert not checkpoint.exists()  # removed once the trial is over


def test_sigterm_saves_and_training_goes_on(tmp_path):
    checkpoint = tmp_path / "trial.pt"
    trial = _trial(["--checkpoint-path", str(checkpoint)])
    read_until(trial, lambda line: True, stream="stderr", stacks=False)
    trial.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not checkpoint.exists() and trial.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    out, _ = trial.communicate(timeout=300)
    assert trial.returncode == 0 and json.loads(out)["steps_done"] == 400


def test_time_cap_counts_across_resumes(tmp_path):
    spec = TrialSpec(method="sab", seq_len=5, hidden_size=8, batch_size=4, steps=10**6, eval_interval=10**6, eval_batches=1,
                     time_limit_s=1.5, checkpoint_path=str(tmp_path / "c.pt"), checkpoint_every=50)  # fmt: skip
    import torch

    from sab.checkpoint import Checkpointer, training_state
    from sab.tasks import make_task
    from sab.train import _optimizer, build

    first = run_trial(spec)
    assert first.status == "timeout"
    # a checkpoint that already spent 1.4 s of a 1.5 s cap leaves ~0.1 s to the resumed run

    model = build(spec, make_task("copy", 5), torch.device("cpu"), torch.float32)
    optimizer = _optimizer(spec, model.parameters())
    generator = torch.Generator().manual_seed(0)
    result_fields = {"curve": [], "peak_saved_bytes": 0, "peak_held_bytes": 0, "peak_bytes": 0, "peak_rss_bytes": 0}
    Checkpointer(spec.checkpoint_path).save(
        training_state(model, optimizer, generator, 10, 1.4, {"timer": (0.0, 0.0, 10, 9), "result": result_fields})
    )
    resumed = run_trial(spec)
    assert resumed.status == "timeout"
    assert resumed.steps_done < first.steps_done


CONTINUED = dict(method="sab", seq_len=5, hidden_size=8, batch_size=4, eval_interval=20, eval_batches=1, k_trunc=3, k_att=2, k_top=2,
                 select_on_validation=True, transfer_lengths=(12,))  # fmt: skip


def _comparable(result) -> dict:
    """A result without what depends on the clock."""
    curve = [{k: v for k, v in point.items() if k != "elapsed_s"} for point in result.curve]
    return {"metrics": result.metrics, "curve": curve, "steps_done": result.steps_done, "selected_step": result.selected_step,
            "stop_reason": result.stop_reason, "status": result.status}  # fmt: skip


def test_a_longer_budget_continues_from_the_shorter_runs_final_state_to_the_same_result(tmp_path):
    kept = tmp_path / "states" / "60.pt"
    shorter = run_trial(TrialSpec(**CONTINUED, steps=60, final_state_path=str(kept)))
    assert shorter.status == "ok" and kept.exists()

    continued = run_trial(TrialSpec(**CONTINUED, steps=140, continue_from=str(kept)))
    from_scratch = run_trial(TrialSpec(**CONTINUED, steps=140))
    assert continued.continued_from_step == 60 and from_scratch.continued_from_step == 0
    assert _comparable(continued) == _comparable(from_scratch)  # training is deterministic: the same weights at every step
    assert [p["step"] for p in continued.curve] == [20, 40, 60, 80, 100, 120, 140]
    assert continued.train_seconds > shorter.train_seconds  # the shorter run's time counts: this is the time to 140 steps


def test_continuing_from_a_missing_state_starts_at_step_0(tmp_path):
    result = run_trial(TrialSpec(**CONTINUED, steps=20, continue_from=str(tmp_path / "none.pt")))
    assert result.status == "ok" and result.continued_from_step == 0 and result.steps_done == 20


def test_a_state_of_another_experiment_is_refused(tmp_path):
    kept = tmp_path / "20.pt"
    run_trial(TrialSpec(**CONTINUED, steps=20, final_state_path=str(kept)))
    other = run_trial(TrialSpec(**{**CONTINUED, "k_top": 1}, steps=40, continue_from=str(kept)))
    assert other.status == "error"
    assert "k_top is 2 there, 1 here" in other.error
    not_longer = run_trial(TrialSpec(**CONTINUED, steps=20, continue_from=str(kept)))
    assert not_longer.status == "error" and "not before this trial's steps=20" in not_longer.error


def test_a_continued_run_that_had_solved_the_task_stops_where_it_did(tmp_path):
    import torch

    kept = tmp_path / "40.pt"
    run_trial(TrialSpec(**CONTINUED, steps=40, solved_patience=1, final_state_path=str(kept)))
    state = torch.load(kept, weights_only=True)
    state["result"]["curve"][-1]["val_accuracy"] = 1.0  # as if validation had been perfect at step 40
    torch.save(state, kept)
    result = run_trial(TrialSpec(**CONTINUED, steps=100, solved_patience=1, continue_from=str(kept)))
    assert result.status == "ok" and result.stop_reason == "solved"
    assert result.steps_done == 40 and result.continued_from_step == 40 and len(result.curve) == 2


def test_a_kept_state_carries_the_loss_at_step_1(tmp_path):
    """Divergence is judged against the loss at step 1; a resumed or continued run used to take
    the loss at its own first step instead (harmless while that stays above the floor, wrong
    below it)."""
    import torch

    kept = tmp_path / "20.pt"
    run_trial(TrialSpec(**CONTINUED, steps=20, final_state_path=str(kept)))
    state = torch.load(kept, weights_only=True)
    assert state["first_loss"] > 1.0  # copy's cross-entropy over 10 symbols starts near log(10)


def test_a_cosine_schedule_ends_with_its_budget_so_its_state_is_not_continued(tmp_path):
    from sab.train import lr_at

    spec = TrialSpec(**CONTINUED, steps=40, lr=0.01, lr_schedule="cosine")
    assert lr_at(spec, 1) == 0.01 and lr_at(spec, 21) == 0.005 and 0 < lr_at(spec, 40) < 1e-4
    kept = tmp_path / "40.pt"
    cosine = run_trial(TrialSpec(**CONTINUED, steps=40, lr=0.01, lr_schedule="cosine", final_state_path=str(kept)))
    constant = run_trial(TrialSpec(**CONTINUED, steps=40, lr=0.01))
    assert cosine.status == constant.status == "ok"
    assert cosine.curve[-1]["train_loss"] != constant.curve[-1]["train_loss"]  # the schedule reached the optimiser
    longer = run_trial(TrialSpec(**CONTINUED, steps=80, lr=0.01, lr_schedule="cosine", continue_from=str(kept)))
    assert longer.status == "error" and "steps is 40 there, 80 here" in longer.error


def test_a_state_kept_before_a_field_existed_reads_it_as_its_default(tmp_path):
    import torch

    kept = tmp_path / "20.pt"
    run_trial(TrialSpec(**CONTINUED, steps=20, final_state_path=str(kept)))
    state = torch.load(kept, weights_only=True)
    del state["experiment"]["lr_schedule"]  # as a state kept before lr_schedule was a field
    torch.save(state, kept)
    result = run_trial(TrialSpec(**CONTINUED, steps=40, continue_from=str(kept)))
    assert result.status == "ok" and result.continued_from_step == 20
