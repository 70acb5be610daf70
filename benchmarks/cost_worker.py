"""One engine configuration in a fresh process, driven over stdin/stdout by `benchmarks.cost`.

Protocol (one JSON object per line): the first line is the configuration; the worker answers
with its memory figures, then answers each `{"time": n}` with the seconds of n training steps,
and exits on `{"quit": true}` or end of input. Keeping one process per configuration gives each
its own RSS figure and lets the driver interleave timing repetitions across engines.
"""

from __future__ import annotations

import ctypes
import json
import resource
import sys
import time

import torch

from sab.credit import training_step
from sab.graphs import WARMUP, GraphedStep, graphs_wanted
from sab.measure import MemoryMeter, cuda_peak, full_float32, rss_peak_bytes, rss_peak_reset, synchronize
from sab.methods import KNOBS, METHODS, build_model
from sab.replay import set_engine_options
from sab.tasks import make_task
from sab.tasks.base import Batch, cross_entropy, one_hot

CLASSES = 10


def make_batch(batch_size: int, length: int, device: torch.device, seed: int = 0) -> Batch:
    """Copy-like data: one-hot inputs of 10 classes and a class target at every step."""
    g = torch.Generator().manual_seed(seed)
    x = one_hot(torch.randint(0, CLASSES, (batch_size, length), generator=g), CLASSES)
    y = torch.randint(0, CLASSES, (batch_size, length), generator=g)
    return Batch(x.to(device), y.to(device), torch.arange(length, device=device))


def _trim() -> None:
    """Give freed heap pages back to the OS so the next RSS peak starts from a clean base."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class Worker:
    """A model, a batch and an optimizer for one (method, length) configuration."""

    def __init__(self, config: dict) -> None:
        torch.set_num_threads(config["threads"])
        full_float32()  # every engine in the same float32, no TF32 for cuDNN's
        torch.manual_seed(0)
        self.config = config
        self.device = torch.device(config["device"])
        knobs = {k: config[k] for k in KNOBS if k in config}
        if config.get("task"):  # the sweep's own task: its length, inputs and loss
            task = make_task(config["task"], config["seq_len"], config.get("data_dir"))
            sizes, self.loss = (task.input_size, task.output_size), task.loss
            batch = task.sample(config["batch_size"], torch.Generator().manual_seed(0))
            self.batch = Batch(batch.inputs.to(self.device), batch.targets.to(self.device), batch.positions.to(self.device))
        else:
            sizes, self.loss = (CLASSES, CLASSES), cross_entropy
            self.batch = make_batch(config["batch_size"], config["seq_len"], self.device)
        self.model = build_model(config["method"], sizes[0], config["hidden_size"], sizes[1], **knobs).to(self.device)
        graphed = graphs_wanted(config.get("cuda_graphs", "off"), self.device)
        if METHODS[config["method"]].replays:  # the trial's rule: the config's replay group, else the device's
            set_engine_options(self.model, self.device, config.get("replay_group"), bool(config.get("static_shapes", False)), graphed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, capturable=graphed and self.device.type == "cuda")
        self.engine = METHODS[config["method"]].engine
        self.graphed = GraphedStep(self._one_step, self.device, torch.float32) if graphed else None  # a trial's graphed step
        if self.graphed is not None:
            self.graphed.load(self.batch)

    def _one_step(self, batch: Batch, meter=None) -> None:
        training_step(self.engine, self.model, self.optimizer, batch, self.loss, self.config["k_trunc"], meter=meter)  # no clip

    def step(self, meter=None) -> None:
        """One training step: zero grads, the engine's forward and backward, the optimizer (replayed as a graph when asked)."""
        if self.graphed is not None:
            self.graphed.run(meter)
        else:
            self._one_step(self.batch, meter)

    def memory(self) -> dict:
        """Warm up, then one step under the saved-tensor meter and one under the RSS (and CUDA) peak."""
        self.step()
        meter = MemoryMeter(self.model.parameters())
        self.step(meter)
        for _ in range(WARMUP if self.graphed is not None else 0):  # a graphed step is captured before anything is timed
            self.step()
        _trim()
        base = rss_peak_reset()
        with cuda_peak(self.device) as cuda:
            self.step()
        return {
            "tokens_per_step": self.batch.inputs.shape[0] * self.batch.inputs.shape[1],
            "peak_saved_bytes": meter.peak_saved_bytes,
            "held_bytes": meter.peak_held_bytes,
            "peak_bytes": meter.peak_bytes,
            "peak_rss_bytes": max(0, rss_peak_bytes() - base),
            "cuda_max_allocated_bytes": cuda.get("cuda_max_allocated_bytes", 0),
            "cuda_step_growth_bytes": cuda.get("cuda_step_growth_bytes", 0),
            "cuda_graphs": self.graphed.state if self.graphed is not None else "off",
            "static_shapes": bool(getattr(self.model, "static_shapes", False)),
        }

    def time(self, steps: int) -> tuple[float, int]:
        """Wall seconds of `steps` training steps (synchronised on CUDA), and the minor page faults
        they took (memory mapped afresh and touched: the allocator's share of the time)."""
        synchronize(self.device)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def main() -> None:
    """Serve the driver until it says quit."""
    worker = Worker(json.loads(sys.stdin.readline()))
    print(json.dumps(worker.memory()), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        seconds, faults = worker.time(command["time"])
        print(json.dumps({"seconds": seconds, "minor_faults": faults}), flush=True)


if __name__ == "__main__":
    main()
