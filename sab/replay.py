"""Pass 2 of the two-pass `sab` engine: the k_trunc segments, last to first, each recomputed
without a graph and differentiated by hand (docs/design.md, "The two-pass engine").

Why by hand: a replayed step is some 25 small tensor operations, and through autograd each one
also costs a graph node and a backward call, which on a CPU outweighs the arithmetic. Here a
segment's forward writes what its backward needs into buffers allocated once, everything of the
backward that does not depend on the step after is computed for all steps at once, and the
sequential part is ~9 operations a step.

Replay groups: a segment's forward needs only its start state and the bank, both known from pass
1, so `group` segments (full ones whose steps all read through the sparsifier) run their forward
as one batch of group x B rows: its ~20 operations a step serve them all. Their chains then run one
segment at a time, last first, as G requires. A group holds that many segments' records at once:
memory for launches, the default on a GPU (REPLAY_GROUP), not on the CPU (benchmarks/README.md).

Forward of step t (weights of a `ScaledCell`: one sigmoid gives the four gates):
    σ = sigmoid(gx_t + h_{t-1} W_hhᵀ);  i, f, σ_g, o = σ;  g = 2σ_g - 1
    c_t = f c_{t-1} + i g;  ĥ = o tanh c_t = o (2σ(2c_t) - 1)
    M, K: the m = k_top+1 picked memories and their keys;  q = 2(ĥ W_qᵀ + b_q);  Z = σ(q + 2K)
    d = Z (2w) - Σw;  a = r / S with r = relu(d - d_last), S = Σ r + ε
        (while |M| <= k_top: a = softmax(d) over all memories, padded to m with weight 0)
    s = Σ_j a_j M_j;  h_t = ĥ + s;  logits = [h_t ; s] W_oᵀ + b_o
Backward of step t, given dh (from step t+1, the readout, and G of the memory h_t wrote):
    ds = dh + dreadout_s;  da_j = <ds, M_j>;  dd = da C  with C = (I - a 1ᵀ) diag(ρ) P, where
        sparse: ρ = [r > 0] / S and P puts -Σ on the threshold column (δ = d_last);  softmax: ρ = a, P = I
    dq' = Σ_j dd_j Zw_j = da (C Zw) with Zw = 4w Z (1 - Z) (dq' = 2 dL/dq);  dĥ = dh + dq' W_q
        (the chain needs only da and C Zw; dd itself is taken for all steps at once, for G and w)
    dc = dc_{t+1} + dĥ o (1 - tanh² c_t);  dgates = [dc, dc, dc, dĥ] ⊙ F with
        F = [g, c_{t-1}, 2i, tanh c_t] ⊙ σ(1 - σ);  dh_{t-1} = dgates W_hh;  dc_{t-1} = dc f
Reads add dM_j = a_j ds and dK_j = dd_j Zw_j into G at the memory's row; the step that wrote
memory `slot` adds G_M[slot] + G_K[slot] W_m to its dh. Steps run in reverse, so G is complete
when it is read. dlogits come with pass 1's logits (the loss of a position needs only its logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sab.model import SABLSTM, FirstPass, lstm_step_, scored_span, scored_steps
from sab.sparse_attention import EPS


class _Context:
    """What every segment shares: folded weights, the pass-1 record, G and the parameter gradients."""

    def __init__(self, model: SABLSTM, inputs: Tensor, run: FirstPass, dlogits: Tensor) -> None:
        if model.k_top is None:
            raise ValueError("the sab engine needs k_top >= 1; dense attention is the self_attention method")
        self.inputs, self.run, self.dlogits = inputs, run, dlogits
        self.B, self.L = inputs.shape[0], inputs.shape[1]
        self.H, self.A, self.m, self.n_mem = model.hidden_size, model.attn_size, model.k_top + 1, run.bank.shape[1]
        self.k_top, self.k_att = model.k_top, model.k_att
        self.cell, scorer = model.scaled_cell(), model.scorer
        self.scorer, self.q_weight, self.w4 = scorer.folded(), scorer.query.weight, scorer.weight * 4
        self.w_m, self.w_out = scorer.key.weight, model.readout.weight
        self.row_of_batch = torch.arange(self.B, device=inputs.device).unsqueeze(1) * self.n_mem  # flat row of slot 0
        self.grad_memories, self.grad_keys = torch.zeros_like(run.bank), torch.zeros_like(run.keys)  # G_M, G_K
        self.eye = torch.eye(self.m, dtype=inputs.dtype, device=inputs.device)
        self.model = model
        self.grads = _ParameterGrads.zeros_for(model)
        self.dx = torch.zeros_like(inputs) if inputs.requires_grad else None

    def backward(self) -> None:
        """Hand the summed gradients to autograd (hooks, accumulation into `.grad`); the LSTM's come
        in the scaled gate space, w's for its doubled form."""
        g, model, lstm, scorer = self.grads, self.model, self.model.lstm, self.model.scorer
        column = self.cell.scale.unsqueeze(1)
        bias = g.bias * self.cell.scale
        pairs = [
            (lstm.weight_ih_l0, g.w_ih * column), (lstm.bias_ih_l0, bias), (lstm.bias_hh_l0, bias), (lstm.weight_hh_l0, g.w_hh * column),
            (scorer.query.weight, g.w_q), (scorer.query.bias, g.b_q), (scorer.weight, g.w * 2), (scorer.key.weight, g.w_m),
            (model.readout.weight, g.w_out), (model.readout.bias, g.b_out),
        ]  # fmt: skip
        if self.dx is not None:
            pairs.append((self.inputs, self.dx))
        with torch.enable_grad():
            torch.autograd.backward([t for t, _ in pairs], [d for _, d in pairs])


