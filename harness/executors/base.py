"""The one interface every executor offers: run cells, yield outcomes as they finish."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from sab.train import TrialResult, TrialSpec

from harness.cells import Cell
from harness.config import Resources


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
