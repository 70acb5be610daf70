"""benchmarks.sab_split, the measurement behind item 4's lower bound, runs end to end at a small size."""

from __future__ import annotations

from benchmarks.sab_split import main
from sab.sparse_attention import FoldedScorer


def test_the_split_prints_one_row_of_positive_times_and_ratios(capsys):
    assert main(["--length", "40", "--repeats", "1", "--hidden-size", "16", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    header, row = out[1], out[-1]
    assert "sab pass 1" in header and "sab replay + backward" in header
    cells = [float(cell) for cell in row.strip("| ").split(" | ")]
    assert len(cells) == 8 and all(cell > 0 for cell in cells[:2] + cells[3:]), row


def test_what_if_times_pass_one_with_other_scorers_and_puts_the_papers_back(capsys):
    original = FoldedScorer.scores
    assert main(["--length", "40", "--repeats", "1", "--hidden-size", "16", "--batch-size", "4", "--what-if"]) == 0
    assert FoldedScorer.scores is original  # the swap is for the measurement only
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and not line.startswith("| pass 1 with")]
    what_if = {row.split(" | ")[0].strip("| "): [float(cell) for cell in row.strip("| ").split(" | ")[1:]] for row in rows[-2:]}
    assert set(what_if) == {"bilinear scorer", "scoring free"}
    for name, cells in what_if.items():  # pass 1, the bound, the bound / bptt_cell, the bound / bptt
        assert len(cells) == 4 and all(cell > 0 for cell in cells), (name, cells)


def test_the_swapped_scorer_is_put_back_when_the_pass_raises():
    from benchmarks.sab_split import _scorer

    original = FoldedScorer.scores
    try:
        with _scorer(lambda *args: None):
            raise RuntimeError("a pass that fails")
    except RuntimeError:
        pass
    assert FoldedScorer.scores is original
