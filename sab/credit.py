"""Credit-assignment engines: each fills `.grad` of the model's parameters for one batch.

    result = ENGINES["sab"](model, batch, loss_fn, k_trunc)      # -> StepResult(loss, logits)

bptt            plain LSTM, full BPTT through the fused `nn.LSTM`
bptt_cell       the same gradient through a step loop (the loop's cost reference)
tbptt           plain LSTM, a backward after each k_trunc chunk
self_attention  LSTM + dense softmax attention over all past states, full BPTT
sab_reference   SAB through plain autograd over the whole graph (obviously right; memory ~ L²/k_att)
sab             the same gradient in two passes (DESIGN): no-grad forward, then the segments replayed
                last to first, credit for old memories gathered in a buffer G
transformer     a small causal Transformer, full backprop (the paper's CIFAR-10 baseline)

Loss = Σ per-position losses at the batch's scored positions / (B · n_positions), in every engine.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sab.measure import NullMeter
from sab.model import LSTMModel, SABLSTM, lstm_step
from sab.sparse_attention import attention_weights, sparse_weights
from sab.transformer import CausalTransformer

PositionLoss = Callable[[Tensor, Tensor], Tensor]
"""(logits (B, n, O), targets (B, n, ...)) -> per-position losses (B, n)."""


@dataclass(frozen=True)
class Batch:
    """Inputs of every step, and targets at the scored positions only."""

    inputs: Tensor  # (B, L, I)
    targets: Tensor  # (B, n, ...) at `positions`
    positions: Tensor  # (n,) sorted step indices the loss scores

    @property
    def count(self) -> int:
        """The global divisor of the loss: B · n_positions."""
        return self.inputs.shape[0] * len(self.positions)


@dataclass
class StepResult:
    """Mean loss over the scored positions and the logits there (detached)."""

    loss: float
    logits: Tensor


_NULL = NullMeter()


def _segment_columns(positions: Tensor, start: int, stop: int) -> Tensor:
    """Columns of `positions` that fall in steps [start, stop)."""
    return torch.nonzero((positions >= start) & (positions < stop)).flatten()


def _loss(model, features: Tensor, batch: Batch, columns: Tensor | slice, loss_fn: PositionLoss) -> tuple[Tensor, Tensor]:
    logits = model.readout(features)
    return loss_fn(logits, batch.targets[:, columns]).sum() / batch.count, logits


def bptt(model: LSTMModel, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None = None, meter=_NULL) -> StepResult:
    """Full BPTT through the fused `nn.LSTM` (k_trunc ignored)."""
    out, _ = model.lstm(batch.inputs)
    loss, logits = _loss(model, out[:, batch.positions], batch, slice(None), loss_fn)
    loss.backward()
    return StepResult(loss.item(), logits.detach())


def bptt_cell(model: LSTMModel, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None = None, meter=_NULL) -> StepResult:
    """Full BPTT through a Python loop of LSTM steps (k_trunc ignored): what a step loop costs."""
    return _cell_loop(model, batch, loss_fn, k_trunc=None)


def _cell_loop(model: LSTMModel, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None) -> StepResult:
    """Step loop with one backward; detaching every k_trunc steps gives the one-graph TBPTT reference."""
    x = batch.inputs
    scored = set(batch.positions.tolist())
    gates_x = model.input_gates(x).unbind(1)  # one backward node for all steps, not a zero-padded copy per step
    h, c = model.zero_state(x)
    outs = []
    for t in range(x.shape[1]):
        h, c = lstm_step(gates_x[t], h, c, model.w_hh)
        if t in scored:
            outs.append(h)
        if k_trunc is not None and (t + 1) % k_trunc == 0:
            h, c = h.detach(), c.detach()
    loss, logits = _loss(model, torch.stack(outs, dim=1), batch, slice(None), loss_fn)
    loss.backward()
    return StepResult(loss.item(), logits.detach())


def tbptt(model: LSTMModel, batch: Batch, loss_fn: PositionLoss, k_trunc: int, meter=_NULL) -> StepResult:
    """Truncated BPTT: the fused LSTM over k_trunc-step chunks, a backward after each chunk."""
    x, L = batch.inputs, batch.inputs.shape[1]
    state = tuple(s.unsqueeze(0) for s in model.zero_state(x))
    total, all_logits = 0.0, []
    for start in range(0, L, k_trunc):
        stop = min(L, start + k_trunc)
        columns = _segment_columns(batch.positions, start, stop)
        if len(columns) == 0:
            with torch.no_grad():
                _, state = model.lstm(x[:, start:stop], state)
            continue
        out, state = model.lstm(x[:, start:stop], state)
        loss, logits = _loss(model, out[:, batch.positions[columns] - start], batch, columns, loss_fn)
        loss.backward()
        state = tuple(s.detach() for s in state)
        total += loss.item()
        all_logits.append(logits.detach())
    return StepResult(total, torch.cat(all_logits, dim=1))


def sab_reference(model: SABLSTM, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None, meter=_NULL) -> StepResult:
    """SAB by plain autograd over one graph (DESIGN steps 1-7, dense scoring over all memories)."""
    loss, logits = reference_loss(model, batch, loss_fn, k_trunc)
    loss.backward()
    return StepResult(loss.item(), logits.detach())


def reference_loss(model: SABLSTM, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None) -> tuple[Tensor, Tensor]:
    """The loss of SAB's forward as one differentiable graph (memories kept with their graph)."""
    x = batch.inputs
    scored = set(batch.positions.tolist())
    gates_x = model.input_gates(x).unbind(1)
    h, c = model.zero_state(x)
    zero_summary = h
    memories: list[Tensor] = []
    keys: list[Tensor] = []
    features = []
    for t in range(x.shape[1]):
        provisional, c = lstm_step(gates_x[t], h, c, model.w_hh)
        if memories:
            bank = torch.stack(memories, dim=1)
            weights = attention_weights(model.scorer(provisional, torch.stack(keys, dim=1)), model.k_top)
            summary = torch.bmm(weights.unsqueeze(1), bank).squeeze(1)
        else:
            summary = zero_summary
        h = provisional + summary
        if t in scored:
            features.append(torch.cat([h, summary], dim=1))
        if (t + 1) % model.k_att == 0:
            memories.append(h)
            keys.append(model.scorer.keys(h))
        if k_trunc is not None and (t + 1) % k_trunc == 0:
            h, c = h.detach(), c.detach()
    return _loss(model, torch.stack(features, dim=1), batch, slice(None), loss_fn)


