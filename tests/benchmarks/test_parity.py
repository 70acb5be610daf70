"""benchmarks.parity, the script a lent GPU runs first (gpu_check.sh), works end to end on the CPU."""

from __future__ import annotations

from benchmarks.parity import main


def test_parity_and_determinism_lines_on_the_cpu(capsys):
    assert main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("parity cpu") and line.endswith(" ok") for line in out) == 3
    determinism = [line for line in out if line.startswith("determinism cpu")]
    assert len(determinism) == 2 and "index_put_" in determinism[0] and determinism[0].endswith("gap 0.00e+00 ok")
    assert "index_add_" in determinism[1]  # measured for comparison, not required to repeat


def test_the_cross_device_comparison_builds_each_engine_alike():
    """cpu vs cuda parity builds one model and batch on each device; on the CPU twice, the gap must be 0."""
    import torch

    from benchmarks.parity import CROSS_DEVICE_ENGINES, cross_device_gap

    assert {"sab", "bptt"} <= set(CROSS_DEVICE_ENGINES)
    assert all(cross_device_gap(torch.device("cpu"), engine) == 0 for engine in CROSS_DEVICE_ENGINES)
