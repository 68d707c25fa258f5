"""The uncertainty of multi-seed comparisons (unipo.eval.stats, unipo.compare.seeds), against hand computations
and an exact enumeration of the two-way bootstrap distribution."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from unipo.compare.seeds import aggregate_metrics, paired_section
from unipo.eval.stats import MDE_Z, PairedDifference, mean_and_se, pair_accuracy, paired_bootstrap

pytestmark = pytest.mark.unit


def test_mean_and_se_by_hand():
    mean, se = mean_and_se([1.0, 2.0, 3.0, 4.0])
    # sample sd of 1..4 = sqrt(((1.5²)·2 + (0.5²)·2) / 3) = sqrt(5/3); se = sd / 2
    assert mean == 2.5 and se == pytest.approx(math.sqrt(5 / 3) / 2)
    assert mean_and_se([float("nan"), 3.0]) == (3.0, pytest.approx(float("nan"), nan_ok=True))
    assert math.isnan(mean_and_se([])[0])


def _exact_pigeonhole(d: np.ndarray) -> np.ndarray:
    """Every equally likely resample of the two-way bootstrap: all S^S seed index tuples × all I^I item tuples."""
    n_s, n_i = d.shape
    return np.array([d[np.ix_(s, i)].mean() for s in itertools.product(range(n_s), repeat=n_s)
                     for i in itertools.product(range(n_i), repeat=n_i)])


def test_two_way_bootstrap_matches_the_exact_resampling_distribution():
    d = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, -1.0]])  # 2 seeds x 3 items
    exact = _exact_pigeonhole(d)  # 2^2 * 3^3 = 108 equally likely resamples
    out = paired_bootstrap(d, resamples=200_000, seed=3)
    assert out.mean == pytest.approx(d.mean())
    assert out.se == pytest.approx(exact.std(ddof=0), rel=0.02)
    lo, hi = np.quantile(exact, [0.025, 0.975], method="inverted_cdf")  # a discrete distribution: its atoms
    assert out.low == pytest.approx(lo, abs=1e-9) and out.high == pytest.approx(hi, abs=1e-9)
    assert out.mde == pytest.approx(MDE_Z * out.se) and (out.n_seeds, out.n_items) == (2, 3)


def test_one_seed_is_the_ordinary_paired_bootstrap_over_items():
    d = np.array([[1.0, 0.0, 1.0, 1.0]])
    exact = np.array([d[0, list(i)].mean() for i in itertools.product(range(4), repeat=4)])
    out = paired_bootstrap(d, resamples=100_000, seed=0)
    assert out.se == pytest.approx(exact.std(ddof=0), rel=0.02)  # sqrt(p(1-p)/n) = sqrt(3/16/4) = 0.2165
    assert out.se == pytest.approx(math.sqrt(0.75 * 0.25 / 4), rel=0.02)


def test_constant_differences_give_a_point_interval_and_excludes_zero_reads_it():
    out = paired_bootstrap(np.full((3, 5), 0.25), resamples=500)
    assert (out.low, out.mean, out.high, out.se) == (0.25, 0.25, 0.25, 0.0) and out.excludes_zero
    zero = paired_bootstrap(np.zeros((3, 5)), resamples=500)
    assert not zero.excludes_zero and zero.to_dict()["excludes_zero"] is False


def test_no_effect_is_rarely_called_an_effect():
    """Under the null (seed effects and item noise, no variant effect) the 95% interval excludes 0 in at most
    about 5% of comparisons (the pigeonhole bootstrap is mildly conservative)."""
    rng = np.random.default_rng(0)
    excluded = 0
    for _ in range(300):
        seeds = rng.normal(0, 0.05, size=(3, 1))
        d = seeds + rng.normal(0, 0.5, size=(3, 40))
        d -= d.mean()  # the true mean difference is 0 by construction; the sample is recentred on it
        d += rng.normal(0, 0.5 / math.sqrt(120))  # ... plus the sampling error of a mean of 120 cells
        excluded += paired_bootstrap(d, resamples=2000, seed=int(rng.integers(1 << 30))).excludes_zero
    assert excluded / 300 <= 0.08


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="seeds x items"):
        paired_bootstrap([])
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap([[1.0, float("nan")]])


def test_pair_accuracy_counts_ties_half():
    assert pair_accuracy([0.3, 0.0, -2.0]) == [1.0, 0.5, 0.0]


def test_aggregate_metrics_mean_and_se_over_seeds():
    per_seed = [{"greedy_pass_rate": 0.5, "kl": 2.0, "n_pairs": 64, "reward_accuracy_se": 0.1, "name": "x"},
                {"greedy_pass_rate": 0.7, "kl": 4.0, "n_pairs": 64, "reward_accuracy_se": 0.2, "name": "x"}]
    agg = aggregate_metrics(per_seed)
    assert agg["greedy_pass_rate"] == pytest.approx(0.6) and agg["greedy_pass_rate_se"] == pytest.approx(0.1)
    assert agg["kl"] == 3.0 and agg["kl_se"] == pytest.approx(1.0)  # sd sqrt(2), /sqrt(2)
    assert agg["n_pairs"] == 64 and "n_pairs_se" not in agg and "reward_accuracy_se" not in agg
    assert "name" not in agg and agg["n_seeds"] == 2


def test_paired_section_says_yes_only_when_the_interval_excludes_zero():
    d_yes = PairedDifference(0.2, 0.05, 0.35, 0.07, 0.2, 3, 64, 1000)
    d_no = PairedDifference(0.02, -0.1, 0.14, 0.06, 0.17, 3, 64, 1000)
    lines = paired_section({"simpo": {"greedy_pass_rate": d_yes, "pass_rate": d_no}}, "dpo", [0, 1, 2])
    rows = [ln for ln in lines if ln.startswith("| simpo")]
    assert rows[0] == "| simpo | greedy_pass_rate | +0.200 | [+0.050, +0.350] | yes | 0.200 |"
    assert rows[1].endswith("| no | 0.170 |")
