"""The timing executor: one cell at a time, each in a child process."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

from harness.cells import Cell
from harness.config import Resources
from harness.executors.base import Executor, Outcome, SubmitHook, check_this_machine, trial_spec
from harness.isolation import run_isolated


class LocalExecutor(Executor):
    """Sequential execution on this machine (concurrency 1), so its times are clean."""

    name = "local"

    def __init__(self, resources: Resources, on_report: Callable[[Cell, dict], None] | None = None) -> None:
        self.resources = resources
        self.on_report = on_report

    def check(self, cells: list[Cell]) -> None:
        check_this_machine(self.resources, cells)

    def run(self, cells: list[Cell], on_submit: SubmitHook | None = None) -> Iterator[Outcome]:
        for cell in cells:
            spec = trial_spec(cell, self.resources)
            report = (lambda point, c=cell: self.on_report(c, point)) if self.on_report else None
            started = time.monotonic()
            result = run_isolated(spec, self.resources.mem_gb, report)
            yield Outcome(cell, result, self.name, 1, spec.threads, time.monotonic() - started, socket.gethostname())