def self_attention(model: SABLSTM, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None = None, meter=_NULL) -> StepResult:
    """LSTM + dense softmax attention over every past state (k_att=1, no k_top), full BPTT."""
    if model.k_top is not None or model.k_att != 1:
        raise ValueError(f"self_attention needs a dense model (k_top=None, k_att=1), got k_top={model.k_top}, k_att={model.k_att}")
    return sab_reference(model, batch, loss_fn, None, meter)


class _StoredRows(torch.autograd.Function):
    """Rows of a slot-major store (n, B, D) kept without a graph, at flat indices slot * B + b;
    the gradient of the read is added into grad_store.

    Routing a read's gradient straight into the buffer (index_add of the gathered rows) saves only
    the index and never builds a dense (n, B, D) gradient. `anchor` is a dummy input requiring
    grad, so autograd records the read although the store has no graph.
    """

    @staticmethod
    def forward(ctx, anchor: Tensor, store: Tensor, grad_store: Tensor, flat_index: Tensor) -> Tensor:
        ctx.save_for_backward(flat_index)
        ctx.grad_store = grad_store
        width = store.shape[-1]
        return store.view(-1, width).index_select(0, flat_index.flatten()).view(*flat_index.shape, width)

    @staticmethod
    def backward(ctx, grad_rows: Tensor):
        (flat_index,) = ctx.saved_tensors
        width = grad_rows.shape[-1]
        ctx.grad_store.view(-1, width).index_add_(0, flat_index.flatten(), grad_rows.reshape(-1, width))
        return None, None, None, None


class _Replay:
    """Reads of one segment's replay, [m ; W_m m] rows at once: older memories from the pass-1
    store (credit into G), memories written inside the segment through their live tensors."""

    def __init__(self, store: Tensor, grad_store: Tensor, n_before: int, anchor: Tensor) -> None:
        self.store, self.grad_store, self.n_before, self.anchor = store, grad_store, n_before, anchor
        self.batch = store.shape[1]
        self.offsets = torch.arange(self.batch, device=store.device).unsqueeze(1)
        self.fresh: list[Tensor] = []  # [h ; W_m h] of memories written in this segment, with their graph

    def write(self, row: Tensor) -> None:
        """A memory (with its key) written during the replay, read live by the rest of the segment."""
        self.fresh.append(row)

    def rows(self, slots: Tensor, flat: Tensor) -> Tensor:
        """[m ; W_m m] rows (B, m, H + A) at memory `slots` (B, m); `flat` = slots * B + b."""
        if not self.fresh:
            return _StoredRows.apply(self.anchor, self.store, self.grad_store, flat)
        live = torch.stack(self.fresh, dim=1)
        from_live = live.gather(1, (slots - self.n_before).clamp(min=0).unsqueeze(-1).expand(-1, -1, live.shape[-1]))
        if self.n_before == 0:
            return from_live
        from_store = _StoredRows.apply(self.anchor, self.store, self.grad_store, flat.clamp(max=self.n_before * self.batch - 1))
        return torch.where((slots < self.n_before).unsqueeze(-1), from_store, from_live)


