"""Would compiled kernels bring sab within issue #13 item 4's ratios on the CPU? Measured, not guessed:
bptt_cell compiled, and sab's pass 1 compiled, beside the eager engines, in one process.

    python -m benchmarks.compiled_bound            # T = 1000, B = 32, H = 128, k_trunc = k_att = 10, k_top = 5
    python -m benchmarks.compiled_bound --length 300 --repeats 5

Two compiled variants, for this measurement only (no engine uses them; `torch.compile` needs a C++ compiler):
- bptt_cell with each block of k_att LSTM steps compiled as one function (forward and backward fused by
  AOTAutograd): is the eager baseline already at its floor, or would compiling it too move the target?
- sab's pass 1 with each block of k_att sparse steps compiled as one function over the memories so far
  (|M| dynamic: one compilation serves every block): the LSTM step, the scorer over every memory, top-k,
  the sparsifier and the read fused. Its logits are checked against the eager pass 1's.

The bound: a sab step is pass 1 plus the replay, and the replay does a bptt_cell step's whole arithmetic
(the recurrent products forward and back, the W_hh gradient) plus the attention's. So however it is
compiled, sab >= compiled pass 1 + the faster of bptt_cell eager and compiled. Medians of interleaved
repetitions, one thread, after training steps (a fresh scorer scores every memory alike).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch import Tensor

from benchmarks.cost import CostConfig
from benchmarks.cost_worker import Worker
from benchmarks.sab_split import add_size_arguments, interleaved_medians
from sab.credit import StepResult, _loss, training_step
from sab.model import SABLSTM, LSTMModel, lstm_step
from sab.sparse_attention import attention_weights, sparse_weights
from sab.tasks.base import Batch, PositionLoss


def cell_block(gates: Tensor, h: Tensor, c: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`lstm_step` over a block of steps' input gates (k, B, 4H): the states (B, k, H) and the last (h, c)."""
    states = []
    for j in range(gates.shape[0]):
        h, c = lstm_step(gates[j], h, c, w_hh)
        states.append(h)
    return torch.stack(states, dim=1), h, c


