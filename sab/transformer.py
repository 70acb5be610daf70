"""A small causal Transformer baseline (the paper's CIFAR-10 comparison): 2 pre-norm layers,
4 heads, d_model = hidden_size, sinusoidal positions, readout at every step; full backprop.

    model = CausalTransformer(input_size=3, hidden_size=64, output_size=10)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LAYERS, HEADS = 2, 4


def sinusoid(length: int, width: int, device=None, dtype=None) -> Tensor:
    """The fixed sinusoidal position encoding (length, width): any length, nothing learned."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: width // 2])
    return table.to(dtype or torch.float32)


class CausalTransformer(nn.Module):
    """Input projection + positions, LAYERS causal encoder layers, a linear readout."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        if hidden_size % HEADS:
            raise ValueError(f"transformer hidden_size must be a multiple of {HEADS} heads, got {hidden_size}")
        self.hidden_size = hidden_size
        self.embed = nn.Linear(input_size, hidden_size)
        layer = nn.TransformerEncoderLayer(hidden_size, HEADS, 4 * hidden_size, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.readout = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Logits (B, n, O) at `positions` (all steps if None); step t sees steps <= t only."""
        L = x.shape[1]
        h = self.embed(x) + sinusoid(L, self.hidden_size, x.device, x.dtype)
        mask = torch.triu(torch.full((L, L), float("-inf"), device=x.device, dtype=x.dtype), diagonal=1)
        h = self.norm(self.encoder(h, mask=mask, is_causal=True))
        return self.readout(h if positions is None else h[:, positions])

    @torch.no_grad()
    def infer(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """Inference forward under no_grad."""
        return self(x, positions)
