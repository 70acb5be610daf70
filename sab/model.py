"""SAB-LSTM and the plain LSTM of the baselines (DESIGN "The method", steps 1-7).

Both hold their LSTM weights in a one-layer `nn.LSTM`, so the same weights run as the fused
kernel (bptt, tbptt) or step by step (bptt_cell, sab, sab_reference). The input projection
x W_ih + b of every step is one matmul before the loop (as cuDNN does).

    model = SABLSTM(input_size=10, hidden_size=64, output_size=10, k_top=3, k_att=5)
    logits, attention = model.infer(x, return_attention=True)   # no_grad inference forward
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sab.sparse_attention import Scorer, select_top, sparse_weights


def lstm_step(gates_x: Tensor, h: Tensor, c: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step from precomputed input gates x W_ihᵀ + b (B, 4H); PyTorch's gate order i, f, g, o."""
    gates = torch.addmm(gates_x, h, w_hh.t())
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class _Recurrent(nn.Module):
    """The LSTM weights every model shares, with the one-matmul input projection."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)

    def input_gates(self, x: Tensor) -> Tensor:
        """x W_ihᵀ + b_ih + b_hh for every step at once: (B, L, I) -> (B, L, 4H)."""
        lstm = self.lstm
        return torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, x.flatten(0, 1), lstm.weight_ih_l0.t()).view(
            x.shape[0], x.shape[1], -1
        )

    @property
    def w_hh(self) -> Tensor:
        """The recurrent weight W_hh (4H, H)."""
        return self.lstm.weight_hh_l0

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

    Memories and their keys share one slot-major store (n_mem, B, H + A): writing a memory is
    one contiguous row, and pass 2 reads a memory with its key in a single gather.
    """

    logits: Tensor  # (B, n_positions, O): readout of [h_t ; s_t] at the scored positions
    store: Tensor  # (n_mem, B, H + A): [m ; W_m m] of each memory, in write order
    hidden_size: int
    starts: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (h, c) entering each k_trunc segment
    picks: Tensor | None = None  # (L, B, k_top+1) int32: the pass-1 selection of every step with |M| > k_top
    attention: Tensor | None = None  # (B, L, n_mem): the weights of every step, on request

    @property
    def bank(self) -> Tensor:
        """The memories (n_mem, B, H)."""
        return self.store[..., : self.hidden_size]

    @property
    def keys(self) -> Tensor:
        """Their keys W_m m (n_mem, B, A), cached at write time."""
        return self.store[..., self.hidden_size :]


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
    ) -> None:
        super().__init__(input_size, hidden_size)
        if k_top is not None and k_top < 1:
            raise ValueError(f"k_top must be >= 1 (or None for dense attention), got {k_top}")
        if k_att < 1:
            raise ValueError(f"k_att must be >= 1, got {k_att}")
        self.k_top = k_top
        self.k_att = k_att
        self.attn_size = attn_size or hidden_size
        self.scorer = Scorer(hidden_size, self.attn_size)
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
    ) -> FirstPass:
        """Run steps 1..L without a graph (DESIGN steps 1-7); the sab engine's pass 1.

        With `k_trunc`, keeps the state entering each segment; with `keep_picks`, the
        top-(k_top+1) indices of every step, so pass 2 replays the same selection. Input gates
        and the readout run per block of steps, so nothing of size L x H outlives a block.
        """
        B, L, _ = x.shape
        H, k_top, k_att = self.hidden_size, self.k_top, self.k_att
        n_mem = self.n_memories(L)
        scored = _scored_steps(L, positions)
        store = x.new_zeros(n_mem, B, H + self.attn_size)
        bank, keys = store[..., :H], store[..., H:]
        buffer = x.new_empty(n_mem, B, self.attn_size)  # scoring works in place here, step after step
        batch = torch.arange(B, device=x.device).unsqueeze(1)
        picks = torch.zeros(L, B, k_top + 1, dtype=torch.int32, device=x.device) if keep_picks and k_top is not None else None
        attention = x.new_zeros(B, L, n_mem) if record_attention else None
        starts: list[tuple[Tensor, Tensor]] = []
        states: list[Tensor] = []
        summaries: list[Tensor] = []
        logits: list[Tensor] = []
        h, c = self.zero_state(x)
        zero_summary = h
        for t in range(L):
            if t % _BLOCK == 0:
                gates_x = self.input_gates(x[:, t : t + _BLOCK]).unbind(1)
                if states:
                    logits.append(self.read_out(states, summaries))
                    states, summaries = [], []
            if k_trunc is not None and t % k_trunc == 0:
                starts.append((h, c))
            provisional, c = lstm_step(gates_x[t % _BLOCK], h, c, self.w_hh)
            n = t // k_att
            if n == 0:
                summary = zero_summary
            else:
                scores = self.scorer.slot_major_scores(provisional, keys[:n], buffer[:n])
                if k_top is None or n <= k_top:
                    weights = torch.softmax(scores, dim=1)
                    summary = torch.bmm(weights.unsqueeze(1), bank[:n].transpose(0, 1)).squeeze(1)
                    if attention is not None:
                        attention[:, t, :n] = weights
                else:
                    top = select_top(scores, k_top)
                    if picks is not None:
                        picks[t] = top
                    weights = sparse_weights(scores.gather(1, top))
                    summary = torch.bmm(weights.unsqueeze(1), bank[top[:, :k_top], batch]).squeeze(1)
                    if attention is not None:
                        attention[:, t].scatter_(1, top[:, :k_top], weights)
            h = provisional + summary
            if scored[t]:
                states.append(h)
                summaries.append(summary)
            if (t + 1) % k_att == 0:
                slot = (t + 1) // k_att - 1
                bank[slot] = h
                keys[slot] = self.scorer.keys(h)
        if states:
            logits.append(self.read_out(states, summaries))
        return FirstPass(torch.cat(logits, dim=1), store, H, starts, picks, attention)

    def read_out(self, states: list[Tensor], summaries: list[Tensor]) -> Tensor:
        """Logits (B, n, O) of [h_t ; s_t] for n steps at once (one concatenation, one matmul)."""
        return self.readout(torch.cat([torch.stack(states, dim=1), torch.stack(summaries, dim=1)], dim=2))


_BLOCK = 64
"""Steps per block of the no-grad forward's input projection and readout."""


def _scored_steps(length: int, positions: Tensor | None) -> list[bool]:
    """A per-step flag list: is the readout needed at step t?"""
    if positions is None:
        return [True] * length
    flags = [False] * length
    for p in positions.tolist():
        flags[p] = True
    return flags
