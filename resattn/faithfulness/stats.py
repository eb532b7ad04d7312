"""Paired comparisons, image by image: two maps scored on the same images, or one model before and after a
knock-out, differ far less from image to image than two independent samples would, so they are compared pair by
pair.

* :func:`paired_difference`: a per-image quantity under two conditions (an AUC of two maps, a logit before and
  after): the mean difference, its standard error, a 95% t interval, the paired t-test's p-value and the Wilcoxon
  signed-rank test's (which does not assume normal differences);
* :func:`paired_rates`: a per-image yes/no under two conditions (correct before and after): the change in the rate,
  its paired standard error, a normal 95% interval and McNemar's exact test (a binomial test on the images whose
  outcome changed), as ``resattn.evaluate`` compares two checkpoints.

These say how far the *test images* could move a figure; they say nothing about seed-to-seed spread of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedDifference", "PairedRates", "paired_difference", "paired_rates"]

#: Two-sided confidence of every interval here.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """``a − b`` over n pairs: mean, standard error, 95% interval and two p-values (NaN with fewer than 2 pairs)."""

    n: int
    mean: float
    se: float
    low: float
    high: float
    p_t: float  # paired t-test, two-sided
    p_wilcoxon: float  # Wilcoxon signed-rank, two-sided

    def text(self, digits: int = 3) -> str:
        """``+0.012 [−0.004, +0.028], p = 0.14 (t), 0.11 (Wilcoxon)``."""
        f = f"{{:+.{digits}f}}"
        return (f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}], "
                f"p = {_p(self.p_t)} (t), {_p(self.p_wilcoxon)} (Wilcoxon)")


@dataclass(frozen=True)
class PairedRates:
    """A yes/no per image under conditions a and b: the rates, ``b − a`` with paired SE, 95% interval, McNemar."""

    n: int
    rate_a: float
    rate_b: float
    only_a: int  # yes under a only
    only_b: int  # yes under b only
    change: float  # rate_b − rate_a
    se: float
    low: float
    high: float
    p_mcnemar: float

    def text(self, digits: int = 2, scale: float = 100.0) -> str:
        """The change in points (``scale`` 100), its interval and McNemar's p."""
        f = f"{{:+.{digits}f}}"
        return (f"{f.format(scale * self.change)} [{f.format(scale * self.low)}, {f.format(scale * self.high)}], "
                f"McNemar p = {_p(self.p_mcnemar)}")


def _p(p: float) -> str:
    return "nan" if not np.isfinite(p) else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def paired_difference(a: np.ndarray, b: np.ndarray) -> PairedDifference:
    """Compare ``a`` and ``b`` pair by pair (equal-length 1-D arrays): statistics of ``a − b``. Pairs with a NaN on
    either side are dropped. All-equal pairs give a zero interval and p = 1."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two equal 1-D arrays, got shapes {a.shape} and {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    n = len(d)
    nan = float("nan")
    if n == 0:
        return PairedDifference(0, nan, nan, nan, nan, nan, nan)
    mean = float(d.mean())
    if n < 2:
        return PairedDifference(n, mean, nan, nan, nan, nan, nan)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        p_same = 1.0 if mean == 0 else 0.0
        return PairedDifference(n, mean, 0.0, mean, mean, p_same, p_same)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
    p_t = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    p_w = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return PairedDifference(n, mean, se, mean - half, mean + half, p_t, p_w)


def paired_rates(yes_a: np.ndarray, yes_b: np.ndarray) -> PairedRates:
    """Compare two per-image yes/no vectors (booleans) of the same images: the change ``b − a`` in the rate, its
    paired standard error √(n₁₀ + n₀₁ − (n₁₀ − n₀₁)²/n) / n, a normal 95% interval and McNemar's exact p."""
    from scipy import stats

    a, b = np.asarray(yes_a, bool), np.asarray(yes_b, bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"need two equal, non-empty 1-D vectors, got shapes {a.shape} and {b.shape}")
    n = len(a)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    change = (only_b - only_a) / n
    se = math.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / n, 0.0)) / n
    z = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))
    changed = only_a + only_b
    p = 1.0 if changed == 0 else float(stats.binomtest(only_b, changed, 0.5).pvalue)
    return PairedRates(n, float(a.mean()), float(b.mean()), only_a, only_b, change, se, change - z * se,
                       change + z * se, p)
