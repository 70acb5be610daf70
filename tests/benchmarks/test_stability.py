"""The stability benchmark counts spikes by the gradient before clipping and names their largest parameter."""

from __future__ import annotations

import json

import pytest

from benchmarks.stability import main


@pytest.mark.parametrize("variant", ["base", "scorer_lr", "split_clip"])
def test_every_step_over_the_threshold_is_a_spike_with_its_largest_parameter(variant, capsys):
    main(["--variant", variant, "--seeds", "3", "--steps", "4", "--seq-len", "5", "--hidden-size", "8", "--attn-size", "4",
          "--spike", "0", "--eval-every", "2"])  # fmt: skip
    row = json.loads(capsys.readouterr().out.strip())
    assert row["variant"] == variant and row["spikes"] == 4
    assert sum(row["largest_at_spikes"].values()) == 4
    assert set(row["largest_at_spikes"]) <= {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0", "scorer.weight",
                                             "scorer.query.weight", "scorer.query.bias", "scorer.key.weight", "readout.weight", "readout.bias"}  # fmt: skip
    assert [step for step, _ in row["curve"]] == [2, 4] and 0 <= row["final_val"] <= 1


def test_a_threshold_above_every_norm_counts_no_spike(capsys):
    main(
        ["--seeds", "0", "--steps", "3", "--seq-len", "5", "--hidden-size", "8", "--attn-size", "4", "--spike", "1e30", "--eval-every", "3"]
    )
    assert json.loads(capsys.readouterr().out.strip())["spikes"] == 0
