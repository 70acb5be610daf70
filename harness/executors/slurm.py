"""Slurm executor on submitit: each resource class of cells is one job array.

Jobs only compute: each array task runs one cell (checkpointing every N steps and when
preempted, requeued through `submitit.helpers.Checkpointable`) and writes its TrialResult as
JSON under the sweep's own folder (`outcomes/CELL_ID.json`); the driver reads that file, never
submitit's result pickle (unpickling a file the store points at would run whatever code it
holds), and logs it to MLflow. With `--detach` the driver
submits and returns; rerunning the same command collects what finished and logs it once,
without resubmitting jobs still queued or running. Ctrl-C cancels the submitted jobs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import submitit

from harness.cells import Cell
from harness.config import SweepConfig, SweepError
from harness.executors.base import Executor, Outcome, SubmitHook, check_gpu_reservation, trial_spec
from sab.train import TrialResult, TrialSpec, run_trial

SBATCH_ALLOWED = (
    "exclude",
    "nodelist",
    "reservation",
    "mail-type",
    "mail-user",
    "comment",
    "gres",
    "hint",
    "exclusive",
    "licenses",
    "nice",
    "begin",
    "wckey",
)
"""Extra sbatch options a sweep may pass (`slurm.additional`); anything else is refused."""
TIMEOUT_MARGIN_MIN = 10
CHECKPOINT_EVERY = 500
"""Steps between checkpoints of a Slurm cell unless the sweep sets checkpoint_every."""


JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")
"""What a Slurm (array) job id or a local job's pid looks like; any other tag value is refused."""


class CellJob(submitit.helpers.Checkpointable):
    """What one array task runs: a cell's trial, resumable from its checkpoint; its result goes to
    a JSON file (plain data: reading it back cannot run code), and the job returns nothing."""

    def __call__(self, spec: TrialSpec, outcome_path: str) -> None:
        write_outcome(run_trial(spec), Path(outcome_path))

    def checkpoint(self, spec: TrialSpec, outcome_path: str) -> submitit.helpers.DelayedSubmission:
        """Preempted or timing out: the trial saved its state at a step boundary; requeue the same call."""
        return submitit.helpers.DelayedSubmission(self, spec, outcome_path)


def write_outcome(result: TrialResult, path: Path) -> None:
    """The trial's result as JSON, written whole or not at all (a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result.to_dict(), allow_nan=True))
    os.replace(partial, path)


def read_outcome(path: Path) -> TrialResult | None:
    """A result written by `write_outcome`, or None when there is none (or it is not one): only
    TrialResult's own fields are read, as plain JSON values."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return TrialResult.from_dict(data) if isinstance(data, dict) else None


def timeout_minutes(spec: TrialSpec) -> int:
    """Default job time: 1.5 x the budget's time cap plus a margin (60 min without a cap)."""
    if spec.time_limit_s is None:
        return 60
    return int(math.ceil(1.5 * spec.time_limit_s / 60)) + TIMEOUT_MARGIN_MIN


def _sbatch_available() -> bool:
    return shutil.which("sbatch") is not None and shutil.which("sinfo") is not None


