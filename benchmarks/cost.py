"""Cost benchmark: peak memory and seconds per training step of every engine, side by side.

    python -m benchmarks.cost                 # T = 100, 300, 1000, 3000; H=128, B=32; k_trunc=k_att=10, k_top=5
    python -m benchmarks.cost --lengths 50 --hidden-size 64 --k-trunc 5 --k-att 5 --k-top 3   # sizes `quick`

Each configuration runs in its own fresh process (`benchmarks.cost_worker`): a warm-up step, a
step under the saved-tensor meter, a step under the RSS peak; then timing repetitions are
interleaved across the engines of one length, one engine running at a time, and medians
reported. Sequences are copy-like: L = T steps, 10 classes, a loss at every step. An engine whose
predicted bytes exceed the free memory is skipped and marked. Writes results/cost/cost.csv.
Compare engines only as ratios from one run on one machine. `--allocators default retain` times
every engine also with glibc keeping freed memory (ALLOCATORS): the page faults of fresh blocks,
which bptt's activations take at every step, are the allocator's cost, not the engine's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import select
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass

from sab.methods import METHOD_NAMES, METHODS, Footprint, Knobs
from sab.replay import REPLAY_GROUP

COST_REFERENCES = ("bptt", "bptt_cell")
"""The engines every cost row is divided by: the fused kernel and the same gradient in a step loop."""

COLUMNS = (
    "method", "seq_len", "k_trunc", "k_att", "k_top", "hidden_size", "batch_size",
    "peak_saved_bytes", "held_bytes", "peak_bytes", "peak_rss_bytes", "step_seconds",
    "device", "threads", "status", "predicted_bytes", "cuda_max_allocated_bytes", "cuda_step_growth_bytes", "repeats",
    "step_seconds_min", "step_seconds_max", "steps_per_repeat", "task", "attn_size", "scorer_init", "tokens_per_step",
    "replay_group", "static_shapes", "cuda_graphs", "allocator", "minor_faults_per_step",
)  # fmt: skip

ALLOCATORS = {
    "default": "",
    "retain": "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=1099511627776",
}
"""A worker's glibc malloc settings (GLIBC_TUNABLES). `default` is what a trial process gets: blocks over
the mmap threshold (at most 32 MiB) are mapped afresh and faulted in page by page at every step.
`retain` keeps freed memory in the heap, so a step reuses the pages of the step before: what an
engine costs with allocation taken out (bptt's ~280 MiB of activations at T = 1000 are the case)."""


@dataclass(frozen=True)
class CostConfig:
    """One engine at one length."""

    method: str
    seq_len: int
    hidden_size: int = 128
    batch_size: int = 32
    k_trunc: int = 10
    k_att: int = 10
    k_top: int = 5
    device: str = "cpu"
    threads: int = 1
    task: str = ""
    """A task of sab.tasks to draw the batch from (its real length and loss); empty: copy-like data, L = T."""
    attn_size: int | None = None
    scorer_init: str = Knobs.scorer_init
    data_dir: str | None = None
    replay_group: int | None = None
    """sab: segments replayed forward at once (None: the device's default, sab.replay.REPLAY_GROUP)."""
    static_shapes: bool = False
    """sab: its shape-static path (sab.model.SABLSTM.first_pass, sab.replay)."""
    cuda_graphs: str = "off"
    """on: each step captured once as a CUDA graph and replayed (sab.graphs; sab then runs static_shapes). The
    row's column says what ran: captured, eager (no CUDA device), failed: why."""
    allocator: str = "default"
    """The worker's malloc settings: a key of ALLOCATORS."""

    def __post_init__(self) -> None:
        if self.allocator not in ALLOCATORS:
            raise ValueError(f"unknown allocator {self.allocator!r}; valid: {', '.join(ALLOCATORS)}")

    @property
    def label(self) -> str:
        """The method, with the replay group when one is named, "graphed" and the allocator when asked (rows can differ only in them)."""
        label = self.method if self.replay_group is None else f"{self.method} (group {self.replay_group})"
        return label + (" graphed" if self.cuda_graphs == "on" else "") + (f" {self.allocator}" if self.allocator != "default" else "")

    @property
    def variant(self) -> tuple[str, str]:
        """What a row is divided by: the references run the same way (graphed, allocator)."""
        return self.cuda_graphs, self.allocator


def predicted_bytes(c: CostConfig) -> int:
    """A generous estimate of an engine's peak training bytes (the method's memory model in
    sab.methods), to skip what cannot fit."""
    return METHODS[c.method].memory_bytes(
        Footprint(
            c.batch_size, c.hidden_size, c.seq_len, Knobs.of(c), replay_group=c.replay_group or REPLAY_GROUP.get(c.device.split(":")[0], 1)
        )
    )


def free_bytes(device: str) -> int:
    """Memory the next configuration may use: CUDA free memory, or MemAvailable."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


WAIT_SLICE_S = 0.5
"""Longest the caller's main thread blocks at once on a worker. A signal the kernel hands to another
thread (the sweep's heartbeat, say) runs its Python handler only when the main thread next executes
bytecode; one answer can take a minute at T = 5000, past a scheduler's grace before SIGKILL."""


def readline_answering_signals(stream) -> str:
    """`stream.readline()` of a worker that writes one line per command, waiting in WAIT_SLICE_S
    slices so a pending SIGTERM or SIGINT handler runs; '' once the worker is gone."""
    while not select.select([stream], [], [], WAIT_SLICE_S)[0]:
        pass
    return stream.readline()


class _Process:
    """A running worker for one configuration."""

    def __init__(self, config: CostConfig) -> None:
        env = dict(os.environ, OMP_NUM_THREADS=str(config.threads), MKL_NUM_THREADS=str(config.threads))
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        if ALLOCATORS[config.allocator]:
            env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""), ALLOCATORS[config.allocator]]))
        self.config = config
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.cost_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root,
        )  # fmt: skip

    def ask(self, message: dict) -> dict | None:
        """Send one command; None if the worker died (e.g. killed for memory)."""
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            line = readline_answering_signals(self.proc.stdout)
        except (BrokenPipeError, OSError):
            return None
        return json.loads(line) if line else None

    def close(self) -> None:
        """Ask the worker to quit and reap it."""
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        self.proc.wait(timeout=60)


