"""--executor slurm against a real single-node Slurm (scripts/slurm_local.sh) and submitit's local cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import submitit

from harness.cells import expand
from harness.config import SweepError, load_sweep
from harness.executors.slurm import SlurmExecutor
from sab.train import TrialSpec, run_trial
from tests.conftest import ROOT, cli, output_or_stacks, read_until, sigint_as_from_a_terminal

SCRIPT = ROOT / "scripts" / "slurm_local.sh"


def _can_run_slurm() -> str:
    """Why the local Slurm cannot be started here ('' when it can)."""
    if shutil.which("sbatch") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
        return ""
    if os.geteuid() != 0:
        return "not root: scripts/slurm_local.sh needs root to install and start Slurm"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "no apt-get and no Slurm installed"
    return ""


@pytest.fixture(scope="session")
def slurm():
    """The local single-node Slurm: started here if it is not running, stopped at the end if we started it."""
    reason = _can_run_slurm()
    if reason:
        print(f"\nskipping Slurm tests: {reason}")
        pytest.skip(reason)
    running = shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode == 0
    if not running:
        out = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            pytest.skip(f"local Slurm did not start: {out.stderr[-500:]}")
    yield
    if not running:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=120)


def _runs(folder: Path, sweep: str = "copy_lengths"):
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'results' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[sweep], filter_string="tags.cell_id != ''")


def test_smoke_sweep_on_slurm_is_one_job_array_logged_once(slurm, fresh_dir):
    out = cli(["harness.sweep", "copy_lengths", "budget=smoke", "--executor", "slurm"], fresh_dir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = _runs(fresh_dir)
    assert len(runs) == 4 and set(runs["tags.status"]) == {"ok"}
    arrays = {loc.split(":")[1].split("_")[0] for loc in runs["tags.location"]}
    assert len(arrays) == 1  # one sbatch --array
    assert out.stdout.count("submitted 4 cells as job array") == 1
    assert runs.groupby("tags.cell_id").size().eq(1).all()


def test_smoke_sweep_on_submitit_local_cluster(fresh_dir):
    out = cli(["harness.sweep", "copy_lengths", "budget=smoke", "grid.method=[sab,bptt]", "--executor", "slurm"], fresh_dir,
              env={"SAB_SLURM_CLUSTER": "local"})  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = _runs(fresh_dir)
    assert len(runs) == 2 and set(runs["tags.status"]) == {"ok"}


def test_detach_then_collect_logs_each_cell_once(slurm, fresh_dir):
    first = cli(["harness.sweep", "copy_lengths", "budget=smoke", "--executor", "slurm", "--detach"], fresh_dir)
    assert first.returncode == 0 and "detached" in first.stdout
    assert (_runs(fresh_dir)["status"] == "RUNNING").sum() == 4
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        again = cli(["harness.sweep", "copy_lengths", "budget=smoke", "--executor", "slurm"], fresh_dir)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "submitted 4 cells" not in again.stdout  # nothing resubmitted while jobs run
        if "4 done" in again.stdout:
            break
        time.sleep(3)
    runs = _runs(fresh_dir)
    assert len(runs) == 4 and set(runs["tags.status"]) == {"ok"}
    assert runs.groupby("tags.cell_id").size().eq(1).all()


def _sbatch_text(overrides: list[str]) -> str:
    config = load_sweep("copy_lengths", ["budget=paper", *overrides])
    cells = expand(config)
    executor = SlurmExecutor(config, Path("/tmp/sab-sbatch-test"))
    inner = executor.executor_for(cells)._executor
    inner.parameters["map_count"] = len(cells)
    return inner._make_submission_file_text("python -u -m submitit.core._submit /x", "uid")


def test_sbatch_script_carries_the_sweep_settings():
    text = _sbatch_text(["slurm.partition=gpu", "slurm.account=lab", "resources.gpus_per_trial=1", "resources.cpus_per_trial=4",
                         "slurm.array_parallelism=8"])  # fmt: skip
    assert "#SBATCH --partition=gpu" in text
    assert "#SBATCH --account=lab" in text
    assert "#SBATCH --gpus-per-node=1" in text
    assert "#SBATCH --cpus-per-task=4" in text
    assert "#SBATCH --time=" in text and "#SBATCH --time=60" not in text
    minutes = int(text.split("#SBATCH --time=")[1].split()[0])
    assert minutes == int(1.5 * 172800 / 60) + 10  # 1.5 x the paper budget's time cap, plus a margin
    assert "%8" in text.split("#SBATCH --array=")[1].split()[0]


def test_sbatch_option_outside_the_allow_list_is_refused():
    config = load_sweep("copy_lengths", ["budget=smoke", "+slurm.additional={wrap: 'rm -rf /'}"])
    with pytest.raises(SweepError, match="sbatch option 'wrap' is not allowed; allowed: exclude"):
        SlurmExecutor(config, Path("/tmp/x")).check(expand(config))


def test_gpu_request_without_gpus_fails_before_submitting(slurm, fresh_dir):
    out = cli(["harness.sweep", "copy_lengths", "budget=smoke", "--executor", "slurm", "resources.gpus_per_trial=1"], fresh_dir, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: resources.gpus_per_trial=1")
    assert not (fresh_dir / "results" / "mlflow.db").exists()


LONG = """
fixed: {task: copy, seq_len: 5, hidden_size: 8, batch_size: 4, eval_batches: 1, method: sab, k_trunc: 3, k_att: 2, k_top: 2,
        steps: STEPS, eval_interval: 200, checkpoint_every: 50}
