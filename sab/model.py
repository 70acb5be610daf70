"""SAB-LSTM and the plain LSTM of the baselines (docs/design.md, "The method", steps 1-7).

Both hold their LSTM weights in a one-layer `nn.LSTM`, so the same weights run as the fused
kernel (bptt, tbptt) or step by step (bptt_cell, sab, sab_reference). The input projection
x W_ih + b of every step is one matmul before the loop (as cuDNN does), and the step loops use
the weights of a `ScaledCell` (one sigmoid per step for all four gates).

    model = SABLSTM(input_size=10, hidden_size=64, output_size=10, k_top=3, k_att=5)
    logits, attention = model.infer(x, return_attention=True)   # no_grad inference forward
"""

from __future__ import annotations

import bisect
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sab.sparse_attention import EPS, Scorer, sparse_weights_, top_scores


def lstm_step(gates_x: Tensor, h: Tensor, c: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step from the input gates and W_hh of a `ScaledCell` (PyTorch's gate order i, f, g, o).

    With the cell-gate rows doubled, one sigmoid over all 4H pre-activations gives the four gates:
    tanh z = 2σ(2z) - 1 (a CPU tanh costs ~5x a sigmoid per element).
    """
    sig = torch.sigmoid(torch.addmm(gates_x, h, w_hh.t()))
    i, f, g, o = sig.chunk(4, dim=1)
    c = torch.addcmul(f * c - i, i, g, value=2)  # f c + i (2σ_g - 1)
    return o * torch.tanh(c), c


def lstm_step_(
    gates: Tensor, h: Tensor, c: Tensor, w_hh_t: Tensor, out: tuple[Tensor, Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """`lstm_step` without a graph, overwriting the input gates with their σ: no copy of them, and
    tanh c as 2σ(2c) - 1 (the graph-free loops only; through autograd the extra operations cost more).

    `out` = (h, c, σ(2c)) buffers to write into, for a caller that keeps them (the replay).
    """
    h_out, c_out, sig_2c_out = out if out is not None else (None, None, None)
    sig = gates.addmm_(h, w_hh_t).sigmoid_()
    i, f, g, o = sig.chunk(4, dim=1)
    c = torch.addcmul(f * c - i, i, g, value=2, out=c_out)  # f c + i (2σ_g - 1)
    return torch.addcmul(o.neg(), o, torch.mul(c, 2, out=sig_2c_out).sigmoid_(), value=2, out=h_out), c  # o (2σ(2c) - 1)


@dataclass(frozen=True)
class ScaledCell:
    """The LSTM's weights with the cell-gate rows doubled (see `lstm_step`), built once per forward
    (with the graph back to the parameters when grad is on)."""

    w_ih: Tensor  # (4H, I)
    bias: Tensor  # (4H,): b_ih + b_hh
    w_hh: Tensor  # (4H, H)
    scale: Tensor  # (4H,): 1, 1, 2, 1 per gate block

    def input_gates(self, x: Tensor) -> Tensor:
        """x W_ihᵀ + b of every step at once, scaled: (B, L, I) -> (B, L, 4H)."""
        return torch.addmm(self.bias, x.flatten(0, 1), self.w_ih.t()).view(x.shape[0], x.shape[1], -1)

    def step_major_gates(self, x: Tensor) -> tuple[Tensor, ...]:
        """The same, one contiguous (B, 4H) tensor per step: (B, L, I) -> L x (B, 4H)."""
        steps = x.transpose(0, 1).reshape(-1, x.shape[2])
        return torch.addmm(self.bias, steps, self.w_ih.t()).view(x.shape[1], x.shape[0], -1).unbind(0)


class _Recurrent(nn.Module):
    """The LSTM weights every model shares, with the one-matmul input projection."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def scaled_cell(self) -> ScaledCell:
        """The step loop's weights: one sigmoid per step gives all four gates."""
        lstm, H = self.lstm, self.hidden_size
        scale = lstm.weight_hh_l0.new_ones(4 * H)
        scale[2 * H : 3 * H] = 2
        column = scale.unsqueeze(1)
        return ScaledCell(lstm.weight_ih_l0 * column, (lstm.bias_ih_l0 + lstm.bias_hh_l0) * scale, lstm.weight_hh_l0 * column, scale)

    def zero_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(h_0, c_0) = 0 for the batch of x."""
        zeros = x.new_zeros(x.shape[0], self.hidden_size)
        return zeros, zeros


class LSTMModel(_Recurrent):
    """Plain one-layer LSTM with a linear readout on h_t: the bptt, bptt_cell and tbptt model."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.readout = nn.Linear(hidden_size, output_size)

    @torch.no_grad()
    def infer(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Logits (B, n, O) at `positions` (all steps if None), through the fused LSTM."""
        out, _ = self.lstm(x)
        return self.readout(out if positions is None else out[:, positions])


@dataclass
class FirstPass:
    """What the no-grad forward leaves behind: logits at the scored positions and the engine's records.

    Memories and their keys are batch-major (B, n_mem, ·): memory `slot` of sequence b is row
    b * n_mem + slot of their flat views, the rows `picks` name.
    """

    logits: Tensor  # (B, n_positions, O): readout of [h_t ; s_t] at the scored positions
    bank: Tensor  # (B, n_mem, H): the memories m, in write order
    keys: Tensor  # (B, n_mem, A): their keys W_m m, cached at write time
    starts: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (h, c) entering each k_trunc segment
    picks: Tensor | None = None  # (L, B, k_top+1) int32: the rows picked at every step with |M| > k_top, threshold last
    attention: Tensor | None = None  # (B, L, n_mem): the weights of every step, on request


class SABLSTM(_Recurrent):
    """LSTM whose provisional state attends sparsely to memories of its past states (SAB).

    `k_top=None` makes the attention dense softmax (the LSTM + self-attention baseline, k_att=1).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        output_size: int,
        k_top: int | None = 5,
        k_att: int = 10,
        attn_size: int | None = None,
        scorer_init: str = "zero",
    ) -> None:
        super().__init__(input_size, hidden_size)
        if k_top is not None and k_top < 1:
            raise ValueError(f"k_top must be >= 1 (or None for dense attention), got {k_top}")
        if k_att < 1:
            raise ValueError(f"k_att must be >= 1, got {k_att}")
        self.k_top = k_top
        self.k_att = k_att
        self.replay_group = 1  # the sab engine's segments replayed forward at once (sab.replay)
        self.static_shapes = False  # the sab engine's shape-static path (first_pass, sab.replay): what a CUDA graph needs
        self.attn_size = attn_size or hidden_size
        self.scorer = Scorer(hidden_size, self.attn_size, scorer_init)
        self.readout = nn.Linear(2 * hidden_size, output_size)

    def n_memories(self, length: int) -> int:
        """Memories written over `length` steps: at steps k_att, 2 k_att, ... (1-based)."""
        return length // self.k_att

    @torch.no_grad()
    def infer(self, x: Tensor, positions: Tensor | None = None, return_attention: bool = False):
        """Logits (B, n, O) at `positions` (all if None); with `return_attention` also (B, L, n_mem) weights."""
        run = self.first_pass(x, positions, record_attention=return_attention)
        return (run.logits, run.attention) if return_attention else run.logits

    @torch.no_grad()
    def first_pass(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        k_trunc: int | None = None,
        keep_picks: bool = False,
        record_attention: bool = False,
        static_shapes: bool = False,
    ) -> FirstPass:
        """Run steps 1..L without a graph (docs/design.md, steps 1-7); the sab engine's pass 1.

        With `k_trunc`, keeps the state entering each segment; with `keep_picks`, the
        top-(k_top+1) indices of every step, so pass 2 replays the same selection. Input gates
        and the readout run per block of steps, so nothing of size L x H outlives a block.
        With `static_shapes`, every step scores the whole padded bank, the slots not yet written
        masked to -inf: the same shapes at every step (a CUDA graph's condition), ~2x the scoring.
        """
        B, L, _ = x.shape
        H, A, k_top, k_att = self.hidden_size, self.attn_size, self.k_top, self.k_att
        n_mem = self.n_memories(L)
        scored = _scored_steps(L, positions)
        bank, keys = x.new_zeros(B, n_mem, H), x.new_zeros(B, n_mem, A)
        flat_bank = bank.view(-1, H)
        buffer = x.new_empty(B * n_mem * A)  # scoring works in place here, step after step
        row_of_batch = torch.arange(B, device=x.device).unsqueeze(1) * n_mem
        bag_offsets = torch.arange(0, B * (k_top or 0) + B, (k_top or 0) + 1, device=x.device)  # the 2-D form builds these every step
        picks = torch.zeros(L, B, k_top + 1, dtype=torch.int32, device=x.device) if keep_picks and k_top is not None else None
        pick_rows = picks.unbind(0) if picks is not None else None
        kept_and_eps = x.new_full((B, (k_top or 0) + 2), EPS)  # the sparsifier's scratch: ε in the last column
        attention = x.new_zeros(B, L, n_mem) if record_attention else None
        starts: list[tuple[Tensor, Tensor]] = []
        states: list[Tensor] = []
        summaries: list[Tensor] = []
        logits: list[Tensor] = []
        h, c = self.zero_state(x)
        zero_summary = h
        cell, scorer = self.scaled_cell(), self.scorer.folded()
        w_hh_t = cell.w_hh.t()
        masks = None
        if static_shapes and n_mem:  # row n: 0 on the n written slots, -inf on the rest
            slots = torch.arange(n_mem, device=x.device)
            masks = torch.where(slots < torch.arange(n_mem + 1, device=x.device).unsqueeze(1), 0.0, float("-inf")).to(x.dtype)
        n = 0
        for t in range(L):
            if t % _BLOCK == 0:
                if states:
                    logits.append(self.read_out(states, summaries))
                    states, summaries = [], []
            if k_trunc is not None and t % k_trunc == 0:
                starts.append((h, c))
            if t % _GATES_BLOCK == 0:
                gates_x = cell.step_major_gates(x[:, t : t + _GATES_BLOCK])
            provisional, c = lstm_step_(gates_x[t % _GATES_BLOCK], h, c, w_hh_t)
            if t // k_att != n:  # a memory was written: the views of the first n grow (static: the mask does)
                n = t // k_att
                seen = n_mem if masks is not None else n
                written, scratch, memories = keys[:, :seen], buffer[: B * seen * A].view(B, seen, A), bank[:, :seen]
            if n == 0:
                summary = zero_summary
            else:
                scores = scorer.scores(provisional, written, scratch)
                if masks is not None:
                    scores = scores + masks[n]
                if k_top is None or n <= k_top:
                    weights = torch.softmax(scores, dim=1)
                    summary = torch.bmm(weights.unsqueeze(1), memories).squeeze(1)
                    if attention is not None:
                        attention[:, t, : weights.shape[1]] = weights
                else:
                    values, top = top_scores(scores, k_top)
                    flat = torch.add(top, row_of_batch, out=pick_rows[t] if pick_rows is not None else None)  # rows of the flat bank
                    weights = sparse_weights_(values, kept_and_eps)
                    summary = F.embedding_bag(flat.view(-1), flat_bank, bag_offsets, per_sample_weights=weights.view(-1), mode="sum")
                    if attention is not None:
                        attention[:, t].scatter_(1, top, weights)
            h = provisional + summary
            if scored[t]:
                states.append(h)
                summaries.append(summary)
            if (t + 1) % k_att == 0:
                slot = (t + 1) // k_att - 1
                bank[:, slot] = h
                keys[:, slot] = self.scorer.keys(h)
        if states:
            logits.append(self.read_out(states, summaries))
        return FirstPass(torch.cat(logits, dim=1), bank, keys, starts, picks, attention)

    def read_out(self, states: list[Tensor], summaries: list[Tensor]) -> Tensor:
        """Logits (B, n, O) of [h_t ; s_t] for n steps at once (one concatenation, one matmul)."""
        return self.readout(torch.cat([torch.stack(states, dim=1), torch.stack(summaries, dim=1)], dim=2))


_BLOCK = 64
"""Steps per block of the no-grad forward's readout."""

_GATES_BLOCK = 16
"""Steps per block of the no-grad forward's input projection: small enough that the block stays
in cache while its steps add the recurrent product in place."""


def scored_steps(positions: Tensor) -> list[int]:
    """The scored steps on the host, strictly ascending as every task gives them: segments find their
    columns in this list by bisection. One read-back per new positions tensor: a tensor read before
    and not written since (its `_version`) is answered from the host, so a step that reuses one
    positions tensor (a captured CUDA graph's static batch, `sab.graphs`) reads nothing back."""
    key = id(positions)
    cached = _HOST_POSITIONS.get(key)
    if cached is not None and cached[0]() is positions and cached[1] == positions._version:
        return cached[2]
    scored = positions.tolist()
    if any(a >= b for a, b in zip(scored, scored[1:])):
        raise ValueError(f"scored positions must be strictly ascending, got {scored[:20]}")
    _HOST_POSITIONS[key] = (weakref.ref(positions, lambda _: _HOST_POSITIONS.pop(key, None)), positions._version, scored)
    return scored


_HOST_POSITIONS: dict[int, tuple] = {}
"""id of a positions tensor -> (a weak reference to it, its version when read, its steps on the host);
an entry leaves with its tensor (tensors compare elementwise, so they cannot key a WeakKeyDictionary)."""


def scored_span(scored: list[int], start: int, stop: int) -> tuple[int, int]:
    """The columns [lo, hi) of the ascending scored steps that fall in steps [start, stop): found
    on the host, so a segment needs no `nonzero` (a device read-back) to know its positions."""
    return bisect.bisect_left(scored, start), bisect.bisect_left(scored, stop)


def _scored_steps(length: int, positions: Tensor | None) -> list[bool]:
    """A per-step flag list: is the readout needed at step t?"""
    if positions is None:
        return [True] * length
    flags = [False] * length
    for p in scored_steps(positions):
        flags[p] = True
    return flags
