"""Credit-assignment engines: each fills `.grad` of the model's parameters for one batch.

    result = sab(model, batch, loss_fn, k_trunc)      # -> StepResult(loss, logits); by name: sab.methods.METHODS

bptt            plain LSTM, full BPTT through the fused `nn.LSTM`
bptt_cell       the same gradient through a step loop (the loop's cost reference)
tbptt           plain LSTM, a backward after each k_trunc chunk
self_attention  LSTM + dense softmax attention over all past states, full BPTT
sab_reference   SAB through plain autograd over the whole graph (obviously right; memory ~ L²/k_att)
sab             the same gradient in two passes (docs/design.md): no-grad forward, then the segments replayed
                last to first, credit for old memories gathered in a buffer G
transformer     a small causal Transformer, full backprop (the paper's CIFAR-10 baseline)

Loss = Σ per-position losses at the batch's scored positions / (B · n_positions), in every engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sab.measure import NullMeter
from sab.model import SABLSTM, LSTMModel, lstm_step, scored_span, scored_steps
from sab.replay import replay
from sab.sparse_attention import attention_weights
from sab.tasks.base import Batch, PositionLoss
from sab.transformer import CausalTransformer


@dataclass
class StepResult:
    """Mean loss over the scored positions and the logits there (detached). The loss stays on the
    device (a 0-dim tensor): reading it is a host-device sync, so the trainer reads it only when
    it evaluates."""

    loss: Tensor
    logits: Tensor


_NULL = NullMeter()


def _loss(model, features: Tensor, batch: Batch, columns: Tensor | slice, loss_fn: PositionLoss) -> tuple[Tensor, Tensor]:
    logits = model.readout(features)
    return loss_fn(logits, batch.targets[:, columns]).sum() / batch.count, logits


def bptt(model: LSTMModel, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None = None, meter=_NULL) -> StepResult:
    """Full BPTT through the fused `nn.LSTM` (k_trunc ignored)."""
    out, _ = model.lstm(batch.inputs)
    loss, logits = _loss(model, out[:, batch.positions], batch, slice(None), loss_fn)
    loss.backward()
    return StepResult(loss.detach(), logits.detach())


def bptt_cell(model: LSTMModel, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None = None, meter=_NULL) -> StepResult:
    """Full BPTT through a Python loop of LSTM steps (k_trunc ignored): what a step loop costs."""
    return _cell_loop(model, batch, loss_fn, k_trunc=None)


def _cell_loop(model: LSTMModel, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None) -> StepResult:
    """Step loop with one backward; detaching every k_trunc steps gives the one-graph TBPTT reference."""
    x = batch.inputs
    scored = set(scored_steps(batch.positions))
    cell = model.scaled_cell()
    gates_x = cell.input_gates(x).unbind(1)  # one backward node for all steps, not a zero-padded copy per step
    h, c = model.zero_state(x)
    outs = []
    for t in range(x.shape[1]):
        h, c = lstm_step(gates_x[t], h, c, cell.w_hh)
        if t in scored:
            outs.append(h)
        if k_trunc is not None and (t + 1) % k_trunc == 0:
            h, c = h.detach(), c.detach()
    loss, logits = _loss(model, torch.stack(outs, dim=1), batch, slice(None), loss_fn)
    loss.backward()
    return StepResult(loss.detach(), logits.detach())


def tbptt(model: LSTMModel, batch: Batch, loss_fn: PositionLoss, k_trunc: int, meter=_NULL) -> StepResult:
    """Truncated BPTT: the fused LSTM over k_trunc-step chunks, a backward after each chunk."""
    x, L = batch.inputs, batch.inputs.shape[1]
    state = tuple(s.unsqueeze(0) for s in model.zero_state(x))
    total, all_logits = x.new_zeros(()), []
    scored = scored_steps(batch.positions)  # one read-back per step: the chunks' positions come from it
    quiet = 0  # the first step of a run of chunks without a scored step, not yet run
    for start in range(0, L, k_trunc):
        stop = min(L, start + k_trunc)
        lo, hi = scored_span(scored, start, stop)
        if lo == hi:
            continue
        if quiet < start:  # no gradient crosses a chunk without a loss: its run is one fused call
            with torch.no_grad():
                _, state = model.lstm(x[:, quiet:start], state)
        quiet = stop
        out, state = model.lstm(x[:, start:stop], state)
        loss, logits = _loss(model, out[:, batch.positions[lo:hi] - start], batch, slice(lo, hi), loss_fn)
        loss.backward()
        state = tuple(s.detach() for s in state)
        total = total + loss.detach()
        all_logits.append(logits.detach())
    return StepResult(total, torch.cat(all_logits, dim=1))


def sab_reference(model: SABLSTM, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None, meter=_NULL) -> StepResult:
    """SAB by plain autograd over one graph (docs/design.md steps 1-7, dense scoring over all memories)."""
    loss, logits = reference_loss(model, batch, loss_fn, k_trunc)
    loss.backward()
    return StepResult(loss.detach(), logits.detach())


def reference_loss(model: SABLSTM, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None) -> tuple[Tensor, Tensor]:
    """The loss of SAB's forward as one differentiable graph (memories kept with their graph)."""
    x = batch.inputs
    scored = set(scored_steps(batch.positions))
    cell = model.scaled_cell()
    gates_x = cell.input_gates(x).unbind(1)
    h, c = model.zero_state(x)
    zero_summary = h
    bank: Tensor | None = None  # (B, n, H): the memories so far
    keys: Tensor | None = None  # (B, n, A): their keys
    features = []
    for t in range(x.shape[1]):
        provisional, c = lstm_step(gates_x[t], h, c, cell.w_hh)
        if bank is not None:
            weights = attention_weights(model.scorer(provisional, keys), model.k_top)
            summary = torch.bmm(weights.unsqueeze(1), bank).squeeze(1)
        else:
            summary = zero_summary
        h = provisional + summary
        if t in scored:
            features.append(torch.cat([h, summary], dim=1))
        if (t + 1) % model.k_att == 0:  # grow the bank by one: its backward is one add per write, not one per memory and read
            bank, keys = _appended(bank, h), _appended(keys, model.scorer.keys(h))
        if k_trunc is not None and (t + 1) % k_trunc == 0:
            h, c = h.detach(), c.detach()
    return _loss(model, torch.stack(features, dim=1), batch, slice(None), loss_fn)


