"""The README's `mlflow ui` on a smoke sweep's store, in a real browser (Debian's chromium driven
by Playwright): the runs page lists the sweep's runs in the model-training view, not MLflow 3's
GenAI pages, and a cell's page draws its validation curve by training step.

chromium is installed the way the Slurm tests install Slurm (root with apt); elsewhere the test is
skipped and says why. The runs page's screenshot is kept in $SAB_TEST_ARTIFACTS (default
results/test_artifacts/)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from harness.ui import runs_page
from tests.conftest import ROOT, cli, free_port, stop_server

CHROMIUM = "/usr/bin/chromium"


def _chromium() -> str:
    """The browser's path, installing Debian's chromium when root with apt; '' with a reason to skip."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no /usr/bin/chromium, and not root with apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=900)
        out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            pytest.skip(f"apt-get could not install chromium: {out.stderr[-300:]}")
    return CHROMIUM


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A smoke sweep's store served by the README's command; yields (base URL, store URI)."""
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the dev extra has it)")
    browser = _chromium()
    folder = tmp_path_factory.mktemp("ui")
    out = cli(["harness.sweep", "copy_lengths", "budget=smoke", "grid.method=[bptt,sab]", "--executor", "local", "--no-timing"], folder)
    assert out.returncode == 0, out.stderr[-2000:]
    store = f"sqlite:///{folder / 'results' / 'mlflow.db'}"
    port = free_port()
    mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen([mlflow_cli, "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)], cwd=folder,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        with playwright.sync_playwright() as p:
            chromium = p.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
            yield base, store, chromium
            chromium.close()
    finally:
        stop_server(server)


def test_the_runs_page_lists_the_sweeps_runs_in_the_model_training_view(ui):
    base, store, chromium = ui
    client = mlflow.tracking.MlflowClient(store)
    experiment = client.get_experiment_by_name("copy_lengths")
    page = chromium.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(runs_page(base, experiment.experiment_id))
    page.get_by_text("copy_lengths__smoke__", exact=False).first.wait_for(timeout=60_000)  # the invocation's run
    # the experiment's note comes from a request of its own, which can land after the runs' table (seen once, 2026-12-05)
    page.get_by_text("Copy task", exact=False).first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert "Detect Issues" not in body and "Traces overview" not in body  # not MLflow 3's GenAI pages
    assert "Copy task" in body  # the sweep's description, as the experiment's note (waited for above)
    artifacts = Path(os.environ.get("SAB_TEST_ARTIFACTS", ROOT / "results" / "test_artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "mlflow_runs_page.png"))
    page.close()


def test_a_cells_page_draws_its_validation_curve_by_step(ui):
    base, store, chromium = ui
    client = mlflow.tracking.MlflowClient(store)
    experiment = client.get_experiment_by_name("copy_lengths")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.runName` = 'sab__seq_len=5__seed=0'")
    page = chromium.new_page(viewport={"width": 1600, "height": 4000})  # tall: every chart of the run is drawn
    page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/model-metrics?workflowType=machine_learning")
    legend = page.get_by_text("sab__seq_len=5__seed=0 (val_accuracy)")
    legend.first.wait_for(timeout=60_000)
    chart = legend.first.locator("xpath=../../..")  # the plot: its axes' ticks and the legend
    ticks = chart.inner_text().split("\n")
    for _ in range(60):  # the legend can be drawn before the axes: give them up to 30 s more
        if "Step" in ticks:
            break
        page.wait_for_timeout(500)
        ticks = chart.inner_text().split("\n")
    assert "Step" in ticks and "10" in ticks and "20" in ticks, ticks  # a curve over training steps 10..20, not one final point
    page.close()
