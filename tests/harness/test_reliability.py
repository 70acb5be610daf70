"""Every cell accounted for: faults injected through the real paths, a SIGKILLed driver, two
drivers at once, and bad input refused in seconds before anything starts."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from harness.isolation import CHILD_MARK
from harness.liveness import driver_alive, this_driver
from harness.sweep import main
from tests.conftest import ROOT, cli, output_or_stacks, read_until, sigint_as_from_a_terminal

TINY = "task: copy, seq_len: 5, hidden_size: 8, batch_size: 4, eval_batches: 1, method: sab, k_trunc: 3, k_att: 2, k_top: 2"


def _sweeps(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "sweeps"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def _runs(folder: Path, sweep: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'results' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[sweep], filter_string="tags.cell_id != ''")


# Only the hanging cell runs under a short time cap (it is killed 10 s past it, harness/isolation.py);
# the others' 6 steps took over 4 s once, on a machine the other test worker kept busy (CI, 2026-12-06).
FAULTS = f"""
fixed: {{{TINY}, steps: 6, eval_interval: 3, time_limit_s: 120}}
grid:
  inject_fault: ["", nan, oom, raise, blowup]
union: [{{inject_fault: [sleep], time_limit_s: [4]}}]
budgets: {{quick: {{}}}}
resources: {{mem_gb: 1.5}}
"""


def test_faults_become_statuses_and_never_stop_the_sweep(tmp_path):
    sweeps = _sweeps(tmp_path, faults=FAULTS)
    work = tmp_path / "work"
    work.mkdir()
    out = cli(["harness.sweep", "faults", "--no-timing"], work, env={"SAB_SWEEPS_DIR": str(sweeps)})
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    runs = _runs(work, "faults")
    status = dict(zip(runs["params.inject_fault"].fillna(""), runs["tags.status"]))
    assert status == {"": "ok", "nan": "diverged", "oom": "oom", "sleep": "timeout", "raise": "error", "blowup": "diverged"}, status
    late = runs[runs["params.inject_fault"] == "blowup"].iloc[0]
    assert late["tags.error"].startswith("validation loss reached") and late["metrics.steps_done"] == 6  # caught at its 2nd evaluation
    failed = runs[runs["tags.status"].isin(["timeout", "error"])]
    assert set(failed["status"]) == {"FAILED"}
    assert (runs[runs["tags.status"] == "error"]["tags.traceback"].str.contains("injected fault")).all()
    assert "error: 1" in out.stdout and "timeout: 1" in out.stdout and "ok: 1" in out.stdout
    report = (work / "results" / "faults" / "quick" / "report.md").read_text()
    for word in ("diverged", "oom", "timeout", "error"):
        assert word in report
    cells = pd.read_csv(work / "results" / "faults" / "quick" / "cells.csv")
    assert sorted(cells["status"]) == ["diverged", "diverged", "error", "ok", "oom", "timeout"]


def test_time_cap_stops_cleanly_with_partial_metrics():
    from sab.train import TrialSpec, run_trial

    result = run_trial(
        TrialSpec(method="sab", seq_len=5, hidden_size=8, batch_size=4, steps=10**6, eval_interval=10**6, eval_batches=1, time_limit_s=1.0)
    )
    assert result.status == "timeout"
    assert 0 < result.steps_done < 10**6
    assert "accuracy" in result.metrics and result.curve  # partial metrics kept


SLOW = f"""
fixed: {{{TINY}, steps: 250, eval_interval: 250}}
grid:
  seed: [0, 1, 2, 3]