class SlurmExecutor(Executor):
    """Cells as submitit job arrays on Slurm (or submitit's `local` cluster, SAB_SLURM_CLUSTER=local)."""

    name = "slurm"
    times_here = False  # jobs run on the cluster's nodes

    def __init__(self, config: SweepConfig, folder: Path, detach: bool = False, cluster: str | None = None) -> None:
        self.config, self.resources = config, config.resources
        self.folder = folder / config.name
        self.detach = detach
        self.cluster = cluster or os.environ.get("SAB_SLURM_CLUSTER") or "slurm"
        self.options = dict(config.slurm)
        self.concurrency = 1
        self.jobs: list = []  # every job submitted by this invocation
        self.submitted_at: float | None = None

    # -- checks before anything is submitted -------------------------------------------------
    def check(self, cells: list[Cell]) -> None:
        """Refuse what Slurm could not run: no Slurm, unknown partition, GPUs it lacks, odd options,
        CUDA trials without a GPU reserved."""
        check_gpu_reservation(cells, self.resources, self.name)
        extra = self.options.get("additional") or {}
        bad = [k for k in extra if k not in SBATCH_ALLOWED]
        if bad:
            raise SweepError(f"sbatch option {bad[0]!r} is not allowed; allowed: {', '.join(SBATCH_ALLOWED)}")
        gpus = self.resources.gpus_per_trial
        if 0 < gpus < 1:
            raise SweepError(
                f"resources.gpus_per_trial={gpus}: fractional GPUs are not packed by --executor slurm; use 1, or run --executor ray inside an allocation"
            )
        if self.cluster != "slurm":
            return
        if not _sbatch_available():
            raise SweepError(
                "--executor slurm needs Slurm's sbatch and sinfo on PATH (try scripts/slurm_local.sh start, or --executor ray|local)"
            )
        partitions = _sinfo("%P")
        partition = self.options.get("partition")
        known = [p.rstrip("*") for p in partitions]
        if partition and partition not in known:
            raise SweepError(f"slurm.partition={partition!r} is not a partition of this cluster; valid: {', '.join(known)}")
        if gpus > 0 and not any("gpu" in g for g in _sinfo("%G")):
            raise SweepError(f"resources.gpus_per_trial={gpus:g} but this Slurm cluster has no GPU (GRES) nodes")

    # -- submission ------------------------------------------------------------------------
    def executor_for(self, cells: list[Cell]) -> submitit.AutoExecutor:
        """A submitit executor configured from the sweep's resources and slurm options."""
        executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster, slurm_max_num_timeout=3)
        spec = cells[0].spec
        parameters = {
            "timeout_min": int(self.options.get("timeout_min") or timeout_minutes(spec)),
            "cpus_per_task": int(self.options.get("cpus_per_task") or self.resources.cpus_per_trial),
            "name": f"sab-{self.config.name}",
        }
        if self.resources.mem_gb:
            parameters["mem_gb"] = float(self.options.get("mem_gb") or self.resources.mem_gb)
        gpus = int(self.options.get("gpus_per_node") or self.resources.gpus_per_trial)
        if gpus:
            parameters["gpus_per_node"] = gpus
        if self.cluster == "slurm":
            for key in ("partition", "account", "qos", "constraint"):
                if self.options.get(key):
                    parameters[f"slurm_{key}"] = self.options[key]
            parameters["slurm_array_parallelism"] = int(self.options.get("array_parallelism") or self.resources.max_concurrent or 256)
            if self.options.get("additional"):
                parameters["slurm_additional_parameters"] = dict(self.options["additional"])
        executor.update_parameters(**parameters)
        return executor

    def _specs(self, cells: list[Cell]) -> list[TrialSpec]:
        root = self.folder / "checkpoints"
        return [
            dataclasses.replace(
                trial_spec(c, self.resources),
                checkpoint_path=str(root / f"{c.cell_id}.pt"),
                checkpoint_every=c.spec.checkpoint_every or CHECKPOINT_EVERY,
            )
            for c in cells
        ]

    def _groups(self, cells: list[Cell]) -> dict[int, list[Cell]]:
        """Cells by resource class: one job array per distinct job time."""
        groups: dict[int, list[Cell]] = {}
        for cell in cells:
            groups.setdefault(timeout_minutes(cell.spec), []).append(cell)
        return groups

    def submit(self, cells: list[Cell], on_submit: SubmitHook | None = None) -> list[tuple[Cell, object]]:
        """Submit every cell, one array per resource class; print the job ids."""
        submitted = []
        for group in self._groups(cells).values():
            jobs = self.executor_for(group).map_array(CellJob(), self._specs(group), [str(self.outcome_path(c)) for c in group])
            array = jobs[0].job_id.split("_")[0] if jobs else "?"
            print(f"submitted {len(jobs)} cells as {'job array ' + array if self.cluster == 'slurm' else self.cluster + ' jobs'}: "
                  f"{', '.join(j.job_id for j in jobs)}", flush=True)  # fmt: skip
            self.jobs += jobs  # known before anything else can be interrupted: Ctrl-C cancels them all
            for cell, job in zip(group, jobs):
                submitted.append((cell, job))
                if on_submit:
                    on_submit(cell, job.job_id, str(self.folder))
        self.submitted_at = time.monotonic()
        self.concurrency = min(len(cells), int(self.options.get("array_parallelism") or self.resources.max_concurrent or len(cells)))
        return submitted

    def run(self, cells: list[Cell], on_submit: SubmitHook | None = None) -> Iterator[Outcome]:
        submitted = self.submit(cells, on_submit)
        if self.detach:
            print("detached: rerun the same command to collect the results", flush=True)
            return
        by_job = {job.job_id: cell for cell, job in submitted}
        for job in submitit.helpers.as_completed([job for _, job in submitted], poll_frequency=1):
            yield self.outcome(by_job[job.job_id], job)

    def stop(self) -> None:
        """Ctrl-C: cancel every submitted job (one scancel, bounded in time), and say so."""
        if not self.jobs:
            return
        ids = [job.job_id for job in self.jobs]
        try:
            if self.cluster == "slurm":
                subprocess.run(["scancel", *ids], capture_output=True, timeout=30)
            else:
                for job in self.jobs:
                    job.cancel(check=False)
        except (OSError, subprocess.SubprocessError) as error:
            print(f"could not cancel jobs {', '.join(ids)}: {error}; cancel them with scancel", flush=True)
            return
        print(f"cancelled {len(ids)} submitted jobs: {', '.join(ids)}", flush=True)

    # -- results ---------------------------------------------------------------------------
    def outcome_path(self, cell: Cell) -> Path:
        """Where a cell's job writes its result: inside this sweep's folder, named by the cell."""
        return self.folder / "outcomes" / f"{cell.cell_id}.json"

    def outcome(self, cell: Cell, job) -> Outcome:
        """A finished job as a cell outcome: the TrialResult its job wrote as JSON, or a status
        from how the job ended (Slurm's state and the tail of its stderr) when it wrote none."""
        result = read_outcome(self.outcome_path(cell))
        if result is None:
            state = (job.state or "").upper()
            status = "oom" if "OUT_OF_MEMORY" in state else ("timeout" if "TIMEOUT" in state else "error")
            stderr = (job.stderr() or "").strip()
            result = TrialResult(
                status=status,
                error_type=f"Slurm{state.split()[0].title() if state else 'Uncompleted'}",
                error=f"job {job.job_id} ended {state or 'in an unknown state'} without a result file: "
                f"{stderr.splitlines()[-1][:500] if stderr else 'no stderr'}",
                traceback=stderr[-4000:],
            )
        wall = time.monotonic() - self.submitted_at if self.submitted_at else result.train_seconds  # queue time included
        return Outcome(cell, result, self.name, self.concurrency, self.resources.cpus_per_trial, wall, f"slurm:{job.job_id}")

    def collect(self, cells: list[Cell], handed_off: list[dict]) -> Iterator[tuple[dict, Outcome]]:
        """The handed-off cells whose Slurm jobs (of an earlier, detached or dead, invocation) have
        ended. A claim is the store's word only: its job must be a job id and its folder this
        sweep's own, else it is refused with a line and left alone."""
        by_id = {c.cell_id: c for c in cells}
        for claim in handed_off:
            cell = by_id.get(claim["cell_id"])
            if cell is None:
                continue
            refused = self.refusal(claim)
            if refused:
                print(f"ignoring the claim of run {claim['run_id']}: {refused}", flush=True)
                continue
            job = self.job(claim["job_id"])
            if job.done(force_check=True):
                yield claim, self.outcome(cell, job)

    def refusal(self, claim: dict) -> str:
        """Why a handed-off claim's tags cannot be this sweep's (a planted or foreign run), or ''."""
        if not JOB_ID.match(str(claim.get("job_id") or "")):
            return f"job_id {claim.get('job_id')!r} is not a job id"
        folder = str(claim.get("folder") or "")
        if not folder or Path(folder).resolve() != self.folder.resolve():
            return f"job_folder {folder!r} is not this sweep's folder {str(self.folder)!r}"
        return ""

    def job(self, job_id: str):
        """A handle on a job this sweep submitted earlier (by a detached invocation), in its own folder."""
        if self.cluster == "slurm":
            return submitit.SlurmJob(folder=str(self.folder / "%j"), job_id=job_id)
        return submitit.LocalJob(folder=str(self.folder / "%j"), job_id=job_id)


def _sinfo(fmt: str) -> list[str]:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", fmt], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise SweepError(f"cannot query Slurm (sinfo -o {fmt}): {error}") from None
    return [line.strip() for line in out.splitlines() if line.strip()]