@dataclass
class _ParameterGrads:
    """The replay's running parameter gradients, by name. The LSTM's are in the scaled gate space
    (one bias for b_ih and b_hh, which share it); w's is for its doubled form (see `backward`)."""

    w_ih: Tensor
    bias: Tensor
    w_hh: Tensor
    w_q: Tensor
    b_q: Tensor
    w: Tensor
    w_m: Tensor
    w_out: Tensor
    b_out: Tensor

    @classmethod
    def zeros_for(cls, model: SABLSTM) -> _ParameterGrads:
        lstm, scorer = model.lstm, model.scorer
        return cls(
            w_ih=torch.zeros_like(lstm.weight_ih_l0.t()).t(),  # summed as (I, 4H): a small-N product is ~4x slower
            bias=torch.zeros_like(lstm.bias_ih_l0),
            w_hh=torch.zeros_like(lstm.weight_hh_l0),
            w_q=torch.zeros_like(scorer.query.weight),
            b_q=torch.zeros_like(scorer.query.bias),
            w=torch.zeros_like(scorer.weight),
            w_m=torch.zeros_like(scorer.key.weight),
            w_out=torch.zeros_like(model.readout.weight),
            b_out=torch.zeros_like(model.readout.bias),
        )


@torch.no_grad()
def replay(
    model: SABLSTM,
    inputs: Tensor,
    positions: Tensor,
    dlogits: Tensor,
    k_trunc: int,
    run: FirstPass,
    meter,
    group: int = 1,
    every_segment: bool = False,
) -> None:
    """Fill `.grad` with SAB's gradient from the pass-1 record `run` and the loss gradient `dlogits`
    (B, n_positions, O) at the scored positions.

    `group` segments are replayed forward together (their start states and the bank are known from
    pass 1): a replayed step's ~20 operations then serve `group` segments at once, for `group`
    segments' records held at once (a memory-for-launches trade; the chain stays one segment at a time).
    `every_segment` replays the segments that get no credit too (exact zeros) instead of reading
    the picks back to find them: the same work at every step, as a CUDA graph needs.
    """
    if group < 1:
        raise ValueError(f"replay group must be >= 1, got {group}")
    ctx = _Context(model, inputs, run, dlogits)
    buffers = _Buffers(ctx, min(k_trunc, ctx.L), group)
    meter.hold(ctx.grad_memories, ctx.grad_keys, *buffers.tensors())
    scored = scored_steps(positions)  # the step's one read-back of positions; every segment's span comes from it
    if every_segment:
        live = [True] * len(run.starts)
    else:
        live = _segments_with_credit(run, scored, ctx.L, k_trunc, ctx.k_att, ctx.k_top, ctx.n_mem)
    for members in _groups(live, ctx.L, k_trunc, (ctx.k_top + 1) * ctx.k_att, group):
        replayed = _Group(ctx, buffers, [(s * k_trunc, min(ctx.L, (s + 1) * k_trunc)) for s in members])
        replayed.forward([run.starts[s] for s in members])
        replayed.derive()
        for index in reversed(range(len(members))):  # the chain: the group's last segment first
            start, stop = replayed.spans[index]
            lo, hi = scored_span(scored, start, stop)
            replayed.backward(index, replayed.readout(index, scored[lo:hi], positions[lo:hi], slice(lo, hi)))
        replayed.parameter_gradients()
    meter.release(ctx.grad_memories, ctx.grad_keys, *buffers.tensors())
    ctx.backward()


