"""The one interface every executor offers: run cells, yield outcomes as they finish."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from harness.cells import Cell
from harness.config import Resources, SweepError
from harness.machine import usable_cpus
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


SubmitHook = Callable[[Cell, str, str], None]
"""(cell, job id, job folder): called when a cell is handed to a job that outlives this driver."""


class Executor(ABC):
    """Runs cells somewhere: everything the driver asks of an executor, so it never asks which one
    it has. The defaults fit an executor whose trials end with its driver (local, ray)."""

    name: str = ""
    times_here: bool = True
    """Whether trials run on this machine, so the driver's clean timing pass measures their hardware."""
    shares_results_dir: bool = True
    """Whether trials see the driver's results folder at its path (for kept training states, harness.states)."""

    def check(self, cells: list[Cell]) -> None:
        """Raise SweepError (one line) if the cells' resources cannot be met; before anything starts."""

    @abstractmethod
    def run(self, cells: list[Cell], on_submit: SubmitHook | None = None) -> Iterator[Outcome]:
        """Run every cell; yield each outcome as soon as it finishes (any order). An executor whose
        jobs outlive the driver calls `on_submit` for each cell it hands to such a job."""

    def stop(self) -> None:
        """Ctrl-C: stop what this invocation started (nothing to stop by default)."""

    def collect(self, cells: list[Cell], handed_off: list[dict]) -> Iterator[tuple[dict, Outcome]]:
        """Outcomes of the cells an earlier invocation handed off (claims with run_id, cell_id,
        job_id, folder) whose jobs have ended since; nothing by default."""
        return iter(())


def trial_spec(cell: Cell, resources: Resources) -> TrialSpec:
    """The spec a cell runs with: its threads are its CPUs."""
    return replace(cell.spec, threads=resources.cpus_per_trial)


def check_gpu_reservation(cells: list[Cell], resources: Resources, executor: str) -> None:
    """Refuse cells that may train on CUDA while no GPU is reserved for them: a scheduler that
    reserves none would put them on CPU or pile them unaccounted onto GPU 0."""
    may_use_cuda = sorted({c.spec.device for c in cells if c.spec.device == "auto" or c.spec.device.startswith("cuda")})
    if may_use_cuda and resources.gpus_per_trial == 0:
        raise SweepError(
            f"device={may_use_cuda[0]!r} may train on CUDA but resources.gpus_per_trial is 0, so --executor {executor} reserves no GPU "
            "for its trials; set resources.gpus_per_trial (1, or 0.25 to pack four small trials on a GPU) or device=cpu"
        )


def check_this_machine(resources: Resources, cells: list[Cell] = ()) -> None:
    """Refuse, in one line, a per-trial request this machine cannot meet (CPUs, memory, CUDA GPUs,
    a device named cuda where there is none)."""
    import os

    from sab.train import resolve_device

    for device in sorted({c.spec.device for c in cells}):
        try:
            resolve_device(device)
        except ValueError as error:
            raise SweepError(f"{error} (set device=cpu or device=auto)") from None

    cpus = usable_cpus()
    if resources.cpus_per_trial > cpus:
        raise SweepError(f"resources.cpus_per_trial={resources.cpus_per_trial} exceeds this machine's {cpus} CPUs")
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if resources.mem_gb is not None and resources.mem_gb > total_gb:
        raise SweepError(f"resources.mem_gb={resources.mem_gb} exceeds this machine's {total_gb:.0f} GiB of memory")
    if resources.gpus_per_trial > 0:
        from harness.executors.gpus import require_local_gpus

        require_local_gpus(resources.gpus_per_trial)
