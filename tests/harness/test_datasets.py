"""A cell's data as MLflow sees it: a file-backed task is identified by its files' contents."""

from __future__ import annotations

from harness.datasets import dataset_of
from sab.train import TrialSpec


def test_a_file_task_is_identified_by_the_contents_of_its_files(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for folder, text in ((a, "anarchism originated"), (b, "anarchism originated"), (c, "anarchism originates")):
        folder.mkdir()
        (folder / "text8").write_text(text)
    found = [dataset_of(TrialSpec(task="text8", method="sab", seq_len=180, data_dir=str(f))) for f in (a, b, c)]
    assert found[0]["digest"] == found[1]["digest"] != found[2]["digest"]  # the same bytes elsewhere, then one letter changed
    assert found[0]["name"] == "text8@T=180" and found[0]["source_type"] == "local" and found[0]["source"] == str(a)


def test_a_generated_task_is_named_by_its_generator_and_seeds():
    first = dataset_of(TrialSpec(task="copy", method="sab", seq_len=100, seed=0))
    assert first["source_type"] == "generated" and first["name"] == "copy@T=100"
    assert dataset_of(TrialSpec(task="copy", method="bptt", seq_len=100, seed=0))["digest"] == first["digest"]  # same data, any method
    assert dataset_of(TrialSpec(task="copy", method="sab", seq_len=100, seed=1))["digest"] != first["digest"]
