"""When a trial has diverged: its training loss ran away, or its validation loss blew up late.

Two rules, because a run can blow up after it has learned: the adding task at H = 128 went from a
validation MSE of 0.013 to 4.04 between two evaluations while its training loss stayed under 100x
its first value, and the first rule alone recorded it `ok` with accuracy 0.008.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

DIVERGENCE_FACTOR, DIVERGENCE_FLOOR = 100.0, 0.1
"""Training rule: the loss is not finite or exceeds DIVERGENCE_FACTOR x its first loss (at least
DIVERGENCE_FLOOR, so a tiny starting loss does not make noise look like divergence)."""
VALIDATION_FACTOR = 10.0
"""Validation rule: an evaluation's loss is not finite or exceeds VALIDATION_FACTOR x the first
evaluation's (at least DIVERGENCE_FLOOR). The validation set is fixed, so its loss is not noisy as a
batch's is. Over ~490 stored ok runs of eight sweeps (copy, adding, pMNIST, CIFAR-10, text8; 2026-12-05)
the largest rise was 2.8x (pMNIST at lr 0.03) and the one late blow-up 25x."""


def training_diverged(highest: float, first: float) -> bool:
    """Whether the largest training loss so far means divergence, against the loss at step 1."""
    return not math.isfinite(highest) or highest > DIVERGENCE_FACTOR * max(first, DIVERGENCE_FLOOR)


def validation_blowup(losses: Iterable[tuple[int, float]]) -> tuple[int, float, float] | None:
    """(step, loss, first loss) of the first evaluation whose validation loss broke the validation
    rule, given (step, loss) in step order; None when none did."""
    first = None
    for step, loss in losses:
        if first is None:
            first, bound = loss, VALIDATION_FACTOR * max(loss, DIVERGENCE_FLOOR)
        if not math.isfinite(loss) or loss > bound:
            return step, loss, first
    return None


def describe_blowup(found: tuple[int, float, float]) -> str:
    """One line for a trial's error field: what the validation loss did."""
    step, loss, first = found
    return f"validation loss reached {loss:.4g} by step {step} (its first evaluation: {first:.4g}; limit {VALIDATION_FACTOR:g}x)"
