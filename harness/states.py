"""Final training states kept per experiment, so a longer budget continues a shorter one.

Every cell that ends ok keeps its training state after its last step (model, optimiser, data
generator, learning curve, best-validation weights) under RESULTS_DIR/states/LINEAGE/STEPS.pt.
LINEAGE hashes the cell's identity without its step budget and budget name: two cells that
differ only in `steps` share it (unless the budget shapes training, e.g. a cosine lr schedule).
A cell whose lineage holds a state of fewer steps (a multiple of its eval_interval, so the
evaluations fall on the same steps) starts from the longest such state instead of from step 0.
Training is deterministic on one machine type, so the continued cell ends where a run from
step 0 would: tests/sab/test_checkpoint.py checks it to the digit.
Deleting the folder is safe: it only costs the head start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from harness.cells import Cell, identity
from sab.train import budget_shapes_training

STATES_DIR = "states"


def lineage(cell: Cell) -> str:
    """A short hash of what the cell shares with the same experiment at other step budgets."""
    values = identity(cell.spec, budget="")
    values.pop("budget")
    if not budget_shapes_training(cell.spec):  # else every budget is its own lineage: nothing to continue
        values["spec"].pop("steps", None)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def kept_steps(folder: Path) -> list[int]:
    """The step budgets whose final states a lineage's folder holds."""
    return sorted(int(p.stem) for p in folder.glob("*.pt") if p.stem.isdigit()) if folder.is_dir() else []


def head_start(cell: Cell, folder: Path) -> int:
    """The steps of the kept state in its lineage's `folder` this cell would continue from (0: none)."""
    spec = cell.spec
    usable = [s for s in kept_steps(folder) if s < spec.steps and s % spec.eval_interval == 0]
    return max(usable, default=0)


def continues_from_step(cell: Cell) -> int:
    """The step a cell prepared by `with_states` starts from (0: step 0)."""
    return int(Path(cell.spec.continue_from).stem) if cell.spec.continue_from else 0


def with_states(cells: list[Cell], root: Path, continue_runs: bool = True) -> list[Cell]:
    """The cells with where to keep their final state and, where one is kept and `continue_runs`,
    the state to continue from; a cell's id does not change (these are execution details)."""
    out = []
    for cell in cells:
        folder = root / lineage(cell)
        start = head_start(cell, folder) if continue_runs else 0
        spec = dataclasses.replace(
            cell.spec,
            final_state_path=str(folder / f"{cell.spec.steps}.pt"),
            continue_from=str(folder / f"{start}.pt") if start else None,
        )
        out.append(dataclasses.replace(cell, spec=spec))
    return out
