"""A whole training step replayed as one CUDA graph (issue #13): one launch per step, not one per operation.

    stepper = GraphedStep(one_step, device, dtype)   # one_step(batch, meter) -> StepResult: zero_grad, engine, clip, optimizer
    stepper.load(host_batch)                         # the batch, still on the host, into the static tensors
    out = stepper.run()                              # WARMUP eager steps, then one capture, then replays

Why a step can be captured whole: every batch of a trial has the same shapes and scored positions,
no engine reads a value back inside a step once those positions are known on the host
(`sab.model.scored_steps` keeps them per positions tensor; tests/sab/test_graphs.py counts zero
read-backs), the sab engine's shape-static path launches the same work whatever its attention picks,
and Adam keeps its step counters on the device (`capturable=True`). The step reads its batch from
the static tensors here and leaves its results in tensors the graph owns, valid until the next replay.

On a CPU there is no graph: the same static-batch data flow runs eagerly, which is what the CPU
tests check. Untested on a GPU (none was lent to the project yet): a capture that raises falls back
to eager steps and says why in `state`, which the trial records.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sab.tasks.base import Batch

WARMUP = 3
"""Eager steps before the capture (lazy state such as Adam's moments exists by then; the memory meter's step is among them)."""

CUDA_GRAPHS_CHOICES = ("auto", "on", "off")
"""`cuda_graphs` of a trial: auto is on for a CUDA device and off elsewhere."""


def graphs_wanted(choice: str, device: torch.device) -> bool:
    """Does a trial with `cuda_graphs: choice` on `device` run its steps through `GraphedStep`?"""
    if choice not in CUDA_GRAPHS_CHOICES:
        raise ValueError(f"unknown cuda_graphs {choice!r}; valid: {', '.join(CUDA_GRAPHS_CHOICES)}")
    return choice == "on" or (choice == "auto" and device.type == "cuda")


class GraphedStep:
    """Training steps over one set of static batch tensors: eager for WARMUP steps, then captured once
    and replayed (CUDA); eager throughout on other devices. `state` says which ran."""

    def __init__(self, one_step: Callable[..., object], device: torch.device, dtype: torch.dtype, warmup: int = WARMUP) -> None:
        self.one_step, self.device, self.dtype, self.warmup = one_step, device, dtype, warmup
        self.static: Batch | None = None
        self.host_positions: torch.Tensor | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        # the side stream of the warm-up and the capture: the same one, so per-stream library handles exist before the capture
        self.stream = None
        self.out = None
        self.steps = 0
        self.state = "eager (no CUDA device: not captured)" if device.type != "cuda" else "eager (warming up)"

    def load(self, batch: Batch) -> Batch:
        """Copy a host batch into the static tensors (made from the first batch); returns them.

        A batch whose shapes or scored positions differ from the first cannot replay the graph: refused.
        """
        if self.static is None:
            targets_dtype = self.dtype if batch.targets.is_floating_point() else batch.targets.dtype
            self.static = Batch(
                batch.inputs.to(device=self.device, dtype=self.dtype).clone(),
                batch.targets.to(device=self.device, dtype=targets_dtype).clone(),
                batch.positions.to(self.device).clone(),
            )
            self.host_positions = batch.positions.clone()
            return self.static
        if batch.inputs.shape != self.static.inputs.shape or batch.targets.shape != self.static.targets.shape:
            raise ValueError(
                f"a captured step needs batches of one shape: got inputs {tuple(batch.inputs.shape)}, targets "
                f"{tuple(batch.targets.shape)} after {tuple(self.static.inputs.shape)}, {tuple(self.static.targets.shape)}"
            )
        if not torch.equal(batch.positions.cpu(), self.host_positions):  # both on the host: no device read-back
            raise ValueError("a captured step needs the same scored positions in every batch")
        self.static.inputs.copy_(batch.inputs)
        self.static.targets.copy_(batch.targets)
        return self.static

    def run(self, meter=None):
        """One training step on the loaded batch: eager (warm-up, a measured step, no CUDA), else the graph."""
        self.steps += 1
        if self.graph is not None and meter is None:
            self.graph.replay()
            return self.out
        if self.device.type != "cuda" or meter is not None or self.steps <= self.warmup or self.state.startswith("failed"):
            return self._eager(meter)
        return self._capture()

    def _eager(self, meter):
        if self.device.type != "cuda" or self.state.startswith("failed"):
            return self.one_step(self.static, meter)
        self.stream = self.stream or torch.cuda.Stream(self.device)  # warm-up on a side stream, as torch.cuda.graph's documentation asks
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            out = self.one_step(self.static, meter)
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return out

    def _capture(self):
        """Record one step (nothing runs while recording), then replay it for this step's batch."""
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                out = self.one_step(self.static, None)
        except Exception as error:  # the step does something a graph cannot hold: eager from here on, and say why
            self.state = f"failed: {type(error).__name__}: {error}"[:300]
            torch.cuda.synchronize(self.device)
            return self._eager(None)
        self.graph, self.out, self.state = graph, out, "captured"
        graph.replay()
        return out
