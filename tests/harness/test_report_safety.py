"""Reports are never lost: one folder per budget, and never replaced by a report of fewer cells."""

from __future__ import annotations

from pathlib import Path

from harness.config import load_sweep
from harness.report import main as report_main
from harness.report import write_report
from harness.tracking import Tracker


def _committed_report(folder: Path, cells: int) -> None:
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("# the committed report\n")
    (folder / "cells.csv").write_text("cell_id,status\n" + "".join(f"c{i},ok\n" for i in range(cells)))


def test_an_empty_store_keeps_the_committed_report(tmp_path, capsys):
    _committed_report(tmp_path / "results" / "copy_lengths" / "quick", cells=36)
    assert report_main(["copy_lengths", "--results-dir", str(tmp_path / "results")]) == 0
    assert (tmp_path / "results" / "copy_lengths" / "quick" / "report.md").read_text() == "# the committed report\n"
    assert "kept" in capsys.readouterr().err


def test_reports_are_kept_per_budget(tmp_path):
    _committed_report(tmp_path / "quick_report", cells=1)
    smoke = load_sweep("copy_lengths", ["budget=smoke"])
    tracker = Tracker(smoke.name, tmp_path)
    tracker.open()
    report = write_report(smoke, tracker, tmp_path)
    assert report.path == tmp_path / "copy_lengths" / "smoke" / "report.md"
    assert report.files == (report.path,)  # only what this call wrote goes to MLflow
    assert not (tmp_path / "copy_lengths" / "quick").exists()


def test_a_kept_report_uploads_nothing(tmp_path):
    _committed_report(tmp_path / "copy_lengths" / "smoke", cells=5)
    smoke = load_sweep("copy_lengths", ["budget=smoke"])
    tracker = Tracker(smoke.name, tmp_path)
    tracker.open()
    report = write_report(smoke, tracker, tmp_path)
    assert report.files == () and report.path.read_text() == "# the committed report\n"


def test_a_changed_committed_report_does_not_make_the_code_dirty(tmp_path):
    """A sweep rewrites the committed reports under results/: the next sweep in that checkout
    still runs the commit's code, so its git tag must not read -dirty; a code change must."""
    import subprocess

    from harness.tracking import checkout_state

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "report.md").write_text("first\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    sha = checkout_state(tmp_path)
    assert len(sha) == 40
    (tmp_path / "results" / "report.md").write_text("rewritten by a sweep\n")
    assert checkout_state(tmp_path) == sha
    (tmp_path / "code.py").write_text("x = 2\n")
    assert checkout_state(tmp_path) == f"{sha}-dirty"
