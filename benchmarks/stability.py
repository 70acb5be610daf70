"""Gradient spikes and recall collapses of SAB training, with the optimiser variants that test their cause.

    python -m benchmarks.stability --seeds 1 2 3                       # copy T=100, H=64, A=32, lr 2e-3, clip 1
    python -m benchmarks.stability --variant scorer_lr --seeds 1       # w's learning rate x0.1
    python -m benchmarks.stability --variant split_clip --seeds 1      # the scorer clipped apart from the rest

Per run: the steps whose gradient norm (before clipping) exceeded --spike, which parameter had the
largest gradient at each of them, and validation recall every --eval-every steps with the largest
drop from the best so far. What was found with it: docs/sab_stability.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys

import torch

VARIANTS = ("base", "scorer_lr", "split_clip")


def run(seed: int, variant: str, args: argparse.Namespace) -> dict:
    """Train one SAB model as the trainer does (Adam, global clip), logging spikes and recall."""
    from sab.methods import METHODS
    from sab.train import TrialSpec, _to, build, evaluate, evaluation_set, make_task

    torch.set_num_threads(1)
    spec = TrialSpec(task="copy", method="sab", seq_len=args.seq_len, hidden_size=args.hidden_size, attn_size=args.attn_size,
                     batch_size=32, k_trunc=5, k_att=5, k_top=3, lr=args.lr, clip=args.clip, steps=args.steps, seed=seed,
                     scorer_init=args.scorer_init, threads=1)  # fmt: skip
    task = make_task("copy", spec.seq_len, None, 0)
    device, dtype = torch.device("cpu"), torch.float32
    model = build(spec, task, device, dtype)
    engine = METHODS["sab"].engine
    scorer = list(model.scorer.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in scorer)]
    w = model.scorer.weight
    groups = [
        {"params": [p for p in model.parameters() if p is not w]},
        {"params": [w], "lr": spec.lr * (0.1 if variant == "scorer_lr" else 1)},
    ]
    optimizer = torch.optim.Adam(groups, lr=spec.lr)
    generator = torch.Generator().manual_seed(seed)
    val = evaluation_set(task, spec, "val")
    largest: collections.Counter = collections.Counter()
    spikes, curve, worst_drop = 0, [], 0.0
    for step in range(1, spec.steps + 1):
        batch = _to(task.sample(spec.batch_size, generator), device, dtype)
        optimizer.zero_grad(set_to_none=True)
        engine(model, batch, task.loss, spec.k_trunc)
        norms = {name: float(p.grad.norm()) for name, p in model.named_parameters()}
        if math.sqrt(sum(v * v for v in norms.values())) > args.spike:
            spikes += 1
            largest[max(norms, key=norms.get)] += 1
        if variant == "split_clip":
            torch.nn.utils.clip_grad_norm_(scorer, spec.clip)
            torch.nn.utils.clip_grad_norm_(rest, spec.clip)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.clip)
        optimizer.step()
        if step % args.eval_every == 0:
            recall = evaluate(model, task, val, device, dtype)["accuracy"]
            if curve:
                worst_drop = max(worst_drop, max(r for _, r in curve) - recall)
            curve.append((step, round(recall, 3)))
    return {"variant": variant, "seed": seed, "steps": spec.steps, "spikes": spikes, "largest_at_spikes": dict(largest),
            "final_val": curve[-1][1] if curve else None, "worst_drop_from_best": round(worst_drop, 3), "curve": curve}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """One JSON line per seed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--variant", choices=VARIANTS, default="base")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--attn-size", type=int, default=32)
    parser.add_argument("--scorer-init", choices=("zero", "uniform"), default="zero")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--spike", type=float, default=20.0, help="gradient norm (before clipping) that counts as a spike")
    parser.add_argument("--eval-every", type=int, default=250)
    args = parser.parse_args(argv)
    for seed in args.seeds:
        print(json.dumps(run(seed, args.variant, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
