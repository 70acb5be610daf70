"""The graphed training step (sab.graphs, issue #13 item 3), tested on the CPU: no GPU was lent to
the project, so the capture itself is untested; what a capture needs is tested here. After its
warm-up a step reads nothing back from the device (a read-back cannot be recorded in a CUDA graph),
a graphed trial trains exactly as an eager one, and a batch the graph cannot replay is refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from benchmarks.launches import _Counter
from sab.graphs import WARMUP, GraphedStep, graphs_wanted
from sab.methods import METHODS
from sab.tasks import make_task
from sab.train import TrialSpec, build, run_trial

TINY = dict(task="copy", seq_len=5, hidden_size=8, batch_size=4, eval_batches=1, k_trunc=3, k_att=2, k_top=2, steps=40, eval_interval=20)


@pytest.mark.parametrize("method", ["sab", "tbptt", "bptt_cell", "bptt", "self_attention", "sab_reference"])
def test_a_graphed_step_reads_nothing_back_after_its_warm_up(method, gpu_path, monkeypatch):
    """Counted with a TorchDispatchMode over the engine and the clip (Adam's step counters are the
    optimizer's: `capturable=True` keeps them on a GPU), plus every tolist() and numpy(). Without the
    cache of scored positions (sab.model.scored_steps), every engine but bptt read them back each step."""
    spec = TrialSpec(method=method, cuda_graphs="on", **TINY)
    task = make_task(spec.task, spec.seq_len)
    model = build(spec, task, torch.device("cpu"), torch.float32)
    assert model.static_shapes if METHODS[method].replays else True, "a graphed sab step runs the shape-static path"
    engine = METHODS[method].engine

    def engine_and_clip(batch, meter=None):
        model.zero_grad(set_to_none=True)
        out = engine(model, batch, task.loss, spec.k_trunc)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        return out

    stepper = GraphedStep(engine_and_clip, torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(0)
    for _ in range(WARMUP):
        stepper.load(task.sample(4, generator))
        stepper.run()
    stepper.load(task.sample(4, generator))
    host_reads = []  # tolist() and numpy() read a tensor without an ATen op: the dispatch mode cannot see them
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=original, _n=name, **k: host_reads.append(_n) or _f(self, *a, **k))
    counter = _Counter()
    with counter:
        stepper.run()
    assert counter.counts.syncs == 0 and host_reads == [], (method, counter.counts, host_reads)
    assert counter.counts.compute > 0


@pytest.mark.parametrize("method", ["sab", "tbptt", "bptt"])
def test_a_graphed_trial_trains_as_an_eager_one_and_records_what_ran(method):
    graphed = run_trial(TrialSpec(method=method, cuda_graphs="on", **TINY))
    eager = run_trial(TrialSpec(method=method, cuda_graphs="off", static_shapes=True, **TINY))
    assert graphed.status == eager.status == "ok", graphed.traceback
    assert graphed.metrics == eager.metrics and graphed.curve[-1]["train_loss"] == eager.curve[-1]["train_loss"]
    assert graphed.cuda_graphs == "eager (no CUDA device: not captured)" and eager.cuda_graphs == "off"
    assert graphed.static_shapes == (method == "sab")
    assert run_trial(TrialSpec(method=method, **TINY)).cuda_graphs == "off"  # auto: off without CUDA


def test_a_batch_the_graph_cannot_replay_is_refused():
    task = make_task("copy", 5)
    stepper = GraphedStep(lambda batch, meter=None: None, torch.device("cpu"), torch.float32)
    batch = task.sample(4, torch.Generator().manual_seed(0))
    stepper.load(batch)
    static = stepper.static.inputs
    stepper.load(task.sample(4, torch.Generator().manual_seed(1)))
    assert stepper.static.inputs is static and not torch.equal(static, batch.inputs)  # copied into, not replaced
    with pytest.raises(ValueError, match="batches of one shape"):
        stepper.load(task.sample(3, torch.Generator()))
    with pytest.raises(ValueError, match="same scored positions"):
        stepper.load(dataclasses.replace(batch, positions=batch.positions + 1))


def test_cuda_graphs_choices_are_checked_in_one_line():
    assert graphs_wanted("auto", torch.device("cpu")) is False and graphs_wanted("on", torch.device("cpu")) is True
    assert graphs_wanted("auto", torch.device("cuda")) is True and graphs_wanted("off", torch.device("cuda")) is False
    with pytest.raises(ValueError, match=r"unknown cuda_graphs 'yes'; valid: auto, on, off"):
        TrialSpec(cuda_graphs="yes").validate()
