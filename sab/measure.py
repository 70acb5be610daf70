"""Memory and time meters (docs/design.md, "Measuring cost honestly").

Memory of an engine = peak over a training step of
    live bytes autograd saved for backward (storages de-duplicated, parameters excluded)
  + bytes the engine holds outside autograd (bank, key cache, G, boundary states, indices),
cross-checked by the peak RSS growth of the process and, on CUDA, `max_memory_allocated`.

    meter = MemoryMeter(model.parameters())
    with meter:
        engine(model, batch, loss_fn, k_trunc, meter)
    meter.peak_bytes
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import Tensor


class NullMeter:
    """Accepts an engine's held-bytes reports and ignores them (training outside benchmarks)."""

    def hold(self, *tensors: Tensor | None) -> None:
        """Record tensors the engine keeps outside autograd."""

    def release(self, *tensors: Tensor | None) -> None:
        """Record that held tensors were let go."""


def _nbytes(tensors: Iterable[Tensor | None]) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors if t is not None)


class _Saved:
    """What the pack hook hands autograd: the tensor, plus a finaliser that un-counts its storage."""

    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: Tensor, key: int, meter: MemoryMeter) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        self.meter._unpacked(self.key)


class MemoryMeter(NullMeter):
    """Peak of (live saved-for-backward bytes + held bytes) while active as a context manager."""

    def __init__(self, parameters: Iterable[Tensor]) -> None:
        self._params = {p.untyped_storage().data_ptr() for p in parameters}
        self._live: dict[int, list[int]] = {}  # storage pointer -> [bytes, references]
        self.saved_bytes = 0
        self.held_bytes = 0
        self.peak_saved_bytes = 0
        self.peak_held_bytes = 0
        self.peak_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> MemoryMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def hold(self, *tensors: Tensor | None) -> None:
        self.held_bytes += _nbytes(tensors)
        self._update_peak()

    def release(self, *tensors: Tensor | None) -> None:
        self.held_bytes -= _nbytes(tensors)

    def _update_peak(self) -> None:
        self.peak_saved_bytes = max(self.peak_saved_bytes, self.saved_bytes)
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        self.peak_bytes = max(self.peak_bytes, self.saved_bytes + self.held_bytes)

    def _pack(self, tensor: Tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._params or storage.nbytes() == 0:
            return tensor
        entry = self._live.get(key)
        if entry is None:
            self._live[key] = [storage.nbytes(), 1]
            self.saved_bytes += storage.nbytes()
            self._update_peak()
        else:
            entry[1] += 1
        return _Saved(tensor, key, self)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _unpacked(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.saved_bytes -= entry[0]
            del self._live[key]


def rss_peak_reset() -> int:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; return the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _proc_status_bytes("VmRSS")


def rss_peak_bytes() -> int:
    """Peak RSS (VmHWM) in bytes since the last reset; falls back to ru_maxrss where /proc is absent."""
    peak = _proc_status_bytes("VmHWM")
    return peak if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_status_bytes(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work so a timer measures it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def cuda_peak(device: torch.device | str):
    """Reset CUDA peak stats on entry; yields a dict filled on exit, also when the body raised
    (an out-of-memory step keeps the figure it reached): the absolute peaks, and
    `cuda_step_growth_bytes`, the peak above what was allocated on entry (the step's own cost)."""
    out: dict[str, int] = {}
    is_cuda = torch.device(device).type == "cuda"
    if is_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        entry = torch.cuda.memory_allocated(device)
    try:
        yield out
    finally:
        if is_cuda:
            torch.cuda.synchronize(device)
            out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
            out["cuda_max_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
            out["cuda_step_growth_bytes"] = out["cuda_max_allocated_bytes"] - entry


def full_float32() -> None:
    """Float32 matmuls and convolutions in full precision on CUDA (no TF32): cuDNN allows TF32 by
    default, which would make fused-kernel baselines faster and less exact than float32 SAB."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class StepTimer:
    """Accumulates wall time of training steps only; the first `warmup` steps are excluded from s/step."""

    def __init__(self, device: torch.device | str, warmup: int = 1) -> None:
        self.device, self.warmup = device, warmup
        self.total_seconds = 0.0
        self.timed_seconds = 0.0
        self.steps = 0
        self.timed_steps = 0
        self._pending: list = []  # CUDA (start, end) events not read yet

    @contextmanager
    def step(self):
        """Time one training step: on the CPU by the clock; on CUDA by a pair of events recorded in
        the stream, read at the next `settle` (no host-device sync per step)."""
        if torch.device(self.device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((start, end))
            return
        begin = time.perf_counter()
        yield
        self._add(time.perf_counter() - begin)

    def settle(self) -> None:
        """Fold the CUDA steps timed since the last call into the totals (one sync); call before
        reading them (at evaluations, checkpoints and the end)."""
        if not self._pending:
            return
        self._pending[-1][1].synchronize()
        for start, end in self._pending:
            self._add(start.elapsed_time(end) / 1000)
        self._pending.clear()

    def _add(self, elapsed: float) -> None:
        self.total_seconds += elapsed
        self.steps += 1
        if self.steps > self.warmup:
            self.timed_seconds += elapsed
            self.timed_steps += 1

    @property
    def seconds_per_step(self) -> float:
        """Mean seconds of the steps after warm-up (all steps if there were no others)."""
        self.settle()
        if self.timed_steps:
            return self.timed_seconds / self.timed_steps
        return self.total_seconds / max(self.steps, 1)
