"""Gradient parity of the two-pass `sab` engine against `sab_reference`, on any device.

    python -m benchmarks.parity --device cuda

Prints one line per case: the largest relative gradient difference over the parameters.
Needs torch only (a GPU machine may have nothing else).
"""

from __future__ import annotations

import argparse
import sys

import torch

from sab.methods import METHODS, build_model
from sab.tasks.base import Batch, cross_entropy

CASES = [  # (dtype, L, k_trunc, k_att, k_top, tolerance)
    (torch.float64, 100, 10, 5, 3, 1e-10),
    (torch.float64, 100, 7, 10, 3, 1e-10),
    (torch.float32, 300, 10, 10, 5, 1e-4),
]


def relative_gap(device: torch.device, dtype: torch.dtype, L: int, k_trunc: int, k_att: int, k_top: int) -> float:
    """max over parameters of |g_sab - g_ref| / |g_ref| for one random batch."""
    torch.manual_seed(0)
    model = build_model("sab", 10, 32, 10, k_top=k_top, k_att=k_att, scorer_init="uniform").to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    batch = Batch(
        torch.randn(4, L, 10, generator=g, dtype=dtype).to(device),
        torch.randint(0, 10, (4, L), generator=g).to(device),
        torch.arange(L, device=device),
    )
    grads = []
    for engine in ("sab_reference", "sab"):
        model.zero_grad(set_to_none=True)
        METHODS[engine].engine(model, batch, cross_entropy, k_trunc)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    ref, got = grads
    return max(((got[n] - ref[n]).norm() / ref[n].norm()).item() for n in ref)


def main(argv: list[str] | None = None) -> int:
    """Run every case; exit 1 if one is outside its tolerance."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    failed = False
    for dtype, L, k_trunc, k_att, k_top, tolerance in CASES:
        gap = relative_gap(device, dtype, L, k_trunc, k_att, k_top)
        ok = gap <= tolerance
        failed |= not ok
        print(f"parity {device.type} {str(dtype).split('.')[1]} L={L} k_trunc={k_trunc} k_att={k_att} k_top={k_top}: "
              f"max relative gradient gap {gap:.2e} (tolerance {tolerance:.0e}) {'ok' if ok else 'FAILED'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