REPLAY_GROUP = {"cpu": 1, "cuda": 16}
"""Segments replayed forward at once by default, per device type: on a GPU launches cost more
than the records of 16 segments (benchmarks/README.md, "Launches"); on the CPU, see there too."""


def default_replay_group(device: torch.device) -> int:
    """The replay group a model on `device` gets unless its spec names one."""
    return REPLAY_GROUP.get(device.type, 1)


def set_engine_options(model: SABLSTM, device: torch.device, replay_group: int | None, static_shapes: bool, graphed: bool = False) -> None:
    """The sab engine's execution options on a model: the replay group (None: the device's default)
    and the shape-static path, which a graphed step (sab.graphs) always takes: a graph replays one
    shape of work. A trial and the cost benchmark set them the same way."""
    model.replay_group = replay_group or default_replay_group(device)
    model.static_shapes = static_shapes or graphed


SORTED_CREDIT_DEVICES = {"cuda"}
"""Device types on which G's credit is summed by `index_put_(accumulate=True)` instead of `index_add_`.
Tests and benchmarks.launches add "cpu" to run the GPU's path here; benchmarks.parity removes "cuda"
to measure what index_add_'s atomics change between two runs."""


def accumulate_rows(target: Tensor, rows: Tensor, values: Tensor) -> None:
    """target[rows[i]] += values[i], rows repeating (a memory read at many steps). On CUDA `index_add_`
    adds with atomics in no fixed order, so two runs of one step differ in their last bits;
    `index_put_(accumulate=True)` sorts the rows stably and sums each row's values in that order
    (what torch's deterministic mode makes of index_add_): the same bits every run. On the CPU
    `index_add_` is sequential, deterministic already, and cheaper."""
    if target.device.type in SORTED_CREDIT_DEVICES:
        target.index_put_((rows,), values, accumulate=True)
    else:
        target.index_add_(0, rows, values)


def _groups(live: list[bool], L: int, k_trunc: int, sparse_from: int, group: int) -> list[list[int]]:
    """The live segments in replay order (last first), in groups of up to `group` ascending indices.

    Only full segments whose every step reads through the sparsifier (from step (k_top+1) k_att on)
    share a group: their steps all take the same path. The others are replayed alone.
    """
    groups: list[list[int]] = []
    pending: list[int] = []
    for segment in reversed(range(len(live))):
        if not live[segment]:
            continue
        start, stop = segment * k_trunc, (segment + 1) * k_trunc
        if group > 1 and stop <= L and start >= sparse_from:
            pending.append(segment)
            if len(pending) == group:
                groups.append(pending[::-1])
                pending = []
            continue
        if pending:
            groups.append(pending[::-1])
            pending = []
        groups.append([segment])
    if pending:
        groups.append(pending[::-1])
    return groups


