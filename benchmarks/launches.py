"""Kernel launches and host syncs per time step of every engine, counted on the CPU (or on a GPU).

    python -m benchmarks.launches                      # H=32, B=4, k_trunc=k_att=10, k_top=5, L = 100 and 200
    python -m benchmarks.launches --lengths 120 240 --hidden-size 64 --batch-size 32 --k-att 5 --k-trunc 5 --k-top 3
    python -m benchmarks.launches --device cuda         # what a GPU really ran: kernels (torch.profiler), syncs (sync debug mode)

On a GPU at research batch sizes an eager recurrent loop is bound by kernel launches and by
host-device syncs, not by arithmetic. A TorchDispatchMode sees every ATen op of one training step
(forward, backward, optimizer) before any device does, so the counts here are what a GPU would
launch. Per time step = (count at the longer L - count at the shorter) / (difference of L), which
removes the per-step constant (loss, optimizer). Views and aliases launch nothing and are not
counted; syncs are the ops that make the host wait for the device (`.item()`, `bool(tensor)`,
`nonzero`, ...).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = ("_local_scalar_dense", "nonzero", "item", "is_nonzero", "equal", "allclose")
"""ATen ops whose result the host needs now: on CUDA each one drains the launch queue."""
FREE_OPS = ("detach", "alias", "lift_fresh", "set_", "resize_", "empty", "empty_like", "empty_strided")
"""Bookkeeping ops that launch no kernel."""


@dataclass
class Counts:
    """ATen compute ops and host syncs seen in one training step."""

    compute: int = 0
    syncs: int = 0


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts = Counts()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.counts.syncs += 1
        elif not func.is_view and name not in FREE_OPS:
            self.counts.compute += 1
        return func(*args, **(kwargs or {}))


def count_step(
    method: str,
    length: int,
    hidden_size: int,
    batch_size: int,
    k_trunc: int,
    k_att: int,
    k_top: int,
    replay_group: int = 1,
    static_shapes: bool = False,
    device: str = "cpu",
) -> Counts:
    """The ops of one training step (after one warm-up step) of `method` at sequence length `length`:
    ATen ops seen by a dispatch mode on the CPU, or on CUDA what the device itself saw (count_on_cuda)."""
    from benchmarks.cost import CostConfig
    from benchmarks.cost_worker import Worker

    config = CostConfig(method, length, hidden_size, batch_size, k_trunc, k_att, k_top, device=device, replay_group=replay_group,
                        static_shapes=static_shapes)  # fmt: skip
    worker = Worker(asdict(config))  # one thread, as the cost benchmark's workers
    worker.step()
    if device != "cpu":
        return count_on_cuda(worker.step)
    counter = _Counter()
    with counter:
        worker.step()
    return counter.counts


def count_on_cuda(step) -> Counts:
    """What one call of `step` makes a CUDA device do: the kernels, copies and fills it runs
    (torch.profiler's device events) and the host syncs it makes (torch.cuda's sync debug mode warns
    at each one). The real figures behind the dispatch mode's count, e.g. index_put_'s sort kernels."""
    import warnings

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    launches = sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum(1 for w in caught if "synchroniz" in str(w.message))
    return Counts(compute=launches, syncs=syncs)


def per_time_step(method: str, lengths: tuple[int, int], **sizes) -> tuple[float, float]:
    """(compute ops, syncs) per time step: the difference of two lengths' counts over their difference."""
    compute, syncs, _ = _row(method, lengths, **sizes)
    return compute, syncs


def _row(method: str, lengths: tuple[int, int], **sizes) -> tuple[float, float, int]:
    """Compute ops and syncs per time step, and the syncs of a whole step at the longer length."""
    short, long = (count_step(method, length, **sizes) for length in lengths)
    span = lengths[1] - lengths[0]
    return (long.compute - short.compute) / span, (long.syncs - short.syncs) / span, long.syncs


def main(argv: list[str] | None = None) -> int:
    """Print the table of ops and syncs per time step, one row per engine."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.launches", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=["bptt", "bptt_cell", "tbptt", "self_attention", "sab"])
    parser.add_argument("--lengths", nargs=2, type=int, default=[100, 200], help="two sequence lengths L (default: 100 200)")
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--k-trunc", type=int, default=10)
    parser.add_argument("--k-att", type=int, default=10)
    parser.add_argument("--k-top", type=int, default=5)
    parser.add_argument("--replay-group", type=int, default=1, help="sab: segments replayed forward at once (default 1)")
    parser.add_argument("--static-shapes", action="store_true", help="sab: its shape-static path (what a CUDA graph needs)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu: count ATen ops with a dispatch mode; cuda: count the kernels the GPU ran and its syncs (needs a GPU)",
    )
    parser.add_argument(
        "--cpu-path",
        action="store_true",
        help="count the CPU's own path (its top-k tie check reads back once per step); default: the GPU's",
    )
    args = parser.parse_args(argv)
    import sab.replay
    import sab.sparse_attention

    on_cuda = args.device != "cpu"
    if on_cuda and args.cpu_path:
        parser.error("--cpu-path counts the CPU's path; on --device cuda the GPU's own path runs")
    sab.sparse_attention.TIE_CHECK_ON_CPU = args.cpu_path
    sab.replay.SORTED_CREDIT_DEVICES = {"cuda"} if args.cpu_path else {"cpu", "cuda"}  # the GPU's deterministic sum of G's credit
    sizes = {
        "hidden_size": args.hidden_size,
        "batch_size": args.batch_size,
        "k_trunc": args.k_trunc,
        "k_att": args.k_att,
        "k_top": args.k_top,
        "replay_group": args.replay_group,
        "static_shapes": args.static_shapes,
        "device": args.device,
    }
    print(f"Per time step, L = {args.lengths[0]} and {args.lengths[1]}, {sizes}, {'CPU' if args.cpu_path else 'GPU'} path")
    what = "CUDA kernels, copies and fills run" if on_cuda else "ATen compute ops"
    print(f"| method | {what} / time step | host syncs / time step | host syncs in a step at L = {args.lengths[1]} |")
    print("|---|---|---|---|")
    for method in args.methods:
        compute, syncs, step_syncs = _row(method, tuple(args.lengths), **sizes)
        print(f"| {method} | {compute:.1f} | {syncs:.2f} | {step_syncs} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