def sab(model: SABLSTM, batch: Batch, loss_fn: PositionLoss, k_trunc: int, meter=_NULL) -> StepResult:
    """SAB's gradient in two passes; memory O(L/k_att + L/k_trunc) states plus one segment's graph.

    Pass 1 (no grad) writes memories and their keys, the state entering each segment and the
    top-(k_top+1) picks of every step. Pass 2 replays segments last to first with the pass-1
    picks: a memory is only read after it is written, so when its writer segment replays, G holds
    the credit of every later read of the memory and of its key, and
    backward(segment loss + Σ <G[slot], [h ; W_m h]> over the slots written here) is exact.
    """
    x, L = batch.inputs, batch.inputs.shape[1]
    B, H = x.shape[0], model.hidden_size
    k_top, k_att = model.k_top, model.k_att
    run = model.first_pass(x, batch.positions, k_trunc=k_trunc, keep_picks=True)
    held = (run.logits, run.store, run.picks, *(s for start in run.starts for s in start))
    meter.hold(*held)
    with torch.no_grad():
        loss_value = (loss_fn(run.logits, batch.targets).sum() / batch.count).item()
    grad_store = torch.zeros_like(run.store)
    meter.hold(grad_store)
    anchor = x.new_zeros((), requires_grad=True)
    offsets = torch.arange(B, device=x.device).unsqueeze(1)
    rows_width = run.store.shape[-1]
    scored = set(batch.positions.tolist())
    for segment in reversed(range(len(run.starts))):
        start, stop = segment * k_trunc, min(L, (segment + 1) * k_trunc)
        n_before, n_after = start // k_att, stop // k_att
        columns = _segment_columns(batch.positions, start, stop)
        if len(columns) == 0 and not grad_store[n_before:n_after].any():
            continue  # nothing in this segment can receive credit
        replay = _Replay(run.store, grad_store, n_before, anchor)
        scorer = model.scorer.prepare()
        picks = run.picks[start:stop].long() if run.picks is not None else None
        flat_picks = picks * B + offsets if picks is not None else None
        h, c = run.starts[segment]
        gates_x = model.input_gates(x[:, start:stop]).unbind(1)
        states, summaries = [], []
        for t in range(start, stop):
            provisional, c = lstm_step(gates_x[t - start], h, c, model.w_hh)
            n = t // k_att
            if n == 0:
                summary = torch.zeros_like(provisional)
            else:
                sparse = k_top is not None and n > k_top
                if sparse:
                    slots, flat = picks[t - start], flat_picks[t - start]
                else:
                    slots = torch.arange(n, device=x.device).expand(B, n)
                    flat = slots * B + offsets
                memories, keys = replay.rows(slots, flat).split([H, rows_width - H], dim=2)
                scores = scorer(provisional, keys)
                weights = sparse_weights(scores, keep_threshold=True) if sparse else torch.softmax(scores, dim=1)
                summary = torch.bmm(weights.unsqueeze(1), memories).squeeze(1)
            h = provisional + summary
            if t in scored:
                states.append(h)
                summaries.append(summary)
            if (t + 1) % k_att == 0:
                replay.write(torch.cat([h, model.scorer.keys(h)], dim=1))
        roots: list[Tensor] = []
        grads: list[Tensor | None] = []
        if states:
            logits = model.read_out(states, summaries)
            roots.append(loss_fn(logits, batch.targets[:, columns]).sum() / batch.count)
            grads.append(None)
        for slot, row in enumerate(replay.fresh, start=n_before):
            roots.append(row)
            grads.append(grad_store[slot].clone())
        torch.autograd.backward(roots, grads)
    meter.release(grad_store, *held)
    return StepResult(loss_value, run.logits)


def transformer(model: CausalTransformer, batch: Batch, loss_fn: PositionLoss, k_trunc: int | None = None, meter=_NULL) -> StepResult:
    """The causal Transformer baseline, full backprop (k_trunc ignored)."""
    logits = model(batch.inputs, batch.positions)
    loss = loss_fn(logits, batch.targets).sum() / batch.count
    loss.backward()
    return StepResult(loss.item(), logits.detach())


ENGINES: dict[str, Callable[..., StepResult]] = {
    "bptt": bptt,
    "bptt_cell": bptt_cell,
    "tbptt": tbptt,
    "self_attention": self_attention,
    "sab_reference": sab_reference,
    "sab": sab,
    "transformer": transformer,
}
"""Every engine by name: the `method` of a trial."""

METHODS = tuple(ENGINES)

USES = {
    "bptt": (),
    "bptt_cell": (),
    "tbptt": ("k_trunc",),
    "self_attention": ("attn_size",),
    "sab_reference": ("k_trunc", "k_top", "k_att", "attn_size"),
    "sab": ("k_trunc", "k_top", "k_att", "attn_size"),
    "transformer": (),
}
"""The method parameters each engine reads; the others do not change its result."""


def build_model(method: str, input_size: int, hidden_size: int, output_size: int, k_top: int = 5, k_att: int = 10, attn_size: int | None = None):
    """The model an engine trains: plain LSTM, dense attention LSTM, or SAB-LSTM."""
    if method not in ENGINES:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if method in ("bptt", "bptt_cell", "tbptt"):
        return LSTMModel(input_size, hidden_size, output_size)
    if method == "transformer":
        return CausalTransformer(input_size, hidden_size, output_size)
    if method == "self_attention":
        return SABLSTM(input_size, hidden_size, output_size, k_top=None, k_att=1, attn_size=attn_size)
    return SABLSTM(input_size, hidden_size, output_size, k_top=k_top, k_att=k_att, attn_size=attn_size)
