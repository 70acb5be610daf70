"""Tasks of the SAB paper by name: `make_task("copy", seq_len=100)`."""
from __future__ import annotations

from collections.abc import Callable

from sab.tasks.adding import AddingTask
from sab.tasks.base import Task
from sab.tasks.copy import CopyTask

TASKS: dict[str, Callable[..., Task]] = {
    "copy": CopyTask,
    "adding": AddingTask,
}
"""Task constructors by name; each takes `seq_len` and task-specific keywords."""


def make_task(name: str, seq_len: int, **options) -> Task:
    """Build a task by name; an unknown name is one clear error naming the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(sorted(TASKS))}")
    return TASKS[name](seq_len, **options)


__all__ = ["TASKS", "Task", "make_task"]