def _appended(stacked: Tensor | None, row: Tensor) -> Tensor:
    """`stacked` (B, n, ·) with `row` (B, ·) as its slot n. Re-stacking a list of memories every
    step would cost the backward a gradient accumulation per memory per step (O(L²) small ops:
    ~40% of the self-attention step at T = 100); growing the previous stack by one costs one."""
    row = row.unsqueeze(1)
    return row if stacked is None else torch.cat([stacked, row], dim=1)


def self_attention(model: SABLSTM, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None = None, meter=_NULL) -> StepResult:
    """LSTM + dense softmax attention over every past state (k_att=1, no k_top), full BPTT."""
    if model.k_top is not None or model.k_att != 1:
        raise ValueError(f"self_attention needs a dense model (k_top=None, k_att=1), got k_top={model.k_top}, k_att={model.k_att}")
    return sab_reference(model, batch, loss_fn, None, meter)


def sab(model: SABLSTM, batch: Batch, loss_fn: PositionLoss, k_trunc: int, meter=_NULL) -> StepResult:
    """SAB's gradient in two passes; memory O(L/k_att + L/k_trunc) states plus one segment's record.

    Pass 1 (no grad) writes memories and their keys, the state entering each segment and the
    top-(k_top+1) picks of every step; the loss of each position needs only its logits, so its
    gradient is taken there. Pass 2 (`sab.replay`) replays segments last to first with the
    pass-1 picks, differentiating each by hand: a memory is only read after it is written, so
    when its writer step replays, G holds the credit of every later read of it and of its key.
    """
    run = model.first_pass(batch.inputs, batch.positions, k_trunc=k_trunc, keep_picks=True, static_shapes=model.static_shapes)
    dlogits = torch.empty_like(run.logits)
    held = (run.logits, dlogits, run.bank, run.keys, run.picks, *(s for start in run.starts for s in start))
    meter.hold(*held)
    loss = run.logits.new_zeros(())
    for lo in range(0, run.logits.shape[1], _LOSS_CHUNK):  # a bounded graph: the loss of a chunk of positions at a time
        piece = run.logits[:, lo : lo + _LOSS_CHUNK].detach().requires_grad_()
        with torch.enable_grad():
            chunk = loss_fn(piece, batch.targets[:, lo : lo + _LOSS_CHUNK]).sum() / batch.count
            chunk.backward()
        dlogits[:, lo : lo + _LOSS_CHUNK] = piece.grad
        loss += chunk.detach()
    replay(model, batch.inputs, batch.positions, dlogits, k_trunc, run, meter, group=model.replay_group, every_segment=model.static_shapes)
    meter.release(*held)
    return StepResult(loss.detach(), run.logits)


def training_step(engine, model, optimizer, batch: Batch, loss_fn: PositionLoss, k_trunc: int, clip: float = 0.0, meter=None) -> StepResult:
    """One optimizer step through `engine`: zero_grad, forward and backward (under `meter`, if one
    measures this step), the gradient-norm clip (0: none), the update. A trial's step and the cost
    benchmark's; the whole of it is what a CUDA graph captures (sab.graphs)."""
    optimizer.zero_grad(set_to_none=True)
    if meter is None:
        out = engine(model, batch, loss_fn, k_trunc)
    else:
        with meter:
            out = engine(model, batch, loss_fn, k_trunc, meter)
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return out


_LOSS_CHUNK = 64
"""Positions whose loss gradient the sab engine takes at once."""


def transformer(model: CausalTransformer, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None = None, meter=_NULL) -> StepResult:
    """The causal Transformer baseline, full backprop (k_trunc ignored)."""
    logits = model(batch.inputs, batch.positions)
    loss = loss_fn(logits, batch.targets).sum() / batch.count
    loss.backward()
    return StepResult(loss.detach(), logits.detach())
