"""MLflow, the record of truth: one writer (the driver), a parent run per invocation, a child per cell.

Default store: `sqlite:///<abs>/results/mlflow.db`, artifacts under `<abs>/results/mlartifacts`,
one experiment per sweep, the budget as a tag. Each cell is logged as soon as it finishes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from harness.config import SweepError
from harness.executors.base import Outcome
from harness.liveness import HEARTBEAT_S, holder_alive, this_driver
from harness.machine import machine
from sab.train import FAILURE_STATUSES, RESULT_STATUSES

RUNNING = "running"
"""The status tag of a claimed cell whose trial has not reported yet."""

HEALTH_TIMEOUT_S = 2.0
FINAL_METRICS = (
    "steps_done", "train_seconds", "seconds_per_step", "tokens_per_second", "peak_saved_bytes", "peak_held_bytes",
    "peak_bytes", "peak_rss_bytes", "cuda_max_allocated_bytes", "cuda_max_reserved_bytes",
)  # fmt: skip


TIMING_PARAMS = ("method", "task", "seq_len", "hidden_size", "batch_size", "k_trunc", "k_top", "k_att", "attn_size", "scorer_init",
                 "threads", "device", "repeats", "steps_per_repeat")  # fmt: skip
TIMING_METRICS = (
    "step_seconds",
    "step_seconds_min",
    "step_seconds_max",
    "tokens_per_second",
    "tokens_per_step",
    "peak_bytes",
    "minor_faults_per_step",
)


def default_uri(results_dir: Path) -> str:
    """The project's local store under results/."""
    return f"sqlite:///{results_dir.resolve() / 'mlflow.db'}"


@functools.cache
def git_sha() -> str:
    """HEAD of the project's checkout (with -dirty when its code has changes), or 'unknown'; read
    once per driver, so every cell of an invocation carries the code it started with, even when a
    commit lands while it runs."""
    return checkout_state(Path(__file__).resolve().parent.parent)


GENERATED_FOLDERS = ("results",)
"""Folders the sweeps themselves write (committed reports among them): changes there do not make
the code -dirty, or every sweep after the first in a checkout would read as uncommitted code."""


def checkout_state(root: Path) -> str:
    """`SHA` or `SHA-dirty` of the git checkout at `root` (tracked files outside GENERATED_FOLDERS), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *(f":(exclude){g}" for g in GENERATED_FOLDERS)],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def resolve_uri(flag: str | None, results_dir: Path) -> str:
    """Which store: --tracking-uri, else $MLFLOW_TRACKING_URI (as every MLflow tool reads it),
    else the project's local store under results_dir."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(results_dir)