budgets: {{quick: {{}}}}
"""


def _per_cell(folder: Path, sweep: str) -> pd.Series:
    runs = _runs(folder, sweep)
    return runs[runs["tags.status"] == "ok"].groupby("tags.cell_id").size()


def test_sigkilled_driver_then_rerun_keeps_each_cell_exactly_once(tmp_path):
    sweeps = _sweeps(tmp_path, slow=SLOW)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAB_SWEEPS_DIR=str(sweeps))
    driver = subprocess.Popen([sys.executable, "-m", "harness.sweep", "slow", "--executor", "local", "--no-timing"], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    read_until(driver, lambda line: line.startswith("[1/4]"))  # kill it right after the first cell is recorded
    driver.kill()
    driver.wait(timeout=30)
    before = _runs(work, "slow")
    assert (before["tags.status"] == "ok").sum() == 1
    assert (before["status"] == "RUNNING").sum() == 3  # claims of the dead driver

    again = cli(["harness.sweep", "slow", "--executor", "local", "--no-timing"], work, env={"SAB_SWEEPS_DIR": str(sweeps)})
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "1 done, 0 running elsewhere, 3 to run" in again.stdout
    per_cell = _per_cell(work, "slow")
    assert len(per_cell) == 4 and (per_cell == 1).all()
    after = _runs(work, "slow")
    assert (after["status"] == "RUNNING").sum() == 0
    assert (after["tags.status"] == "killed").sum() == 3  # the dead driver's claims, marked KILLED
    assert set(after[after["tags.status"] == "killed"]["status"]) == {"KILLED"}


def test_two_concurrent_invocations_run_each_cell_once(tmp_path):
    sweeps = _sweeps(tmp_path, slow=SLOW)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAB_SWEEPS_DIR=str(sweeps))
    command = [sys.executable, "-m", "harness.sweep", "slow", "--executor", "local", "--no-timing", "--no-report"]
    both = [subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    assert "database is locked" not in "".join(outputs)
    per_cell = _per_cell(work, "slow")
    assert len(per_cell) == 4 and (per_cell == 1).all()
    assert len(_runs(work, "slow")) == 4  # no duplicate claims either


def test_driver_liveness():
    assert driver_alive(this_driver())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not driver_alive({**this_driver(), "driver_pid": str(dead.pid)})
    assert driver_alive({"driver_host": "another-machine", "driver_pid": "1"})


BROKEN_YAML = "fixed:\n  task: copy\ngrid:\n  method: [sab, bptt\n  seq_len: [5]\nbudgets: {quick: {}}\n"

BAD_INPUTS = [
    (["no_such_sweep"], "error: unknown sweep 'no_such_sweep'; valid: "),
    (
        ["copy_lengths", "grid.method=[sab,magic]"],
        "unknown method 'magic'; valid: bptt, bptt_cell, tbptt, self_attention, sab_reference, sab",
    ),
    (["copy_lengths", "task=nope"], "unknown task 'nope'; valid: adding, cifar10, copy, mnist1d"),
    (["copy_lengths", "k_top=0"], "k_top must be an integer >= 1, got 0"),
    (["copy_lengths", "k_trunc=0"], "k_trunc must be an integer >= 1, got 0"),
    (["copy_lengths", "k_att=-1"], "k_att must be an integer >= 1, got -1"),
    (["copy_lengths", "seq_len=[0]"], "seq_len must be an integer >= 1, got 0"),
    (["copy_lengths", "grid.colour=[1,2]"], "grid axis 'colour' is not a parameter; valid: task, method"),
    (["copy_lengths", "colour=3"], "unknown parameter 'colour' in override 'colour=3'; valid: task, method"),
    (["copy_lengths", "budget=huge"], "unknown budget 'huge' for sweep 'copy_lengths'; valid: smoke, quick, schedule, bptt_time, paper"),
    (["broken"], "broken.yaml:5:10: YAML syntax error"),
    (["copy_lengths", "resources.cpus_per_trial=4096"], "resources.cpus_per_trial=4096 exceeds this machine's"),
    (["copy_lengths", "resources.mem_gb=100000"], "resources.mem_gb=100000 exceeds this machine's"),
    (["copy_lengths", "resources.gpus_per_trial=1"], "resources.gpus_per_trial=1 but this machine has 0 CUDA GPU(s)"),
    (["copy_lengths", "--executor", "kubernetes"], "unknown executor 'kubernetes'; valid: local, ray, slurm"),
    (["copy_lengths", "--tracking-uri", "http://127.0.0.1:9"], "tracking URI 'http://127.0.0.1:9' is unreachable"),
    (["copy_lengths", "inject_fault=meteor"], "unknown inject_fault 'meteor'"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_in_seconds_and_starts_nothing(argv, message, tmp_path, monkeypatch, capsys):
    if "gpus_per_trial" in " ".join(argv):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    monkeypatch.setenv(
        "SAB_SWEEPS_DIR", str(_sweeps(tmp_path, broken=BROKEN_YAML, copy_lengths=(ROOT / "sweeps" / "copy_lengths.yaml").read_text()))
    )
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert elapsed < 5, elapsed
    assert err.count("\n") == 0, err
    assert err.startswith("error: ") and message in err, err
    store = tmp_path / "results" / "mlflow.db"
    if store.exists():  # validation passed only where the store itself was fine; still no run
        mlflow.set_tracking_uri(f"sqlite:///{store}")
        assert mlflow.search_runs(search_all_experiments=True).empty
    import ray

    assert not ray.is_initialized()


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process on this machine."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry.name)] = (parent, [a.decode(errors="replace") for a in argv if a])
    return found


def _trial_children(ancestor: int) -> list[int]:
    """Trial processes (harness.isolation.CHILD_MARK) below `ancestor` in the process tree."""
    table = _processes()

    def below(pid: int) -> bool:
        for _ in range(64):
            pid = table.get(pid, (0, []))[0]
            if pid == ancestor:
                return True
            if pid <= 1:
                return False
        return False

    return [pid for pid, (_, argv) in table.items() if CHILD_MARK in argv and below(pid)]


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:")).lower()
    except (OSError, StopIteration):
        return "zombie"


DRIVER = """
import sys
from harness.isolation import run_isolated
from sab.train import TrialSpec
print(run_isolated(TrialSpec(task="copy", seq_len=20, hidden_size=32, batch_size=8, method="sab", steps=10**6, eval_interval=10**6)))
"""


@pytest.mark.parametrize("delay_s", [0.0, 0.3, 3.0])  # in the interpreter's start, in its imports, training
def test_a_sigkilled_driver_leaves_no_trial_running(delay_s):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=subprocess.DEVNULL)
    deadline, children = time.monotonic() + 30, []
    while not children and time.monotonic() < deadline:
        children = [pid for pid, (parent, argv) in _processes().items() if parent == driver.pid and CHILD_MARK in argv]
    assert children, "the driver never started its trial"
    time.sleep(delay_s)
    driver.kill()
    driver.wait()
    assert _gone_within(children, 5), f"trial {children} outlived its SIGKILLed driver (delay {delay_s} s)"


FOREVER = f"fixed: {{{TINY}, steps: 1000000, eval_interval: 20}}\ngrid: {{seed: [0, 1]}}\nbudgets: {{quick: {{}}}}\n"


def _training_ray_driver(tmp_path: Path, **popen: object) -> tuple[subprocess.Popen, Path, list[int]]:
    """A Ray sweep of two endless trials, returned once one is training: (driver, its folder, trial pids)."""
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAB_SWEEPS_DIR=str(_sweeps(tmp_path, forever=FOREVER)))
    driver = subprocess.Popen([sys.executable, "-m", "harness.sweep", "forever", "--executor", "ray", "--no-timing"], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)  # fmt: skip
    read_until(driver, lambda line: "step=" in line)  # a trial is training once it reports a step
    children = _trial_children(driver.pid)
    assert children, "no trial process found under the driver"
    return driver, work, children


@pytest.mark.parametrize("how", ["kill", "term_then_kill"])  # kill -9; `timeout -k`: SIGTERM, then SIGKILL 2 s later
def test_ray_trials_stop_within_seconds_of_their_driver(tmp_path, how):
    driver, _, children = _training_ray_driver(tmp_path)
    if how == "term_then_kill":
        driver.terminate()
        try:
            driver.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
    driver.kill()
    driver.wait()
    assert _gone_within(children, 10), f"Ray trials {children} kept running after their driver was SIGKILLed"


def _sigterm_to_a_thread_other_than_main(pid: int) -> None:
    """What `kill PID` does now and then: the kernel hands the signal to any thread that does not
    block it, here one of the driver's ~30 (Ray's, gRPC's, Tune's). Done on purpose with tgkill."""
    blocked = 1 << (signal.SIGTERM - 1)
    threads = sorted((int(task.name) for task in Path(f"/proc/{pid}/task").iterdir() if int(task.name) != pid), reverse=True)
    open_to_it = [tid for tid in threads if not _blocked_signals(pid, tid) & blocked]
    assert open_to_it, "every thread of the driver but the main one blocks SIGTERM"
    tgkill = ctypes.CDLL(None, use_errno=True).tgkill
    assert any(tgkill(pid, tid, signal.SIGTERM) == 0 for tid in open_to_it), "every such thread ended before the signal"


def _blocked_signals(pid: int, tid: int) -> int:
    """The thread's blocked-signal mask (SigBlk); all blocked for a thread that has already ended."""
    try:
        lines = Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines()
    except OSError:
        return -1
    return int(next(line.split(":", 1)[1] for line in lines if line.startswith("SigBlk:")), 16)


