"""Statistics of the reports: means with 95% intervals over seeds, and differences that are called
only when their interval excludes 0 (docs/design.md, "Report").

Intervals are Student t intervals (scipy.stats): with 3-5 seeds a bootstrap's percentile
interval is too narrow (it cannot see spread beyond the few values it resamples), while t's
assumes roughly normal seed-to-seed noise and widens honestly with small n. A difference of
two methods uses Welch's t interval (unequal variances, scipy.stats.ttest_ind).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
INTERVAL_NAME = "95% t interval over seeds"


@dataclass(frozen=True)
class Estimate:
    """A mean over n seeds with its interval (lo = hi = mean for n = 1: no interval)."""

    n: int
    mean: float
    lo: float
    hi: float

    def text(self, digits: int = 3, scale: float = 1.0) -> str:
        """`0.863 [0.801, 0.925] (n=3)`; `0.863 (n=1)` without an interval."""
        mean = self.mean * scale
        if self.n < 2 or not math.isfinite(self.lo):
            return f"{mean:.{digits}f} (n={self.n})"
        return f"{mean:.{digits}f} [{self.lo * scale:.{digits}f}, {self.hi * scale:.{digits}f}] (n={self.n})"


def estimate(values) -> Estimate | None:
    """Mean and 95% t interval of the finite values; None when there are none."""
    x = _finite(values)
    if x.size == 0:
        return None
    mean = float(x.mean())
    if x.size < 2:
        return Estimate(1, mean, math.nan, math.nan)
    if np.all(x == x[0]):
        return Estimate(int(x.size), mean, mean, mean)
    lo, hi = stats.t.interval(CONFIDENCE, x.size - 1, loc=mean, scale=stats.sem(x))
    return Estimate(int(x.size), mean, float(lo), float(hi))


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with its 95% Welch interval, and the verdict that interval allows."""

    a: str
    b: str
    n_a: int
    n_b: int
    diff: float
    lo: float
    hi: float

    def verdict(self, higher_is_better: bool = True) -> str:
        """`A better` / `A worse` only when the interval excludes 0; else not distinguishable."""
        if self.n_a < 2 or self.n_b < 2 or not math.isfinite(self.lo):
            return f"not distinguishable at n={self.n_a},{self.n_b} (an interval needs >= 2 seeds each)"
        if self.lo > 0 or self.hi < 0:
            better = (self.lo > 0) == higher_is_better
            return f"{self.a} {'better' if better else 'worse'}"
        n = f"{self.n_a}" if self.n_a == self.n_b else f"{self.n_a},{self.n_b}"
        return f"not distinguishable at n={n}"

    def text(self, digits: int = 3, higher_is_better: bool = True) -> str:
        """`SAB - BPTT = +0.512 [0.43, 0.59]: SAB better`."""
        interval = f" [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]" if math.isfinite(self.lo) else ""
        return f"{self.a} - {self.b} = {self.diff:+.{digits}f}{interval}: {self.verdict(higher_is_better)}"


def difference(a_name: str, a_values, b_name: str, b_values) -> Difference | None:
    """The difference of two methods' means over seeds, with Welch's 95% interval."""
    a, b = _finite(a_values), _finite(b_values)
    if a.size == 0 or b.size == 0:
        return None
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return Difference(a_name, b_name, int(a.size), int(b.size), diff, math.nan, math.nan)
    if np.all(a == a[0]) and np.all(b == b[0]):  # no spread at all: the difference is exact
        return Difference(a_name, b_name, int(a.size), int(b.size), diff, diff, diff)
    interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(CONFIDENCE)
    return Difference(a_name, b_name, int(a.size), int(b.size), diff, float(interval.low), float(interval.high))


def _finite(values) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    return x[np.isfinite(x)]


def plain(value) -> object:
    """5 rather than 5.0 for an integer-valued figure read back as a float (a setting as its axis names it)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
