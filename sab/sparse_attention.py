"""The "reminding" of SAB: a query-dependent MLP scorer and the top-k sparsifier.

Scores (DESIGN step 3):   d_i = w · tanh(W_q ĥ_t + W_m m_i + b)
Weights (DESIGN step 4):  |M| > k_top: δ = the (k_top+1)-th largest d,
                          a_i = relu(d_i - δ) / (Σ_j relu(d_j - δ) + ε)   (exactly k_top weighted)
                          1 <= |M| <= k_top: a = softmax(d)
Ties: the lower memory index wins (a stable descending sort), the same rule in every engine.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

EPS = 1e-7
"""ε of the sparsifier's normaliser (the authors' literal `10e-8`)."""


class Scorer(nn.Module):
    """MLP scorer on [ĥ; m]: it depends on the query, unlike the authors' separable tanh([ĥ;m])·w."""

    def __init__(self, hidden_size: int, attn_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden_size, attn_size)  # W_q and b
        self.key = nn.Linear(hidden_size, attn_size, bias=False)  # W_m: cached per memory at write time
        self.weight = nn.Parameter(torch.empty(attn_size).uniform_(-attn_size**-0.5, attn_size**-0.5))  # w

    def keys(self, memories: Tensor) -> Tensor:
        """W_m m for memories (..., H) -> (..., A); computed once per memory when it is written."""
        return self.key(memories)

    def forward(self, provisional: Tensor, keys: Tensor) -> Tensor:
        """Raw scores d (B, n) of a provisional state ĥ (B, H) against n memory keys (B, n, A)."""
        return torch.tanh(keys + self.query(provisional).unsqueeze(1)) @ self.weight


def select_top(scores: Tensor, k_top: int) -> Tensor:
    """Indices (B, k_top+1) of the k_top+1 largest scores, descending, lower index first on ties."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : k_top + 1]


def sparse_weights(top_scores: Tensor) -> Tensor:
    """Weights (B, k) of the k best from their k+1 sorted scores: relu(d - δ) / (Σ relu(d - δ) + ε), δ = last."""
    kept = torch.relu(top_scores[:, :-1] - top_scores[:, -1:])
    return kept / (kept.sum(dim=1, keepdim=True) + EPS)


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
