"""The cost benchmark shows what docs/design.md promises: SAB's memory does not grow with the graph."""

from __future__ import annotations

import csv
import os
import re
import time

import pytest

from benchmarks.cost import COLUMNS, CostConfig, main, predicted_bytes
from tests.conftest import ROOT

REFERENCE_LENGTHS = ["100", "200", "400"]
B, H, A, K_TRUNC, K_ATT, K_TOP, CLASSES, F = 32, 128, 128, 10, 10, 5, 10, 4


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Memory of each engine in its own process: the linear engines at T = 100 and 1000, the
    quadratic reference at 100, 200 and 400 (with it at 1000 too, this fixture took 148 s of CI; now 78 s)."""
    found = {}
    for lengths, methods in ((REFERENCE_LENGTHS, ["sab_reference"]), (["100", "1000"], ["bptt", "bptt_cell", "tbptt", "sab"])):
        out = tmp_path_factory.mktemp("cost") / "cost.csv"
        main(["--lengths", *lengths, "--methods", *methods, "--repeats", "0", "--out", str(out)])
        with open(out) as f:
            reader = csv.DictReader(f)
            assert tuple(reader.fieldnames) == COLUMNS
            found.update({(r["method"], int(r["seq_len"])): r for r in reader})
    return found


def _peak(rows, method, T):
    return int(rows[(method, T)]["peak_bytes"])


def design_slope() -> float:
    """Bytes per step docs/design.md's formula gives sab: bank + key cache and their gradient buffer G per
    memory, two boundary states per segment, k_top+1 int32 picks per step, plus the logits it
    returns and their loss gradient (O each per step)."""
    return B * F * (2 * (H + A) / K_ATT + 2 * H / K_TRUNC + (K_TOP + 1) + 2 * CLASSES)


def test_sab_memory_at_1000_is_a_small_fraction_of_bptt(rows):
    assert all(rows[k]["status"] == "ok" for k in rows)
    assert _peak(rows, "sab", 1000) <= 0.10 * _peak(rows, "bptt", 1000)
    assert _peak(rows, "sab", 1000) <= 0.20 * _peak(rows, "bptt_cell", 1000)


def test_sab_segment_graph_does_not_grow_and_total_follows_the_formula(rows):
    assert rows[("sab", 100)]["peak_saved_bytes"] == rows[("sab", 1000)]["peak_saved_bytes"]
    slope = (_peak(rows, "sab", 1000) - _peak(rows, "sab", 100)) / 900
    assert 0.8 * design_slope() <= slope <= 1.2 * design_slope(), (slope, design_slope())


def test_tbptt_is_flat_and_reference_is_superlinear(rows):
    assert _peak(rows, "tbptt", 1000) == pytest.approx(_peak(rows, "tbptt", 100), rel=0.05)
    ref = [_peak(rows, "sab_reference", T) for T in (100, 200, 400)]
    assert ref[1] / ref[0] > 2 * 1.2 and ref[2] / ref[1] > 2 * 1.4  # growth well above linear, and faster as L grows


def test_rss_agrees_in_direction(rows):
    rss = {k: int(v["peak_rss_bytes"]) for k, v in rows.items()}
    assert rss[("sab", 1000)] < rss[("bptt", 1000)]
    assert rss[("sab", 1000)] < rss[("bptt_cell", 1000)]
    assert rss[("sab_reference", 400)] > rss[("sab_reference", 200)] > rss[("sab_reference", 100)]
    assert rss[("bptt", 1000)] > rss[("bptt", 100)]


def test_skips_what_cannot_fit():
    huge = CostConfig("self_attention", 100_000)
    assert predicted_bytes(huge) > 1 << 40
    assert predicted_bytes(CostConfig("sab", 1000)) < predicted_bytes(CostConfig("bptt", 1000))


def test_every_engine_is_timed_in_full_float32_without_tf32():
    """cuDNN allows TF32 by default: a fused baseline would be timed at lower precision than SAB."""
    import torch

    from benchmarks.cost_worker import Worker

    torch.backends.cudnn.allow_tf32 = True
    try:
        Worker({"method": "bptt", "seq_len": 6, "hidden_size": 4, "batch_size": 2, "k_trunc": 2, "k_att": 2, "k_top": 1,
                "threads": 1, "device": "cpu"})  # fmt: skip
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32 = True


def test_gpu_check_header_names_every_file_it_writes():
    """Its users read the header to find the figures (it once named a csv it never wrote)."""
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    written = re.findall(r'--out "\$RESULTS/([^"]+)"', text)
    assert written and all(name in header for name in written), written


def test_the_launch_counter_sees_compute_ops_and_host_syncs():
    """What benchmarks.launches counts: a reduction is one launch, .item() one sync, views none."""
    import torch

    from benchmarks.launches import _Counter, per_time_step

    x = torch.ones(4, 4)
    counter = _Counter()
    with counter:
        x.view(16).sum().item()
    assert (counter.counts.compute, counter.counts.syncs) == (1, 1)
    compute, syncs = per_time_step("bptt_cell", (20, 40), hidden_size=4, batch_size=2, k_trunc=2, k_att=2, k_top=1)
    assert compute > 10 and syncs == 0  # an LSTM cell step loop: launches grow with L, no sync


def test_graphed_rows_sit_beside_eager_ones_and_say_what_ran(tmp_path, capsys):
    """`--cuda-graphs off on`: one row per choice, the graphed sab on its static-shape path, each row
    divided by the reference of its own kind; on the CPU nothing is captured and the row says so."""
    out = tmp_path / "cost.csv"
    main(
        [
            "--lengths",
            "40",
            "--methods",
            "bptt",
            "sab",
            "--repeats",
            "1",
            "--hidden-size",
            "16",
            "--cuda-graphs",
            "off",
            "on",
            "--out",
            str(out),
        ]
    )
    table = capsys.readouterr().out
    with open(out) as f:
        found = {(r["method"], r["cuda_graphs"]): r for r in csv.DictReader(f)}
    assert set(found) == {(m, s) for m in ("bptt", "sab") for s in ("off", "eager (no CUDA device: not captured)")}
    assert found[("sab", "eager (no CUDA device: not captured)")]["static_shapes"] == "True"
    assert found[("sab", "off")]["static_shapes"] == "False"
    time_ratio = r"\|[^|]*\|[^|]*\|[^|]*\|[^|]*\|[^|]*\| 1\.000 \|"  # s/step over bptt: 1 for the row divided by itself
    assert re.search(r"\| 40 \| bptt graphed " + time_ratio, table), table  # graphed bptt is the graphed rows' reference


def test_allocator_rows_take_the_page_faults_out_and_are_divided_by_their_own_kind(tmp_path, capsys):
    """`--allocators default retain`: under glibc's defaults bptt's activations are mapped afresh and
    faulted in at every step; the retaining worker reuses its pages. Each row is divided by the
    reference run with the same allocator, and an unknown allocator is refused before any work."""
    out = tmp_path / "cost.csv"
    main(["--lengths", "200", "--methods", "bptt", "--repeats", "3", "--allocators", "default", "retain", "--out", str(out)])
    table = capsys.readouterr().out
    with open(out) as f:
        found = {r["allocator"]: r for r in csv.DictReader(f)}
    assert set(found) == {"default", "retain"}
    faults = {name: float(row["minor_faults_per_step"]) for name, row in found.items()}
    assert faults["default"] > 1000 and faults["retain"] < faults["default"] / 5, faults  # medians of 3
    assert "| 200 | bptt retain | " in table and table.count("| 1.000 |") >= 4  # each bptt row is its own reference
    with pytest.raises(SystemExit):
        main(["--lengths", "200", "--methods", "bptt", "--allocators", "jemalloc", "--out", str(out)])
    assert "invalid choice: 'jemalloc'" in capsys.readouterr().err


def test_a_signal_taken_by_another_thread_stops_a_wait_on_a_worker():
    """The kernel may hand SIGTERM to any thread; the main thread, waiting on a silent worker,
    still runs the handler within a slice (the timing pass of a sweep waits there)."""
    import ctypes
    import signal
    import threading

    from benchmarks.cost import WAIT_SLICE_S, readline_answering_signals

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")

    class Stopped(Exception):
        pass

    def stop(signum, frame):
        raise Stopped

    read_end, write_end = os.pipe()
    release = threading.Event()

    def other_thread() -> None:  # signals itself, then idles until the test ends
        time.sleep(0.2)
        ctypes.CDLL(None).tgkill(os.getpid(), threading.get_native_id(), signal.SIGUSR2)
        release.wait(10)

    previous = signal.signal(signal.SIGUSR2, stop)
    helper = threading.Thread(target=other_thread, daemon=True)
    started = time.monotonic()
    helper.start()
    try:
        with os.fdopen(read_end) as silent, pytest.raises(Stopped):
            readline_answering_signals(silent)  # nothing is ever written
        assert time.monotonic() - started < 0.2 + 3 * WAIT_SLICE_S
    finally:
        release.set()
        helper.join(5)
        signal.signal(signal.SIGUSR2, previous)
        os.close(write_end)