def search_runs(uri: str, **query):
    """mlflow.search_runs on one store as a pandas DataFrame, leaving the process's tracking URI
    (and $MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri sets) as they were."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(**query)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(before)


def check_reachable(uri: str) -> None:
    """A ~2 s health check of a tracking server (not the client's long retries); local stores need a writable folder."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:
                if response.status != 200:
                    raise SweepError(
                        f"tracking URI {uri!r} answered HTTP {response.status} on /health; expected 200 (is it an MLflow server?)"
                    )
        except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise SweepError(
                f"tracking URI {uri!r} is unreachable ({reason}); start the server or pass a reachable --tracking-uri"
            ) from None
    elif parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///") :]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SweepError(f"cannot create the results folder {folder} ({error.strerror}); pass a writable --results-dir") from None
        if not os.access(folder, os.W_OK):
            raise SweepError(f"tracking store folder {folder} is not writable; pass a writable --results-dir")
    elif parsed.scheme not in ("file", "databricks", "postgresql", "mysql", "mssql"):
        raise SweepError(f"tracking URI {uri!r} has an unknown scheme {parsed.scheme!r}; valid: sqlite:///PATH, http(s)://HOST:PORT")


class Tracker:
    """The driver's MLflow writer for one sweep.

    Writes to a local store are serialised by a file lock beside it, and a cell is claimed (a
    child run created RUNNING, naming its driver) before it runs: two invocations of one sweep
    at once run each cell once, and claims of a driver that died are marked KILLED and rerun.
    """

    def __init__(self, sweep: str, results_dir: Path, tracking_uri: str | None = None) -> None:
        self.sweep = sweep
        self.results_dir = results_dir.resolve()
        self.uri = resolve_uri(tracking_uri, self.results_dir)
        self.artifact_root = (self.results_dir / "mlartifacts").as_uri()
        self._client = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self._beating: threading.Event | None = None  # set to stop the heartbeat of this invocation

    @property
    def client(self):
        """The MLflow client bound to this store."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @contextlib.contextmanager
    def lock(self):
        """Serialise a write: an inter-process file lock for a local store (a tracking server needs
        none), with Ctrl-C deferred to the end of the write so no write or lock is left half done."""
        with _ctrl_c_deferred():
            if not self.uri.startswith("sqlite:///"):
                yield
                return
            from filelock import FileLock

            folder = Path(self.uri[len("sqlite:///") :]).parent / "locks"
            folder.mkdir(parents=True, exist_ok=True)
            with FileLock(str(folder / "mlflow.lock"), timeout=600):
                yield

    def open(self) -> str:
        """Create the store and the sweep's experiment (driver first, before any trial starts)."""
        check_reachable(self.uri)
        with self.lock(), _store_errors(self.uri):
            experiment = self.client.get_experiment_by_name(self.sweep)
            if experiment is None:
                location = self.artifact_root + "/" + self.sweep if self.uri.startswith("sqlite") else None
                self.experiment_id = self.client.create_experiment(self.sweep, artifact_location=location)
            else:
                self.experiment_id = experiment.experiment_id
        return self.experiment_id

    def describe(self, description: str, metric: str, greater_is_better: bool) -> None:
        """Tag the sweep's experiment so MLflow 3 opens it as model development (the classic runs
        view, not the GenAI pages), with its primary metric and the sweep's description as its note."""
        tags = {
            "mlflow.experimentKind": "custom_model_development",
            "mlflow.experiment.primaryMetric.name": metric,
            "mlflow.experiment.primaryMetric.greaterIsBetter": str(greater_is_better).lower(),
            "mlflow.note.content": description.strip(),
        }
        with self.lock(), _store_errors(self.uri):
            for key, value in tags.items():
                self.client.set_experiment_tag(self.experiment_id, key, value)

    def log_summary(self, values: dict[str, float]) -> None:
        """Headline figures on the invocation's run (each method's mean metric per T, memory ratios),
        so the runs page shows the sweep's answer without expanding a run."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if _finite(v)]
        if self.parent_id and metrics:
            with self.lock():
                for start in range(0, len(metrics), 1000):
                    self.client.log_batch(self.parent_id, metrics=metrics[start : start + 1000])

    def find(self) -> bool:
        """Bind to the sweep's experiment if the store and the experiment exist; creates nothing
        (a local store that does not exist yet is not created)."""
        if self.uri.startswith("sqlite:///") and not Path(self.uri[len("sqlite:///") :]).is_file():
            return False
        with _store_errors(self.uri):
            experiment = self.client.get_experiment_by_name(self.sweep)
        self.experiment_id = experiment.experiment_id if experiment is not None else None
        return experiment is not None

    def cell_runs(self, budget: str | None = None):
        """Every active child run of the sweep (optionally one budget) as a pandas DataFrame."""
        filters = ["tags.cell_id != ''"]
        if budget:
            filters.append(f"tags.budget = '{budget}'")
        return search_runs(self.uri, experiment_ids=[self.experiment_id], filter_string=" and ".join(filters), max_results=100000)

    def cell_statuses(self, budget: str, beats: dict[str, float | None] | None = None) -> dict[str, str]:
        """cell_id -> a result status if any run has one, else `running` (a live driver holds it),
        else the latest failure (error, timeout, killed). `beats`: the invocations' heartbeats, when
        the caller has just read them."""
        runs = self.cell_runs(budget)
        if beats is None:
            beats = self._heartbeats() if not runs.empty else {}
        statuses: dict[str, str] = {}
        for _, row in runs.sort_values("start_time").iterrows() if not runs.empty else ():
            cell, status = row["tags.cell_id"], row.get("tags.status")
            if statuses.get(cell) in RESULT_STATUSES:
                continue
            if status == RUNNING and not holder_alive(_tags(row), _heartbeat(row, beats)):
                status = "killed"
            if statuses.get(cell) == RUNNING and status not in RESULT_STATUSES:
                continue
            statuses[cell] = status
        return statuses

    def start_parent(self, budget: str, executor: str, argv: list[str]) -> str:
        """The invocation's parent run, stamped with a heartbeat every HEARTBEAT_S until it ends:
        drivers on other hosts tell a live claim from a dead driver's by it."""
        tags = {
            "sweep": self.sweep, "budget": budget, "executor": executor, "git_sha": git_sha(), "kind": "invocation",
            "command": " ".join(argv)[:5000], "mlflow.runName": f"{self.sweep}__{budget}__{time.strftime('%Y%m%d-%H%M%S')}",
            "heartbeat": f"{time.time():.0f}", **this_driver(),
        }  # fmt: skip
        with self.lock():
            self.parent_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        self._beating = threading.Event()
        threading.Thread(target=self._beat, args=(self.parent_id, self._beating), name="heartbeat", daemon=True).start()
        return self.parent_id

    def _beat(self, run_id: str, stop: threading.Event, every_s: float = HEARTBEAT_S) -> None:
        while not stop.wait(every_s):
            try:
                with self.lock():
                    self.client.set_tag(run_id, "heartbeat", f"{time.time():.0f}")
            except Exception:  # a store that is briefly unreachable: the next beat tries again
                pass

    def _heartbeats(self) -> dict[str, float | None]:
        """Running invocations: run id -> last heartbeat (None for a driver that does not beat)."""
        runs = search_runs(
            self.uri,
            experiment_ids=[self.experiment_id],
            filter_string="tags.kind = 'invocation' and attributes.status = 'RUNNING'",
            max_results=100000,
        )
        beats: dict[str, float | None] = {}
        for _, row in runs.iterrows() if not runs.empty else ():
            stamp = row.get("tags.heartbeat")
            beats[row["run_id"]] = float(stamp) if isinstance(stamp, str) and stamp else None
        return beats

    def claim(self, cells: list, budget: str, limit: int | None = None) -> tuple[list[tuple], int]:
        """Claim the cells without a result that no live driver holds, at most `limit` of them:
        [(cell, run_id)], and how many live drivers hold."""
        with self.lock():
            beats = self._heartbeats()  # read once: the reaping and the statuses judge by the same beats
            self._reap(beats)
            statuses = self.cell_statuses(budget, beats)
            claimed, held = [], 0
            for cell in cells:
                status = statuses.get(cell.cell_id)
                if status in RESULT_STATUSES:
                    continue
                if status == RUNNING:
                    held += 1
                    continue
                if limit is not None and len(claimed) >= limit:
                    continue
                tags = {"mlflow.runName": cell.name, "cell_id": cell.cell_id, "sweep": self.sweep, "budget": budget,
                        "status": RUNNING, "mlflow.parentRunId": self.parent_id or "", **this_driver()}  # fmt: skip
                claimed.append((cell, self.client.create_run(self.experiment_id, tags=tags).info.run_id))
        return claimed, held

    def _reap(self, beats: dict[str, float | None]) -> None:
        """Mark KILLED the runs (cells and invocations) left RUNNING by drivers that died (judged by `beats`)."""
        runs = search_runs(self.uri, experiment_ids=[self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=100000)
        for _, row in runs.iterrows() if not runs.empty else ():
            if not holder_alive(_tags(row), _heartbeat(row, beats)):
                if row.get("tags.cell_id"):
                    self.client.set_tag(row["run_id"], "status", "killed")
                    self.client.set_tag(row["run_id"], "error", "its driver died before the cell finished")
                self.client.set_terminated(row["run_id"], status="KILLED")

    def hand_off(self, run_id: str, holder: str, job_id: str, folder: str) -> None:
        """The claim is now held by a job of executor `holder` that outlives this driver; a rerun collects it."""
        with self.lock():
            for key, value in (("held_by", holder), ("job_id", job_id), ("job_folder", folder)):
                self.client.set_tag(run_id, key, value)

    def handed_off(self, budget: str, holder: str) -> list[dict]:
        """Claims held by jobs of executor `holder` and not yet collected: run id, cell id, job id, folder."""
        runs = self.cell_runs(budget)
        if runs.empty or "tags.held_by" not in runs:
            return []
        held = runs[(runs["status"] == "RUNNING") & (runs["tags.held_by"] == holder)]
        return [
            {"run_id": r["run_id"], "cell_id": r["tags.cell_id"], "job_id": r["tags.job_id"], "folder": r["tags.job_folder"]}
            for _, r in held.iterrows()
        ]

    def release(self, run_ids: list[str]) -> None:
        """Mark this driver's unfinished claims KILLED (Ctrl-C or SIGTERM), so a rerun runs them."""
        with self.lock():
            for run_id in run_ids:
                self.client.set_tag(run_id, "status", "killed")
                self.client.set_tag(run_id, "error", "interrupted (Ctrl-C or SIGTERM) before the cell finished")
                self.client.set_terminated(run_id, status="KILLED")

    def end_parent(self, failed: bool, killed: bool = False) -> None:
        """Close the parent run: KILLED when interrupted, FAILED if any cell failed, else FINISHED."""
        if self._beating is not None:
            self._beating.set()
        if self.parent_id:
            with self.lock():
                self.client.set_terminated(self.parent_id, status="KILLED" if killed else ("FAILED" if failed else "FINISHED"))

    def log_outcome(self, outcome: Outcome, run_id: str) -> str:
        """Fill a claimed child run with a finished cell: params, metrics, learning curve, tags, status."""
        from mlflow.entities import Metric, Param, RunTag

        cell, result = outcome.cell, outcome.result
        tags = {
            "status": result.status, "git_sha": git_sha(), "torch_version": result.torch_version, "device": result.device,
            "device_name": result.device_name, "executor": outcome.executor, "concurrency": str(outcome.concurrency),
            "threads": str(outcome.threads), "error_type": result.error_type, "python": sys.version.split()[0],
            "replay_group": str(result.replay_group), "static_shapes": str(result.static_shapes), "cuda_graphs": result.cuda_graphs,
            "selected_step": str(result.selected_step), "stop_reason": result.stop_reason,
            "continued_from_step": str(result.continued_from_step),
            "location": outcome.location,
            "mlflow.source.git.commit": git_sha().removesuffix("-dirty"),
        }  # fmt: skip
        if result.error:
            tags["error"] = result.error[:4000]
        if result.traceback:
            tags["traceback"] = result.traceback[-4000:]
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, result.steps_done) for k, v in result.metrics.items() if _finite(v)]
        metrics += [Metric(k, float(getattr(result, k)), now, result.steps_done) for k in FINAL_METRICS if _finite(getattr(result, k))]
        metrics.append(Metric("wall_seconds", float(outcome.wall_seconds), now, result.steps_done))
        for point in result.curve:  # the learning curve under the metrics' own names, by training step, so the UI
            step = int(point["step"])  # overlays curves across runs; 1 ms older than the finals, which stay the latest
            metrics += [Metric(k, float(v), now - 1, step) for k, v in point.items() if k != "step" and _finite(v)]
        params = [Param(k, str(v)) for k, v in cell.params().items()]
        with self.lock():
            if self.client.get_run(run_id).info.status != "RUNNING":
                return run_id  # already logged (e.g. collected by another invocation): log each cell once
            for start in range(0, len(params), 100):  # MLflow's per-call limits: 100 params, 1000 metrics, 100 tags
                self.client.log_batch(run_id, params=params[start : start + 100])
            for start in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            self.client.log_inputs(run_id, datasets=[_dataset_input(cell.spec)])
            if result.attention:
                from harness.figures import attention_png  # matplotlib and scipy: only a run with attention pays their import

                with tempfile.TemporaryDirectory() as folder:
                    self.client.log_artifact(run_id, str(attention_png(outcome.cell.name, result, Path(folder))))
            self.client.set_terminated(run_id, status="FAILED" if result.status in FAILURE_STATUSES else "FINISHED")
        return run_id

    def log_timing(self, rows: list[dict], budget: str) -> None:
        """Record the clean timing pass: one run per configuration (tag kind=timing), under this invocation."""
        from mlflow.entities import Metric, Param, RunTag

        from harness.timing import timing_key

        now = int(time.time() * 1000)
        for row in rows:
            tags = {"kind": "timing", "sweep": self.sweep, "budget": budget, "timing_key": timing_key(row), "status": row.get("status", ""),
                    "mlflow.runName": f"timing__{row['method']}__seq_len={row['seq_len']}", "mlflow.parentRunId": self.parent_id or "",
                    "git_sha": git_sha()}  # fmt: skip
            params = [Param(k, str(row.get(k))) for k in TIMING_PARAMS if row.get(k) not in (None, "")]
            metrics = [Metric(k, float(row[k]), now, 0) for k in TIMING_METRICS if _finite(row.get(k))]
            with self.lock():
                run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
                self.client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag("machine", machine())])
                self.client.set_terminated(run_id, status="FINISHED" if row.get("status") == "ok" else "FAILED")

    def timing_runs(self, budget: str):
        """The latest clean timing of each configuration of this budget, as a pandas DataFrame."""
        runs = search_runs(
            self.uri,
            experiment_ids=[self.experiment_id],
            filter_string=f"tags.kind = 'timing' and tags.budget = '{budget}'",
            max_results=100000,
        )
        if runs.empty:
            return runs
        return runs.sort_values("start_time").groupby("tags.timing_key", as_index=False).tail(1)

    def log_report(self, files: list[Path]) -> None:
        """Attach this invocation's report files (only those it wrote) to its parent run."""
        if self.parent_id and files:
            with self.lock():
                for path in files:
                    self.client.log_artifact(self.parent_id, str(path))


