"""The "reminding" of SAB: a query-dependent MLP scorer and the top-k sparsifier.

Scores (docs/design.md, step 3):   d_i = w · tanh(W_q ĥ_t + W_m m_i + b)
Weights (docs/design.md, step 4):  |M| > k_top: δ = the (k_top+1)-th largest d,
                          a_i = relu(d_i - δ) / (Σ_j relu(d_j - δ) + ε)   (exactly k_top weighted)
                          1 <= |M| <= k_top: a = softmax(d)
Ties: the lower memory index wins (a stable descending sort), the same rule in every engine.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EPS = 1e-7
"""ε of the sparsifier's normaliser (the authors' literal `10e-8`)."""


SCORER_INITS = ("uniform", "zero")
"""Scorer initialisations: `uniform` draws w from U(±A^-1/2); `zero` sets w = 0 and b = 0, so every
score starts equal (the choice and its study: sweeps/sab_defaults.yaml)."""


class Scorer(nn.Module):
    """MLP scorer on [ĥ; m]: it depends on the query, unlike the authors' separable tanh([ĥ;m])·w.

    Computed as d = 2 σ(2(q + k)) · w - Σw, which equals w · tanh(q + k) (tanh z = 2σ(2z) - 1):
    on CPU, torch's sigmoid is ~6x cheaper than its tanh, and scoring every memory at every
    step is the largest cost of SAB's no-grad pass.
    """

    def __init__(self, hidden_size: int, attn_size: int, init: str = "zero") -> None:
        super().__init__()
        if init not in SCORER_INITS:
            raise ValueError(f"unknown scorer_init {init!r}; valid: {', '.join(SCORER_INITS)}")
        self.query = nn.Linear(hidden_size, attn_size)  # W_q and b
        self.key = nn.Linear(hidden_size, attn_size, bias=False)  # W_m: cached per memory at write time
        self.weight = nn.Parameter(torch.empty(attn_size).uniform_(-(attn_size**-0.5), attn_size**-0.5))  # w
        if init == "zero":  # every score equal: attention starts uniform (softmax) or empty (sparsifier)
            with torch.no_grad():
                self.weight.zero_()
                self.query.bias.zero_()

    def keys(self, memories: Tensor) -> Tensor:
        """W_m m for memories (..., H) -> (..., A); computed once per memory when it is written."""
        return self.key(memories)

    def forward(self, provisional: Tensor, keys: Tensor) -> Tensor:
        """Raw scores d (B, n) of a provisional state ĥ (B, H) against n memory keys (B, n, A)."""
        doubled_query = self.query(provisional).mul(2).unsqueeze(1)
        return _from_sigmoid(torch.sigmoid(torch.add(doubled_query, keys, alpha=2)), self.weight)

    def folded(self) -> FoldedScorer:
        """The scorer's parameters folded for a loop of steps without a graph."""
        with torch.no_grad():
            return FoldedScorer(self.query.weight * 2, self.query.bias * 2, (self.weight * 2).unsqueeze(1), -self.weight.sum())


class FoldedScorer:
    """d = σ(2(ĥ W_qᵀ + b) + 2k) (2w) - Σw with the constants folded once: 4 operations a step."""

    def __init__(self, query_weight2: Tensor, query_bias2: Tensor, weight2: Tensor, minus_weight_sum: Tensor) -> None:
        self.query_weight2, self.query_bias2 = query_weight2, query_bias2
        self.weight2, self.minus_weight_sum = weight2, minus_weight_sum

    def scores(self, provisional: Tensor, keys: Tensor, buffer: Tensor) -> Tensor:
        """Scores (B, n) of ĥ (B, H) against keys (B, n, A), computed in place in `buffer` (B, n, A)."""
        doubled_query = torch.addmm(self.query_bias2, provisional, self.query_weight2.t())
        torch.add(doubled_query.unsqueeze(1), keys, alpha=2, out=buffer).sigmoid_()
        return torch.addmm(self.minus_weight_sum, buffer.view(-1, buffer.shape[-1]), self.weight2).view(keys.shape[0], -1)


def _from_sigmoid(sigmoids: Tensor, weight: Tensor) -> Tensor:
    """w · (2σ - 1) from σ of the doubled pre-activation."""
    return (sigmoids @ weight).mul(2).sub(weight.sum())


def select_top(scores: Tensor, k_top: int) -> Tensor:
    """Indices (B, k_top+1) of the k_top+1 largest scores, descending, lower index first on ties."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : k_top + 1]


TIE_CHECK_ON_CPU = True
"""On the CPU, take topk and read back whether a tie crosses the cut (cheaper than a sort there);
False runs the GPU's path (the stable sort, no read-back) on the CPU too, e.g. to count syncs."""


def top_scores(scores: Tensor, k_top: int) -> tuple[Tensor, Tensor]:
    """The k_top+1 largest scores (B, k_top+1) and their indices, as `select_top` picks them.

    `topk` is ~3x cheaper than a sort but orders ties arbitrarily. The order among the kept k does
    not change their weights or gradients; which memory is the threshold δ does. Where another
    score equals δ, the stable sort decides instead.
    """
    want, n = k_top + 1, scores.shape[1]
    if scores.device.type == "cpu" and TIE_CHECK_ON_CPU:  # a read-back: on a GPU, a sync every step costs more than the sort
        values, indices = torch.topk(scores, min(want + 1, n), dim=1)  # one more: a tie across the cut shows
        edge = values[:, want - 2 :]  # the last kept, δ, and the first left out
        if not bool((edge[:, 1:] == edge[:, :-1]).any()):  # no score ties the threshold δ
            return values[:, :want], indices[:, :want]
    values, indices = torch.sort(scores, dim=1, descending=True, stable=True)  # `select_top`'s sort, values kept: no gather
    return values[:, :want], indices[:, :want]


def sparse_weights(top_scores: Tensor) -> Tensor:
    """Weights (B, k+1) from the k+1 sorted best scores: relu(d - δ) / (Σ relu(d - δ) + ε), δ = the last.

    The threshold keeps its own weight, relu(δ - δ) = 0 exactly (with no gradient through that
    relu), so the k+1 rows it weighs need no slicing.
    """
    kept = torch.relu(top_scores - top_scores[:, -1:])
    return kept / (kept.sum(dim=1, keepdim=True) + EPS)


def sparse_weights_(top_scores: Tensor, kept_and_eps: Tensor) -> Tensor:
    """`sparse_weights` in 4 operations for a loop of steps: `kept_and_eps` (B, k+2) holds ε in its
    last column, so one sum gives Σ relu(d - δ) + ε (the relu lands in its first k+1 columns)."""
    kept = torch.sub(top_scores, top_scores[:, -1:], out=kept_and_eps[:, :-1]).relu_()
    return torch.div(kept, kept_and_eps.sum(dim=1, keepdim=True))


def attention_weights(scores: Tensor, k_top: int | None) -> Tensor:
    """Dense weights (B, n) over all n memories: the sparsifier when n > k_top, else softmax.

    `k_top=None` means dense softmax attention (the self-attention baseline). This dense form is
    the obviously-right reference; the two-pass engine computes the same on gathered rows only.
    """
    n = scores.shape[1]
    if k_top is None or n <= k_top:
        return torch.softmax(scores, dim=1)
    threshold = scores.gather(1, select_top(scores, k_top)[:, k_top:])
    kept = torch.relu(scores - threshold)
    return kept / (kept.sum(dim=1, keepdim=True) + EPS)
