"""The one interface every executor offers: run cells, yield outcomes as they finish."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from harness.cells import Cell
from harness.config import Resources, SweepError
from sab.train import TrialResult, TrialSpec


@dataclass
class Outcome:
    """A finished cell: its trial result and how it was executed."""

    cell: Cell
    result: TrialResult
    executor: str
    concurrency: int
    threads: int
    wall_seconds: float
    location: str = ""  # where it ran: host, Ray cluster address or Slurm job id


class Executor(Protocol):
    """Runs cells somewhere; `check` refuses, before anything starts, what cannot run there."""

    name: str

    def check(self, cells: list[Cell]) -> None:
        """Raise SweepError (one line) if the cells' resources cannot be met."""

    def run(self, cells: list[Cell]) -> Iterator[Outcome]:
        """Run every cell; yield each outcome as soon as it finishes (any order)."""


def trial_spec(cell: Cell, resources: Resources) -> TrialSpec:
    """The spec a cell runs with: its threads are its CPUs."""
    return replace(cell.spec, threads=resources.cpus_per_trial)


def check_this_machine(resources: Resources) -> None:
    """Refuse, in one line, a per-trial request this machine cannot meet (CPUs, memory, CUDA GPUs)."""
    import os

    cpus = os.cpu_count() or 1
    if resources.cpus_per_trial > cpus:
        raise SweepError(f"resources.cpus_per_trial={resources.cpus_per_trial} exceeds this machine's {cpus} CPUs")
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if resources.mem_gb is not None and resources.mem_gb > total_gb:
        raise SweepError(f"resources.mem_gb={resources.mem_gb} exceeds this machine's {total_gb:.0f} GiB of memory")
    if resources.gpus_per_trial > 0:
        from harness.executors.gpus import require_local_gpus

        require_local_gpus(resources.gpus_per_trial)