@pytest.mark.parametrize("to", ["the_process", "a_thread_other_than_main"])
def test_sigterm_stops_a_background_sweep_as_ctrl_c_does(tmp_path, to):
    """`kill PID` (or `timeout`, or a scheduler ending the job) on a driver started in the background,
    where SIGINT is ignored: trials stopped, claims released as killed, the invocation's run closed.
    (Ray's own SIGTERM handler in the driver would abort it, exit -6, with the claims left open.)
    The kernel may deliver it to a thread other than main; the driver hung then once (CI, 2026-12-06),
    its main thread blocked on a queue without a timeout, so the handler never ran."""
    driver, work, children = _training_ray_driver(tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    if to == "the_process":
        driver.terminate()
    else:
        _sigterm_to_a_thread_other_than_main(driver.pid)
    rest = output_or_stacks(driver, timeout=60)
    assert driver.returncode == 130, rest[-2000:]
    assert "interrupted: 0 of 2 cells finished and are recorded" in rest and "Traceback" not in rest, rest[-2000:]
    assert _gone_within(children, 10), f"trials {children} outlived their SIGTERMed driver"
    runs = _runs(work, "forever")
    assert sorted(runs["tags.status"]) == ["killed", "killed"] and (runs["status"] == "KILLED").all()
    invocation = mlflow.search_runs(experiment_names=["forever"], filter_string="tags.kind = 'invocation'")
    assert list(invocation["status"]) == ["KILLED"]


def test_a_huge_grid_claims_in_batches_and_stops_on_ctrl_c_within_seconds(tmp_path):
    """450 cells (with --yes): claimed 200 at a time, so Ctrl-C is answered in seconds and leaves
    no stale claim, and the projected time is said before anything runs."""
    sweeps = _sweeps(tmp_path, huge=f"fixed: {{{TINY}, steps: 1000000, eval_interval: 100000}}\ngrid: {{seed: {list(range(450))}}}\n"
                                  "budgets: {quick: {}}\n")  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), SAB_SWEEPS_DIR=str(sweeps))
    driver = subprocess.Popen([sys.executable, "-m", "harness.sweep", "huge", "--yes", "--executor", "local", "--no-timing"], cwd=work,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              preexec_fn=sigint_as_from_a_terminal)  # fmt: skip
    first = read_until(driver, lambda line: line.startswith("sweep huge"))
    assert "450 to run on local in batches of 200" in first, first
    time.sleep(2)  # the first cell is training
    driver.send_signal(signal.SIGINT)
    started = time.monotonic()
    rest = output_or_stacks(driver, timeout=60)
    assert driver.returncode == 130, rest[-2000:]
    assert time.monotonic() - started < 10
    assert "Traceback" not in rest
    runs = _runs(work, "huge")
    assert len(runs) <= 200  # one batch of claims, not 450
    assert (runs["status"] == "RUNNING").sum() == 0  # every claim released (KILLED): nothing stale for the next run


