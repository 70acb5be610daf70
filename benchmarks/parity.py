"""Gradient parity of the two-pass `sab` engine against `sab_reference`, and its run-to-run
determinism, on any device.

    python -m benchmarks.parity --device cuda

Prints one line per case: the largest relative gradient difference over the parameters; on a GPU,
then the same between float64 gradients computed there and on the CPU (sab, cuDNN's bptt, bptt_cell,
tbptt); then the largest difference between repeated runs of one step, with G's credit summed by
`index_put_(accumulate=True)` (sab.replay.accumulate_rows: the engine's path on a GPU, which must
repeat bit for bit) and, for comparison, by `index_add_` (atomics on a GPU: its measured effect).
Needs torch only (a GPU machine may have nothing else).
"""

from __future__ import annotations

import argparse
import sys

import torch

import sab.replay
from sab.methods import METHODS, build_model
from sab.tasks.base import Batch, cross_entropy

CASES = [  # (dtype, L, k_trunc, k_att, k_top, tolerance)
    (torch.float64, 100, 10, 5, 3, 1e-10),
    (torch.float64, 100, 7, 10, 3, 1e-10),
    (torch.float32, 300, 10, 10, 5, 1e-4),
]


def _case(
    device: torch.device, dtype: torch.dtype, L: int, k_att: int, k_top: int, batch_size: int, seed: int, method: str = "sab"
) -> tuple:
    """A `method` model (seed 0) and one random batch (`seed`) of L steps, every step scored."""
    torch.manual_seed(0)
    model = build_model(method, 10, 32, 10, k_top=k_top, k_att=k_att, scorer_init="uniform").to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    batch = Batch(
        torch.randn(batch_size, L, 10, generator=g, dtype=dtype).to(device),
        torch.randint(0, 10, (batch_size, L), generator=g).to(device),
        torch.arange(L, device=device),
    )
    return model, batch


def _max_relative_gap(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """max over parameters of |got - ref| / |ref|."""
    return max(((got[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref)


def _within(label: str, gap: float, tolerance: float) -> bool:
    """Print one case's line; is its gap within the tolerance?"""
    ok = gap <= tolerance
    print(f"{label}: max relative gradient gap {gap:.2e} (tolerance {tolerance:.0e}) {'ok' if ok else 'FAILED'}")
    return ok


def _gradients(engine: str, model, batch: Batch, k_trunc: int) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    METHODS[engine].engine(model, batch, cross_entropy, k_trunc)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def relative_gap(device: torch.device, dtype: torch.dtype, L: int, k_trunc: int, k_att: int, k_top: int) -> float:
    """max over parameters of |g_sab - g_ref| / |g_ref| for one random batch."""
    model, batch = _case(device, dtype, L, k_att, k_top, batch_size=4, seed=1)
    ref, got = (_gradients(engine, model, batch, k_trunc) for engine in ("sab_reference", "sab"))
    return _max_relative_gap(got, ref)


CROSS_DEVICE_ENGINES = ("sab", "bptt", "bptt_cell", "tbptt")
"""Engines whose float64 gradients on a GPU must equal the CPU's (cuDNN's nn.LSTM included)."""
CROSS_DEVICE_CASE = (torch.float64, 100, 10, 5, 3, 1e-10)


def cross_device_gap(device: torch.device, engine: str) -> float:
    """max over parameters of |g_device - g_cpu| / |g_cpu|: one engine, one batch, built alike on both."""
    dtype, L, k_trunc, k_att, k_top, _ = CROSS_DEVICE_CASE
    grads = []
    for where in (torch.device("cpu"), device):
        model, batch = _case(where, dtype, L, k_att, k_top, batch_size=4, seed=3, method=engine)
        grads.append({n: g.cpu() for n, g in _gradients(engine, model, batch, k_trunc).items()})
    return _max_relative_gap(grads[1], grads[0])


DETERMINISM_CASE = (torch.float32, 300, 10, 10, 5)
"""(dtype, L, k_trunc, k_att, k_top): 30 memories, each read by many steps of a segment."""
RUNS = 4


def run_to_run_gap(device: torch.device, sorted_credit: bool, runs: int = RUNS) -> float:
    """max over parameters and runs of |g_run - g_first| / |g_first|: the sab engine on one batch,
    G's credit summed by index_put_ (sorted) or by index_add_."""
    dtype, L, k_trunc, k_att, k_top = DETERMINISM_CASE
    saved = set(sab.replay.SORTED_CREDIT_DEVICES)
    sab.replay.SORTED_CREDIT_DEVICES = saved | {device.type} if sorted_credit else saved - {device.type}
    try:
        model, batch = _case(device, dtype, L, k_att, k_top, batch_size=8, seed=2)
        grads = [_gradients("sab", model, batch, k_trunc) for _ in range(runs)]
    finally:
        sab.replay.SORTED_CREDIT_DEVICES = saved
    first = grads[0]
    return max(_max_relative_gap(run, first) for run in grads[1:])


def main(argv: list[str] | None = None) -> int:
    """Run every case; exit 1 if one is outside its tolerance."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    failed = False
    for dtype, L, k_trunc, k_att, k_top, tolerance in CASES:
        label = f"parity {device.type} {str(dtype).split('.')[1]} L={L} k_trunc={k_trunc} k_att={k_att} k_top={k_top}"
        failed |= not _within(label, relative_gap(device, dtype, L, k_trunc, k_att, k_top), tolerance)
    for engine in CROSS_DEVICE_ENGINES if device.type != "cpu" else ():
        label = f"cpu vs {device.type} {engine} float64 L={CROSS_DEVICE_CASE[1]}"
        failed |= not _within(label, cross_device_gap(device, engine), CROSS_DEVICE_CASE[-1])
    for sorted_credit in (True, False):
        gap = run_to_run_gap(device, sorted_credit)
        how = "index_put_ (sorted: the engine's path)" if sorted_credit else "index_add_ (for comparison)"
        verdict = ("ok" if gap == 0 else "FAILED: not repeatable") if sorted_credit else "measured"
        failed |= sorted_credit and gap != 0
        print(f"determinism {device.type} float32 L={DETERMINISM_CASE[1]}, {RUNS} runs, G's credit by {how}: "
              f"max run-to-run gradient gap {gap:.2e} {verdict}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
