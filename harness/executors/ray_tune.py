"""Ray Tune executor: a grid of cells as Tune trials, locally or on a Ray cluster.

`ray.init(address="local")` starts a private local instance unless an address is given, so a
Ray cluster already running on the machine is never joined by accident. Each trial runs its
cell in a child process (memory limit, crash isolation) with threads = its CPUs, reports
progress through `tune.report`, and hands its final TrialResult back to the driver through a
Tune callback; the driver alone writes MLflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict

from harness.cells import Cell
from harness.config import Resources, SweepError
from harness.executors.base import Executor, Outcome, SubmitHook, check_gpu_reservation, check_this_machine, trial_spec
from harness.isolation import run_isolated
from harness.liveness import this_driver
from harness.machine import usable_cpus
from sab.train import TrialResult, TrialSpec

RESULT_KEY = "trial_result_json"


def _trainable(config: dict) -> None:
    """Tune function trainable: run one cell in a child process, report progress, then the result."""
    from ray import tune

    payload = config["cell"]
    spec = TrialSpec.from_dict(payload["spec"])
    result = run_isolated(spec, payload["mem_gb"], on_report=lambda point: tune.report(dict(point)), watch=payload.get("driver"))
    tune.report({RESULT_KEY: json.dumps(result.to_dict()), "status_ok": int(result.status == "ok")})


_COLLECTORS: dict[int, _Collector] = {}
"""Driver-side collectors by id: Tune pickles its callbacks with the experiment state, so the
callback holds only this key, never the (unpicklable) collector."""


def _callback(collector: _Collector):
    """A Tune callback forwarding trial events to the collector registered under its key."""
    from ray import tune

    global _ResultCallback
    if _ResultCallback is None:

        class ResultCallback(tune.Callback):
            def __init__(self, key: int) -> None:
                self.key = key

            def _target(self):
                return _COLLECTORS.get(self.key)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if self._target():
                    self._target().result(trial, result)

            def on_trial_error(self, iteration, trials, trial, **info):
                if self._target():
                    self._target().error(trial)

            def on_trial_complete(self, iteration, trials, trial, **info):
                if self._target():
                    self._target().complete(trial)

        ResultCallback.__module__ = __name__
        ResultCallback.__qualname__ = "_ResultCallback"
        _ResultCallback = ResultCallback
    _COLLECTORS[id(collector)] = collector
    return _ResultCallback(id(collector))


_ResultCallback = None


class _Collector:
    """Driver-side Tune callback that turns finished trials into outcomes on a queue."""

    def __init__(self, cells: dict[str, Cell], sink: queue.Queue, make: Callable[[Cell, TrialResult, float], Outcome]) -> None:
        self.callback = _callback(self)
        self.cells, self.sink, self.make = cells, sink, make
        self.done: set[str] = set()
        self.started: dict[str, float] = {}
        self.on_report: Callable[[Cell, dict], None] | None = None

    def _cell(self, trial) -> Cell:
        return self.cells[trial.config["cell"]["cell_id"]]

    def result(self, trial, result: dict) -> None:
        cell = self._cell(trial)
        self.started.setdefault(cell.cell_id, time.monotonic() - float(result.get("time_total_s", 0.0)))
        if RESULT_KEY in result and cell.cell_id not in self.done:
            self.done.add(cell.cell_id)
            trial_result = TrialResult.from_dict(json.loads(result[RESULT_KEY]))
            self.sink.put(self.make(cell, trial_result, float(result.get("time_total_s", 0.0))))
        elif self.on_report is not None and "step" in result:
            self.on_report(cell, {k: result[k] for k in result if k in ("step", "train_loss", "val_accuracy", "val_loss")})

    def error(self, trial) -> None:
        cell = self._cell(trial)
        if cell.cell_id in self.done:
            return
        self.done.add(cell.cell_id)
        failure = TrialResult(status="error", error_type="RayTrialError")
        error_file = getattr(trial, "error_file", None) or ""
        failure.error = f"Ray trial {trial.trial_id} failed" + (f"; see {error_file}" if error_file else "")
        text = getattr(trial, "error_msg", None)
        if text:
            failure.traceback = str(text)[-4000:]
            if "OutOfMemoryError" in failure.traceback or "out of memory" in failure.traceback.lower():
                failure.status = "oom"
        self.sink.put(self.make(cell, failure, 0.0))

    def complete(self, trial) -> None:
        cell = self._cell(trial)
        if cell.cell_id not in self.done:  # finished without a final report: count it as an error
            self.done.add(cell.cell_id)
            failure = TrialResult(status="error", error_type="NoResult", error=f"Ray trial {trial.trial_id} ended without a result")
            self.sink.put(self.make(cell, failure, 0.0))


def _token_at_hand() -> bool:
    """A Ray auth token in RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token."""
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or os.path.exists(token_file)


def _use_cluster_token() -> None:
    """Ray >= 2.59 clusters started with `ray start` want a token, while a client connecting by
    address defaults to no auth. When a token is at hand, send it."""
    if "RAY_AUTH_MODE" not in os.environ and _token_at_hand():
        os.environ["RAY_AUTH_MODE"] = "token"


def _private_token() -> None:
    """Token auth for the private local Ray without touching ~/.ray.

    Ray resolves a loopback node address to the machine's reachable one, so its servers listen
    beyond 127.0.0.1; a token keeps them closed. Ray >= 2.59 would create ~/.ray/auth_token for a
    new local instance, after which every Ray client of this user sends a token, also to clusters
    started without one (which then refuse its actors). A token of this invocation, in the
    environment its Ray processes inherit, protects the instance and leaves the user's files alone.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    if not _token_at_hand():
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ["RAY_AUTH_MODE"] = "token"


