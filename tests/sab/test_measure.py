"""Measurements that must survive a failing step (runs on CUDA; skipped with its reason elsewhere)."""

from __future__ import annotations

import pytest
import torch

from sab.measure import cuda_peak

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuda_peak reads the CUDA allocator)")


@pytest.mark.gpu
@needs_cuda
def test_cuda_peak_keeps_its_figures_when_the_step_raises_and_reports_the_steps_growth():
    held = torch.empty(2**20, dtype=torch.uint8, device="cuda")  # allocated before: not the step's growth
    with pytest.raises(RuntimeError, match="step failed"):
        with cuda_peak("cuda") as figures:
            grown = torch.empty(2**22, dtype=torch.uint8, device="cuda")
            raise RuntimeError("step failed")
    assert figures["cuda_max_allocated_bytes"] >= held.numel() + grown.numel()
    assert 2**22 <= figures["cuda_step_growth_bytes"] < 2**22 + 2**20


def test_cuda_peak_on_the_cpu_reports_nothing_and_lets_errors_through():
    with pytest.raises(ValueError):
        with cuda_peak("cpu") as figures:
            raise ValueError("boom")
    assert figures == {}
