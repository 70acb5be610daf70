"""Adding(T): output the sum of the two marked values of a sequence of length T.

Input (2 channels): a value U(0, 1) and a marker, with exactly one 1 in each half. Target at
the last step: the sum of the two marked values. Loss: MSE. Metrics: MSE, and accuracy = the
share of sequences with absolute error < 0.04.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sab.tasks.base import Batch, Task

TOLERANCE = 0.04


class AddingTask(Task):
    """The adding problem at length T."""

    name = "adding"
    input_size = 2
    output_size = 1

    def __init__(self, seq_len: int) -> None:
        if seq_len < 2:
            raise ValueError(f"adding seq_len (T) must be >= 2, got {seq_len}")
        self.seq_len = seq_len

    @property
    def length(self) -> int:
        return self.seq_len

    @property
    def positions(self) -> Tensor:
        return torch.tensor([self.seq_len - 1])

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        T, half = self.seq_len, self.seq_len // 2
        values = torch.rand(batch_size, T, generator=generator)
        first = torch.randint(0, half, (batch_size,), generator=generator)
        second = torch.randint(half, T, (batch_size,), generator=generator)
        markers = torch.zeros(batch_size, T)
        rows = torch.arange(batch_size)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        targets = (values[rows, first] + values[rows, second]).unsqueeze(1)
        return Batch(torch.stack([values, markers], dim=2), targets, self.positions)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return (logits.squeeze(-1) - targets) ** 2

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        error = (logits.squeeze(-1) - targets).abs()
        return {
            "accuracy": (error < TOLERANCE).float().mean().item(),
            "mse": (error**2).mean().item(),
            "loss": (error**2).mean().item(),
        }

    def at_length(self, seq_len: int) -> Task:
        return AddingTask(seq_len)
