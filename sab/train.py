"""One trial: train a method on a task, evaluate it, measure its cost.

    python -m sab.train --task copy --method sab --seq-len 30 --steps 2000
    result = run_trial(TrialSpec(task="copy", method="sab", seq_len=30), on_report=print)

A trial never raises for what happens while it runs: the result's status says how it ended
(ok, diverged, oom, timeout, error), with partial metrics kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from sab.checkpoint import Checkpointer, restore, training_state
from sab.credit import training_step
from sab.divergence import describe_blowup, training_diverged, validation_blowup
from sab.graphs import CUDA_GRAPHS_CHOICES, GraphedStep, graphs_wanted
from sab.measure import MemoryMeter, StepTimer, cuda_peak, full_float32, rss_peak_bytes, rss_peak_reset
from sab.methods import METHOD_NAMES, METHODS, Knobs, ModelShape
from sab.replay import set_engine_options
from sab.sparse_attention import SCORER_INITS
from sab.tasks import EVERY_STEP_SCORED, TASKS, Task, make_task

VAL_SEED, TEST_SEED = 1_000_003, 2_000_003
"""Generator seeds of the held-out validation and test sets (the same for every trial)."""

RESULT_STATUSES = ("ok", "oom", "diverged")
FAILURE_STATUSES = ("error", "timeout")
OPTIMIZERS = ("adam", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")
"""`cosine`: lr x (1 + cos(pi (step - 1) / steps)) / 2, from the full lr at step 1 towards 0 at the
budget's end; it depends on `steps`, so such a run is not continued to a longer budget."""
FAULTS = ("", "nan", "oom", "sleep", "raise", "exit", "transfer_oom", "blowup")
"""Faults a trial can inject into itself, so tests drive the harness's failure paths for real
(`blowup`: the readout's weights x 1000 before every evaluation after the first, a late blow-up that
only the validation rule of sab.divergence sees)."""
DTYPES = ("float32", "float64")
SCORER_INIT_CHOICES = ("auto", *SCORER_INITS)
"""`auto` resolves per task (`resolved_scorer_init`); the others are the model's own initialisations."""
BIAS_INITS = ("default", "zero")
"""`default`: each layer's own initialisation (PyTorch's U(±1/√fan_in) for LSTM and Linear biases);
`zero`: every bias of the model zero at start, for every method alike (sweeps/sab_defaults.yaml)."""


ROLES = ("experiment", "method", "execution")
"""What a TrialSpec field is to a cell's identity: `experiment` fields enter it (when not at their
default), `method` fields only when the cell's method reads them (sab.methods), `execution`
fields (threads, paths, time caps) never do: they change how a trial runs, not what it measures."""


def _field(default, help: str, role: str = "experiment", choices: tuple[str, ...] = (), hidden: bool = False):
    """A TrialSpec field with what the CLI and the harness derive from it: its help line, its role
    in a cell's identity, the values it allows, and whether users see it (test hooks do not)."""
    return field(default=default, metadata={"help": help, "role": role, "choices": choices, "hidden": hidden})


_KNOB = Knobs()


