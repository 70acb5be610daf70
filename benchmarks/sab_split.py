"""Where a sab training step's time goes: its no-grad pass 1 against the rest (replay and backward),
beside the whole steps of bptt_cell and bptt, in one process.

    python -m benchmarks.sab_split                 # T = 1000, B = 32, H = 128, k_trunc = k_att = 10, k_top = 5
    python -m benchmarks.sab_split --length 300 --repeats 5
    python -m benchmarks.sab_split --what-if       # also pass 1 with a bilinear scorer, and with scoring free

sab = pass 1 (every step, every memory scored, no graph) + the replay (each segment's forward
recomputed with a graph, then its backward). The replay costs at least what bptt_cell's whole step
does, so sab / bptt_cell >= 1 + pass 1 / bptt_cell: the lower bound that issue #13's item 4 meets.
Medians of interleaved repetitions, one thread. In one process the allocator's state is shared, so
ratios differ a little from `benchmarks.cost`, which gives each engine its own process.

`--what-if` times pass 1 twice more with the scorer swapped for the measurement only: a bilinear
scorer (q · k, one product; another method than the paper's MLP scorer) and scoring free (a view of
the keys, no arithmetic), a floor for any scorer. Added to the replay as measured, each bounds what
sab / bptt_cell and sab / bptt could become by changing the scorer alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict

import torch

from benchmarks.cost import CostConfig
from benchmarks.cost_worker import Worker
from sab.sparse_attention import FoldedScorer


def _bilinear_scores(self: FoldedScorer, provisional: torch.Tensor, keys: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """What-if: scores q · k_i with the same query projection, one batched product (B, n)."""
    query = torch.addmm(self.query_bias2, provisional, self.query_weight2.t())
    return torch.bmm(keys, query.unsqueeze(2)).squeeze(2)


def _free_scores(self: FoldedScorer, provisional: torch.Tensor, keys: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """What-if: scores that cost nothing (a view of the keys' first column, distinct per memory)."""
    return keys[:, :, 0]


WHAT_IF_SCORERS = {"bilinear scorer": _bilinear_scores, "scoring free": _free_scores}
"""Pass-1 scorers timed by `--what-if`, for the measurement only: no engine uses them."""


@contextmanager
def _scorer(scores: Callable[..., torch.Tensor]) -> Iterator[None]:
    """Swap the folded scorer's `scores` for one pass, and put the paper's back whatever happens."""
    original = FoldedScorer.scores
    FoldedScorer.scores = scores
    try:
        yield
    finally:
        FoldedScorer.scores = original


def split_timings(length: int, repeats: int, hidden_size: int = 128, batch_size: int = 32, k_trunc: int = 10,
                  k_att: int = 10, k_top: int = 5, what_if: bool = False) -> dict[str, float]:  # fmt: skip
    """Median seconds of: a sab step, sab's pass 1 alone, a bptt_cell step and a bptt step; with
    `what_if`, also pass 1 under each of `WHAT_IF_SCORERS` (keys "sab pass 1, NAME")."""
    sizes = {"hidden_size": hidden_size, "batch_size": batch_size, "k_trunc": k_trunc, "k_att": k_att, "k_top": k_top}
    sab, cell, bptt = (Worker(asdict(CostConfig(method, length, **sizes))) for method in ("sab", "bptt_cell", "bptt"))  # one thread, CPU
    inputs, positions = sab.batch.inputs, sab.batch.positions

    def pass_one() -> None:
        sab.model.first_pass(inputs, positions, k_trunc=k_trunc, keep_picks=True)

    def pass_one_with(scores: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def job() -> None:
            with _scorer(scores):
                pass_one()

        return job

    jobs: dict[str, Callable[[], None]] = {"sab": sab.step, "sab pass 1": pass_one, "bptt_cell": cell.step, "bptt": bptt.step}
    if what_if:
        jobs.update({f"sab pass 1, {name}": pass_one_with(scores) for name, scores in WHAT_IF_SCORERS.items()})
    return interleaved_medians(jobs, repeats)


def interleaved_medians(jobs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each job over `repeats` rounds that run every job once, in turn (a drift of
    the machine's speed then reaches every job alike), after two warm-up runs each (allocator, caches,
    compilations)."""
    for job in jobs.values():
        job()
        job()
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The sizes every in-process split benchmark takes: T, repetitions, H and B (item 4's by default)."""
    parser.add_argument("--length", type=int, default=1000, help="sequence length T")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repetitions (medians)")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)


def main(argv: list[str] | None = None) -> int:
    """Print the split and the lower bound it sets on sab / bptt_cell."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sab_split", description=__doc__.split("\n")[0])
    add_size_arguments(parser)
    parser.add_argument("--what-if", action="store_true", help="also pass 1 with a bilinear scorer and with scoring free")
    args = parser.parse_args(argv)
    med = split_timings(args.length, args.repeats, args.hidden_size, args.batch_size, what_if=args.what_if)
    rest = med["sab"] - med["sab pass 1"]
    print(f"T = {args.length}, B = {args.batch_size}, H = {args.hidden_size}, medians of {args.repeats}, seconds per step:")
    print("| sab | sab pass 1 | sab replay + backward | bptt_cell | bptt | pass 1 / bptt_cell | sab / bptt_cell | sab / bptt |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {med['sab']:.4f} | {med['sab pass 1']:.4f} | {rest:.4f} | {med['bptt_cell']:.4f} | {med['bptt']:.4f} "
          f"| {med['sab pass 1'] / med['bptt_cell']:.2f} | {med['sab'] / med['bptt_cell']:.2f} | {med['sab'] / med['bptt']:.2f} |")  # fmt: skip
    if args.what_if:
        print("\nsab with another pass-1 scorer, bounded as that pass 1 + the replay as measured (the replay unchanged):")
        print("| pass 1 with | pass 1 | sab bound | sab bound / bptt_cell | sab bound / bptt |")
        print("|---|---|---|---|---|")
        for name in WHAT_IF_SCORERS:
            first = med[f"sab pass 1, {name}"]
            bound = rest + first
            print(f"| {name} | {first:.4f} | {bound:.4f} | {bound / med['bptt_cell']:.2f} | {bound / med['bptt']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
