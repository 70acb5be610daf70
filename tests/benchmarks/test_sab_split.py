"""benchmarks.sab_split, the measurement behind item 4's lower bound, runs end to end at a small size."""

from __future__ import annotations

from benchmarks.sab_split import main


def test_the_split_prints_one_row_of_positive_times_and_ratios(capsys):
    assert main(["--length", "40", "--repeats", "1", "--hidden-size", "16", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    header, row = out[1], out[-1]
    assert "sab pass 1" in header and "sab replay + backward" in header
    cells = [float(cell) for cell in row.strip("| ").split(" | ")]
    assert len(cells) == 8 and all(cell > 0 for cell in cells[:2] + cells[3:]), row