@dataclass(frozen=True)
class TrialSpec:
    """Everything that defines one trial; frozen and hashable (a harness cell holds one)."""

    task: str = _field("copy", "task name", choices=TASKS)
    method: str = _field("sab", "credit assignment method (sab.methods)", choices=METHOD_NAMES)
    seq_len: int = _field(30, "task length parameter T (copy: delay; L = T + 20)")
    hidden_size: int = _field(64, "LSTM hidden units H")
    attn_size: int | None = _field(_KNOB.attn_size, "scorer width A (default H)", role="method")
    scorer_init: str = _field(
        _KNOB.scorer_init,
        "scorer initialisation: uniform (w ~ U(±A^-1/2)), zero (w = 0, b = 0), or auto: zero where every step is scored, else uniform",
        role="method",
        choices=SCORER_INIT_CHOICES,
    )
    bias_init: str = _field("default", "biases at start: default (each layer's own) or zero (every bias, every method)", choices=BIAS_INITS)
    k_trunc: int = _field(_KNOB.k_trunc, "local backprop window: the state is detached every k_trunc steps", role="method")
    k_top: int = _field(_KNOB.k_top, "memories attended per step (sab)", role="method")
    k_att: int = _field(_KNOB.k_att, "a memory is written every k_att steps (sab)", role="method")
    replay_group: int | None = _field(
        None, "sab: segments replayed forward at once (default: 1 on CPU, 16 on CUDA; sab.replay)", role="execution"
    )
    static_shapes: bool = _field(
        False,
        "sab: the same shapes and work at every step (padded bank, every segment replayed): a CUDA graph's condition",
        role="execution",
    )
    cuda_graphs: str = _field(
        "auto",
        "each training step captured once as a CUDA graph and replayed (auto: on CUDA; on also runs sab's static_shapes path)",
        role="execution",
        choices=CUDA_GRAPHS_CHOICES,
    )
    batch_size: int = _field(32, "sequences per batch")
    lr: float = _field(1e-3, "learning rate")
    optimizer: str = _field("adam", "optimizer", choices=OPTIMIZERS)
    lr_schedule: str = _field("constant", "lr over training: constant, or cosine (to ~0 at the last step)", choices=LR_SCHEDULES)
    clip: float = _field(1.0, "gradient-norm clip (0: none)")
    steps: int = _field(1000, "training steps (one batch each)")
    eval_interval: int = _field(200, "steps between validation evaluations")
    eval_batches: int = _field(4, "batches of the validation and test sets")
    solved_patience: int = _field(0, "stop once validation accuracy is 1.0 at this many evaluations in a row (0: never)")
    select_on_validation: bool = _field(
        False, "report test and transfer figures from the weights of the best validation evaluation, not the last step's"
    )
    seed: int = _field(0, "seed of initialisation and training data")
    device: str = _field("cpu", "cpu, cuda, cuda:N or auto (CUDA when present)")
    threads: int = _field(1, "torch CPU threads of this trial", role="execution")
    data_dir: str | None = _field(None, "folder of the dataset files (file-backed tasks)", role="execution")
    permutation_seed: int = _field(0, "seed of the fixed pixel permutation (permuted tasks)")
    transfer_lengths: tuple[int, ...] = _field((), "also evaluate (no_grad) at these T")
    weights_path: str | None = _field(None, "save the trained weights here", role="execution")
    time_limit_s: float | None = _field(None, "stop training after this many seconds: status timeout", role="execution")
    dtype: str = _field("float32", "floating-point type of the model and data", choices=DTYPES)
    checkpoint_path: str | None = _field(None, "save/resume the training state here", role="execution")
    checkpoint_every: int = _field(0, "steps between checkpoints (0: only when signalled)", role="execution")
    final_state_path: str | None = _field(
        None,
        "keep the training state after the last step here, for a longer budget of the same experiment to continue from",
        role="execution",
    )
    continue_from: str | None = _field(
        None, "start from this final state of the same experiment at fewer steps, if the file exists (else from step 0)", role="execution"
    )
    inject_fault: str = _field(
        "", "test hook: fail on purpose (nan, oom, sleep, raise, exit, transfer_oom, blowup)", choices=FAULTS, hidden=True
    )

    def validate(self) -> TrialSpec:
        """Raise one clear ValueError naming the first bad value and what is allowed."""
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; valid: {', '.join(TASKS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid: {', '.join(METHOD_NAMES)}")
        if self.scorer_init not in SCORER_INIT_CHOICES:
            raise ValueError(f"unknown scorer_init {self.scorer_init!r}; valid: {', '.join(SCORER_INIT_CHOICES)}")
        if self.bias_init not in BIAS_INITS:
            raise ValueError(f"unknown bias_init {self.bias_init!r}; valid: {', '.join(BIAS_INITS)}")
        if self.cuda_graphs not in CUDA_GRAPHS_CHOICES:
            raise ValueError(f"unknown cuda_graphs {self.cuda_graphs!r}; valid: {', '.join(CUDA_GRAPHS_CHOICES)}")
        if not isinstance(self.solved_patience, int) or self.solved_patience < 0:
            raise ValueError(f"solved_patience must be an integer >= 0, got {self.solved_patience!r}")
        for name in (
            "seq_len",
            "hidden_size",
            "k_trunc",
            "k_top",
            "k_att",
            "batch_size",
            "steps",
            "eval_interval",
            "eval_batches",
            "threads",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.replay_group is not None and (
            isinstance(self.replay_group, bool) or not isinstance(self.replay_group, int) or self.replay_group < 1
        ):
            raise ValueError(f"replay_group must be an integer >= 1 or None (the device's default), got {self.replay_group!r}")
        for name in ("static_shapes", "select_on_validation"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.attn_size is not None and self.attn_size < 1:
            raise ValueError(f"attn_size must be >= 1 or None, got {self.attn_size!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if self.lr_schedule != "constant" and self.cuda_graphs == "on":
            raise ValueError(f"cuda_graphs='on' captures the lr once; lr_schedule={self.lr_schedule!r} needs cuda_graphs off or auto")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        for name, low in (("lr", "> 0"), ("clip", ">= 0")):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not (value > 0 or (low == ">= 0" and value == 0))
            ):
                raise ValueError(f"{name} must be a finite number {low}, got {value!r}")
        if self.time_limit_s is not None and (
            not isinstance(self.time_limit_s, (int, float)) or not math.isfinite(self.time_limit_s) or self.time_limit_s <= 0
        ):
            raise ValueError(f"time_limit_s must be a finite number of seconds > 0 (or unset), got {self.time_limit_s!r}")
        if any(t < 1 for t in self.transfer_lengths):
            raise ValueError(f"transfer_lengths must all be >= 1, got {self.transfer_lengths!r}")
        if self.inject_fault not in FAULTS:
            raise ValueError(f"unknown inject_fault {self.inject_fault!r}; valid: {', '.join(repr(f) for f in FAULTS)}")
        if not (self.device in ("cpu", "auto") or self.device.startswith("cuda")):
            raise ValueError(f"unknown device {self.device!r}; valid: cpu, auto, cuda, cuda:N")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> TrialSpec:
        """A spec from its plain-data form (`dataclasses.asdict`, JSON): lists become tuples."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass
class TrialResult:
    """How a trial ended, what it scored and what it cost."""

    status: str = "ok"
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    steps_done: int = 0
    stop_reason: str = ""  # steps (the budget ran out), solved (validation accuracy 1.0, see solved_patience), diverged (an ok trial's best model kept), or the failure
    train_seconds: float = 0.0
    seconds_per_step: float = float("nan")
    tokens_per_second: float = float("nan")
    peak_saved_bytes: int = 0
    peak_held_bytes: int = 0
    peak_bytes: int = 0
    peak_rss_bytes: int = 0
    cuda_max_allocated_bytes: int = 0
    cuda_max_reserved_bytes: int = 0
    device: str = "cpu"
    device_name: str = "cpu"
    threads: int = 1
    replay_group: int = 0  # the sab engine's, resolved for the device (0: the method has none)
    static_shapes: bool = False  # the sab engine ran its shape-static path
    cuda_graphs: str = "off"  # off, or how the graphed steps ran: captured, eager (no CUDA device), failed: why
    selected_step: int = 0  # the evaluation whose weights gave the final figures (select_on_validation; 0: the last step's)
    continued_from_step: int = 0  # the step of the shorter run's final state this trial continued (continue_from; 0: from step 0)
    torch_version: str = torch.__version__
    attention: list[list[float]] = field(default_factory=list)  # (L, n_mem) weights of one test sequence (attention models)
    attention_marks: dict = field(default_factory=dict)  # what the task says its map should mark (Task.attention_marks)
    error_type: str = ""
    error: str = ""
    traceback: str = ""

    def to_dict(self) -> dict:
        """A JSON-safe dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrialResult:
        """A result from `to_dict`'s form (JSON written by a trial process or job); keys that are
        not fields are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU; a CUDA request without CUDA is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; valid: cpu, auto")
    return device


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA and CPU allocation failures, however torch or Python spells them."""
    oom_types = tuple(
        t for t in (MemoryError, getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if t
    )
    if isinstance(error, oom_types):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _optimizer(spec: TrialSpec, params, capturable: bool = False) -> torch.optim.Optimizer:
    """The spec's optimizer; `capturable` keeps Adam's step counters on the device (a CUDA graph's need)."""
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, capturable=capturable)
    if spec.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=spec.lr)
    return torch.optim.SGD(params, lr=spec.lr, momentum=0.9)


def _to(batch, device: torch.device, dtype: torch.dtype):
    inputs = batch.inputs.to(device=device, dtype=dtype)
    targets = batch.targets.to(device=device, dtype=dtype if batch.targets.is_floating_point() else batch.targets.dtype)
    return dataclasses.replace(batch, inputs=inputs, targets=targets, positions=batch.positions.to(device))


def evaluation_set(task: Task, spec: TrialSpec, split: str) -> list:
    """The fixed validation or test set of `eval_batches` batches (held-out seeds or data splits)."""
    return task.evaluation(split, spec.batch_size, spec.eval_batches, VAL_SEED if split == "val" else TEST_SEED)


@torch.no_grad()
def evaluate(model, task: Task, batches: list, device: torch.device, dtype: torch.dtype, breakdown: bool = False) -> dict[str, float]:
    """Mean metrics of the model over batches, under no_grad (the inference forward); with
    `breakdown`, also the task's breakdown of the metric (the final test figures only)."""
    totals: dict[str, float] = {}
    for batch in batches:
        batch = _to(batch, device, dtype)
        logits = model.infer(batch.inputs, batch.positions)
        figures = task.metrics(logits, batch.targets)
        if breakdown:
            figures.update(task.breakdown(logits, batch.targets))
        for key, value in figures.items():
            totals[key] = totals.get(key, 0.0) + value / len(batches)
    return totals


def build(spec: TrialSpec, task: Task, device: torch.device, dtype: torch.dtype):
    """The seeded model of a spec, on its device and dtype (with the replay group of its device)."""
    torch.manual_seed(spec.seed)
    model = build_model(spec, task).to(device=device, dtype=dtype)
    if METHODS[spec.method].replays:
        set_engine_options(model, device, spec.replay_group, spec.static_shapes, graphs_wanted(spec.cuda_graphs, device))
    return model


def resolved_scorer_init(task: str, method: str, scorer_init: str) -> str:
    """The scorer initialisation a spec's `scorer_init` means for its task and method.

    `auto` is `zero` (chosen on copy in sweeps/sab_defaults.yaml) except for the top-k methods on
    tasks whose loss scores the last step only, where it is `uniform`: there, w = 0 ties every
    score once more than k_top memories exist, the sparsifier's relu passes no gradient at the
    tie, and no scored step lies in the softmax phase, so w stays 0 for good and SAB trains as
    truncated BPTT (MNIST-1D, 2000 steps: test 0.21 / 0.18 / 0.11 against 0.81 / 0.83 / 0.84 from
    uniform; sweeps/cifar10_local.yaml). Dense softmax attention has no such tie.
    """
    if scorer_init != "auto":
        return scorer_init
    sparse = "k_top" in METHODS[method].reads
    return "uniform" if sparse and task not in EVERY_STEP_SCORED else "zero"


def build_model(spec: TrialSpec, task: Task) -> torch.nn.Module:
    """The (unseeded) model of a spec's method for a task's sizes, its biases as `bias_init` says."""
    knobs = dataclasses.replace(Knobs.of(spec), scorer_init=resolved_scorer_init(spec.task, spec.method, spec.scorer_init))
    model = METHODS[spec.method].build(ModelShape(task.input_size, spec.hidden_size, task.output_size), knobs)
    if spec.bias_init == "zero":  # after the draws: every weight stays as the default draws it
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "bias" in name.rsplit(".", 1)[-1]:  # bias, bias_ih_l0, in_proj_bias
                    parameter.zero_()
    return model


def run_trial(spec: TrialSpec, on_report: Callable[[dict], None] | None = None) -> TrialResult:
    """Train, evaluate (also at the transfer lengths) and measure one trial; never raises for the trial's own failures."""
    result = TrialResult(threads=spec.threads)
    try:
        spec.validate()
        _run(spec, result, on_report or (lambda _: None))
    except Exception as error:  # every failure becomes a status; the sweep goes on
        result.status = "oom" if is_out_of_memory(error) else "error"
        result.error_type = type(error).__name__
        result.error = str(error)[:2000]
        result.traceback = traceback.format_exc()[-4000:]
    return result


def _run(spec: TrialSpec, result: TrialResult, report: Callable[[dict], None]) -> None:
    torch.set_num_threads(spec.threads)
    full_float32()  # the same float32 for every method (cuDNN's LSTM would otherwise use TF32)
    device = resolve_device(spec.device)
    dtype = getattr(torch, spec.dtype)
    result.device = str(device)
    result.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    task = make_task(spec.task, spec.seq_len, spec.data_dir, spec.permutation_seed)
    model = build(spec, task, device, dtype)
    result.replay_group = getattr(model, "replay_group", 0)
    result.static_shapes = getattr(model, "static_shapes", False)
    engine = METHODS[spec.method].engine
    graphed = graphs_wanted(spec.cuda_graphs, device) and spec.lr_schedule == "constant"  # a graph would keep the first lr
    optimizer = _optimizer(spec, model.parameters(), capturable=graphed and device.type == "cuda")
    stepper = _Stepper(spec, task, model, engine, optimizer, device, dtype, graphed)
    generator = torch.Generator().manual_seed(spec.seed)
    val_set, test_set = evaluation_set(task, spec, "val"), evaluation_set(task, spec, "test")
    timer = StepTimer(device)
    checkpointer = Checkpointer(spec.checkpoint_path, spec.checkpoint_every)
    first_step, elapsed_before, first_loss = 1, 0.0, None
    saved, source = checkpointer.load(), spec.checkpoint_path  # a preempted run of this trial comes first
    if saved is None and spec.continue_from and os.path.exists(spec.continue_from):
        saved, source = continuation(spec), spec.continue_from
        saved["result"]["continued_from_step"] = saved["step"]
    if saved is not None:
        restore(saved, model, optimizer, generator)
        first_step, elapsed_before, first_loss = saved["step"] + 1, saved["elapsed"], saved.get("first_loss")
        timer.total_seconds, timer.timed_seconds, timer.steps, timer.timed_steps = saved["timer"]
        for key, value in saved["result"].items():
            setattr(result, key, value)
        result.steps_done = saved["step"]
        if _solved(result.curve, spec.solved_patience):  # a continued run that had solved the task stops where it did
            result.stop_reason, first_step = "solved", spec.steps + 1
        print(f"resumed from {source} at step {saved['step']}", file=sys.stderr, flush=True)
    best = saved.get("best") if saved is not None else None  # (score, step, weights) of the best validation so far
    rss_before = rss_peak_reset()
    started = time.monotonic() - elapsed_before
    checkpointer.listen()
    try:
        with cuda_peak(device) as cuda:
            worst = None  # the largest training loss since the start, kept on the device
            for step in range(first_step, spec.steps + 1):
                if spec.lr_schedule != "constant":
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(spec, step)  # a Python float: no device work
                out = _train_step(spec, step, task, stepper, generator, timer, result)
                result.steps_done = step
                worst = out.loss if worst is None else torch.maximum(worst, out.loss)  # NaN propagates
                over_time = spec.time_limit_s is not None and time.monotonic() - started > spec.time_limit_s
                evaluating = step % spec.eval_interval == 0 or step == spec.steps or over_time
                if first_loss is None:  # the loss at step 1 (a resumed run keeps its own)
                    first_loss = float(out.loss)
                    first_loss = first_loss if math.isfinite(first_loss) else math.inf
                if evaluating or step == first_step:  # the loss is read back here only, not every step
                    highest = float(worst)
                    if training_diverged(highest, first_loss):
                        _diverged(result, best, f"training loss reached {highest:.4g} by step {step} (it started at {first_loss:.4g})")
                        break
                if evaluating:
                    timer.settle()
                    if spec.inject_fault == "blowup" and result.curve:
                        _blow_up(model)
                    point = {"step": step, "train_loss": float(out.loss), "elapsed_s": time.monotonic() - started}
                    point.update({f"val_{k}": v for k, v in evaluate(model, task, val_set, device, dtype).items()})
                    result.curve.append(point)
                    report(point)
                    blowup = validation_blowup((p["step"], p["val_loss"]) for p in result.curve if "val_loss" in p)
                    if blowup is not None:
                        _diverged(result, best, describe_blowup(blowup))
                        break
                    if spec.select_on_validation:
                        best = _better(best, point, model)
                    if _solved(result.curve, spec.solved_patience):
                        result.stop_reason = "solved"
                        break
                if over_time:
                    result.status = "timeout"
                    result.error = f"time limit of {spec.time_limit_s} s reached after {step} of {spec.steps} steps"
                    break
                if checkpointer.due(step) and step < spec.steps:
                    timer.settle()
                    checkpointer.save(_state(spec, model, optimizer, generator, step, started, timer, result, best, first_loss))
    finally:
        checkpointer.restore_handlers()
    timer.settle()
    if spec.final_state_path and result.status == "ok":
        keep_final_state(spec, _state(spec, model, optimizer, generator, result.steps_done, started, timer, result, best, first_loss))
    result.cuda_graphs = stepper.state
    result.stop_reason = result.stop_reason or ("steps" if result.status == "ok" else result.status)
    result.peak_rss_bytes = max(result.peak_rss_bytes, rss_peak_bytes() - rss_before)
    result.cuda_max_allocated_bytes = cuda.get("cuda_max_allocated_bytes", 0)
    result.cuda_max_reserved_bytes = cuda.get("cuda_max_reserved_bytes", 0)
    result.train_seconds = timer.total_seconds
    result.seconds_per_step = timer.seconds_per_step
    result.tokens_per_second = spec.batch_size * task.length / result.seconds_per_step
    if best is not None and result.status == "ok":
        model.load_state_dict(best[2])
        result.selected_step = best[1]
    _final_metrics(spec, task, model, result, val_set, test_set, device, dtype)
    if spec.weights_path:
        save_weights(model, spec, spec.weights_path)
    checkpointer.remove()


def _state(spec, model, optimizer, generator, step, started, timer, result, best, first_loss) -> dict:
    """The training state after `step`: what a preempted trial resumes from and what a longer
    budget of the same experiment continues from."""
    timing = (timer.total_seconds, timer.timed_seconds, timer.steps, timer.timed_steps)
    extra = {
        "timer": timing, "result": {k: getattr(result, k) for k in _RESUMED_FIELDS}, "best": best, "first_loss": first_loss,
        "experiment": experiment(spec),
    }  # fmt: skip
    return training_state(model, optimizer, generator, step, time.monotonic() - started, extra)


def lr_at(spec: TrialSpec, step: int) -> float:
    """The learning rate of training step `step` (1-based) under the spec's schedule."""
    if spec.lr_schedule == "cosine":
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / spec.steps))
    return spec.lr


def budget_shapes_training(spec: TrialSpec) -> bool:
    """Whether the step budget changes what happens at each step (a schedule that ends with the
    budget), so a longer budget cannot continue a shorter one."""
    return spec.lr_schedule != "constant"


def experiment(spec: TrialSpec) -> dict:
    """What a continued trial must share with the run it continues: every field but the step
    budget (unless the budget shapes training) and the execution details, as plain data."""
    return {
        f.name: list(value) if isinstance(value, tuple) else value
        for f in fields(spec)
        if f.metadata["role"] != "execution" and (f.name != "steps" or budget_shapes_training(spec))
        for value in [getattr(spec, f.name)]
    }


def continuation(spec: TrialSpec) -> dict:
    """The final state at `spec.continue_from`, checked to be this experiment's at fewer steps."""
    saved = Checkpointer(spec.continue_from).load()
    # a field added since the state was kept is read as its default (which keeps old behaviour)
    theirs, ours = {**experiment(TrialSpec()), **saved.get("experiment", {})}, experiment(spec)
    differing = sorted(k for k in ours.keys() | theirs.keys() if theirs.get(k) != ours.get(k))
    if differing:
        name = differing[0]
        raise ValueError(
            f"continue_from {spec.continue_from} holds another experiment's state: {name} is {theirs.get(name)!r} there, "
            f"{ours.get(name)!r} here; valid: a final state of this experiment at fewer steps"
        )
    if saved["step"] >= spec.steps:
        raise ValueError(f"continue_from {spec.continue_from} is at step {saved['step']}, not before this trial's steps={spec.steps}")
    return saved


def keep_final_state(spec: TrialSpec, state: dict) -> None:
    """Save the state after the last step; a failed save costs a later budget its head start, not this trial its result."""
    try:
        Checkpointer(spec.final_state_path).save(state)
    except OSError as error:
        print(f"final state not kept at {spec.final_state_path}: {error}", file=sys.stderr, flush=True)


def _better(best: tuple | None, point: dict[str, float], model) -> tuple:
    """The best (score, step, weights) after an evaluation: validation accuracy where the task has
    one, else the lowest validation loss; ties keep the earlier."""
    score = point["val_accuracy"] if "val_accuracy" in point else -point.get("val_loss", math.inf)
    score = score if math.isfinite(score) else -math.inf
    if best is not None and not score > best[0]:
        return best
    return score, point["step"], {k: v.detach().clone() for k, v in model.state_dict().items()}


def _solved(curve: list[dict[str, float]], patience: int) -> bool:
    """Validation accuracy has been 1.0 at the last `patience` evaluations (never, for patience 0)."""
    recent = curve[-patience:] if patience > 0 else []
    return len(recent) == patience > 0 and all(point.get("val_accuracy", 0.0) >= 1.0 for point in recent)


_RESUMED_FIELDS = ("curve", "peak_saved_bytes", "peak_held_bytes", "peak_bytes", "peak_rss_bytes", "continued_from_step")
"""Result fields measured before a checkpoint that a resumed trial keeps."""


class _Stepper:
    """A trial's training step, `load` (the host batch onto the device) then `run`: eager, or through
    a `GraphedStep` when the trial's cuda_graphs says so (sab.graphs)."""

    def __init__(self, spec: TrialSpec, task: Task, model, engine, optimizer, device: torch.device, dtype: torch.dtype, graphed: bool):
        self.spec, self.task, self.model, self.engine, self.optimizer = spec, task, model, engine, optimizer
        self.device, self.dtype = device, dtype
        self.graphed = GraphedStep(self.one_step, device, dtype) if graphed else None
        self.batch = None

    def one_step(self, batch, meter=None):
        """The trial's training step on a device batch: what a graph captures."""
        return training_step(self.engine, self.model, self.optimizer, batch, self.task.loss, self.spec.k_trunc, self.spec.clip, meter)

    def load(self, host_batch) -> None:
        self.batch = self.graphed.load(host_batch) if self.graphed else _to(host_batch, self.device, self.dtype)

    def run(self, meter=None):
        return self.graphed.run(meter) if self.graphed else self.one_step(self.batch, meter)

    @property
    def state(self) -> str:
        """What ran: off, or the GraphedStep's state (captured, eager without CUDA, failed: why)."""
        return self.graphed.state if self.graphed else "off"


def _train_step(spec, step, task, stepper: _Stepper, generator, timer, result):
    """One optimiser step on a fresh batch; the second step also measures memory."""
    batch = task.sample(spec.batch_size, generator)
    if spec.inject_fault and step == min(2, spec.steps):
        batch = _inject(spec, batch)
    stepper.load(batch)
    meter = MemoryMeter(stepper.model.parameters()) if step == min(2, spec.steps) else None
    with timer.step():
        out = stepper.run(meter)
    if meter is not None:
        result.peak_saved_bytes, result.peak_held_bytes, result.peak_bytes = meter.peak_saved_bytes, meter.peak_held_bytes, meter.peak_bytes
    return out


def _inject(spec: TrialSpec, batch):
    """The fault a test asked for, at the trial's second step."""
    if spec.inject_fault == "nan":
        return dataclasses.replace(batch, inputs=torch.full_like(batch.inputs, float("nan")))
    if spec.inject_fault == "oom":
        torch.empty(2**38, dtype=torch.uint8).fill_(1)  # 256 GiB: past any trial's memory cap
    elif spec.inject_fault == "sleep":
        time.sleep(10 * (spec.time_limit_s or 360))
    elif spec.inject_fault == "raise":
        raise RuntimeError("injected fault: the trial raised")
    elif spec.inject_fault == "exit":
        os._exit(3)
    return batch


def _diverged(result: TrialResult, best, why: str) -> None:
    """Training diverged. With a best validation model kept (select_on_validation) that model stands,
    as early stopping's does: the trial is ok, stopped for `diverged`, its figures from that model.
    Without one the trial is `diverged`."""
    result.error = why
    if best is None:
        result.status = "diverged"
    else:
        result.stop_reason = "diverged"


def _blow_up(model) -> None:
    """The `blowup` fault: the readout's weights x 1000, so every output grows past any task's loss
    scale while training has not yet seen it."""
    with torch.no_grad():
        model.readout.weight.mul_(1000.0)


def _final_metrics(spec, task, model, result, val_set, test_set, device, dtype) -> None:
    """Validation and test metrics; transfer lengths only for a trial that finished its steps."""
    metrics = {f"val_{k}": v for k, v in evaluate(model, task, val_set, device, dtype).items()}
    metrics.update(evaluate(model, task, test_set, device, dtype, breakdown=True))
    stride_rule = METHODS[spec.method].memory_stride
    if stride_rule is not None and test_set:
        stride = stride_rule(Knobs.of(spec))
        with torch.no_grad():
            batch = _to(test_set[0], device, dtype)
            _, attention = model.infer(batch.inputs, return_attention=True)
        if attention[0].numel() <= 200_000:  # one sequence's map, kept small enough to ship back
            result.attention = attention[0].cpu().tolist()
            result.attention_marks = task.attention_marks(stride)
        share = task.attention_share(attention, stride)
        if share is not None:
            metrics["attention_share"] = share
    if result.status == "ok":
        for length in spec.transfer_lengths:
            metrics.update(_transfer_metrics(spec, task, model, length, device, dtype))
    result.metrics = metrics


def _transfer_metrics(spec, task, model, length: int, device, dtype) -> dict[str, float]:
    """The test metrics at a longer T, or `transfer_oom_T = 1` when that length does not fit in
    memory: running out of memory at a transfer length is a result (the paper's self-attention at
    T=5000), not the trial's failure, so the shorter lengths' figures are kept."""
    try:
        if spec.inject_fault == "transfer_oom" and length == max(spec.transfer_lengths):
            torch.empty(2**38, dtype=torch.uint8).fill_(1)  # 256 GiB: past any trial's memory cap
        longer = task.at_length(length)
        batches = evaluation_set(longer, spec, "test")
        return {f"transfer_{key}_{length}": value for key, value in evaluate(model, longer, batches, device, dtype).items()}
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {f"transfer_oom_{length}": 1.0}


def save_weights(model: torch.nn.Module, spec: TrialSpec, path: str) -> None:
    """Save the state dict and the spec as plain data (loadable with weights_only=True)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "spec": dataclasses.asdict(spec)}, path)


def load_weights(path: str, device: str = "cpu") -> tuple[torch.nn.Module, TrialSpec]:
    """Rebuild a saved model; the file is read with weights_only=True (no code runs from it)."""
    saved = torch.load(path, map_location=device, weights_only=True)
    spec = TrialSpec.from_dict(saved["spec"])
    task = make_task(spec.task, spec.seq_len, spec.data_dir, spec.permutation_seed)
    model = build_model(spec, task)
    model.load_state_dict(saved["state_dict"])
    return model.to(device=device, dtype=getattr(torch, spec.dtype)), spec


def spec_fields(role: str) -> tuple[str, ...]:
    """Names of the TrialSpec fields with this role (see ROLES)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    return tuple(f.name for f in fields(TrialSpec) if f.metadata["role"] == role)


def _parser() -> argparse.ArgumentParser:
    """One flag per TrialSpec field, typed from its annotation (X | None: optional; tuple[X, ...]: a list)."""
    parser = _OneLineErrors(
        prog="python -m sab.train",
        description="Run one SAB-bench trial and print its result as JSON.",
        epilog="example: python -m sab.train --task copy --method sab --seq-len 30 --steps 2000\n"
        "exit codes: 0 a result (ok, oom, diverged), 1 a failure (error, timeout), 2 bad input",
        formatter_class=_HelpFormatter,
    )
    hints = typing.get_type_hints(TrialSpec)
    for f in fields(TrialSpec):
        kind, nargs = _cli_type(hints[f.name])
        options = {"type": kind, "default": list(f.default) if nargs else f.default, "nargs": nargs}
        if f.metadata["choices"]:  # shown in --help; a bad value is TrialSpec.validate's one-line error
            options["metavar"] = "{" + ",".join(c or "''" for c in f.metadata["choices"]) + "}"
        options["help"] = argparse.SUPPRESS if f.metadata["hidden"] else f.metadata["help"]
        parser.add_argument("--" + f.name.replace("_", "-"), **options)
    return parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, and the epilog's lines kept as written."""


class _OneLineErrors(argparse.ArgumentParser):
    """Bad flags are one line (what was wrong, the value, what is allowed) and exit 2, not a usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _cli_type(hint) -> tuple[type, str | None]:
    """The argparse type and nargs of a field's annotation."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return args[0], "*"
    if args:  # X | None
        return args[0], None
    if hint is bool:
        return _boolean, None
    return hint, None


def _boolean(text: str) -> bool:
    """A flag's true or false (argparse's `bool` would take "false" as True)."""
    values = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; valid: true, false")
    return values[text.lower()]


def attention_note(spec: TrialSpec, length: int) -> str:
    """What a user should know when the sparsity settings cannot act as asked at this length."""
    if "k_top" not in METHODS[spec.method].reads:
        return ""
    readable = (length - 1) // spec.k_att  # the last step reads those written at k_att, 2 k_att, ... < length
    if spec.k_top >= readable:
        return (
            f"k_top={spec.k_top} >= the {readable} memories a step of a {length}-step sequence can read (k_att={spec.k_att}): "
            "every step attends to all its memories through a softmax, never sparsely"
        )
    if spec.k_top == 1:  # one kept memory: relu(d1 - d2) / (relu(d1 - d2) + eps) is 1, or 0 at a tie
        if resolved_scorer_init(spec.task, spec.method, spec.scorer_init) == "zero":
            return (
                "k_top=1 with scorer_init=zero: the scorer never gets a gradient (every score stays tied, and the one "
                "kept memory's weight is 0 at a tie), so no memory is read once two exist; use k_top >= 2"
            )
        return "k_top=1: the one kept memory's weight is ~1 whatever the scores, so the scorer learns only through the normaliser's eps; use k_top >= 2"
    return ""


def main(argv: list[str] | None = None) -> int:
    """CLI: one trial, a progress line per evaluation, the result as JSON; exit 1 on a failure status."""
    spec = TrialSpec.from_dict(vars(_parser().parse_args(argv)))  # lists back to tuples
    try:
        spec.validate()
        resolve_device(spec.device)
        task = make_task(spec.task, spec.seq_len, spec.data_dir, spec.permutation_seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    note = attention_note(spec, task.length)
    if note:
        print(f"warning: {note}", file=sys.stderr)

    def progress(point: dict) -> None:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in point.items())
        print(shown, file=sys.stderr, flush=True)

    result = run_trial(spec, on_report=progress)
    summary = result.to_dict()
    summary.pop("curve")
    print(json.dumps(summary, indent=2))
    return 1 if result.status in FAILURE_STATUSES else 0


if __name__ == "__main__":
    sys.exit(main())
