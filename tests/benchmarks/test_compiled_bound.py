"""benchmarks.compiled_bound, the measurement of what compiling would buy item 4, runs end to end at a
small size, and its compiled pass 1 computes what the engine's eager pass 1 does."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import compiled_bound

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="torch.compile on the CPU needs a C++ compiler"
)

SMALL = ["--length", "30", "--repeats", "1", "--hidden-size", "16", "--batch-size", "4", "--k-trunc", "3", "--k-att", "3", "--k-top", "2"]
"""|M| reaches 9 > k_top = 2; blocks of 3 steps compile in a fraction of the time of 10."""


def test_the_bound_prints_its_timings_and_the_compiled_pass_matches_the_eager_one(capsys, monkeypatch):
    sparse_calls = []  # |M| of every block the compiled function ran

    class Counted(compiled_bound.CompiledBlocks):
        def __init__(self, k_top: int) -> None:
            super().__init__(k_top)
            compiled = self.sparse
            self.sparse = lambda *args: sparse_calls.append(args[4].shape[1]) or compiled(*args)  # type: ignore[method-assign]

    monkeypatch.setattr(compiled_bound, "CompiledBlocks", Counted)
    assert compiled_bound.main(SMALL) == 0
    out = capsys.readouterr().out.splitlines()
    gap = float(out[0].rsplit("within ", 1)[1].split(" ")[0])
    assert gap < 1e-5, out[0]  # after training steps: the scorer tells memories apart, so the picks matter
    assert set(sparse_calls) == set(range(3, 10)), sparse_calls  # every block past k_top memories ran compiled
    timings = [float(cell) for cell in out[3].strip("| ").split(" | ")]
    assert len(timings) == 7 and all(t > 0 for t in timings), out[3]
    rows = {line.strip("| ").split(" | ")[0]: line for line in out if line.startswith("| ") and "sab with" not in line}
    bound = rows["pass 1 compiled, the replay at bptt_cell's floor (the bound)"].strip("| ").split(" | ")
    seconds, over_cell, over_bptt = (float(cell) for cell in bound[1:])
    bptt, cell, cell_compiled, _, _, pass_one_compiled, _ = timings
    assert seconds == pytest.approx(pass_one_compiled + min(cell, cell_compiled), abs=2e-4)
    assert over_cell == pytest.approx(seconds / min(cell, cell_compiled), rel=0.05)  # from figures rounded to 0.1 ms
    assert over_bptt == pytest.approx(seconds / bptt, rel=0.05)
