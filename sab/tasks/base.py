"""What a task gives a trial: batches, a per-position loss and its metrics (docs/design.md, "Tasks")."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

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

    def breakdown(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        """Where the test metric of one batch comes from (e.g. per recalled position), so that a
        partial score can be read as a partial skill everywhere or a full skill somewhere. None by default."""
        return {}

    def evaluation(self, split: str, batch_size: int, n_batches: int, seed: int) -> list[Batch]:
        """A fixed held-out set: generated tasks draw it from a generator seeded apart from
        training; dataset tasks override this with their validation or test split."""
        generator = torch.Generator().manual_seed(seed)
        return [self.sample(batch_size, generator) for _ in range(n_batches)]

    def attention_marks(self, memory_stride: int) -> dict[str, int | list[int]]:
        """What an attention map of this task should mark, for memories written every
        `memory_stride` steps: `recall_steps` (the last steps that matter) and `memory_slots`
        (the memories holding what must be recalled). Nothing by default."""
        return {}

    def attention_share(self, attention: Tensor, memory_stride: int) -> float | None:
        """Share of the recall steps' attention (B, L, n_mem) on the marked memories; None where
        the task marks none."""
        marks = self.attention_marks(memory_stride)
        if not marks.get("memory_slots"):
            return None
        recall = attention[:, -marks["recall_steps"] :]
        total = recall.sum()
        return float(recall[..., marks["memory_slots"]].sum() / total) if total > 0 else 0.0

    def at_length(self, seq_len: int) -> Task:
        """The same task at another length (transfer evaluation); tasks of fixed length refuse."""
        raise ValueError(f"task {self.name!r} has a fixed length; it cannot be evaluated at seq_len={seq_len}")


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-position cross-entropy (B, n) of class logits (B, n, O) and class targets (B, n)."""
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def one_hot(classes: Tensor, n: int) -> Tensor:
    """Float one-hot encoding (..., n) of integer classes."""
    return F.one_hot(classes, n).float()
