"""The two divergence rules: a training loss that runs away, and a validation loss that blows up late."""

from __future__ import annotations

import math

from sab.divergence import DIVERGENCE_FACTOR, describe_blowup, training_diverged, validation_blowup


def test_the_late_blowup_the_training_rule_missed_is_caught():
    """The adding cell at H = 128 (seed 0, lr 3e-3) as the store holds its validation MSE: learned,
    then blew up between two evaluations while its training loss stayed under 100x its first."""
    curve = [(500, 0.159), (1000, 0.1606), (1500, 0.1583), (2000, 0.0463), (2500, 0.0134), (3000, 4.0407)]
    assert validation_blowup(curve) == (3000, 4.0407, 0.159)
    assert not training_diverged(3.8021, first=1.0)  # its training loss at 3000 against a first of ~1
    assert "4.041 by step 3000" in describe_blowup(validation_blowup(curve))


def test_a_loss_that_rises_as_a_poor_run_does_is_not_a_blowup():
    assert validation_blowup([(10, 2.7), (20, 5.0), (30, 7.47)]) is None  # 2.8x: the largest rise of a stored ok run
    assert validation_blowup([(10, 0.5), (20, 0.01), (30, 0.9)]) is None  # learned, worsened, under 10x the first
    assert validation_blowup([]) is None


def test_a_tiny_first_loss_is_floored_so_noise_after_solving_is_not_a_blowup():
    assert validation_blowup([(10, 1e-4), (20, 0.5)]) is None  # under 10 x the floor 0.1
    assert validation_blowup([(10, 1e-4), (20, 1.5)]) == (20, 1.5, 1e-4)


def test_a_loss_that_is_not_finite_is_a_blowup_at_once():
    step, loss, first = validation_blowup([(10, 0.3), (20, math.nan), (30, 0.2)])
    assert step == 20 and math.isnan(loss) and first == 0.3
    assert validation_blowup([(10, math.inf)])[0] == 10


def test_the_training_rule_keeps_its_factor_and_floor():
    assert training_diverged(DIVERGENCE_FACTOR * 2.0 + 1e-9, first=2.0)
    assert not training_diverged(DIVERGENCE_FACTOR * 2.0, first=2.0)
    assert training_diverged(10.0 + 1e-9, first=1e-6) and not training_diverged(10.0, first=1e-6)  # floor 0.1
    assert training_diverged(math.nan, first=1.0)
