"""Intervals over seeds, and differences called only when their interval excludes 0."""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats as scipy_stats

from harness.report import contrast
from harness.stats import difference, estimate


def test_estimate_is_the_t_interval_of_the_mean():
    found = estimate([0.5, 0.6, 0.7])
    lo, hi = scipy_stats.t.interval(0.95, 2, loc=0.6, scale=scipy_stats.sem([0.5, 0.6, 0.7]))
    assert found.n == 3 and math.isclose(found.mean, 0.6) and math.isclose(found.lo, lo) and math.isclose(found.hi, hi)
    assert found.text() == f"0.600 [{lo:.3f}, {hi:.3f}] (n=3)"
    assert estimate([0.4]).text() == "0.400 (n=1)"
    assert estimate([float("nan")]) is None


def test_a_difference_is_called_only_when_its_interval_excludes_zero():
    clear = difference("SAB", [0.95, 0.97, 0.99], "BPTT", [0.20, 0.22, 0.21])
    assert clear.lo > 0 and clear.verdict() == "SAB better"
    assert clear.verdict(higher_is_better=False) == "SAB worse"
    noisy = difference("SAB", [0.3, 0.9, 0.6], "BPTT", [0.5, 0.55, 0.45])
    assert noisy.lo < 0 < noisy.hi and noisy.verdict() == "not distinguishable at n=3"
    one_seed = difference("SAB", [0.9], "BPTT", [0.1])
    assert one_seed.verdict().startswith("not distinguishable at n=1,1")  # never a claim from one seed


def test_the_contrast_line_gives_each_difference_with_its_interval():
    rows = [
        {"method": m, "seq_len": 20, "seed": s, "status": "ok", "accuracy": a, "peak_bytes": p}
        for m, accs, p in (("sab", (0.95, 0.97, 0.99), 1.0), ("bptt", (0.2, 0.25, 0.22), 2.0), ("tbptt", (0.9, 0.99, 0.95), 0.5))
        for s, a in enumerate(accs)
    ]
    (line,) = contrast(pd.DataFrame(rows), "accuracy")
    assert line.startswith("T=20: accuracy SAB 0.970 [")
    assert "SAB - BPTT = +0.747 [" in line and "]: SAB better" in line
    assert "SAB - TBPTT = +0.023 [" in line and "not distinguishable at n=3" in line
    assert "peak memory SAB/BPTT = 0.50" in line
