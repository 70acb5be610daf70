"""Run a named sweep: compose, validate, skip what is done, execute, log to MLflow, report.

    python -m harness.sweep copy_lengths                       # quick budget, local Ray, local MLflow store
    python -m harness.sweep copy_lengths budget=smoke seq_len=[10,20] --executor local
    python -m harness.sweep copy_lengths --dry-run             # every cell: done / missing / failed
    python -m harness.sweep --list
    sab-sweep copy_long                                        # the same command, as a console script

Overrides: `key=value`; a bare parameter name means `grid.NAME` if the sweep has that axis, else
`fixed.NAME`; `budget=smoke|quick|paper` picks a budget (default quick). A rerun skips cells
that already have a result (ok, oom, diverged) and reruns failures (error, timeout). A cell that
differs from a finished one only in `steps` continues from that cell's final state (kept under
RESULTS_DIR/states; harness.states) unless --from-scratch. Exit code:
0 when every cell run now has a result status, 1 when some failed, 2 for bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import os
import signal
import sys
import threading
import time
from pathlib import Path

from harness import logs
from harness.cells import Cell, attention_notes, check_data, expand, fewest_seeds
from harness.config import LOWER_IS_BETTER, SweepConfig, SweepError, list_sweeps, load_sweep
from harness.executors import EXECUTORS, Executor, make_executor
from harness.states import STATES_DIR, continues_from_step, with_states
from harness.timing import clean_timing
from harness.tracking import RUNNING, Tracker
from harness.ui import runs_page
from sab.train import FAILURE_STATUSES, RESULT_STATUSES

CLAIM_BATCH = 200
"""Cells claimed (and handed to the executor) at once: a sweep up to this size runs as one batch."""
LARGE_SWEEP = 200
"""A sweep of more cells than this needs --yes: a typo in a grid (seed=[0..50]) should not start thousands of trials."""


def _parser() -> argparse.ArgumentParser:
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(
        prog="sab-sweep",
        description=f"{summary}\n\n{details.strip(chr(10))}",
        epilog=f"sweeps (sweeps/NAME.yaml): {', '.join(list_sweeps())}\n`python -m harness.sweep` is the same command as `sab-sweep`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", nargs="?", help="sweep name: a file sweeps/NAME.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (budget=, grid.*, fixed.*, or a bare parameter)")
    parser.add_argument("--list", action="store_true", help="list the sweeps and exit")
    parser.add_argument("--dry-run", action="store_true", help="print every cell as done / missing / failed; run nothing")
    parser.add_argument(  # checked by make_executor, for the project's one-line error
        "--executor", default="ray", metavar="{" + ",".join(EXECUTORS) + "}", help="where cells run (default: ray, a private local Ray)"
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster address (auto, HOST:PORT, ray://HOST:PORT); default: a private local Ray"
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///RESULTS_DIR/mlflow.db)"
    )
    parser.add_argument("--results-dir", default="results", help="store, reports and executor folders (default: ./results)")
    parser.add_argument("--detach", action="store_true", help="slurm: submit and return; rerun the command to collect")
    parser.add_argument("--timing", action="store_true", help="one trial per device at a time (clean times; GPUs: one per GPU)")
    parser.add_argument("--no-report", action="store_true", help="do not rebuild the report at the end")
    parser.add_argument("--yes", action="store_true", help=f"run a sweep of more than {LARGE_SWEEP} cells (refused without it)")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("--quiet", action="store_const", const="quiet", dest="verbosity", help="libraries' errors only, no warnings")
    loudness.add_argument("--verbose", action="store_const", const="verbose", dest="verbosity", help="libraries' INFO lines too")
    parser.set_defaults(verbosity="default")
    parser.add_argument("--no-timing", action="store_true", help="skip the clean timing pass that ends every run (its wall-clock section)")
    parser.add_argument(
        "--retime", action="store_true", help="run the clean timing pass again even when no cell is left to run (after a busy machine)"
    )
    parser.add_argument(
        "--from-scratch", action="store_true", help="train every cell from step 0, not from a shorter budget's kept final state"
    )
    return parser


def _metric_text(result) -> str:
    shown = []
    for key in ("accuracy", "val_accuracy", "mse"):
        if key in result.metrics:
            shown.append(f"{key}={result.metrics[key]:.3f}")
    if result.seconds_per_step == result.seconds_per_step:
        shown.append(f"s/step={result.seconds_per_step:.4f}")
    if result.peak_bytes:
        shown.append(f"peak={result.peak_bytes / 2**20:.1f}MiB")
    if result.status != "ok" and result.error:
        shown.append(f"({result.error.splitlines()[0][:120]})")
    return " ".join(shown)


def projection(tracker: Tracker, config: SweepConfig, todo: list[Cell]) -> str:
    """'; projected N core-hours ...' from the clean s/step this store measured for the same
    configurations, or '' when it has none (a first run)."""
    timing = tracker.timing_runs(config.budget)
    if timing.empty:
        return ""
    rates = {}
    for _, row in timing.iterrows():
        key = tuple(str(row.get(f"params.{k}")) for k in ("method", "seq_len", "hidden_size", "batch_size"))
        rates[key] = row.get("metrics.step_seconds")
    known = [(c, rates.get((c.spec.method, str(c.spec.seq_len), str(c.spec.hidden_size), str(c.spec.batch_size)))) for c in todo]
    seconds = [steps_to_run(c) * rate for c, rate in known if rate == rate and rate is not None]
    if not seconds:
        return ""
    return f"; projected {sum(seconds) / 3600:.1f} core-hours of training for the {len(seconds)} of {len(todo)} with a clean s/step measured here"


def _eta(finished: list, remaining: list[Cell], concurrency: int) -> str:
    """Time left: each remaining cell's steps at the wall seconds per step its method took in the
    finished cells (the mean over methods for one not seen yet), shared by the concurrent slots.
    Methods differ 10x in cost, so a count of cells alone misleads."""
    if not remaining or not finished:
        return "0s" if not remaining else "?"
    rates: dict[str, list[float]] = {}
    for outcome in finished:
        steps_run = outcome.cell.spec.steps - outcome.result.continued_from_step
        rates.setdefault(outcome.cell.spec.method, []).append(outcome.wall_seconds / max(1, steps_run))
    mean = {method: sum(r) / len(r) for method, r in rates.items()}
    overall = sum(mean.values()) / len(mean)
    seconds = sum(steps_to_run(c) * mean.get(c.spec.method, overall) for c in remaining) / max(1, concurrency)
    return f"{seconds / 60:.1f}min" if seconds > 90 else f"{seconds:.0f}s"


def steps_to_run(cell: Cell) -> int:
    """The training steps a cell still needs: its budget less the kept state it continues from."""
    return cell.spec.steps - continues_from_step(cell)


def dry_run(cells: list[Cell], statuses: dict[str, str]) -> None:
    """Print each cell with done / running / missing / failed (and, for one to run, the kept state it would continue from)."""
    counts = {"done": 0, "running": 0, "missing": 0, "failed": 0}
    for cell in cells:
        status = statuses.get(cell.cell_id)
        if status in RESULT_STATUSES:
            state = "done"
        elif status is None:
            state = "missing"
        else:
            state = "running" if status == RUNNING else "failed"
        counts[state] += 1
        detail = f" ({status})" if status else ""
        if state in ("missing", "failed") and continues_from_step(cell):
            detail += f" (continues from step {continues_from_step(cell)})"
        print(f"{state:8s} {cell.cell_id}  {cell.name}{detail}")
    print(f"{len(cells)} cells: " + ", ".join(f"{n} {state}" for state, n in counts.items()))


def timing_mode(config: SweepConfig) -> SweepConfig:
    """One trial per device at a time: one on the CPU, one per GPU."""
    from harness.executors.gpus import local_gpu_count

    devices = local_gpu_count() if config.resources.gpus_per_trial > 0 else 1
    return dataclasses.replace(config, resources=dataclasses.replace(config.resources, max_concurrent=max(1, devices)))


def collect_handed_off(executor: Executor, tracker: Tracker, cells: list[Cell], budget: str) -> None:
    """Log the cells that an earlier (detached or dead) invocation handed to jobs that have since ended."""
    claims = tracker.handed_off(budget, executor.name)
    finished = 0
    for claim, outcome in executor.collect(cells, claims):
        tracker.log_outcome(outcome, claim["run_id"])
        finished += 1
        print(
            f"collected {outcome.result.status:8s} {outcome.cell.name} from job {claim['job_id']}  {_metric_text(outcome.result)}",
            flush=True,
        )
    if claims:
        print(f"{finished} of {len(claims)} submitted cells collected; {len(claims) - finished} still queued or running", flush=True)


def _timing_pass(tracker: Tracker, cells: list[Cell], budget: str) -> bool:
    """Time the cells' configurations and record them under the open invocation; False when Ctrl-C cut it short."""
    try:
        tracker.log_timing(clean_timing(cells), budget)
    except KeyboardInterrupt:
        tracker.end_parent(failed=True, killed=True)
        print("\ninterrupted during the clean timing pass: every cell is recorded; rerun with --no-timing to skip it", file=sys.stderr)
        return False
    return True


