"""Every mean or difference with an interval that the README or docs/findings.md (the README's
details) quotes is backed by another committed file: a report, a doc or a sweep file, or recomputed
here from committed cells.csv. A report rebuilt with other figures (as adding_lengths/hidden128 was
under the validation-loss rule) fails this test until the README says what the report now says."""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pytest

from harness.stats import difference, estimate
from tests.conftest import ROOT

INTERVAL = re.compile(r"[-+]?\d\.\d{3} \[[-+]?\d\.\d{3}, [-+]?\d\.\d{3}\]")
QUOTING = ("README.md", "docs/findings.md")
"""The prose that quotes figures; it never backs them, not even each other's."""
BACKING = ("results/**/*.md", "docs/**/*.md", "sweeps/*.yaml", "benchmarks/README.md")
HISTORICAL = {
    "+0.524 [+0.323, +0.726]": ("7528ff7", "results/copy_lengths/quick/report.md"),  # the Intel machine's main job
}
"""Figures of a report the repository committed and later replaced (the README says so): figure ->
(a commit that holds it, the report's path)."""


def _cells(path: str) -> pd.DataFrame:
    cells = pd.read_csv(ROOT / path)
    return cells[cells["status"] == "ok"]


def _cifar_at_one_shared_lr() -> list[str]:
    """MNIST-1D with SAB and BPTT both at 3e-3, the sweep's former setting (README: 'That verdict was about the lr')."""
    cells = _cells("results/cifar10_local/quick/cells.csv")
    at = {m: cells[(cells["method"] == m) & (cells["lr"] == 0.003)]["accuracy"] for m in ("sab", "bptt")}
    return [difference("sab", at["sab"], "bptt", at["bptt"]).text()]


def _copy_long_ten_seeds() -> list[str]:
    """copy_long at T = 100 over all ten seeds at the picked lrs: seeds5's five at the pick, fresh5's five."""
    picked = {"sab": 0.003, "bptt": 0.01, "tbptt": 0.003}
    seeds5, fresh5 = _cells("results/copy_long/seeds5/cells.csv"), _cells("results/copy_long/fresh5/cells.csv")
    at = {
        m: pd.concat([seeds5[(seeds5["method"] == m) & (seeds5["lr"] == lr)], fresh5[fresh5["method"] == m]])["accuracy"]
        for m, lr in picked.items()
    }
    assert all(len(values) == 10 for values in at.values())
    return [
        estimate(at["sab"]).text(3),
        difference("sab", at["sab"], "bptt", at["bptt"]).text(),
        difference("sab", at["sab"], "tbptt", at["tbptt"]).text(),
    ]


def _quoting() -> str:
    """The README and its details in one text, as a reader meets the figures."""
    return "\n".join((ROOT / path).read_text() for path in QUOTING)


def test_every_interval_the_readme_quotes_is_backed_by_a_committed_file():
    quoting = {ROOT / path for path in QUOTING}
    backing = "\n".join(path.read_text(errors="ignore") for pattern in BACKING for path in ROOT.glob(pattern) if path not in quoting)
    derived = "\n".join(_cifar_at_one_shared_lr() + _copy_long_ten_seeds())
    quoted = INTERVAL.findall(_quoting())
    assert len(quoted) > 100  # the pattern still finds the README's and docs/findings.md's figures
    unbacked = [figure for figure in quoted if figure not in backing and figure not in derived and figure not in HISTORICAL]
    assert not unbacked, f"README figures no committed report, doc or recomputation shows: {unbacked}"


@pytest.mark.parametrize("figure", sorted(HISTORICAL))
def test_a_historical_figure_is_in_the_report_it_names(figure):
    commit, path = HISTORICAL[figure]
    shown = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"this clone lacks {commit} (a shallow clone?): {shown.stderr.strip()[:200]}")
    assert figure in shown.stdout
    assert figure in _quoting()


def test_each_row_of_the_at_a_glance_table_is_in_the_report_it_names():
    """The README's summary table: its SAB and BPTT means, difference and ratios come from the report
    named on the row (or, for a difference the report does not print, from its sweep file's notes)."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| task | T | report")[1].split("\n\n")[0]
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert len(rows) >= 10
    for row in rows:
        report, sab, bptt, contrast, memory, step, same_time = row[2].split(" ")[0], *row[4:7], row[8], row[9], row[10].rstrip(" |")
        text = (ROOT / "results" / report.strip("`") / "report.md").read_text()
        notes = (ROOT / "sweeps" / f"{report.split('/')[0]}.yaml").read_text()
        for figure in (sab, memory, step):
            assert figure in text, (report, figure)
        assert bptt in text or bptt in notes, (report, bptt)
        assert contrast in text or contrast in notes, (report, contrast)
        if INTERVAL.fullmatch(same_time):  # the equal wall-clock section's SAB - BPTT
            assert same_time in text.split("## At equal wall-clock")[1].split("\n## ")[0], (report, same_time)
        elif same_time.startswith("no SAB evaluation"):
            assert "before its first evaluation" in text, report
