"""A store outlives its sweep file: which of its cells the current grid no longer composes.

An axis value removed or a step budget changed leaves cells that `--dry-run` does not count; a
METHOD_VERSION bump (or a change to what a cell id hashes) runs the same parameters and seed again
under a new id. The report keeps every result, names the first, and splits the second so that no
group counts one seed twice or pools two versions of a method.
"""

from __future__ import annotations

import pandas as pd

from harness.cells import Cell, expand
from harness.config import SweepConfig, SweepError
from sab.train import spec_fields

IDENTITY_PARAMS = tuple(dict.fromkeys((*spec_fields("experiment"), *spec_fields("method"))))
"""What a cell's result depends on (execution details such as threads left out)."""
IDENTITY_COLUMN = "cell_identity"
"""The column that sets cells of an earlier identity apart: `current` or `earlier`."""


def _comparable(value) -> object:
    """A parameter value as the grid composes it and as the store returns it, made comparable
    (the store keeps params as text, and the report parses some as numbers)."""
    if str(value) in ("True", "False", "None"):  # also numpy's bools, as a cells.csv read back gives them
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def current_grid(config: SweepConfig) -> list[Cell]:
    """The cells the sweep file composes now (what `--dry-run` lists); none if it no longer composes."""
    try:
        return expand(config)
    except SweepError:
        return []


def split_earlier_identities(cells: pd.DataFrame, current: list[Cell]) -> pd.DataFrame:
    """Cells outside the current grid that repeat a cell's parameters and seed (recorded before a
    METHOD_VERSION bump or an identity rule changed) get a `cell_identity` column of their own,
    which splits their groups, so no figure counts one seed twice or pools two versions of a method."""
    repeated = _repeats(cells)
    ids = {cell.cell_id for cell in current}
    in_grid = cells["cell_id"].isin(ids) if not cells.empty else pd.Series(dtype=bool)
    if not (repeated & in_grid).any() or not (repeated & ~in_grid).any():
        return cells
    return cells.assign(**{IDENTITY_COLUMN: in_grid.map({True: "current", False: "earlier"})})


def _repeats(cells: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.Series:
    """Which cells that recorded their parameters share every one of them, seed and lr included,
    with another cell (cells with one id each: so, under two identities)."""
    if cells.empty or "seed" not in cells:
        return pd.Series(False, index=cells.index)
    keys = [c for c in (*IDENTITY_PARAMS, *extra) if c in cells]
    return cells["seed"].notna() & cells.duplicated(subset=keys, keep=False)


def repeated_seeds(cells: pd.DataFrame) -> list[str]:
    """A warning when, even after the split above, two cells of one group share a seed (both
    recorded before an identity change): their group counts that seed twice."""
    repeated = _repeats(cells, (IDENTITY_COLUMN,))
    if not repeated.any():
        return []
    return [
        f"Warning: {int(repeated.sum())} cells repeat another cell's parameters and seed under another cell identity "
        f"(both outside the current grid); their groups count such a seed twice: {', '.join(cells.loc[repeated, 'name'].head(6))}."
    ]


def outside_grid(cells: pd.DataFrame, current: list[Cell]) -> list[str]:
    """A line naming the cells of the store that the sweep file's current grid no longer composes
    (an axis value removed, another step budget), with the values that set them apart: the report
    keeps them, as it keeps every result, but `--dry-run` does not count them."""
    outside = cells[~cells["cell_id"].isin({cell.cell_id for cell in current})] if current else cells.iloc[:0]
    if outside.empty:
        return []
    composed: dict[str, set] = {}
    for cell in current:
        for key, value in cell.params().items():
            composed.setdefault(key, set()).add(_comparable(value))
    reasons: dict[str, int] = {}
    for _, row in outside.iterrows():
        differing = [
            f"{key}={row[key]}"
            for key, values in composed.items()
            if key in row and pd.notna(row[key]) and _comparable(row[key]) not in values
        ]
        reason = (
            ", ".join(differing)
            or "the grid's own parameters, recorded under an older cell identity (a method version or identity rule since changed)"
        )
        reasons[reason] = reasons.get(reason, 0) + 1
    each = "; ".join(f"{reason} ({n})" for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0])))
    split = (
        " Where one repeats a current cell's parameters and seed, the tables show it apart, as `cell_identity` earlier."
        if IDENTITY_COLUMN in cells
        else ""
    )
    return [
        f"{len(outside)} of these cells lie outside the grid the sweep composes now (its file and this command's overrides), so `--dry-run` does not count them; "
        f"they are kept, as every result is, and enter the tables like any other cell: {each}.{split}"
    ]
