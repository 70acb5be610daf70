"""What a task gives a trial: batches, a per-position loss and its metrics (DESIGN's task table)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from sab.credit import Batch


class Task(ABC):
    """A sequence task of length L: inputs at every step, targets at the scored positions."""

    name: str
    input_size: int
    output_size: int

    @property
    @abstractmethod
    def length(self) -> int:
        """Steps L of one sequence."""

    @property
    @abstractmethod
    def positions(self) -> Tensor:
        """Sorted steps whose outputs the loss scores."""

    @abstractmethod
    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch drawn with `generator` (on the CPU; the trainer moves it to the device)."""

    @abstractmethod
    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-position loss (B, n) of logits (B, n, O) against targets."""

    @abstractmethod
    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        """Evaluation metrics of one batch; `accuracy` is always among them."""

    def evaluation(self, split: str, batch_size: int, n_batches: int, seed: int) -> list[Batch]:
        """A fixed held-out set: generated tasks draw it from a generator seeded apart from
        training; dataset tasks override this with their validation or test split."""
        generator = torch.Generator().manual_seed(seed)
        return [self.sample(batch_size, generator) for _ in range(n_batches)]

    def at_length(self, seq_len: int) -> Task:
        """The same task at another length (transfer evaluation); tasks of fixed length refuse."""
        raise ValueError(f"task {self.name!r} has a fixed length; it cannot be evaluated at seq_len={seq_len}")


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-position cross-entropy (B, n) of class logits (B, n, O) and class targets (B, n)."""
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def one_hot(classes: Tensor, n: int) -> Tensor:
    """Float one-hot encoding (..., n) of integer classes."""
    return F.one_hot(classes, n).float()
