"""Run a named sweep: compose, validate, skip what is done, execute, log to MLflow, report.

    python -m harness.sweep copy_lengths                       # quick budget, local Ray, local MLflow store
    python -m harness.sweep copy_lengths budget=smoke seq_len=[10,20] --executor local
    python -m harness.sweep copy_lengths --dry-run             # every cell: done / missing / failed
    python -m harness.sweep --list

Overrides: `key=value`; a bare parameter name means `grid.NAME` if the sweep has that axis, else
`fixed.NAME`; `budget=smoke|quick|paper` picks a budget (default quick). A rerun skips cells
that already have a result (ok, oom, diverged) and reruns failures (error, timeout). Exit code:
0 when every cell run now has a result status, 1 when some failed, 2 for bad input.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sab.train import FAILURE_STATUSES, RESULT_STATUSES

from harness.cells import Cell, expand
from harness.config import SweepConfig, SweepError, list_sweeps, load_sweep
from harness.executors import EXECUTORS, make_executor
from harness.tracking import Tracker


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.sweep", description="Run a named SAB-bench sweep.", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", nargs="?", help="sweep name: a file sweeps/NAME.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (budget=, grid.*, fixed.*, or a bare parameter)")
    parser.add_argument("--list", action="store_true", help="list the sweeps and exit")
    parser.add_argument("--dry-run", action="store_true", help="print every cell as done / missing / failed; run nothing")
    parser.add_argument("--executor", default="ray", choices=sorted(EXECUTORS), help="where cells run (default: ray)")
    parser.add_argument("--address", default=None, help="Ray cluster address (auto, HOST:PORT, ray://HOST:PORT); default: a private local Ray")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite under --results-dir)")
    parser.add_argument("--results-dir", default="results", help="store, reports and executor folders (default: ./results)")
    parser.add_argument("--detach", action="store_true", help="slurm: submit and return; rerun the command to collect")
    parser.add_argument("--no-report", action="store_true", help="do not rebuild the report at the end")
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


def _eta(elapsed: float, done: int, total: int, concurrency: int) -> str:
    if done == 0 or done >= total:
        return "0s"
    seconds = elapsed / done * (total - done)
    return f"{seconds / 60:.1f}min" if seconds > 90 else f"{seconds:.0f}s"


def dry_run(cells: list[Cell], statuses: dict[str, str]) -> None:
    """Print each cell with done / missing / failed."""
    for cell in cells:
        status = statuses.get(cell.cell_id)
        state = "done" if status in RESULT_STATUSES else ("missing" if status is None else "failed")
        detail = f" ({status})" if status else ""
        print(f"{state:8s} {cell.cell_id}  {cell.name}{detail}")
    done = sum(1 for c in cells if statuses.get(c.cell_id) in RESULT_STATUSES)
    missing = sum(1 for c in cells if c.cell_id not in statuses)
    print(f"{len(cells)} cells: {done} done, {missing} missing, {len(cells) - done - missing} failed")


def run_sweep(config: SweepConfig, args: argparse.Namespace, argv: list[str]) -> int:
    """Execute the missing and failed cells of a validated sweep; returns the exit code."""
    cells = expand(config)
    results_dir = Path(args.results_dir).resolve()

    def on_report(cell: Cell, point: dict) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in point.items() if isinstance(v, (int, float)))
        print(f"    · {cell.name}: {shown}", flush=True)

    executor = make_executor(args.executor, config, results_dir, address=args.address, on_report=on_report, detach=args.detach)
    executor.check(cells)
    tracker = Tracker(config.name, results_dir, args.tracking_uri)
    tracker.open()
    statuses = tracker.cell_statuses(config.budget)
    if args.dry_run:
        dry_run(cells, statuses)
        return 0
    todo = [c for c in cells if statuses.get(c.cell_id) not in RESULT_STATUSES]
    print(f"sweep {config.name} (budget {config.budget}): {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run on {executor.name}", flush=True)
    started = time.monotonic()
    outcomes = []
    if todo:
        tracker.start_parent(config.budget, executor.name, len(todo), ["python", "-m", "harness.sweep", *argv])
        try:
            for outcome in executor.run(todo):
                tracker.log_outcome(outcome)
                outcomes.append(outcome)
                elapsed = time.monotonic() - started
                print(
                    f"[{len(outcomes)}/{len(todo)}] {outcome.result.status:8s} {outcome.cell.name}  {_metric_text(outcome.result)}  "
                    f"{outcome.wall_seconds:.1f}s  ETA {_eta(elapsed, len(outcomes), len(todo), getattr(executor, 'concurrency', 1))}",
                    flush=True,
                )
        except KeyboardInterrupt:
            tracker.end_parent(failed=True, killed=True)
            print(f"\ninterrupted: {len(outcomes)} of {len(todo)} cells finished and are recorded; "
                  f"rerun the same command to run the rest", file=sys.stderr)  # fmt: skip
            return 130
        failed = [o for o in outcomes if o.result.status in FAILURE_STATUSES]
        tracker.end_parent(failed=bool(failed))
    wall = time.monotonic() - started
    if not args.no_report:
        from harness.report import write_report

        path = write_report(config, tracker, results_dir, wall_seconds=wall if todo else None)
        tracker.log_artifacts(path.parent)
        print(f"report: {path}")
    return _summary(outcomes, wall)


def _summary(outcomes: list, wall: float) -> int:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.result.status] = counts.get(outcome.result.status, 0) + 1
    text = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())) or "nothing to run"
    print(f"done in {wall:.1f}s — {text}")
    return 1 if any(s in FAILURE_STATUSES for s in counts) else 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
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
    sys.exit(main())
