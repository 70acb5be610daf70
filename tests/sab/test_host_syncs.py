"""No host-device sync inside the time loop of any engine (issue #13): counted over a whole
training step with a TorchDispatchMode (benchmarks/launches.py), the read-backs are a small
constant that does not grow with the sequence length. Measured on the path a GPU takes (the
CPU's tie check in top_scores reads a value back on purpose, and is switched off here)."""

from __future__ import annotations

import pytest

import sab.sparse_attention as sparse_attention
from benchmarks.launches import count_step

SIZES = {"hidden_size": 8, "batch_size": 2, "k_trunc": 5, "k_att": 5, "k_top": 3}


@pytest.mark.parametrize("method", ["sab", "tbptt", "bptt_cell", "self_attention", "bptt"])
def test_read_backs_per_step_do_not_grow_with_the_length(method, monkeypatch):
    monkeypatch.setattr(sparse_attention, "TIE_CHECK_ON_CPU", False)  # the GPU's path: a stable sort, no read-back
    short, long = count_step(method, 40, **SIZES), count_step(method, 120, **SIZES)
    assert short.syncs == long.syncs, (short, long)
    assert long.syncs <= 12  # positions once per pass, the loss once, Adam's step counters (CPU tensors on a GPU too)


def test_segments_whose_memories_no_read_picked_are_not_replayed():
    """The host's plan of the backward sweep (one read-back of the picks per step): L = 20, segments
    of 5 steps, a memory every 5 steps, k_top = 1, the loss at step 19 only. The reads of the last
    segment pick memory 0 (and it as the threshold): memories 1 and 2 get no credit, so the
    segments that wrote them are skipped, and the first (which wrote memory 0) is replayed."""
    import torch

    from sab.model import FirstPass
    from sab.replay import _segments_with_credit

    n_mem, batch = 4, 2
    picks = torch.zeros(20, batch, 2, dtype=torch.int32)  # rows b * n_mem + slot; slot 0 everywhere
    picks += (torch.arange(batch, dtype=torch.int32) * n_mem).view(1, batch, 1)
    run = FirstPass(logits=torch.zeros(batch, 1, 3), bank=torch.zeros(batch, n_mem, 4), keys=torch.zeros(batch, n_mem, 4), picks=picks)
    assert _segments_with_credit(run, [19], 20, 5, 5, 1, n_mem) == [True, False, False, True]
    picks[15:, :, 0] += 2  # the last segment's reads pick memory 2: the segment that wrote it is replayed
    assert _segments_with_credit(run, [19], 20, 5, 5, 1, n_mem)[2] is True