grid: {seed: [0]}
budgets: {quick: {}}
"""


def _long_sweep(tmp_path: Path, steps: int = 600) -> tuple[Path, dict]:
    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    (sweeps / "long.yaml").write_text(LONG.replace("STEPS", str(steps)))
    work = tmp_path / "work"
    work.mkdir()
    return work, {"SAB_SWEEPS_DIR": str(sweeps)}


def _reference_metrics(steps: int) -> dict:
    spec = TrialSpec(
        task="copy",
        seq_len=5,
        hidden_size=8,
        batch_size=4,
        eval_batches=1,
        method="sab",
        k_trunc=3,
        k_att=2,
        k_top=2,
        steps=steps,
        eval_interval=200,
    )
    return run_trial(spec).metrics


# A requeue's SIGTERM leaves the trial training until Slurm's KillWait (5 s) ends: 2000 steps keep it
# busy ~15 s past its first checkpoint (at 600, a faster machine finished first and nothing resumed).
@pytest.mark.parametrize("how,steps", [("preemption_signal", 600), ("scontrol_requeue", 2000)])
def test_interrupted_trial_resumes_from_its_checkpoint_to_the_same_metrics(slurm, tmp_path, how, steps):
    work, env = _long_sweep(tmp_path, steps)
    first = cli(["harness.sweep", "long", "--executor", "slurm", "--detach"], work, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    run = _runs(work, "long").iloc[0]
    job = submitit.SlurmJob(folder=run["tags.job_folder"] + "/%j", job_id=run["tags.job_id"])
    checkpoints = list((Path(run["tags.job_folder"]) / "checkpoints").glob("*.pt"))
    deadline = time.monotonic() + 120
    while not checkpoints and time.monotonic() < deadline:  # interrupt once it has saved a checkpoint
        time.sleep(0.2)
        checkpoints = list((Path(run["tags.job_folder"]) / "checkpoints").glob("*.pt"))
    assert checkpoints, "the trial never checkpointed"
    if how == "preemption_signal":
        job._interrupt()  # SIGTERM then USR2, as Slurm preemption: save at a step boundary, requeue
    else:
        subprocess.run(["scontrol", "requeue", job.job_id], check=True)  # SIGTERM, then killed, then requeued
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        # Slurm holds a requeued job for ~2 min (BeginTime); let it start now
        subprocess.run(["scontrol", "update", f"JobId={job.job_id.split('_')[0]}", "StartTime=now"], capture_output=True)
        if subprocess.run(["squeue", "-h", "-j", job.job_id], capture_output=True, text=True).stdout.strip():
            time.sleep(1)  # still queued or running: ask Slurm, not the sweep (each sweep invocation costs seconds of CPU)
            continue
        again = cli(["harness.sweep", "long", "--executor", "slurm"], work, env=env)  # collects the ended job
        if "1 done" in again.stdout:
            break
        time.sleep(3)
    runs = _runs(work, "long")
    assert len(runs) == 1 and runs.iloc[0]["tags.status"] == "ok"
    assert "resumed" in job.stderr() or "resumed" in (job.stdout() or ""), "the job did not resume from a checkpoint"
    got = {k[len("metrics.") :]: v for k, v in runs.iloc[0].items() if k.startswith("metrics.") and not k.startswith("metrics.curve_")}
    want = _reference_metrics(steps)
    for key in ("accuracy", "loss", "val_accuracy", "val_loss"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key


def test_cancelled_job_is_a_failed_cell_not_a_hang(slurm, tmp_path):
    work, env = _long_sweep(tmp_path)
    first = cli(["harness.sweep", "long", "steps=100000", "--executor", "slurm", "--detach"], work, env=env)
    assert first.returncode == 0
    run = _runs(work, "long").iloc[0]
    subprocess.run(["scancel", run["tags.job_id"]], check=True)
    deadline = time.monotonic() + 120
    cancelled = run
    while time.monotonic() < deadline:  # reruns collect it (and resubmit the failed cell, detached)
        cli(["harness.sweep", "long", "steps=100000", "--executor", "slurm", "--detach", "--no-report"], work, env=env, timeout=120)
        runs = _runs(work, "long")
        cancelled = runs[runs["tags.job_id"] == run["tags.job_id"]].iloc[0]
        if cancelled["tags.status"] != "running":
            break
        time.sleep(2)
    subprocess.run(["scancel", "--name", "sab-long"], check=False)  # the resubmitted cell
    assert cancelled["tags.status"] == "error" and "CANCELLED" in cancelled["tags.error"]
    assert cancelled["status"] == "FAILED"


def test_fractional_gpus_are_refused_on_slurm():
    config = load_sweep("copy_lengths", ["budget=smoke", "resources.gpus_per_trial=0.5"])
    with pytest.raises(SweepError, match=r"gpus_per_trial=0.5: fractional GPUs are not packed by --executor slurm"):
        SlurmExecutor(config, Path("/tmp/x"), cluster="local").check(expand(config))


def test_ctrl_c_cancels_the_submitted_jobs_and_says_so(slurm, tmp_path):
    import signal
    import sys

    work, env = _long_sweep(tmp_path)
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    driver = subprocess.Popen([sys.executable, "-m", "harness.sweep", "long", "steps=100000", "--executor", "slurm"], cwd=work,
                              env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=sigint_as_from_a_terminal)  # fmt: skip
    job_id = read_until(driver, lambda line: line.startswith("submitted")).rsplit(":", 1)[1].strip()
    time.sleep(1)
    driver.send_signal(signal.SIGINT)
    rest = output_or_stacks(driver, timeout=120)
    assert driver.returncode == 130
    assert f"cancelled 1 submitted jobs: {job_id}" in rest and "rerun the same command" in rest
    deadline = time.monotonic() + 60
    while (
        subprocess.run(["squeue", "-h", "-j", job_id.split("_")[0]], capture_output=True, text=True).stdout.strip()
        and time.monotonic() < deadline
    ):
        time.sleep(1)
    assert not subprocess.run(["squeue", "-h", "-j", job_id.split("_")[0]], capture_output=True, text=True).stdout.strip()
    runs = _runs(work, "long")
    assert list(runs["tags.status"]) == ["killed"]


class _Payload:
    """Unpickling this runs a shell command: what a planted result pickle would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_result_pickle_is_never_unpickled_and_foreign_folders_are_refused(tmp_path, capsys):
    """Claims as a writer of the tracking store could plant them: one naming a folder outside the
    sweep's, one inside it whose job 'finished' with a crafted result pickle. Neither pickle runs."""
    import pickle

    config = load_sweep("copy_lengths", ["budget=smoke", "grid.method=[bptt]"])
    (cell,) = expand(config)
    executor = SlurmExecutor(config, tmp_path / "results", cluster="local")
    markers, claims = [], []
    for name, folder, job_id in (("outside", tmp_path / "elsewhere", "4242"), ("inside", executor.folder, "4343")):
        marker = tmp_path / f"ran_{name}"
        job = submitit.LocalJob(folder=str(Path(folder) / "%j"), job_id=job_id)
        job.paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
        job.paths.result_pickle.write_bytes(pickle.dumps(("success", _Payload(marker))))
        markers.append(marker)
        claims.append({"run_id": name, "cell_id": cell.cell_id, "job_id": job_id, "folder": str(folder)})
    claims.append({"run_id": "odd", "cell_id": cell.cell_id, "job_id": "1; rm -rf /", "folder": str(executor.folder)})

    collected = list(executor.collect([cell], claims))

    printed = capsys.readouterr().out
    assert "ignoring the claim of run outside: job_folder" in printed
    assert "ignoring the claim of run odd: job_id '1; rm -rf /' is not a job id" in printed
    ((claim, outcome),) = collected  # the claim inside the sweep's folder: its job ended without a JSON result
    assert claim["run_id"] == "inside" and outcome.result.status == "error"
    assert "without a result file" in outcome.result.error
    assert not any(m.exists() for m in markers)
    pickle.loads(pickle.dumps(_Payload(markers[0])))  # the payload is real: unpickling it does run
    assert markers[0].exists()


def test_a_trial_result_survives_its_json_file(tmp_path):
    from harness.executors.slurm import read_outcome, write_outcome

    spec = TrialSpec(task="copy", seq_len=5, hidden_size=8, batch_size=4, eval_batches=1, method="sab", k_trunc=2, k_att=2, k_top=2,
                     steps=4, eval_interval=2)  # fmt: skip
    result = run_trial(spec)
    write_outcome(result, tmp_path / "o" / "cell.json")
    back = read_outcome(tmp_path / "o" / "cell.json")
    assert back.to_dict().keys() == result.to_dict().keys()
    assert back.metrics == result.metrics and back.attention == result.attention and back.curve == result.curve
    (tmp_path / "o" / "bad.json").write_text("[1, 2]")
    assert read_outcome(tmp_path / "o" / "bad.json") is None and read_outcome(tmp_path / "missing.json") is None