def _segments_with_credit(run: FirstPass, scored: list[int], L: int, k_trunc: int, k_att: int, k_top: int, n_mem: int) -> list[bool]:
    """Which segments the backward sweep must replay, decided on the host from pass 1's picks (one
    read-back per training step, not one per segment): a segment is live when it holds a scored
    step or writes a memory that a read in a later live segment gave credit to. In a live
    segment, the reads from its first step to its last source of gradient (a scored step or a
    credited memory's write) give credit: to the memories they picked (the threshold included),
    or to every memory while |M| <= k_top. The same segments the device's gradients would mark."""
    picks = (run.picks.long() % max(n_mem, 1)).cpu().numpy() if run.picks is not None and n_mem else None
    credited = np.zeros(max(n_mem, 1), dtype=bool)
    segments = (L + k_trunc - 1) // k_trunc
    live = [False] * segments
    scored_set = set(scored)
    for segment in reversed(range(segments)):
        start, stop = segment * k_trunc, min(L, (segment + 1) * k_trunc)
        sources = [t for t in range(start, stop) if t in scored_set or ((t + 1) % k_att == 0 and credited[(t + 1) // k_att - 1])]
        if not sources:
            continue
        live[segment] = True
        for t in range(start, max(sources) + 1):
            n = t // k_att  # memories when step t reads
            if n == 0:
                continue
            if n <= k_top or picks is None:
                credited[:n] = True
            else:
                credited[picks[t].ravel()] = True
    return live


class _Buffers:
    """Room for one group's replay, allocated once and reused by every group: `layout(G)` shapes
    it for G segments, k steps of G x B rows each (segment g at rows g B .. (g+1) B), contiguous
    from the start of each buffer whatever G is."""

    def __init__(self, ctx: _Context, k: int, group: int) -> None:
        H, A, m = ctx.H, ctx.A, ctx.m
        self.k, self.B = k, ctx.B
        self.shapes = {  # name: (steps, the shape of one row)
            "sig": (k, (4, H)),  # σ of the gates
            "slope": (k, (4, H)),  # σ (1 - σ)
            "cells": (k + 1, (H,)),  # c entering each step, then the last c
            "sig_2c": (k, (H,)),  # σ(2c): tanh c = 2σ(2c) - 1
            "provisional": (k, (H,)),
            "summaries": (k, (H,)),
            "hs": (k + 1, (H,)),  # h entering each step, then the last h
            "cell_factor": (k, (H,)),
            "gate_factors": (k, (4, H)),
            "memories": (k, (m, H)),
            "keys": (k, (m, A)),
            "z": (k, (m, A)),
            "attention_factor": (k, (m, A)),
            "kept": (k, (m + 1,)),  # relu(d - δ), then ε: one sum gives the normaliser
            "norm": (k, (1,)),
            "weights": (k, (m,)),
            "jacobian": (k, (m, m)),
            "query_factor": (k, (m, A)),  # C Zw: dq' straight from da
            "dsummaries": (k, (H,)),
            "dweights": (k, (1, m)),
            "dscores": (k, (1, m)),
            "dqueries": (k, (1, A)),
            "dgates": (k, (4, H)),
        }
        rows = group * ctx.B
        self.storage = {name: ctx.inputs.new_empty(steps * rows * int(np.prod(row))) for name, (steps, row) in self.shapes.items()}
        self.storage["kept"].fill_(EPS)  # rows of m + 1 whatever the layout: the last column stays ε
        self.layouts: dict[int, _Layout] = {}

    def layout(self, segments: int) -> _Layout:
        """The buffers shaped for a group of `segments` segments (made once per size)."""
        if segments not in self.layouts:
            self.layouts[segments] = _Layout(self, segments)
        return self.layouts[segments]

    def tensors(self) -> list[Tensor]:
        """Every buffer, for the memory meter."""
        return list(self.storage.values())


class _Layout:
    """The buffers as (steps, G B, ...) tensors, with per-step views of all rows (the group's
    forward) and of each segment's rows (its chain)."""

    def __init__(self, buffers: _Buffers, segments: int) -> None:
        rows = segments * buffers.B
        for name, (steps, row) in buffers.shapes.items():
            size = steps * rows * int(np.prod(row))
            setattr(self, name, buffers.storage[name][:size].view(steps, rows, *row))
        self.all = _Views(self, slice(None))
        self.segment = [_Views(self, slice(g * buffers.B, (g + 1) * buffers.B)) for g in range(segments)] if segments > 1 else [self.all]


class _Views:
    """Per-step views of a layout's `rows` (contiguous: the rows of one step are a block)."""

    def __init__(self, b: _Layout, rows: slice) -> None:
        steps = lambda t: t[:, rows].unbind(0)  # noqa: E731
        H = b.sig.shape[3]
        self.s_sig = [v.view(v.shape[0], 4 * H) for v in steps(b.sig)]
        self.s_f = steps(b.sig[:, :, 1])  # the forget gate, for dc_{t-1} = dc f
        self.s_cells, self.s_sig_2c, self.s_provisional, self.s_hs = steps(b.cells), steps(b.sig_2c), steps(b.provisional), steps(b.hs)
        self.s_summaries, self.s_summary_rows = steps(b.summaries), steps(b.summaries.unsqueeze(2))
        self.s_memories, self.s_keys, self.s_z = steps(b.memories), steps(b.keys), steps(b.z)
        self.s_memory_columns = steps(
            b.memories.transpose(2, 3)
        )  # (B, H, m): <ds, M_j> as a row times columns (a bmm with N=1 is ~3x slower)
        self.s_kept, self.s_norm, self.s_weights = steps(b.kept), steps(b.norm), steps(b.weights)
        self.s_weight_rows = steps(b.weights.unsqueeze(2))
        self.s_query_factor = steps(b.query_factor)
        self.s_dsummaries, self.s_dsummary_rows = steps(b.dsummaries), steps(b.dsummaries.unsqueeze(2))
        self.s_dweights, self.s_dqueries = steps(b.dweights), steps(b.dqueries)
        self.s_dquery_rows = [v.view(v.shape[0], -1) for v in self.s_dqueries]
        self.s_dgates_ifg, self.s_dgates_o = steps(b.dgates[:, :, :3]), steps(b.dgates[:, :, 3])
        self.s_dgates_flat = [v.view(v.shape[0], 4 * H) for v in steps(b.dgates)]
        self.s_cell_factor, self.s_factors_o = steps(b.cell_factor), steps(b.gate_factors[:, :, 3])
        self.s_factors_ifg = steps(b.gate_factors[:, :, :3])


class _Group:
    """Up to `group` segments replayed over the shared buffers: one forward for all, batched
    factors for all, then each segment's chain, then every parameter gradient in one product each."""

    def __init__(self, ctx: _Context, buffers: _Buffers, spans: list[tuple[int, int]]) -> None:
        self.ctx, self.spans = ctx, spans
        self.k = spans[0][1] - spans[0][0]  # a group of several holds full segments only
        G, B, k, m = len(spans), ctx.B, self.k, ctx.m
        self.rows = G * B
        self.b = b = buffers.layout(G)
        inputs = ctx.inputs.detach()
        if G == 1:
            self.x = inputs[:, spans[0][0] : spans[0][1]].transpose(0, 1).reshape(k * B, -1)  # (k B, I)
        else:
            self.x = torch.stack([inputs[:, a:b] for a, b in spans]).permute(2, 0, 1, 3).reshape(k * G * B, -1)  # (k G B, I)
        torch.addmm(ctx.cell.bias, self.x, ctx.cell.w_ih.t(), out=b.sig[:k].view(k * self.rows, -1))  # the input gates
        start = spans[0][0]
        self.first = min(k, max(0, ctx.k_att - start))  # steps from `first` on read a memory (0 in a group of several)
        self.softmax_end = self.first  # steps [first, softmax_end) read all |M| <= k_top memories
        self.pads: dict[int, Tensor] = {}
        if G == 1:
            flat = ctx.run.picks[start : spans[0][1]].long()  # pass-1 picks (zeros where |M| <= k_top)
            slots = torch.arange(m, device=flat.device)
            for j in range(self.first, k):
                n = (start + j) // ctx.k_att
                if n > ctx.k_top:
                    break
                flat[j] = ctx.row_of_batch + slots.clamp(max=n - 1)
                self.pads[j] = torch.where(slots < n, 0.0, float("-inf")).to(ctx.inputs.dtype)
                self.softmax_end = j + 1
            self.flats = [flat[self.first :]]  # each segment's picks from `first` on, (steps, B, m)
            gathered = self.flats[0].flatten()
        else:
            self.flats = [ctx.run.picks[a:b].long() for a, b in spans]
            gathered = torch.stack(self.flats, dim=1).flatten()  # (k, G, B, m): the buffers' row order
        span = slice(self.first, k)
        torch.index_select(ctx.run.bank.view(-1, ctx.H), 0, gathered, out=b.memories[span].view(-1, ctx.H))
        torch.index_select(ctx.run.keys.view(-1, ctx.A), 0, gathered, out=b.keys[span].view(-1, ctx.A))

    def forward(self, starts: list[tuple[Tensor, Tensor]]) -> None:
        """Recompute the group's steps from its segments' start states, keeping what the backward needs."""
        ctx, v = self.ctx, self.b.all
        w_hh_t = ctx.cell.w_hh.t()
        if len(starts) == 1:
            h, c = starts[0]
            v.s_hs[0].copy_(h)
            v.s_cells[0].copy_(c)
        else:
            h, c = torch.cat([h for h, _ in starts], out=v.s_hs[0]), torch.cat([c for _, c in starts], out=v.s_cells[0])
        for j in range(self.k):  # the input gates in sig become their σ
            provisional, c = lstm_step_(v.s_sig[j], h, c, w_hh_t, out=(v.s_provisional[j], v.s_cells[j + 1], v.s_sig_2c[j]))
            if j < self.first:
                h = v.s_hs[j + 1].copy_(provisional)
                v.s_summaries[j].zero_()
                continue
            scores = ctx.scorer.scores(provisional, v.s_keys[j], v.s_z[j])  # z keeps Z = σ(q + 2K)
            if j < self.softmax_end:
                v.s_weights[j].copy_(torch.softmax(scores + self.pads[j], dim=1))
            else:
                kept = torch.sub(scores, scores[:, -1:], out=v.s_kept[j][:, :-1]).relu_()
                torch.div(kept, torch.sum(v.s_kept[j], dim=1, keepdim=True, out=v.s_norm[j]), out=v.s_weights[j])  # Σ + ε
            torch.bmm(v.s_weight_rows[j], v.s_memories[j], out=v.s_summary_rows[j])
            h = torch.add(provisional, v.s_summaries[j], out=v.s_hs[j + 1])

    def derive(self) -> None:
        """The backward's per-step factors that do not depend on the chain, for all steps and segments at once."""
        b, k, lo = self.b, self.k, self.first
        sig, slope, factors = b.sig[:k], b.slope[:k], b.gate_factors[:k]
        tanh_c, o = torch.mul(b.sig_2c[:k], 2).sub_(1), sig[:, :, 3]
        torch.addcmul(o, o * tanh_c, tanh_c, value=-1, out=b.cell_factor[:k])  # o (1 - tanh² c)
        torch.addcmul(sig, sig, sig, value=-1, out=slope)
        torch.mul(sig[:, :, 2], 2, out=factors[:, :, 0]).sub_(1).mul_(slope[:, :, 0])  # g
        torch.mul(b.cells[:k], slope[:, :, 1], out=factors[:, :, 1])  # c_{t-1}
        torch.mul(sig[:, :, 0], slope[:, :, 2], out=factors[:, :, 2]).mul_(2)  # 2i
        torch.mul(tanh_c, slope[:, :, 3], out=factors[:, :, 3])
        if lo == k:
            return
        z = b.z[lo:k]
        zw = torch.addcmul(z, z, z, value=-1, out=b.attention_factor[lo:k]).mul_(self.ctx.w4)  # Zw = 4w Z (1 - Z)
        weights, rho = b.weights[lo:k], (b.kept[lo:k, :, :-1] > 0).to(z.dtype).div_(b.norm[lo:k])
        rho[: self.softmax_end - lo] = weights[: self.softmax_end - lo]
        jacobian = torch.mul(self.ctx.eye - weights.unsqueeze(3), rho.unsqueeze(2), out=b.jacobian[lo:k])  # (I - a 1ᵀ) diag(ρ)
        sparse = jacobian[self.softmax_end - lo :]
        sparse[..., -1] = -sparse.sum(dim=3)  # P: the threshold's column (its own ρ is 0)
        n, R, m = k - lo, self.rows, self.ctx.m
        torch.bmm(jacobian.view(n * R, m, m), zw.view(n * R, m, -1), out=b.query_factor[lo:k].view(n * R, m, -1))

    def readout(self, index: int, scored: list[int], positions: Tensor, columns: slice) -> dict[int, tuple[Tensor, Tensor]]:
        """The readout's gradients from pass 1's dlogits; returns d[h_t ; s_t] of each scored step of
        segment `index` (`scored` on the host, the same steps as `positions` on the device, `columns` of dlogits)."""
        if not scored:
            return {}
        ctx, H, rows = self.ctx, self.ctx.H, self._rows(index)
        steps = positions - self.spans[index][0]
        dlogits = ctx.dlogits[:, columns].transpose(0, 1).reshape(-1, ctx.dlogits.shape[2])  # (n B, O)
        states = self.b.hs[:, rows].index_select(0, steps + 1).view(-1, H)
        summaries = self.b.summaries[:, rows].index_select(0, steps).view(-1, H)
        d_w_out, d_b_out = ctx.grads.w_out, ctx.grads.b_out
        d_w_out[:, :H].addmm_(dlogits.t(), states)
        d_w_out[:, H:].addmm_(dlogits.t(), summaries)
        d_b_out.add_(dlogits.sum(dim=0))
        dstates = (dlogits @ ctx.w_out[:, :H]).view(len(scored), ctx.B, H).unbind(0)
        dsummaries = (dlogits @ ctx.w_out[:, H:]).view(len(scored), ctx.B, H).unbind(0)
        return {t: pair for t, pair in zip(scored, zip(dstates, dsummaries))}

    def _rows(self, index: int) -> slice:
        """Segment `index`'s rows of every step."""
        return slice(index * self.ctx.B, (index + 1) * self.ctx.B)

    def backward(self, index: int, readout: dict[int, tuple[Tensor, Tensor]]) -> None:
        """Segment `index`'s chain from its last step to its first; G gets the reads' credit."""
        ctx, b, H = self.ctx, self.b.segment[index], self.ctx.H
        start, stop = self.spans[index]
        last = readout.get(stop - 1)  # nothing crosses the segment's end: dh starts as the last step's readout
        dh = last[0] if last is not None else ctx.inputs.new_zeros(ctx.B, H)
        dc = ctx.inputs.new_zeros(ctx.B, H)
        pending = self.k  # attention steps from here on have not given G their credit yet
        for j in reversed(range(self.k)):
            t = start + j
            dreadout = readout.get(t)  # its d h_t is already in dh (added by the product that made dh)
            attends, writes = j >= self.first, (t + 1) % ctx.k_att == 0
            if writes:  # h_t is memory `slot`: the credit of every later read of it and its key
                if pending > j + 1:
                    self._flush(index, j + 1, pending)
                    pending = j + 1
                slot = (t + 1) // ctx.k_att - 1
                key_grad = ctx.grad_keys[:, slot]
                ds = b.s_dsummaries[j] if attends and dreadout is None else None  # ds = dh: made in place
                dh = torch.addmm(dh + ctx.grad_memories[:, slot], key_grad, ctx.w_m, out=ds)
                ctx.grads.w_m.addmm_(key_grad.t(), b.s_hs[j + 1])
            dprovisional = dh
            if attends:
                if dreadout is not None:
                    torch.add(dh, dreadout[1], out=b.s_dsummaries[j])
                elif dh is not b.s_dsummaries[j]:
                    b.s_dsummaries[j].copy_(dh)
                torch.bmm(b.s_dsummary_rows[j], b.s_memory_columns[j], out=b.s_dweights[j])
                torch.bmm(b.s_dweights[j], b.s_query_factor[j], out=b.s_dqueries[j])
                dprovisional = torch.addmm(dh, b.s_dquery_rows[j], ctx.q_weight)
            dc = torch.addcmul(dc, dprovisional, b.s_cell_factor[j])
            torch.mul(dc.unsqueeze(1), b.s_factors_ifg[j], out=b.s_dgates_ifg[j])
            torch.mul(dprovisional, b.s_factors_o[j], out=b.s_dgates_o[j])
            if j == 0:
                break  # dh_{start-1} would cross the segment's start: nothing takes it
            dc = dc * b.s_f[j]
            before = readout.get(t - 1)  # that step's readout credit rides on the product: one op fewer
            if before is not None:
                dh = torch.addmm(before[0], b.s_dgates_flat[j], ctx.cell.w_hh)
            else:  # ds_{t-1} = dh_{t-1} unless t-1 writes a memory: the product writes it in place
                ds = b.s_dsummaries[j - 1] if j - 1 >= self.first and t % ctx.k_att != 0 else None
                dh = torch.mm(b.s_dgates_flat[j], ctx.cell.w_hh, out=ds)
        self._flush(index, self.first, pending)

    def _flush(self, index: int, lo: int, hi: int) -> None:
        """Add the credit of segment `index`'s reads of steps [lo, hi) into G: dM_j = a_j ds, dK_j = dd_j Zw_j."""
        lo = max(lo, self.first)
        if hi <= lo:
            return
        ctx, b, rows, n, B, m = self.ctx, self.b, self._rows(index), hi - lo, self.ctx.B, self.ctx.m
        flat = self.flats[index][lo - self.first : hi - self.first].reshape(-1)
        dweights, jacobian, dscores = b.dweights[lo:hi, rows], b.jacobian[lo:hi, rows], b.dscores[lo:hi, rows]
        if len(self.spans) == 1:  # the rows of the steps are contiguous: products straight into the buffers
            torch.bmm(dweights.view(n * B, 1, m), jacobian.view(n * B, m, m), out=dscores.view(n * B, 1, m))
            # the chain is past these steps: their rows of memories and keys are free to hold the credit
            memories = torch.mul(b.weights[lo:hi].unsqueeze(3), b.dsummaries[lo:hi].unsqueeze(2), out=b.memories[lo:hi])
            keys = torch.mul(dscores.transpose(2, 3), b.attention_factor[lo:hi], out=b.keys[lo:hi])
        else:
            torch.sum(dweights.transpose(2, 3) * jacobian, dim=2, keepdim=True, out=dscores)  # da C without reshaping strided rows
            memories = b.weights[lo:hi, rows].unsqueeze(3) * b.dsummaries[lo:hi, rows].unsqueeze(2)
            keys = dscores.transpose(2, 3) * b.attention_factor[lo:hi, rows]
        accumulate_rows(ctx.grad_memories.view(-1, ctx.H), flat, memories.reshape(-1, ctx.H))
        accumulate_rows(ctx.grad_keys.view(-1, ctx.A), flat, keys.reshape(-1, ctx.A))

    def parameter_gradients(self) -> None:
        """The group's share of every parameter gradient, each in one matrix product."""
        ctx, b, H, A, k, lo = self.ctx, self.b, self.ctx.H, self.ctx.A, self.k, self.first
        g = ctx.grads
        d_w_ih, d_bias, d_w_hh, d_w_q, d_b_q, d_w = g.w_ih, g.bias, g.w_hh, g.w_q, g.b_q, g.w
        gates = b.dgates[:k].view(-1, 4 * H)
        d_w_hh.addmm_(gates.t(), b.hs[:k].view(-1, H))
        d_w_ih.t().addmm_(self.x.t(), gates)
        d_bias.add_(gates.sum(dim=0))
        if lo < k:
            d_w_q.addmm_(b.dqueries[lo:k].view(-1, A).t(), b.provisional[lo:k].view(-1, H))
            d_b_q.add_(b.dqueries[lo:k].sum(dim=(0, 1, 2)))
            d_w.add_(b.dscores[lo:k].view(1, -1).mm(b.z[lo:k].view(-1, A)).view(-1))
        if ctx.dx is not None:
            dx = (b.dgates[:k].view(k, len(self.spans), ctx.B, 4 * H) @ ctx.cell.w_ih).transpose(0, 2)  # (B, G, k, I)
            for index, (start, stop) in enumerate(self.spans):
                ctx.dx[:, start:stop] = dx[:, index]