@contextlib.contextmanager
def _store_errors(uri: str):
    """A store MLflow cannot read (a corrupt or foreign SQLite file) is one line naming it and the fix."""
    try:
        yield
    except SweepError:
        raise
    except Exception as error:  # MLflow wraps SQLAlchemy's errors in several types
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise SweepError(
            f"tracking store {uri} cannot be read ({type(error).__name__}: {first}); move it aside to start a new store, or pass --tracking-uri"
        ) from None


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Signals held while the store is written: each stops a sweep (harness.sweep), never mid-write."""


@contextlib.contextmanager
def _ctrl_c_deferred():
    """Hold a SIGINT or SIGTERM that arrives inside the block and deliver it, to the handler it
    would have met, once the block is done (a store write is never cut in half)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    held = [number for number in DEFERRED_SIGNALS if signal.getsignal(number) is not None]  # None: a handler set outside Python, left alone
    previous = {number: signal.signal(number, lambda signum, frame: caught.append(signum)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if caught:
        signal.raise_signal(caught[0])


def _dataset_input(spec):
    """The cell's data as an MLflow dataset input (context: train)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from harness.datasets import dataset_of

    return DatasetInput(Dataset(**dataset_of(spec)), tags=[InputTag("mlflow.data.context", "train")])


def _heartbeat(row, beats: dict[str, float | None]) -> float | None:
    """The heartbeat that vouches for a run: its own (an invocation), else its invocation's; 0 (long
    dead) for a claim whose invocation is no longer running; None where nothing beats."""
    if row.get("run_id") in beats:
        return beats[row["run_id"]]
    parent = row.get("tags.mlflow.parentRunId")
    if not isinstance(parent, str) or not parent:
        return None
    return beats.get(parent, 0.0)


def _tags(row) -> dict:
    return {k[len("tags.") :]: v for k, v in row.items() if isinstance(k, str) and k.startswith("tags.") and isinstance(v, str)}


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
