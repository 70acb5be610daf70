"""Copy(T): remember 10 symbols over a delay of T steps, then write them back.

Input (one-hot of 10 classes): 10 symbols from {1..8}, T-1 blanks (0), the delimiter 9, 10
blanks; length L = T + 20. Target at every step: blank, except the last 10 = the symbols.
Loss: cross-entropy over all L steps. Metric: accuracy on the last 10 (chance = 1/8).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sab.tasks.base import Batch, Task, cross_entropy, one_hot

N_SYMBOLS = 10
BLANK, DELIMITER, CLASSES = 0, 9, 10


class CopyTask(Task):
    """The copy task at delay T."""

    name = "copy"
    input_size = CLASSES
    output_size = CLASSES

    def __init__(self, seq_len: int) -> None:
        if seq_len < 1:
            raise ValueError(f"copy seq_len (T) must be >= 1, got {seq_len}")
        self.seq_len = seq_len

    @property
    def length(self) -> int:
        return self.seq_len + 2 * N_SYMBOLS

    @property
    def positions(self) -> Tensor:
        return torch.arange(self.length)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        symbols = torch.randint(1, 9, (batch_size, N_SYMBOLS), generator=generator)
        sequence = torch.full((batch_size, self.length), BLANK, dtype=torch.long)
        sequence[:, :N_SYMBOLS] = symbols
        sequence[:, N_SYMBOLS + self.seq_len - 1] = DELIMITER
        targets = torch.full((batch_size, self.length), BLANK, dtype=torch.long)
        targets[:, -N_SYMBOLS:] = symbols
        return Batch(one_hot(sequence, CLASSES), targets, self.positions)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy(logits, targets)

    @staticmethod
    def _recalled(logits: Tensor, targets: Tensor) -> Tensor:
        """1.0 where the symbol written back at a recall step is right (batch x 10)."""
        return (logits[:, -N_SYMBOLS:].argmax(-1) == targets[:, -N_SYMBOLS:]).float()

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        return {"accuracy": self._recalled(logits, targets).mean().item(), "loss": self.loss(logits, targets).mean().item()}

    def breakdown(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        """Recall at each of the 10 recalled positions (`recall_pos_1` is the first symbol written back)."""
        recall = self._recalled(logits, targets).mean(0)
        return {f"recall_pos_{i + 1}": value for i, value in enumerate(recall.tolist())}

    def symbol_slots(self, k_att: int) -> list[int]:
        """Memory slots holding the input symbols: those written while the symbols are read (steps
        1..10, 1-based); when k_att > 10, the first memory, the earliest that holds them."""
        written = [slot for slot in range(self.length // k_att) if (slot + 1) * k_att <= N_SYMBOLS]
        return written or [0]

    def attention_marks(self, memory_stride: int) -> dict[str, int | list[int]]:
        """The 10 recall steps and the memories written while the symbols were read."""
        return {"recall_steps": N_SYMBOLS, "memory_slots": self.symbol_slots(memory_stride)}

    def at_length(self, seq_len: int) -> Task:
        return CopyTask(seq_len)