def sparse_block(k_top: int) -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """A block of pass-1 steps that read n > k_top memories through the sparsifier (the arithmetic of
    `SABLSTM.first_pass` and `FoldedScorer.scores`, written functionally): states, summaries (k, B, H),
    picks (k, B, k_top+1) and the last (h, c). k_top is closed over, a constant of the compilation."""

    def block(
        gates: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, bank: Tensor, keys: Tensor, query_weight2: Tensor, query_bias2: Tensor,
        weight2: Tensor, minus_weight_sum: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
        states, summaries, picks = [], [], []
        for j in range(gates.shape[0]):
            provisional, c = lstm_step(gates[j], h, c, w_hh)
            doubled_query = torch.addmm(query_bias2, provisional, query_weight2.t())
            scores = (torch.sigmoid(doubled_query.unsqueeze(1) + 2 * keys) @ weight2).squeeze(2) + minus_weight_sum
            values, top = torch.topk(scores, k_top + 1, dim=1)
            picked = torch.gather(bank, 1, top.unsqueeze(2).expand(-1, -1, bank.shape[2]))
            summary = torch.bmm(sparse_weights(values).unsqueeze(1), picked).squeeze(1)
            h = provisional + summary
            states.append(h)
            summaries.append(summary)
            picks.append(top)
        return torch.stack(states), torch.stack(summaries), torch.stack(picks), h, c

    return block


class CompiledBlocks:
    """The two compiled functions for one k_top, made once (each compiles on its first call)."""

    def __init__(self, k_top: int) -> None:
        self.cell = torch.compile(cell_block, dynamic=False, fullgraph=True)
        # |M| marked dynamic, the rest static: one compilation for every block (`dynamic=True` makes
        # every size and int symbolic, which here ran the block ~1.5x slower)
        self._sparse = torch.compile(sparse_block(k_top), dynamic=None, fullgraph=True)

    def sparse(self, *args: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The compiled `sparse_block` on (gates, h, c, w_hh, bank, keys, ...), |M| symbolic."""
        for memories in args[4:6]:  # the bank and the keys
            torch._dynamo.mark_dynamic(memories, 1)
        return self._sparse(*args)


def bptt_cell_in_blocks(block: Callable, k: int) -> Callable[..., StepResult]:
    """bptt_cell's engine (one graph, one backward) with its loop run `k` steps per call of `block`."""

    def engine(model: LSTMModel, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None = None, meter=None) -> StepResult:
        x = batch.inputs
        cell = model.scaled_cell()
        gates = cell.input_gates(x).transpose(0, 1).contiguous().split(k)  # one backward node for all blocks
        h, c = model.zero_state(x)
        states = []
        for block_gates in gates:
            block_states, h, c = block(block_gates, h, c, cell.w_hh)
            states.append(block_states)
        loss, logits = _loss(model, torch.cat(states, dim=1)[:, batch.positions], batch, slice(None), loss_fn)
        loss.backward()
        return StepResult(loss.detach(), logits.detach())

    return engine


@torch.no_grad()
def pass_one_in_blocks(model: SABLSTM, x: Tensor, positions: Tensor, block: Callable) -> Tensor:
    """sab's pass 1 with every block of k_att sparse steps one call of `block` (the first blocks, with
    |M| <= k_top, run eagerly); the memories, keys and block start states kept as the engine keeps them.
    Returns the logits at `positions`."""
    B, L, _ = x.shape
    H, k_att, k_top = model.hidden_size, model.k_att, model.k_top
    n_mem = model.n_memories(L)
    bank, keys = x.new_zeros(B, n_mem, H), x.new_zeros(B, n_mem, model.attn_size)
    cell, scorer = model.scaled_cell(), model.scorer.folded()
    gates = cell.input_gates(x).transpose(0, 1)
    h, c = model.zero_state(x)
    starts, states, summaries, picks = [], [], [], []
    for start in range(0, L, k_att):
        starts.append((h, c))
        n = start // k_att  # memories written before this block
        block_gates = gates[start : start + k_att]
        if n > k_top:
            block_states, block_summaries, block_picks, h, c = block(
                block_gates, h, c, cell.w_hh, bank[:, :n], keys[:, :n],
                scorer.query_weight2, scorer.query_bias2, scorer.weight2, scorer.minus_weight_sum,
            )  # fmt: skip
            states += block_states.unbind(0)
            summaries += block_summaries.unbind(0)
            picks.append(block_picks)
        else:
            for step_gates in block_gates:
                provisional, c = lstm_step(step_gates, h, c, cell.w_hh)
                summary = torch.zeros_like(provisional)
                if n:
                    weights = attention_weights(model.scorer(provisional, keys[:, :n]), k_top)
                    summary = torch.bmm(weights.unsqueeze(1), bank[:, :n]).squeeze(1)
                h = provisional + summary
                states.append(h)
                summaries.append(summary)
        if start + k_att <= n_mem * k_att:
            bank[:, n] = h
            keys[:, n] = model.scorer.keys(h)
    features = torch.cat([torch.stack(states, dim=1), torch.stack(summaries, dim=1)], dim=2)[:, positions]
    return model.readout(features)


def bound_timings(length: int, repeats: int, hidden_size: int = 128, batch_size: int = 32, k_trunc: int = 10,
                  k_att: int = 10, k_top: int = 5, train_steps: int = 3) -> dict[str, float]:  # fmt: skip
    """Median seconds of the eager sab, bptt_cell and bptt steps, sab's eager pass 1, bptt_cell with
    compiled blocks and pass 1 with compiled blocks; plus "logits gap", the largest difference of the
    compiled pass 1's logits from the eager's (after `train_steps` sab steps)."""
    sizes = {"hidden_size": hidden_size, "batch_size": batch_size, "k_trunc": k_trunc, "k_att": k_att, "k_top": k_top}
    sab, cell, bptt = (Worker(asdict(CostConfig(method, length, **sizes))) for method in ("sab", "bptt_cell", "bptt"))  # one thread, CPU
    for _ in range(train_steps):
        sab.step()
    compiled = CompiledBlocks(k_top)
    inputs, positions = sab.batch.inputs, sab.batch.positions
    gap = (pass_one_in_blocks(sab.model, inputs, positions, compiled.sparse) - sab.model.first_pass(inputs, positions).logits).abs().max()
    cell_engine = bptt_cell_in_blocks(compiled.cell, k_att)
    jobs: dict[str, Callable[[], object]] = {
        "sab": sab.step,
        "sab pass 1": lambda: sab.model.first_pass(inputs, positions, k_trunc=k_trunc, keep_picks=True),
        "sab pass 1 compiled": lambda: pass_one_in_blocks(sab.model, inputs, positions, compiled.sparse),
        "bptt_cell": cell.step,
        "bptt_cell compiled": lambda: training_step(cell_engine, cell.model, cell.optimizer, cell.batch, cell.loss, k_trunc),
        "bptt": bptt.step,
    }
    medians = interleaved_medians(jobs, repeats)
    return {**medians, "logits gap": float(gap)}


def main(argv: list[str] | None = None) -> int:
    """Print the compiled and eager timings and the bound they set on sab / bptt_cell and sab / bptt."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compiled_bound", description=__doc__.split("\n")[0])
    add_size_arguments(parser)
    parser.add_argument("--k-trunc", type=int, default=10)
    parser.add_argument("--k-att", type=int, default=10, help="memory interval, and the steps of a compiled block")
    parser.add_argument("--k-top", type=int, default=5)
    args = parser.parse_args(argv)
    med = bound_timings(args.length, args.repeats, args.hidden_size, args.batch_size, args.k_trunc, args.k_att, args.k_top)
    floor = min(med["bptt_cell"], med["bptt_cell compiled"])
    bound = med["sab pass 1 compiled"] + floor
    replay = med["sab"] - med["sab pass 1"]
    print(f"T = {args.length}, B = {args.batch_size}, H = {args.hidden_size}, medians of {args.repeats}, seconds per step; "
          f"compiled pass 1's logits within {med['logits gap']:.1e} of the eager pass 1's:")  # fmt: skip
    print("| bptt | bptt_cell | bptt_cell compiled | sab | sab pass 1 | sab pass 1 compiled | compiled / eager pass 1 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {med['bptt']:.4f} | {med['bptt_cell']:.4f} | {med['bptt_cell compiled']:.4f} | {med['sab']:.4f} | {med['sab pass 1']:.4f} "
          f"| {med['sab pass 1 compiled']:.4f} | {med['sab pass 1 compiled'] / med['sab pass 1']:.2f} |")  # fmt: skip
    print("\n| sab with | seconds | / bptt_cell (the faster) | / bptt |")
    print("|---|---|---|---|")
    for name, value in (("eager (as measured)", med["sab"]), ("pass 1 compiled, the replay as measured", med["sab pass 1 compiled"] + replay),
                        ("pass 1 compiled, the replay at bptt_cell's floor (the bound)", bound)):  # fmt: skip
        print(f"| {name} | {value:.4f} | {value / floor:.2f} | {value / med['bptt']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