def measure(configs: list[CostConfig], repeats: int, steps: int = 1, log=print) -> list[dict]:
    """Memory of each configuration in turn, then interleaved timing per length; one row each."""
    rows: list[dict] = []
    for length in sorted({c.seq_len for c in configs}):
        running: list[tuple[_Process, dict]] = []
        for config in (c for c in configs if c.seq_len == length):
            row = dict(
                asdict(config),
                label=config.label,
                variant=config.variant,
                predicted_bytes=predicted_bytes(config),
                repeats=repeats,
                steps_per_repeat=steps,
                step_seconds=float("nan"),
            )
            rows.append(row)
            if row["predicted_bytes"] > 0.8 * free_bytes(config.device):
                row["status"] = "skipped"
                log(f"T={length} {config.label}: skipped, predicted {row['predicted_bytes'] / 2**30:.1f} GiB > free memory")
                continue
            process = _Process(config)
            answer = process.ask(asdict(config))
            if answer is None:
                row["status"] = "failed"
                log(f"T={length} {config.label}: worker died during the memory steps")
                continue
            row.update(answer, status="ok")
            running.append((process, row))
            log(f"T={length} {config.label}: peak {answer['peak_bytes'] / 2**20:.1f} MiB, rss {answer['peak_rss_bytes'] / 2**20:.1f} MiB")
        samples: dict[int, list[float]] = {id(row): [] for _, row in running}
        faults: dict[int, list[float]] = {id(row): [] for _, row in running}
        for repetition in range(repeats):
            shift = repetition % max(len(running), 1)
            for process, row in running[shift:] + running[:shift]:  # rotate the order each repetition
                answer = process.ask({"time": steps})
                if answer is None:
                    row["status"] = "failed"
                    continue
                samples[id(row)].append(answer["seconds"] / steps)
                faults[id(row)].append(answer["minor_faults"] / steps)
        for process, row in running:
            if samples[id(row)]:
                row["step_seconds"] = statistics.median(samples[id(row)])
                row["step_seconds_min"], row["step_seconds_max"] = min(samples[id(row)]), max(samples[id(row)])
                row["minor_faults_per_step"] = statistics.median(faults[id(row)])
            process.close()
    return rows


