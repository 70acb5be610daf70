"""Pass 2 of the two-pass `sab` engine: the k_trunc segments, last to first, each recomputed
without a graph and differentiated by hand (docs/design.md, "The two-pass engine").

Why by hand: a replayed step is some 25 small tensor operations, and through autograd each one
also costs a graph node and a backward call, which on a CPU outweighs the arithmetic. Here a
segment's forward writes what its backward needs into buffers allocated once, everything of the
backward that does not depend on the step after is computed for all steps at once, and the
sequential part is ~12 operations a step.

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
def replay(model: SABLSTM, inputs: Tensor, positions: Tensor, dlogits: Tensor, k_trunc: int, run: FirstPass, meter) -> None:
    """Fill `.grad` with SAB's gradient from the pass-1 record `run` and the loss gradient `dlogits`
    (B, n_positions, O) at the scored positions."""
    ctx = _Context(model, inputs, run, dlogits)
    buffers = _Buffers(ctx, min(k_trunc, ctx.L))
    meter.hold(ctx.grad_memories, ctx.grad_keys, *buffers.tensors())
    scored = scored_steps(positions)  # the step's one read-back of positions; every segment's span comes from it
    live = _segments_with_credit(run, scored, ctx.L, k_trunc, ctx.k_att, ctx.k_top, ctx.n_mem)
    for segment in reversed(range(len(run.starts))):
        start, stop = segment * k_trunc, min(ctx.L, (segment + 1) * k_trunc)
        lo, hi = scored_span(scored, start, stop)
        if not live[segment]:
            continue  # nothing in this segment can receive credit
        replayed = _Segment(ctx, buffers, start, stop)
        replayed.forward(*run.starts[segment])
        replayed.derive()
        replayed.backward(replayed.readout(scored[lo:hi], positions[lo:hi], slice(lo, hi)))
        replayed.parameter_gradients()
    meter.release(ctx.grad_memories, ctx.grad_keys, *buffers.tensors())
    ctx.backward()


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
    """Room for one segment's replay, allocated once and reused by every segment, with the
    per-step views made up front (indexing a tensor in the step loop costs more than the math)."""

    def __init__(self, ctx: _Context, k: int) -> None:
        B, H, A, m = ctx.B, ctx.H, ctx.A, ctx.m
        new = ctx.inputs.new_empty
        self.sig = new(k, B, 4, H)  # σ of the gates
        self.slope = new(k, B, 4, H)  # σ (1 - σ)
        self.cells = new(k + 1, B, H)  # c entering each step, then the last c
        self.sig_2c, self.provisional, self.summaries = new(k, B, H), new(k, B, H), new(k, B, H)  # σ(2c): tanh c = 2σ(2c) - 1
        self.hs = new(k + 1, B, H)  # h entering each step, then the last h
        self.cell_factor, self.gate_factors = new(k, B, H), new(k, B, 4, H)
        self.memories, self.keys, self.z, self.attention_factor = new(k, B, m, H), new(k, B, m, A), new(k, B, m, A), new(k, B, m, A)
        self.kept, self.norm, self.weights, self.jacobian = new(k, B, m), new(k, B, 1), new(k, B, m), new(k, B, m, m)
        self.query_factor = new(k, B, m, A)  # C Zw: dq' straight from da
        self.dsummaries, self.dweights, self.dscores, self.dqueries = new(k, B, H), new(k, B, 1, m), new(k, B, 1, m), new(k, B, 1, A)
        self.dgates = new(k, B, 4, H)
        steps = lambda t: t.unbind(0)  # noqa: E731
        self.s_sig = steps(self.sig.view(k, B, 4 * H))
        self.s_f = steps(self.sig[:, :, 1])  # the forget gate, for dc_{t-1} = dc f
        self.s_cells, self.s_sig_2c, self.s_provisional, self.s_hs = (
            steps(self.cells),
            steps(self.sig_2c),
            steps(self.provisional),
            steps(self.hs),
        )
        self.s_summaries, self.s_summary_rows = steps(self.summaries), steps(self.summaries.unsqueeze(2))
        self.s_memories, self.s_keys, self.s_z = steps(self.memories), steps(self.keys), steps(self.z)
        self.s_memory_columns = steps(
            self.memories.transpose(2, 3)
        )  # (B, H, m): <ds, M_j> as a row times columns (a bmm with N=1 is ~3x slower)
        self.s_kept, self.s_norm, self.s_weights, self.s_weight_rows = (
            steps(self.kept),
            steps(self.norm),
            steps(self.weights),
            steps(self.weights.unsqueeze(2)),
        )
        self.s_query_factor = steps(self.query_factor)
        self.s_dsummaries, self.s_dsummary_rows = steps(self.dsummaries), steps(self.dsummaries.unsqueeze(2))
        self.s_dweights, self.s_dqueries, self.s_dquery_rows = (
            steps(self.dweights),
            steps(self.dqueries),
            steps(self.dqueries.view(k, B, A)),
        )
        self.s_dgates_ifg, self.s_dgates_o = steps(self.dgates[:, :, :3]), steps(self.dgates[:, :, 3])
        self.s_dgates_flat = steps(self.dgates.view(k, B, 4 * H))
        self.s_cell_factor, self.s_factors_ifg, self.s_factors_o = (
            steps(self.cell_factor),
            steps(self.gate_factors[:, :, :3]),
            steps(self.gate_factors[:, :, 3]),
        )

    def tensors(self) -> list[Tensor]:
        """Every buffer, for the memory meter."""
        return [v for v in vars(self).values() if isinstance(v, Tensor)]


class _Segment:
    """One segment's replay over the shared buffers: forward, batched factors, the chain, gradients."""

    def __init__(self, ctx: _Context, buffers: _Buffers, start: int, stop: int) -> None:
        self.ctx, self.b, self.start, self.stop, self.k = ctx, buffers, start, stop, stop - start
        B, m = ctx.B, ctx.m
        self.x = ctx.inputs[:, start:stop].detach().transpose(0, 1).reshape(self.k * B, -1)  # (k B, I)
        torch.addmm(ctx.cell.bias, self.x, ctx.cell.w_ih.t(), out=buffers.sig[: self.k].view(self.k * B, -1))  # the input gates
        self.first = min(self.k, max(0, ctx.k_att - start))  # steps from `first` on read a memory
        self.softmax_end = self.first  # steps [first, softmax_end) read all |M| <= k_top memories
        flat = ctx.run.picks[start:stop].long()  # pass-1 picks (zeros where |M| <= k_top)
        self.pads: dict[int, Tensor] = {}
        slots = torch.arange(m, device=flat.device)
        for j in range(self.first, self.k):
            n = (start + j) // ctx.k_att
            if n > ctx.k_top:
                break
            flat[j] = ctx.row_of_batch + slots.clamp(max=n - 1)
            self.pads[j] = torch.where(slots < n, 0.0, float("-inf")).to(ctx.inputs.dtype)
            self.softmax_end = j + 1
        self.flat = flat[self.first :].flatten()
        span = slice(self.first, self.k)
        torch.index_select(ctx.run.bank.view(-1, ctx.H), 0, self.flat, out=buffers.memories[span].view(-1, ctx.H))
        torch.index_select(ctx.run.keys.view(-1, ctx.A), 0, self.flat, out=buffers.keys[span].view(-1, ctx.A))

    def forward(self, h: Tensor, c: Tensor) -> None:
        """Recompute the segment's steps from its start state, keeping what the backward needs."""
        ctx, b = self.ctx, self.b
        w_hh_t = ctx.cell.w_hh.t()
        b.s_hs[0].copy_(h)
        b.s_cells[0].copy_(c)
        for j in range(self.k):  # the input gates in b.sig become their σ
            provisional, c = lstm_step_(b.s_sig[j], h, c, w_hh_t, out=(b.s_provisional[j], b.s_cells[j + 1], b.s_sig_2c[j]))
            if j < self.first:
                h = b.s_hs[j + 1].copy_(provisional)
                b.s_summaries[j].zero_()
                continue
            scores = ctx.scorer.scores(provisional, b.s_keys[j], b.s_z[j])  # b.z keeps Z = σ(q + 2K)
            if j < self.softmax_end:
                b.s_weights[j].copy_(torch.softmax(scores + self.pads[j], dim=1))
            else:
                kept = torch.sub(scores, scores[:, -1:], out=b.s_kept[j]).relu_()
                torch.div(kept, torch.sum(kept, dim=1, keepdim=True, out=b.s_norm[j]).add_(EPS), out=b.s_weights[j])
            torch.bmm(b.s_weight_rows[j], b.s_memories[j], out=b.s_summary_rows[j])
            h = torch.add(provisional, b.s_summaries[j], out=b.s_hs[j + 1])

    def derive(self) -> None:
        """The backward's per-step factors that do not depend on the chain, for all steps at once."""
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
        weights, rho = b.weights[lo:k], (b.kept[lo:k] > 0).to(z.dtype).div_(b.norm[lo:k])
        rho[: self.softmax_end - lo] = weights[: self.softmax_end - lo]
        jacobian = torch.mul(self.ctx.eye - weights.unsqueeze(3), rho.unsqueeze(2), out=b.jacobian[lo:k])  # (I - a 1ᵀ) diag(ρ)
        sparse = jacobian[self.softmax_end - lo :]
        sparse[..., -1] = -sparse.sum(dim=3)  # P: the threshold's column (its own ρ is 0)
        n, B, m = k - lo, self.ctx.B, self.ctx.m
        torch.bmm(jacobian.view(n * B, m, m), zw.view(n * B, m, -1), out=b.query_factor[lo:k].view(n * B, m, -1))

    def readout(self, scored: list[int], positions: Tensor, columns: slice) -> dict[int, tuple[Tensor, Tensor]]:
        """The readout's gradients from pass 1's dlogits; returns d[h_t ; s_t] of each scored step
        (`scored` on the host, the same steps as `positions` on the device, `columns` of dlogits)."""
        if not scored:
            return {}
        ctx, H = self.ctx, self.ctx.H
        steps = positions - self.start
        dlogits = ctx.dlogits[:, columns].transpose(0, 1).reshape(-1, ctx.dlogits.shape[2])  # (n B, O)
        states = self.b.hs.index_select(0, steps + 1).view(-1, H)
        summaries = self.b.summaries.index_select(0, steps).view(-1, H)
        d_w_out, d_b_out = ctx.grads.w_out, ctx.grads.b_out
        d_w_out[:, :H].addmm_(dlogits.t(), states)
        d_w_out[:, H:].addmm_(dlogits.t(), summaries)
        d_b_out.add_(dlogits.sum(dim=0))
        dstates = (dlogits @ ctx.w_out[:, :H]).view(len(scored), ctx.B, H).unbind(0)
        dsummaries = (dlogits @ ctx.w_out[:, H:]).view(len(scored), ctx.B, H).unbind(0)
        return {t: pair for t, pair in zip(scored, zip(dstates, dsummaries))}

    def backward(self, readout: dict[int, tuple[Tensor, Tensor]]) -> None:
        """The chain from the segment's last step to its first; G gets the reads' credit."""
        ctx, b, H = self.ctx, self.b, self.ctx.H
        last = readout.get(self.stop - 1)  # nothing crosses the segment's end: dh starts as the last step's readout
        dh = last[0] if last is not None else ctx.inputs.new_zeros(ctx.B, H)
        dc = ctx.inputs.new_zeros(ctx.B, H)
        pending = self.k  # attention steps from here on have not given G their credit yet
        for j in reversed(range(self.k)):
            t = self.start + j
            dreadout = readout.get(t)  # its d h_t is already in dh (added by the product that made dh)
            if (t + 1) % ctx.k_att == 0:  # h_t is memory `slot`: the credit of every later read of it and its key
                if pending > j + 1:
                    self._flush(j + 1, pending)
                    pending = j + 1
                slot = (t + 1) // ctx.k_att - 1
                key_grad = ctx.grad_keys[:, slot]
                dh = torch.addmm(dh + ctx.grad_memories[:, slot], key_grad, ctx.w_m)
                ctx.grads.w_m.addmm_(key_grad.t(), b.s_hs[j + 1])
            dprovisional = dh
            if j >= self.first:
                if dreadout is not None:
                    torch.add(dh, dreadout[1], out=b.s_dsummaries[j])
                else:
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
            dh = (
                torch.mm(b.s_dgates_flat[j], ctx.cell.w_hh) if before is None else torch.addmm(before[0], b.s_dgates_flat[j], ctx.cell.w_hh)
            )
        self._flush(self.first, pending)

    def _flush(self, lo: int, hi: int) -> None:
        """Add the credit of the reads of steps [lo, hi) into G: dM_j = a_j ds, dK_j = dd_j Zw_j."""
        lo = max(lo, self.first)
        if hi <= lo:
            return
        ctx, b, n, B, m = self.ctx, self.b, hi - lo, self.ctx.B, self.ctx.m
        flat = self.flat[(lo - self.first) * B * m : (hi - self.first) * B * m]
        torch.bmm(b.dweights[lo:hi].view(n * B, 1, m), b.jacobian[lo:hi].view(n * B, m, m), out=b.dscores[lo:hi].view(n * B, 1, m))
        # the chain is past these steps: their rows of memories and keys are free to hold the credit
        memories = torch.mul(b.weights[lo:hi].unsqueeze(3), b.dsummaries[lo:hi].unsqueeze(2), out=b.memories[lo:hi])
        keys = torch.mul(b.dscores[lo:hi].transpose(2, 3), b.attention_factor[lo:hi], out=b.keys[lo:hi])
        ctx.grad_memories.view(-1, ctx.H).index_add_(0, flat, memories.view(-1, ctx.H))
        ctx.grad_keys.view(-1, ctx.A).index_add_(0, flat, keys.view(-1, ctx.A))

    def parameter_gradients(self) -> None:
        """The segment's share of every parameter gradient, each in one matrix product."""
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
            ctx.dx[:, self.start : self.stop] = (b.dgates[:k].view(k, ctx.B, 4 * H) @ ctx.cell.w_ih).transpose(0, 1)
