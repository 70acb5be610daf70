"""Executors behind one interface: `run(cells) -> iterator of outcomes as they finish`.

local  one cell at a time in a child process (the timing executor)
ray    Ray Tune trials, on a private local Ray or a cluster given by --address (default)
slurm  submitit job arrays on a Slurm cluster
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.cells import Cell
from harness.config import SweepConfig, SweepError
from harness.executors.base import Executor, Outcome

EXECUTORS = ("local", "ray", "slurm")


def make_executor(
    name: str,
    config: SweepConfig,
    results_dir: Path,
    address: str | None = None,
    on_report: Callable[[Cell, dict], None] | None = None,
    detach: bool = False,
) -> Executor:
    """The executor called `name`, configured from the sweep's resources."""
    if name == "local":
        from harness.executors.local import LocalExecutor

        return LocalExecutor(config.resources, on_report)
    if name == "ray":
        from harness.executors.ray_tune import RayExecutor

        return RayExecutor(config.resources, str(results_dir / "ray"), address, f"{config.name}-{config.budget}", on_report)
    if name == "slurm":
        from harness.executors.slurm import SlurmExecutor

        return SlurmExecutor(config, results_dir / "slurm", detach=detach)
    raise SweepError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "Executor", "Outcome", "make_executor"]