def write_csv(rows: list[dict], path: str) -> None:
    """The rows as CSV with the benchmark's columns."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def table(rows: list[dict]) -> str:
    """A Markdown table: memory and time per engine and length, with ratios to bptt and bptt_cell."""
    by = {(r["method"], r["seq_len"], r["variant"]): r for r in rows}  # a graphed (or retaining) row is divided by references run so
    lines = [
        "| T | method | peak MiB | /bptt | /bptt_cell | RSS MiB | s/step | /bptt | /bptt_cell |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(row, base, key):
        if base is None or row.get("status") != "ok" or base.get("status") != "ok" or not base.get(key):
            return "—"
        value = row[key] / base[key]
        return "—" if value != value else f"{value:.3f}"

    for r in rows:
        plain = ("off", r["variant"][1])  # a graphed row without a graphed reference: the eager one of its allocator
        base, cell = (by.get((name, r["seq_len"], r["variant"])) or by.get((name, r["seq_len"], plain)) for name in COST_REFERENCES)
        if r.get("status") != "ok":
            lines.append(f"| {r['seq_len']} | {r.get('label', r['method'])} | {r.get('status')} | | | | | | |")
            continue
        lines.append(
            f"| {r['seq_len']} | {r.get('label', r['method'])} | {r['peak_bytes'] / 2**20:.1f} | {ratio(r, base, 'peak_bytes')} | "
            f"{ratio(r, cell, 'peak_bytes')} | {r['peak_rss_bytes'] / 2**20:.1f} | {r['step_seconds']:.4f} | "
            f"{ratio(r, base, 'step_seconds')} | {ratio(r, cell, 'step_seconds')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse, measure, write the CSV and print the table last."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost", description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000, 3000], help="sequence lengths T (= L steps)")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES, help="engines to measure")
    parser.add_argument("--hidden-size", type=int, default=128, help="LSTM hidden units H")
    parser.add_argument("--batch-size", type=int, default=32, help="batch B")
    parser.add_argument("--k-trunc", type=int, default=10, help="SAB / TBPTT truncation")
    parser.add_argument("--k-att", type=int, default=10, help="SAB memory interval")
    parser.add_argument("--k-top", type=int, default=5, help="SAB memories per step")
    parser.add_argument("--repeats", type=int, default=5, help="timing repetitions per engine (0: memory only)")
    parser.add_argument("--steps", type=int, default=1, help="training steps per repetition")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per engine")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="results/cost/cost.csv", help="CSV output path")
    parser.add_argument(
        "--replay-groups", type=int, nargs="+", default=None, help="sab: one row per replay group (default: the device's, one row)"
    )
    parser.add_argument(
        "--cuda-graphs",
        nargs="+",
        default=["off"],
        choices=["off", "on"],
        help="one row per choice: eager steps, or each captured as a CUDA graph",
    )
    parser.add_argument(
        "--allocators",
        nargs="+",
        default=["default"],
        choices=list(ALLOCATORS),
        help="one row per choice: glibc malloc as a trial gets it, or retaining freed memory (no page faults from fresh blocks)",
    )
    args = parser.parse_args(argv)
    configs = [
        CostConfig(
            m,
            t,
            args.hidden_size,
            args.batch_size,
            args.k_trunc,
            args.k_att,
            args.k_top,
            args.device,
            args.threads,
            replay_group=g,
            cuda_graphs=graphs,
            allocator=allocator,
        )
        for t in args.lengths
        for m in args.methods
        for g in ((args.replay_groups or [None]) if METHODS[m].replays else [None])
        for graphs in args.cuda_graphs
        for allocator in args.allocators
    ]
    rows = measure(configs, args.repeats, args.steps, log=lambda s: print(s, file=sys.stderr, flush=True))
    write_csv(rows, args.out)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