def test_claims_of_a_driver_on_another_host_are_rerun_once_its_heartbeat_is_stale(tmp_path):
    """Another host's pid cannot be checked: its invocation's heartbeat tag says whether it lives."""
    from harness.cells import expand
    from harness.config import load_sweep
    from harness.liveness import HEARTBEAT_EXPIRY_S
    from harness.tracking import Tracker

    config = load_sweep("copy_lengths", ["budget=smoke", "grid.method=[bptt,sab,tbptt]"])
    cells = expand(config)
    tracker = Tracker("copy_lengths", tmp_path / "results")
    tracker.open()
    client, now = tracker.client, time.time()
    for cell, heartbeat in zip(cells, (now - 30, now - 2 * HEARTBEAT_EXPIRY_S, None)):  # fresh, stale, a driver that never beat
        tags = {"kind": "invocation", "budget": "smoke", "driver_host": "another-host", "driver_pid": "1"}
        if heartbeat is not None:
            tags["heartbeat"] = f"{heartbeat:.0f}"
        parent = client.create_run(tracker.experiment_id, tags=tags).info.run_id
        client.create_run(tracker.experiment_id, tags={"cell_id": cell.cell_id, "budget": "smoke", "status": "running",
                                                        "mlflow.parentRunId": parent, "driver_host": "another-host", "driver_pid": "1"})  # fmt: skip
    statuses = tracker.cell_statuses("smoke")
    assert [statuses[c.cell_id] for c in cells] == ["running", "killed", "running"]
    claimed, held = tracker.claim(cells, "smoke")
    assert [c.cell_id for c, _ in claimed] == [cells[1].cell_id] and held == 2  # only the stale driver's cell is taken over


def test_a_sigterm_during_a_store_write_is_delivered_once_the_write_is_done():
    from harness.tracking import _ctrl_c_deferred

    seen: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append("stopped"))
    try:
        with _ctrl_c_deferred():
            signal.raise_signal(signal.SIGTERM)
            seen.append("written")
        seen.append("after")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["written", "stopped", "after"]