def run_sweep(config: SweepConfig, args: argparse.Namespace, argv: list[str]) -> int:
    """Execute the missing and failed cells of a validated sweep; returns the exit code."""
    cells = expand(config)
    if len(cells) > LARGE_SWEEP and not (args.yes or args.dry_run):
        steps = sum(c.spec.steps for c in cells)
        raise SweepError(
            f"sweep {config.name!r} has {len(cells)} cells ({steps:,} training steps in all), more than {LARGE_SWEEP}; "
            "check it with --dry-run, then pass --yes to run it"
        )
    if cells and fewest_seeds(cells) < 2:
        print(
            f"note: budget {config.budget!r} runs one seed per configuration: the report will show its figures "
            "but call no difference (an interval needs >= 2 seeds each; add seeds with seed=[0,1,2])",
            flush=True,
        )
    results_dir = Path(args.results_dir).resolve()
    if args.timing:
        config = timing_mode(config)

    def on_report(cell: Cell, point: dict) -> None:
        shown = " ".join(f"{k}={_figure(v)}" for k, v in point.items() if isinstance(v, (int, float)))
        print(f"    · {cell.name}: {shown}", flush=True)

    executor = make_executor(args.executor, config, results_dir, address=args.address, on_report=on_report, detach=args.detach)
    executor.check(cells)
    if args.retime and (args.no_timing or not executor.times_here):
        blocker = "--no-timing" if args.no_timing else f"--executor {args.executor}" + (" --address" if args.address else "")
        raise SweepError(
            f"--retime measures the clean timing pass on this machine; it cannot run with {blocker}: "
            "drop that flag (retime on this machine: the default private Ray, or --executor local)"
        )
    for note in attention_notes(cells, check_data(cells)):
        print(f"note: {note}", flush=True)
    handed_off_cells = cells  # as an earlier invocation expanded them: their results say what they did
    if executor.shares_results_dir:
        cells = with_states(cells, results_dir / STATES_DIR, continue_runs=not args.from_scratch)
    tracker = Tracker(config.name, results_dir, args.tracking_uri)
    if args.dry_run:  # reads the store if there is one; writes nothing
        dry_run(cells, tracker.cell_statuses(config.budget) if tracker.find() else {})
        return 0
    tracker.open()
    tracker.describe(config.description, config.metric, config.metric not in LOWER_IS_BETTER)
    collect_handed_off(executor, tracker, handed_off_cells, config.budget)
    statuses = tracker.cell_statuses(config.budget)
    todo = [c for c in cells if statuses.get(c.cell_id) not in RESULT_STATUSES + (RUNNING,)]
    running_before = sum(1 for c in cells if statuses.get(c.cell_id) == RUNNING)
    started = time.monotonic()
    outcomes = []
    invocation = ["python", "-m", "harness.sweep", *argv]  # the parent run's command line, whichever branch opens it
    if todo:
        tracker.start_parent(config.budget, executor.name, invocation)
        attempted: set[str] = set()
        total, run_ids = None, {}
        try:  # claim in bounded batches: Ctrl-C is honoured between them, a killed driver leaves few stale claims
            while True:
                claimed, held = tracker.claim([c for c in cells if c.cell_id not in attempted], config.budget, limit=CLAIM_BATCH)
                if total is None:
                    total = len(todo) if len(todo) > CLAIM_BATCH else len(claimed)
                    batches = f" in batches of {CLAIM_BATCH}" if total > CLAIM_BATCH else ""
                    ahead = sum(1 for c in todo if continues_from_step(c))
                    continuing = f" ({ahead} continue from a shorter budget's final state)" if ahead else ""
                    print(f"sweep {config.name} (budget {config.budget}): {len(cells)} cells, {len(cells) - len(todo) - running_before} "
                          f"done, {held} running elsewhere, {total} to run on {executor.name}{batches}{continuing}"
                          f"{projection(tracker, config, todo)}", flush=True)  # fmt: skip
                if not claimed:
                    break
                attempted.update(cell.cell_id for cell, _ in claimed)
                run_ids = {cell.cell_id: run_id for cell, run_id in claimed}

                def on_submit(cell: Cell, job_id: str, folder: str, run_ids=run_ids) -> None:
                    tracker.hand_off(run_ids[cell.cell_id], executor.name, job_id, folder)

                for outcome in executor.run([cell for cell, _ in claimed], on_submit):
                    tracker.log_outcome(outcome, run_ids.pop(outcome.cell.cell_id))
                    outcomes.append(outcome)
                    remaining = [c for c in todo if c.cell_id not in attempted] + [cell for cell, _ in claimed if cell.cell_id in run_ids]
                    print(
                        f"[{len(outcomes)}/{total}] {outcome.result.status:8s} {outcome.cell.name}  {_metric_text(outcome.result)}  "
                        f"{outcome.wall_seconds:.1f}s  ETA {_eta(outcomes, remaining, outcome.concurrency)}",
                        flush=True,
                    )
        except KeyboardInterrupt:
            executor.stop()
            tracker.release(list(run_ids.values()))
            tracker.end_parent(failed=True, killed=True)
            print(f"\ninterrupted: {len(outcomes)} of {total or len(todo)} cells finished and are recorded; "
                  f"rerun the same command to run the rest", file=sys.stderr)  # fmt: skip
            return 130
        failed = [o for o in outcomes if o.result.status in FAILURE_STATUSES]
        if executor.times_here and not args.no_timing and not _timing_pass(tracker, cells, config.budget):
            return 130
        tracker.end_parent(failed=bool(failed))
    else:
        print(f"sweep {config.name} (budget {config.budget}): {len(cells)} cells, {len(cells) - running_before} done, "
              f"{running_before} running elsewhere, 0 to run", flush=True)  # fmt: skip
        if args.retime:
            tracker.start_parent(config.budget, executor.name, invocation)
            if not _timing_pass(tracker, cells, config.budget):
                return 130
            tracker.end_parent(failed=False)
    wall = time.monotonic() - started
    if not args.no_report:
        from harness.report import write_report

        report = write_report(config, tracker, results_dir, wall_seconds=wall if todo else None)
        tracker.log_report(list(report.files))
        print(f"report: {report.path}")
    if tracker.uri.startswith("sqlite:///") and tracker.experiment_id:
        print(f"browse: mlflow ui --backend-store-uri {tracker.uri}, then {runs_page('http://127.0.0.1:5000', tracker.experiment_id)}")
    return _summary(outcomes, wall)


