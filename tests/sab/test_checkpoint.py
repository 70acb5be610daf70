"""A trial stopped by a signal resumes from its checkpoint and ends exactly as an uninterrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from sab.train import TrialSpec, run_trial
from tests.conftest import ROOT

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
    first.stderr.readline()  # the first progress line (step 100): training is under way
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
    trial.stderr.readline()
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