class RayExecutor(Executor):
    """Cells as Ray Tune trials with `tune.with_resources`; results yielded as trials finish."""

    name = "ray"

    def __init__(
        self,
        resources: Resources,
        storage_path: str,
        address: str | None = None,
        experiment_name: str = "sweep",
        on_report: Callable[[Cell, dict], None] | None = None,
    ) -> None:
        self.resources = resources
        self.storage_path = os.path.abspath(storage_path)
        self.address = address
        self.experiment_name = experiment_name
        self.on_report = on_report
        self.concurrency = 1
        self.cluster_address = ""
        self.times_here = address is None  # a cluster's trials run on its nodes
        self.shares_results_dir = address is None  # ... which may not see this machine's files
        # Tune's own console output (the configuration box, "View detailed results", a TensorBoard
        # hint) is off: the driver prints the project's progress lines. Read when Tune runs.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        if address is None:  # Ray reads RAY_AUTH_MODE when it is imported: before any import of ray
            _private_token()
        else:
            _use_cluster_token()

    def check(self, cells: list[Cell]) -> None:
        """Before Ray starts: GPUs reserved for CUDA trials, and the request against this machine
        (local); after connecting: against the cluster."""
        check_gpu_reservation(cells, self.resources, self.name)
        if self.address is None:
            check_this_machine(self.resources, cells)

    def _connect(self) -> dict:
        import ray

        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        with _sigterm_handler_kept():
            self._init(ray)
        self.cluster_address = ray.get_runtime_context().gcs_address
        available = ray.cluster_resources()
        need_cpu, need_gpu = self.resources.cpus_per_trial, self.resources.gpus_per_trial
        if need_cpu > available.get("CPU", 0):
            raise SweepError(f"resources.cpus_per_trial={need_cpu} but the Ray cluster has {available.get('CPU', 0):g} CPUs")
        if need_gpu > available.get("GPU", 0):
            raise SweepError(f"resources.gpus_per_trial={need_gpu} but the Ray cluster has {available.get('GPU', 0):g} GPUs")
        return available

    def _init(self, ray) -> None:
        """Start the private local Ray, or join the cluster at `address`, unless this process already did."""
        if ray.is_initialized():
            return
        if self.address is None:
            ray.init(address="local", num_cpus=usable_cpus(), include_dashboard=False, logging_level="warning", log_to_driver=False)
        else:
            try:
                ray.init(address=self.address, logging_level="warning", log_to_driver=False)
            except ConnectionError as error:
                raise SweepError(f"cannot reach the Ray cluster at {self.address!r}: {str(error).splitlines()[0]}") from None
            except Exception as error:
                if "Authentication" in type(error).__name__ or "InvalidAuthToken" in str(error):
                    raise SweepError(
                        f"the Ray cluster at {self.address!r} wants its auth token: copy it to ~/.ray/auth_token "
                        "(or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH) and set RAY_AUTH_MODE=token"
                    ) from None
                raise

    def _scratch(self) -> str:
        """Where Tune may write while a sweep runs: under the executor's folder (results/ray)."""
        os.makedirs(self.storage_path, exist_ok=True)
        return self.storage_path

    def stop(self) -> None:
        """Stop every running trial (Ctrl-C): shut the private Ray down. Tune's thread is still in
        its loop, and its next Ray call starts a new local Ray (ray.init on first use); two of its
        agents outlive this process by a minute or two. Left alone on purpose: with first-use init
        switched off, 2 test runs in 11 exited 1 mid-shutdown ("The core worker has already been
        shutdown"), the claims left open."""
        import ray

        if ray.is_initialized():
            ray.shutdown()

    def run(self, cells: list[Cell], on_submit: SubmitHook | None = None) -> Iterator[Outcome]:
        from ray import tune

        available = self._connect()
        slots = int(available.get("CPU", 1) // self.resources.cpus_per_trial)
        if self.resources.gpus_per_trial > 0:
            slots = min(slots, int(available.get("GPU", 0) // self.resources.gpus_per_trial))
        if self.resources.max_concurrent:
            slots = min(slots, self.resources.max_concurrent)
        slots = max(1, min(slots, len(cells)))
        self.concurrency = slots
        if self.resources.gpus_per_trial > 0:  # trials that share one device at once, not the whole cluster
            self.concurrency = max(1, int(1 / self.resources.gpus_per_trial)) if self.resources.gpus_per_trial < 1 else 1
        by_id = {c.cell_id: c for c in cells}
        sink: queue.Queue = queue.Queue()

        def make(cell: Cell, result: TrialResult, wall: float) -> Outcome:
            return Outcome(cell, result, self.name, self.concurrency, self.resources.cpus_per_trial, wall, f"ray://{self.cluster_address}")

        collector = _Collector(by_id, sink, make)
        collector.on_report = self.on_report
        driver = this_driver()  # a trial on this host stops within a second of this driver's death
        payloads = [
            {"cell_id": c.cell_id, "spec": asdict(trial_spec(c, self.resources)), "mem_gb": self.resources.mem_gb, "driver": driver}
            for c in cells
        ]
        # Tune's experiment state (tuner.pkl, progress.csv, event files) is read by nothing here:
        # MLflow is the record. It goes to a folder of this invocation, removed when it ends.
        storage = tempfile.mkdtemp(prefix="tune-", dir=self._scratch())
        trainable = tune.with_resources(_trainable, {"cpu": self.resources.cpus_per_trial, "gpu": self.resources.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search(payloads)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=slots,
                reuse_actors=True,
                trial_dirname_creator=lambda trial: trial.config["cell"]["cell_id"],
            ),
            run_config=tune.RunConfig(
                name=self.experiment_name,
                storage_path=storage,
                failure_config=tune.FailureConfig(max_failures=0),
                callbacks=[collector.callback],
                verbose=0,
            ),
        )
        failure: list[BaseException] = []

        def fit() -> None:
            try:
                tuner.fit()
            except BaseException as error:  # surfaced below, after the outcomes that did finish
                failure.append(error)
            finally:
                sink.put(None)

        thread = threading.Thread(target=fit, name="ray-tune-fit", daemon=True)
        thread.start()
        yielded = 0
        try:
            while yielded < len(cells):
                item = _get_answering_signals(sink)
                if item is None:
                    break
                yielded += 1
                yield item
            _join_answering_signals(thread, timeout=60)
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        for cell in cells:  # anything Tune never reported is a failure, never silently dropped
            if cell.cell_id not in collector.done:
                reason = (
                    f"Ray Tune ended without running this cell ({failure[0]!r})"
                    if failure
                    else "Ray Tune ended without a result for this cell"
                )
                yield make(cell, TrialResult(status="error", error_type="NotRun", error=reason), 0.0)


WAIT_SLICE_S = 0.5
"""Longest the driver's main thread blocks at once while Tune runs. The kernel may hand SIGTERM or
SIGINT to any of the driver's ~30 threads (Ray's, gRPC's, Tune's); Python then runs the handler only
when the main thread next executes bytecode, so an unbounded wait there would never stop the sweep."""


def _get_answering_signals(sink: queue.Queue):
    """`sink.get()`, woken every WAIT_SLICE_S so a pending SIGTERM or SIGINT handler runs."""
    while True:
        try:
            return sink.get(timeout=WAIT_SLICE_S)
        except queue.Empty:
            continue


def _join_answering_signals(thread: threading.Thread, timeout: float) -> None:
    """`thread.join(timeout)`, in slices of WAIT_SLICE_S for the same reason."""
    deadline = time.monotonic() + timeout
    while thread.is_alive() and time.monotonic() < deadline:
        thread.join(timeout=min(WAIT_SLICE_S, deadline - time.monotonic()))  # join treats a negative timeout as 0


@contextlib.contextmanager
def _sigterm_handler_kept():
    """ray.init installs a handler that aborts the driver on SIGTERM (exit -6, claims left open);
    put back the one the caller had (the sweep's: stop as Ctrl-C does)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