def _summary(outcomes: list, wall: float) -> int:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result.status] = counts.get(outcome.result.status, 0) + 1
    text = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) or "nothing to run"
    print(f"done in {wall:.1f}s — {text}")
    return 1 if any(s in FAILURE_STATUSES for s in counts) else 0


def _figure(value: float) -> str:
    """A progress line's number: whole numbers as integers (step=10000, not 1e+04), others to 4 digits."""
    return f"{int(value)}" if float(value).is_integer() else f"{value:.4g}"


def _stop_as_on_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM (`kill`, `timeout`, a scheduler ending the job) stops a sweep the way Ctrl-C does:
    trials stopped, unfinished claims released as killed, the invocation's run closed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _stop_as_on_ctrl_c)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_intermixed_args(argv)  # overrides may follow the --options
    logs.configure(args.verbosity)
    if args.list:
        for name in list_sweeps():
            print(name)
        return 0
    if not args.sweep:
        print(f"error: name a sweep; valid: {', '.join(list_sweeps())}", file=sys.stderr)
        return 2
    try:
        config = load_sweep(args.sweep, args.overrides)
        return run_sweep(config, args, argv)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack, for a driver that seems stuck
    code = main()
    if code == 130:  # interrupted: cleanup is done; do not wait on threads of libraries at exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
