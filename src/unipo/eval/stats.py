"""Uncertainty of comparisons over seeds and held-out items (``unipo compare --seeds``, the claims suite).

Two sources of randomness move a comparison between two variants trained on the same data: the training seed
(data order, sampling) and which problems were held out. A test over items alone (McNemar's exact test on
pass/fail) treats the three seeds as the only seeds there are and understates how a fourth would move the
answer; a t-test over 3 seeds has 2 degrees of freedom and ignores the items. The paired difference is
therefore bootstrapped over BOTH, as a crossed design: every seed of the variant and of the baseline is scored on
the same held-out items, so the per-cell difference ``d[s, i] = variant[s, i] − baseline[s, i]`` is resampled
by drawing seeds with replacement and, independently, items with replacement (the "pigeonhole" bootstrap of
Owen, *The pigeonhole bootstrap*, Ann. Appl. Stat. 1(2), 2007, Eq. 2.1; Owen shows it is mildly conservative
for crossed random effects). With one seed it is the ordinary paired bootstrap over items. The interval is the
percentile interval of the resampled means.

The minimum detectable effect (MDE) of a comparison is ``(z_{1−α/2} + z_{power}) · SE`` with SE the bootstrap
standard error of the difference: the smallest true difference this many seeds and items would find (interval
excluding 0) with 80% probability at α = 0.05 — what an "inconclusive" verdict could have seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: z_{0.975} + z_{0.80}: the MDE multiplier at α = 0.05 (two-sided) and 80% power
MDE_Z = 1.959963984540054 + 0.8416212335729143


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the finite ``values`` and its standard error (sample standard deviation / √n; NaN below 2)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


@dataclass(frozen=True)
class PairedDifference:
    """variant − baseline: the mean difference over seeds × items, its 95% bootstrap interval, the bootstrap
    standard error, the MDE, and whether the interval excludes 0."""

    mean: float
    low: float
    high: float
    se: float
    mde: float
    n_seeds: int
    n_items: int
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def paired_bootstrap(diffs: Sequence[Sequence[float]] | np.ndarray, *, resamples: int = 10_000,
                     level: float = 0.95, seed: int = 0) -> PairedDifference:
    """The two-way (seeds × items) paired bootstrap of the mean of ``diffs[s][i]`` (module docstring).

    Each resample draws S seeds and I items with replacement; its statistic is the mean of the S × I cells
    picked, computed as ``w_s · D · w_i / (S·I)`` with multinomial counts ``w``. Deterministic for a ``seed``."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"paired_bootstrap needs a non-empty seeds x items matrix, got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("paired_bootstrap: the differences must be finite")
    n_s, n_i = d.shape
    rng = np.random.default_rng(seed)
    w_s = rng.multinomial(n_s, np.full(n_s, 1.0 / n_s), size=resamples).astype(np.float64)
    w_i = rng.multinomial(n_i, np.full(n_i, 1.0 / n_i), size=resamples).astype(np.float64)
    stats = np.einsum("bs,si,bi->b", w_s, d, w_i) / (n_s * n_i)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    se = float(stats.std(ddof=1))
    return PairedDifference(mean=float(d.mean()), low=float(low), high=float(high), se=se, mde=MDE_Z * se,
                            n_seeds=n_s, n_items=n_i, resamples=resamples)


def pair_accuracy(margins: Sequence[float]) -> list[float]:
    """Per pair, 1 where the margin prefers the chosen response, 0.5 on a tie, 0 otherwise (as
    :func:`unipo.eval.metrics.reward_accuracy_and_margin` counts them)."""
    return [1.0 if m > 0 else (0.5 if m == 0 else 0.0) for m in margins]
