"""Cells recorded `ok` before sab.divergence's validation rule existed, and that break it.

A rerun of such a cell would now stop as `diverged`; the report counts it so too, so a store that
holds cells of both eras is read by one rule, and the header says which cells it relabelled.
"""

from __future__ import annotations

import pandas as pd

from harness.curves import curves_of
from sab.divergence import VALIDATION_FACTOR, describe_blowup, validation_blowup

RELABELLED = "recorded ok before this rule; the report counts it as diverged"


def count_late_blowups(cells: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The cells with every ok cell whose stored validation-loss curve breaks the rule marked
    `diverged`, its error saying why; not a cell that selected its model on validation, which a rerun
    would also record ok (its best model stands, sab/train.py)."""
    if cells.empty or "run_id" not in cells:
        return cells
    cells = cells.assign(error=cells.get("error", pd.Series(index=cells.index, dtype=object)).astype(object))
    selected = (
        cells["select_on_validation"].astype(str) == "True" if "select_on_validation" in cells else pd.Series(False, index=cells.index)
    )
    losses = curves_of(curves, cells, "val_loss")  # `curves`: harness.curves.curve_frame of these cells
    for index in cells.index[(cells["status"] == "ok") & ~selected]:  # with selection, its best model stands (sab/train.py)
        found = validation_blowup(losses[cells.at[index, "run_id"]])
        if found is not None:
            cells.at[index, "status"] = "diverged"
            cells.at[index, "error"] = f"{describe_blowup(found)}: {RELABELLED}"
    return cells


def late_blowup_lines(cells: pd.DataFrame) -> list[str]:
    """The header line naming the relabelled cells; none when there are none."""
    if cells.empty or "error" not in cells:
        return []
    names = cells.loc[cells["error"].astype(str).str.endswith(RELABELLED), "name"].tolist()
    if not names:
        return []
    return [
        f"Counted as diverged though recorded ok: {len(names)} cell(s) whose validation loss later rose past "
        f"{VALIDATION_FACTOR:g}x its first evaluation, a rule added after they ran (sab/divergence.py): {', '.join(names)}."
    ]
