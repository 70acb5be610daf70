"""Tasks of the SAB paper by name: `make_task("copy", seq_len=100)`.

Generated (no files): copy, adding. From files in `data_dir`: pixel_mnist, permuted_mnist, cifar10,
text8, ptb. Bundled or generated offline, for laptops and tests: pixel_digits, permuted_digits,
mnist1d, pydoc_chars.
"""

from __future__ import annotations

from sab.tasks import char_lm, sequences
from sab.tasks.adding import AddingTask
from sab.tasks.base import Task
from sab.tasks.copy import CopyTask

GENERATED = {"copy": CopyTask, "adding": AddingTask}
TASKS = tuple(sorted([*GENERATED, *sequences.LOADERS, *char_lm.LOADERS]))
"""Every task name."""
EVERY_STEP_SCORED = frozenset({"copy", *char_lm.LOADERS})
"""Tasks whose loss scores every step; the others (adding, the classifications) score the last step only."""


def make_task(name: str, seq_len: int, data_dir: str | None = None, permutation_seed: int = 0) -> Task:
    """Build a task; an unknown name, a wrong length or missing data is one clear error."""
    if name in GENERATED:
        return GENERATED[name](seq_len)
    if name in char_lm.LOADERS:
        return char_lm.LOADERS[name](seq_len, data_dir)
    if name in sequences.LOADERS:
        loader, permuted = sequences.LOADERS[name]
        task = loader(data_dir, permutation_seed if permuted else None)
        if seq_len != task.length:
            raise ValueError(f"task {name!r} has sequences of {task.length} steps; set seq_len: {task.length} (got {seq_len})")
        return task
    raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")


__all__ = ["EVERY_STEP_SCORED", "TASKS", "Task", "make_task"]
