"""Grid expansion and content-addressed cell identity.

A cell is one TrialSpec of a sweep. Its id hashes the resolved spec without the fields its
method ignores (k_top for bptt, ...) and without execution details (threads, weights path,
time cap), plus the task, budget, METHOD_VERSION and SCHEMA_VERSION. The git sha is a tag of
the run, not part of the id: a rerun after an unrelated commit still finds its cells done.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from itertools import product
from typing import Any

from harness.config import SweepConfig, SweepError
from sab import METHOD_VERSION
from sab.methods import METHODS
from sab.train import TrialSpec, attention_note, resolved_scorer_init, spec_fields

SCHEMA_VERSION = 1
"""Bumped by hand when what a cell records changes shape."""

METHOD_PARAMS = spec_fields("method")
EXECUTION_DETAILS = spec_fields("execution")
STORE_PATHS = ("final_state_path", "continue_from")
"""Paths into the results folder's kept states (harness.states): not logged as params; the run's
continued_from_step tag says what they did."""
_DEFAULTS = TrialSpec()


def _ignored(method: str, name: str) -> bool:
    """A method parameter that this method does not read (it cannot change the cell's result)."""
    return name in METHOD_PARAMS and name not in METHODS[method].reads


def canonical(spec: TrialSpec) -> TrialSpec:
    """The spec with the method parameters its method ignores reset to their defaults, and an
    `auto` scorer initialisation resolved for its task (the cell records what it computes)."""
    ignored = {p: getattr(_DEFAULTS, p) for p in METHOD_PARAMS if _ignored(spec.method, p)}
    spec = dataclasses.replace(spec, **ignored)
    if not _ignored(spec.method, "scorer_init"):
        spec = dataclasses.replace(spec, scorer_init=resolved_scorer_init(spec.task, spec.method, spec.scorer_init))
    return spec


def identity(spec: TrialSpec, budget: str) -> dict[str, Any]:
    """What makes two cells the same experiment.

    Only fields that differ from their defaults enter, so adding a new TrialSpec field (with a
    default that keeps old behaviour) leaves every existing cell id unchanged; changing what a
    default means is a METHOD_VERSION bump.
    """
    values = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in dataclasses.asdict(canonical(spec)).items()
        if k not in EXECUTION_DETAILS and v != getattr(_DEFAULTS, k)
    }
    return {"spec": values, "budget": budget, "method_version": METHOD_VERSION, "schema_version": SCHEMA_VERSION}


def cell_id(spec: TrialSpec, budget: str) -> str:
    """A short, stable content hash of the cell's identity."""
    text = json.dumps(identity(spec, budget), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One grid point of a sweep."""

    sweep: str
    budget: str
    spec: TrialSpec
    axes: tuple[str, ...] = ()

    @functools.cached_property
    def cell_id(self) -> str:
        """Content-addressed id (see module docstring); hashed once per cell, as every step of a sweep asks for it."""
        return cell_id(self.spec, self.budget)

    @property
    def name(self) -> str:
        """The grid point, readable: method first, then the axes this method uses."""
        parts = [self.spec.method]
        for axis in self.axes:
            if axis == "method" or _ignored(self.spec.method, axis):
                continue
            value = getattr(self.spec, axis)
            parts.append(f"{axis}={'-'.join(map(str, value)) if isinstance(value, tuple) else value}")
        return "__".join(parts)

    def params(self) -> dict[str, Any]:
        """The spec's fields that matter for this method (ignored ones left out), as loggable values."""
        out = {}
        for key, value in dataclasses.asdict(self.spec).items():
            if _ignored(self.spec.method, key) or key in STORE_PATHS:
                continue
            out[key] = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else value
        return out


def fewest_seeds(cells: list[Cell]) -> int:
    """The fewest seeds any configuration of these cells runs (a configuration: a cell's identity
    without its seed). Below 2 a report can show figures but no interval, so it calls no difference."""
    seeds: dict[str, set[int]] = {}
    for cell in cells:
        configuration = json.dumps(identity(dataclasses.replace(cell.spec, seed=_DEFAULTS.seed), cell.budget), sort_keys=True)
        seeds.setdefault(configuration, set()).add(cell.spec.seed)
    return min((len(s) for s in seeds.values()), default=0)


def _matches(params: dict[str, Any], rule: dict[str, Any]) -> bool:
    for key, wanted in rule.items():
        options = wanted if isinstance(wanted, (list, tuple)) else [wanted]
        if params.get(key, getattr(_DEFAULTS, key)) not in options:
            return False
    return True


def expand(config: SweepConfig) -> list[Cell]:
    """Every cell of the sweep, in a deterministic order, de-duplicated by cell id.

    The main grid's product, then each union entry's product (the entry overriding the main
    grid's axes), minus cells matching an exclude rule. A cell's values: `fixed`, then its
    method's `per_method` values, then the grid point. Cells that differ only in a parameter
    their method ignores (k_top of a bptt cell) collapse into one.
    """
    grids = [config.grid] + [{**config.grid, **entry} for entry in config.union]
    axes = tuple(dict.fromkeys(axis for grid in grids for axis in grid))
    cells: dict[str, Cell] = {}
    for grid in grids:
        names = list(grid)
        for values in product(*(grid[n] for n in names)):
            point = dict(zip(names, values))
            method = point.get("method", config.fixed.get("method"))
            params = {**config.fixed, **config.per_method.get(method, {}), **point}
            if any(_matches(params, rule) for rule in config.exclude):
                continue
            if isinstance(params.get("transfer_lengths"), list):
                params["transfer_lengths"] = tuple(params["transfer_lengths"])
            if params.get("data_dir"):  # trials may run in another working directory
                params["data_dir"] = os.path.abspath(os.path.expanduser(params["data_dir"]))
            try:
                spec = canonical(TrialSpec(**params).validate())
            except (TypeError, ValueError) as error:
                raise SweepError(f"sweep {config.name!r}, cell {params}: {error}") from None
            cell = Cell(config.name, config.budget, spec, axes)
            cells.setdefault(cell.cell_id, cell)
    return list(cells.values())


def check_data(cells: list[Cell]) -> dict[str, int]:
    """Build each distinct task once, so missing or malformed data fails before any work starts;
    returns each cell's sequence length (cell id -> steps), which only a built task knows."""
    from sab.data import DataError
    from sab.tasks import make_task

    task_lengths: dict[tuple, int] = {}
    cell_lengths: dict[str, int] = {}
    for cell in cells:
        s = cell.spec
        key = (s.task, s.seq_len, s.data_dir, s.permutation_seed)
        if key not in task_lengths:
            try:
                task_lengths[key] = make_task(*key).length
            except (DataError, ValueError) as error:
                raise SweepError(str(error)) from None
        cell_lengths[cell.cell_id] = task_lengths[key]
    return cell_lengths


def attention_notes(cells: list[Cell], lengths: dict[str, int]) -> list[str]:
    """One line per way a grid's sparsity cannot act as asked (k_top at or above the memories a
    step can read), with how many cells it covers: such cells attend densely, so cells that differ
    only in those k_top values are the same experiment run twice."""
    counts: dict[str, int] = {}
    for cell in cells:
        note = attention_note(cell.spec, lengths[cell.cell_id])
        if note:
            counts[note] = counts.get(note, 0) + 1
    return [f"{n} cell{'s' if n > 1 else ''}: {note}" for note, n in counts.items()]
