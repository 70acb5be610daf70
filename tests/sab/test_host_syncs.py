"""No host-device sync inside the time loop of any engine (issue #13): counted over a whole
training step with a TorchDispatchMode (benchmarks/launches.py), the read-backs are a small
constant that does not grow with the sequence length. Measured on the path a GPU takes (the
CPU's tie check in top_scores reads a value back on purpose, and is switched off here)."""

from __future__ import annotations

import pytest

from benchmarks.launches import count_step

SIZES = {"hidden_size": 8, "batch_size": 2, "k_trunc": 5, "k_att": 5, "k_top": 3}


@pytest.mark.parametrize(
    "method,replay_group", [("sab", 1), ("sab", 4), ("tbptt", 1), ("bptt_cell", 1), ("self_attention", 1), ("bptt", 1)]
)
def test_read_backs_per_step_do_not_grow_with_the_length(method, replay_group, gpu_path):
    short, long = count_step(method, 40, replay_group=replay_group, **SIZES), count_step(method, 120, replay_group=replay_group, **SIZES)
    assert short.syncs == long.syncs, (short, long)
    assert long.syncs <= 12  # Adam's step counter of each parameter (CPU tensors unless capturable); tolist() is not seen here


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


def test_sab_launches_per_time_step_on_the_gpu_path(gpu_path):
    """Issue #13: at most 35 ATen compute ops per time step of sab with a GPU's replay group (the
    shapes of benchmarks/README.md's launch table), and fewer than with one segment at a time."""
    from benchmarks.launches import per_time_step
    from sab.replay import REPLAY_GROUP

    shapes = {"hidden_size": 32, "batch_size": 4, "k_trunc": 10, "k_att": 10, "k_top": 5}
    grouped, syncs = per_time_step("sab", (100, 200), replay_group=REPLAY_GROUP["cuda"], **shapes)
    single, _ = per_time_step("sab", (100, 200), replay_group=1, **shapes)
    assert grouped <= 35, grouped
    assert syncs == 0 and single - grouped > 15, (single, grouped)


def test_static_shapes_path_reads_back_less_and_stays_under_35(gpu_path, monkeypatch):
    """The shape-static path replays every segment instead of reading the picks back to skip the
    dead ones (on a GPU, one sync fewer per training step), and with the mask's one add per step
    the CUDA default's ops per time step stay <= 35."""
    import sab.replay
    from benchmarks.launches import per_time_step
    from sab.replay import REPLAY_GROUP

    def no_read_back(*args):  # the plan reads the picks back (a no-op copy on the CPU, a sync on a GPU)
        raise AssertionError("the static path read the picks back")

    monkeypatch.setattr(sab.replay, "_segments_with_credit", no_read_back)
    count_step("sab", 40, static_shapes=True, **SIZES)
    with pytest.raises(AssertionError, match="read the picks back"):
        count_step("sab", 40, **SIZES)
    shapes = {"hidden_size": 32, "batch_size": 4, "k_trunc": 10, "k_att": 10, "k_top": 5}
    compute, syncs = per_time_step("sab", (100, 200), replay_group=REPLAY_GROUP["cuda"], static_shapes=True, **shapes)
    assert compute <= 35 and syncs == 0, compute
