"""A clean timing pass measured on a busy machine is named in the report, with the command that
measures it again (harness.timing.disturbed)."""

from __future__ import annotations

import pandas as pd

from harness.config import load_sweep
from harness.report import _disturbed_lines
from harness.timing import disturbed

# Two of the committed AMD copy_lengths/bptt_time rows: bptt at T = 20 was slowed for most of its
# repetitions (median 0.0056, fastest 0.0036, slower than at T = 30), sab at T = 30 for one of them.
FRAME = pd.DataFrame(
    {
        "method": ["bptt", "sab", "bptt"],
        "seq_len": [20, 30, 30],
        "step_seconds": [0.0056, 0.0282, 0.0050],
        "step_seconds_min": [0.0036, 0.0252, 0.0044],
        "step_seconds_max": [0.0060, 0.0341, 0.0054],
    }
)


def test_only_a_median_well_above_the_fastest_repetition_is_disturbed():
    (line,) = disturbed(FRAME)
    assert line.startswith("bptt at T=20: median 0.0056 s/step is 1.56x its fastest repetition (0.0036)")
    assert disturbed(FRAME, limit=1.1) == [line, *disturbed(FRAME.iloc[1:], limit=1.1)] and len(disturbed(FRAME, limit=1.1)) == 3
    legacy = FRAME.assign(step_seconds_min=float("nan"))  # timings recorded without their min: nothing to judge
    assert disturbed(legacy) == []


def test_the_report_names_the_disturbed_configuration_and_the_retime_command():
    config = load_sweep("copy_lengths", ["budget=bptt_time"])
    (blank, text) = _disturbed_lines(FRAME, config)
    assert blank == "" and "bptt at T=20" in text and "sab at T=30" not in text
    assert "`python -m harness.sweep copy_lengths budget=bptt_time --retime`" in text
    assert _disturbed_lines(FRAME.iloc[1:], config) == []
