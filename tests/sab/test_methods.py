"""The method registry is the one place a method is defined: a new method is one entry plus its
engine, and nothing outside sab/methods.py branches on method names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from sab import methods
from sab.credit import StepResult
from sab.methods import KNOBS, METHODS, Footprint, Knobs, Method, ModelShape
from sab.train import TrialSpec, main, run_trial, spec_fields

ROOT = Path(__file__).resolve().parents[2]
NAMES = "|".join(METHODS)


def _frozen_lstm_engine(model, batch, loss_fn, k_trunc, meter=None) -> StepResult:
    """A toy method: the LSTM runs without a graph and only the readout learns."""
    with torch.no_grad():
        out, _ = model.lstm(batch.inputs)
    logits = model.readout(out[:, batch.positions])
    loss = loss_fn(logits, batch.targets).sum() / batch.count
    loss.backward()
    return StepResult(loss.detach(), logits.detach())


@pytest.fixture
def toy_method(monkeypatch):
    """Register `frozen_lstm` the way a contributor would: one Method entry, nothing else."""
    lstm = METHODS["bptt"]
    entry = Method("frozen_lstm", "LSTM frozen, readout trained", lstm.build, _frozen_lstm_engine, (), lambda f: f.lstm_step_bytes)
    monkeypatch.setitem(METHODS, "frozen_lstm", entry)
    return entry


def test_a_new_method_needs_only_its_registry_entry_and_engine(toy_method, tmp_path, capsys):
    from benchmarks.cost import CostConfig, predicted_bytes
    from harness.cells import Cell, canonical

    spec = TrialSpec(task="copy", method="frozen_lstm", seq_len=5, steps=6, eval_interval=3, eval_batches=1, batch_size=4, k_top=7)
    result = run_trial(spec)
    assert result.status == "ok", result.error
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.steps_done == 6
    assert canonical(spec).k_top == TrialSpec().k_top  # a knob it does not read leaves the cell's identity
    assert Cell("s", "quick", canonical(spec)).name == "frozen_lstm"
    assert predicted_bytes(CostConfig("frozen_lstm", 100)) > 0  # the benchmarks read its memory model
    assert main(["--method", "frozen_lstm", "--seq-len", "5", "--steps", "2", "--eval-interval", "1", "--batch-size", "2"]) == 0
    assert '"status": "ok"' in capsys.readouterr().out


def test_the_toy_engine_trains_only_the_readout(toy_method):
    from sab.tasks import make_task

    task = make_task("copy", 5)
    model = toy_method.build(ModelShape(task.input_size, 8, task.output_size), Knobs())
    batch = task.sample(4, torch.Generator().manual_seed(0))
    toy_method.engine(model, batch, task.loss, 5)
    assert model.readout.weight.grad.abs().sum() > 0
    assert model.lstm.weight_hh_l0.grad is None


def test_knobs_are_the_method_fields_of_the_trial_spec_with_the_same_defaults():
    assert spec_fields("method") == tuple(sorted(KNOBS, key=spec_fields("method").index))
    assert set(spec_fields("method")) == set(KNOBS)
    defaults = TrialSpec()
    assert all(getattr(defaults, name) == getattr(Knobs(), name) for name in KNOBS)
    for m in METHODS.values():
        assert set(m.reads) <= set(KNOBS), m.name


def test_every_method_builds_trains_and_has_a_memory_model():
    x = torch.randn(2, 12, 3)
    for m in METHODS.values():
        model = m.build(ModelShape(3, 8, 4), Knobs(k_top=2, k_att=3))
        batch_loss = m.engine(model, _batch(x), _mse, 4).loss
        assert batch_loss == batch_loss, m.name
        assert m.memory_bytes(Footprint(2, 8, 12, Knobs(k_top=2, k_att=3))) > 0, m.name


def test_attention_slots_follow_the_method_not_its_name():
    """sab_reference writes memories every k_att steps like sab (its map marked slot 1 per step before)."""
    knobs = Knobs(k_att=7)
    assert METHODS["sab_reference"].memory_stride(knobs) == METHODS["sab"].memory_stride(knobs) == 7
    assert METHODS["self_attention"].memory_stride(knobs) == 1
    assert METHODS["bptt"].memory_stride is None


def test_no_method_name_branches_outside_the_registry():
    """An if-chain on method names outside sab/methods.py is a second list that can disagree."""
    branch = re.compile(
        rf"""(==|!=)\s*["']({NAMES})["']|["']({NAMES})["']\s*(==|!=|not in|in)\s|\b(if|elif)\b[^#]*\bin\s*\(\s*["']({NAMES})["']"""
    )
    offenders = []
    for folder in ("sab", "harness", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "sab" / "methods.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if branch.search(line.split("#", 1)[0]):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_registry_entries_are_frozen_records():
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS["sab"].reads = ()  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown method 'nope'; valid: bptt"):
        methods.method("nope")


def _batch(x):
    from sab.tasks.base import Batch

    return Batch(x, torch.randn(x.shape[0], x.shape[1], 4), torch.arange(x.shape[1]))


def _mse(logits, targets):
    return ((logits - targets) ** 2).mean(-1)


def test_tasks_import_no_engine():
    import subprocess
    import sys

    code = "import sys, sab.tasks; print(sorted(m for m in ('sab.credit', 'sab.model', 'sab.replay', 'sab.transformer', 'sab.methods') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_driver_never_asks_which_executor_it_has():
    source = (ROOT / "harness" / "sweep.py").read_text()
    assert not re.search(r"executor\.name\s*[!=]=|getattr\(executor|isinstance\([^)]*Executor\)", source)
