"""The timing executor: one cell at a time, each in a spawned child process."""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

from harness.cells import Cell
from harness.config import Resources, SweepError
from harness.executors.base import Outcome, trial_spec
from harness.isolation import run_isolated


class LocalExecutor:
    """Sequential execution on this machine (concurrency 1), so its times are clean."""

    name = "local"

    def __init__(self, resources: Resources, on_report: Callable[[Cell, dict], None] | None = None) -> None:
        self.resources = resources
        self.on_report = on_report

    def check(self, cells: list[Cell]) -> None:
        cpus = os.cpu_count() or 1
        if self.resources.cpus_per_trial > cpus:
            raise SweepError(f"resources.cpus_per_trial={self.resources.cpus_per_trial} exceeds this machine's {cpus} CPUs")
        if self.resources.gpus_per_trial > 0:
            from harness.executors.gpus import require_local_gpus

            require_local_gpus(self.resources.gpus_per_trial)

    def run(self, cells: list[Cell]) -> Iterator[Outcome]:
        for cell in cells:
            spec = trial_spec(cell, self.resources)
            report = (lambda point, c=cell: self.on_report(c, point)) if self.on_report else None
            started = time.monotonic()
            result = run_isolated(spec, self.resources.mem_gb, report)
            yield Outcome(cell, result, self.name, 1, spec.threads, time.monotonic() - started, socket.gethostname())
