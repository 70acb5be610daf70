"""The main command end to end with the real Ray, MLflow (SQLite) and Hydra, in a fresh folder."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from harness.report import natural_key
from tests.conftest import cli


def _children(folder: Path) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'results' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["copy_lengths"], filter_string="tags.cell_id != ''")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("fresh")
    out = cli(["harness.sweep", "copy_lengths", "budget=smoke"], folder)
    return folder, out


def test_smoke_sweep_exits_0_and_logs_a_child_run_per_cell(smoke):
    folder, out = smoke
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = _children(folder)
    assert len(runs) == 4
    assert set(runs["tags.status"]) == {"ok"}
    assert set(runs["tags.executor"]) == {"ray"}
    assert runs["tags.mlflow.parentRunId"].nunique() == 1
    for column in (
        "metrics.accuracy",
        "metrics.val_accuracy",
        "metrics.peak_bytes",
        "metrics.seconds_per_step",
        "metrics.transfer_accuracy_20",
    ):
        assert runs[column].notna().all(), column
    assert set(runs["params.method"]) == {"bptt", "tbptt", "self_attention", "sab"}
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(runs["run_id"].iloc[0], "val_accuracy")  # the curve, by training step, then the final
    assert sorted({m.step for m in history}) == [10, 20] and len(history) == 3
    (data,) = client.get_run(runs["run_id"].iloc[0]).inputs.dataset_inputs  # the Dataset column of the UI
    assert data.dataset.name == "copy@T=5" and data.dataset.source_type == "generated" and len(data.dataset.digest) == 16
    latest = max(history, key=lambda m: (m.step, m.timestamp))
    assert runs["metrics.val_accuracy"].iloc[0] == latest.value
    assert runs["tags.mlflow.source.git.commit"].str.fullmatch("[0-9a-f]{40}").all()
    assert re.search(r"\[4/4\] ok", out.stdout)


def test_report_main_table_matches_the_runs(smoke):
    folder, _ = smoke
    report = folder / "results" / "copy_lengths" / "smoke"
    for name in ("report.md", "cells.csv", "main_table.csv", "curves.csv", "accuracy.png", "peak_memory.png"):
        assert (report / name).exists(), name
    table = pd.read_csv(report / "main_table.csv")
    runs = _children(folder)
    want = runs.groupby(["params.method", "params.seq_len"])["metrics.accuracy"].mean()
    assert len(table) == len(want)
    for row in table.itertuples():
        shown = float(str(row.accuracy).split(" ")[0])
        assert shown == pytest.approx(want[(row.method, str(row.seq_len))], abs=5e-4)
    assert "paper (as quoted)" in table.columns
    cells = pd.read_csv(report / "cells.csv")  # how each cell stopped, and whose weights gave its figures (0: the last step's)
    assert set(cells["stop_reason"]) == {"steps"} and set(cells["selected_step"]) == {0}
    start, end = list(cells.columns).index("status") + 1, list(cells.columns).index("accuracy")
    params = list(cells.columns)[start:end]  # params, then metrics, each sorted: a rebuild keeps the csv's columns
    assert params == sorted(params, key=natural_key) and "seq_len" in params and "method" in params
    text = (report / "report.md").read_text()
    assert "## Stopping and model selection" in text
    progress = text.split("## Validation over training")[1].split("\n## ")[0]  # best validation by each step, per method
    assert re.search(r"\| method \| seq_len \| by step 10 \| by step 20 \|", progress) and "| sab | 5 |" in progress, progress
    assert {f"recall_pos_{i}" for i in range(1, 11)} <= set(cells.columns) and "## Recall by position" in text
    positions = [c for c in cells.columns if c.startswith("recall_pos_")]
    assert positions == [f"recall_pos_{i}" for i in range(1, 11)]  # in numeric order, 2 before 10
    wall_clock = text.split("## Wall-clock (clean timing pass)")[1].split("\n## ")[0]
    header = next(line for line in wall_clock.splitlines() if line.startswith("| method"))
    assert header.rstrip(" |").endswith("page faults/step")  # the allocator's share of each time, counted
    rows = [line for line in wall_clock.splitlines() if line.startswith("| bptt") or line.startswith("| sab")]
    assert rows and all(re.fullmatch(r"[\d,]+", line.rstrip(" |").rsplit("|", 1)[1].strip()) for line in rows), rows
    same_time = text.split("## At equal wall-clock")[1].split("\n## ")[0]  # every method within BPTT's or the shortest budget's time
    assert "| 20 of 20 |" in same_time and "| bptt | 5 |" in same_time, same_time  # the cheapest method (BPTT): its whole budget
    assert re.search(r"\| sab \| 5 \| [\d.]+ \| [\d.]+ s \| [1-9] of 20 \| — \|", same_time), same_time  # no evaluation by then
    curves = pd.read_csv(report / "curves.csv")  # every cell's evaluations, kept with the report when the store is gone
    assert set(curves["run_id"]) == set(cells["run_id"])
    assert curves.groupby("cell_id")["step"].apply(list).map(lambda steps: steps == [10, 20]).all()
    assert curves[["val_accuracy", "val_loss", "train_loss", "elapsed_s"]].notna().all().all()
    last = curves[curves["step"] == 20].set_index("run_id")["val_accuracy"]
    assert last.to_dict() == pytest.approx(runs.set_index("run_id")["metrics.val_accuracy"].to_dict())
    # the same files are artifacts of the parent run
    parent = runs["tags.mlflow.parentRunId"].iloc[0]
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(parent)}
    assert {"report.md", "cells.csv", "main_table.csv", "curves.csv"} <= artifacts


def test_identical_rerun_runs_nothing_and_a_deleted_cell_is_the_only_rerun(smoke):
    folder, _ = smoke
    again = cli(["harness.sweep", "copy_lengths", "budget=smoke"], folder)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 cells, 4 done, 0 running elsewhere, 0 to run" in again.stdout
    assert len(_children(folder)) == 4

    runs = _children(folder)
    victim = runs[runs["params.method"] == "tbptt"].iloc[0]
    mlflow.tracking.MlflowClient().delete_run(victim["run_id"])
    dry = cli(["harness.sweep", "copy_lengths", "budget=smoke", "--dry-run"], folder)
    assert dry.returncode == 0
    assert re.search(rf"missing\s+{victim['tags.cell_id']}", dry.stdout)
    assert dry.stdout.count("done ") == 3

    rerun = cli(["harness.sweep", "copy_lengths", "budget=smoke", "--executor", "local"], folder)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "4 cells, 3 done, 0 running elsewhere, 1 to run" in rerun.stdout
    after = _children(folder)
    assert len(after) == 4
    fresh = after[~after["run_id"].isin(runs["run_id"])]
    assert list(fresh["tags.cell_id"]) == [victim["tags.cell_id"]]
    assert list(fresh["tags.executor"]) == ["local"]


def test_retime_runs_the_timing_pass_again_and_the_report_takes_the_new_figures(smoke):
    folder, _ = smoke
    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("copy_lengths").experiment_id
    before = {r.info.run_id for r in client.search_runs([experiment], "tags.kind = 'timing'")}
    cells = set(_children(folder)["run_id"])
    out = cli(["harness.sweep", "copy_lengths", "budget=smoke", "--retime"], folder)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "4 cells, 4 done, 0 running elsewhere, 0 to run" in out.stdout and "clean timing: 4 configurations" in out.stdout
    assert set(_children(folder)["run_id"]) == cells  # no cell ran again
    new = [r for r in client.search_runs([experiment], "tags.kind = 'timing'") if r.info.run_id not in before]
    assert sorted(r.data.params["method"] for r in new) == ["bptt", "sab", "self_attention", "tbptt"]
    assert len({r.data.tags["mlflow.parentRunId"] for r in new}) == 1  # under an invocation run of its own
    wall_clock = (folder / "results" / "copy_lengths" / "smoke" / "report.md").read_text().split("## Wall-clock")[1].split("\n## ")[0]
    for run in new:  # the report shows the latest pass
        assert f"| {run.data.metrics['step_seconds']:.4f} [" in wall_clock, (run.data.params["method"], wall_clock)


def test_unknown_sweep_from_the_command_line(fresh_dir):
    out = cli(["harness.sweep", "no_such_sweep"], fresh_dir, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: unknown sweep 'no_such_sweep'; valid: ")
    assert not (fresh_dir / "results").exists()  # nothing was started or created


def test_timing_mode_runs_one_cell_at_a_time(fresh_dir):
    out = cli(["harness.sweep", "copy_lengths", "budget=smoke", "grid.method=[bptt,sab]", "--timing"], fresh_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = _children(fresh_dir)
    assert set(runs["tags.concurrency"]) == {"1"} and set(runs["tags.executor"]) == {"ray"}
    report = (fresh_dir / "results" / "copy_lengths" / "smoke" / "report.md").read_text()
    assert "| bptt | 5 |" in report.split("## Time of cells run one at a time")[1]  # a time table, from those rows


def test_the_experiment_opens_as_model_development_with_the_answer_on_the_invocation_run(smoke):
    folder, out = smoke
    client = mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("copy_lengths")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI pages
    assert experiment.tags["mlflow.experiment.primaryMetric.name"] == "accuracy"
    assert experiment.tags["mlflow.experiment.primaryMetric.greaterIsBetter"] == "true"
    assert experiment.tags["mlflow.note.content"].startswith("Copy task")
    parents = client.search_runs([experiment.experiment_id], "tags.kind = 'invocation'", order_by=["attributes.start_time ASC"])
    parent = parents[0]  # the first invocation ran the cells (a later test reruns the command, which runs none)
    cells = pd.read_csv(folder / "results" / "copy_lengths" / "smoke" / "cells.csv")
    sab = cells[cells["method"] == "sab"]["accuracy"].mean()
    assert parent.data.metrics["accuracy.sab.T5"] == pytest.approx(sab)
    assert "peak_memory.sab_over_bptt.T5" in parent.data.metrics


def test_mlflow_tracking_uri_is_honoured_and_the_flag_wins(fresh_dir):
    elsewhere = fresh_dir / "team_store.db"
    args = ["harness.sweep", "copy_lengths", "budget=smoke", "grid.method=[bptt]", "--executor", "local", "--no-timing", "--no-report"]
    out = cli(args, fresh_dir, env={"MLFLOW_TRACKING_URI": f"sqlite:///{elsewhere}"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert elsewhere.exists() and not (fresh_dir / "results" / "mlflow.db").exists()
    flag = fresh_dir / "flag_store.db"
    out = cli([*args, "--tracking-uri", f"sqlite:///{flag}"], fresh_dir, env={"MLFLOW_TRACKING_URI": f"sqlite:///{elsewhere}"})
    assert out.returncode == 0, out.stderr[-2000:]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{flag}")
    assert len(client.search_runs([client.get_experiment_by_name("copy_lengths").experiment_id], "tags.cell_id != ''")) == 1


def test_a_ray_sweep_prints_only_the_projects_lines_and_leaves_no_tune_state(smoke):
    folder, out = smoke
    said = out.stdout + out.stderr
    for chatter in ("Configuration for experiment", "View detailed results", "tensorboard", "INFO mlflow", "Creating initial MLflow"):
        assert chatter.lower() not in said.lower(), chatter
    assert not list((folder / "results" / "ray").rglob("tuner.pkl"))  # Tune's state is not kept: nothing reads it
    assert not list((folder / "results" / "ray").rglob("progress.csv"))
    progress = [line for line in out.stdout.splitlines() if line.startswith("    · ")]
    assert progress and all(re.search(r" step=(10|20) ", line) for line in progress), progress[:4]


def test_progress_lines_write_whole_numbers_as_integers():
    from harness.sweep import _figure

    assert _figure(10000) == "10000" and _figure(10500.0) == "10500"  # a step, not 1e+04 or 1.05e+04
    assert _figure(0.123456) == "0.1235" and _figure(0) == "0"
