"""Evaluation metrics against hand-worked values and exact quantities."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from unipo.eval.metrics import (
    distinct_n,
    expected_calibration_error,
    kl_estimate,
    mean_entropy,
    pairwise_calibration,
    reward_accuracy_and_margin,
    self_bleu,
    sentence_bleu,
)

pytestmark = pytest.mark.unit


def test_reward_accuracy_ties_count_half():
    out = reward_accuracy_and_margin([1.0, -1.0, 0.0, 2.0])
    assert out["reward_accuracy"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert out["margin"] == pytest.approx(0.5)
    assert out["n"] == 4
    # standard errors by hand: correct = [1, 0, .5, 1], mean .625, squared deviations sum to .6875
    assert out["reward_accuracy_se"] == pytest.approx(math.sqrt(0.6875 / 3) / 2)
    # margins [1, -1, 0, 2], mean .5: squared deviations .25 + 2.25 + .25 + 2.25 = 5
    assert out["margin_se"] == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(reward_accuracy_and_margin([1.0])["margin_se"])
    assert math.isnan(reward_accuracy_and_margin([])["reward_accuracy"])
    assert reward_accuracy_and_margin(torch.tensor([3.0, 1.0]))["reward_accuracy"] == 1.0


def test_ece_six_points_by_hand():
    # 5 uniform bins (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]:
    #   (0,.2]: {.1|0}        conf .1   acc 0   gap .1    weight 1/6
    #   (.2,.4]: {.3|1,.35|0} conf .325 acc .5  gap .175  weight 2/6
    #   (.4,.6]: empty
    #   (.6,.8]: {.7|1}       conf .7   acc 1   gap .3    weight 1/6
    #   (.8,1]: {.9|1,.95|0}  conf .925 acc .5  gap .425  weight 2/6
    # ECE = (.1 + 2*.175 + .3 + 2*.425) / 6 = 1.6 / 6
    probs = [0.1, 0.3, 0.35, 0.7, 0.9, 0.95]
    labels = [0, 1, 0, 1, 1, 0]
    ece, bins = expected_calibration_error(probs, labels, n_bins=5)
    assert ece == pytest.approx(1.6 / 6)
    assert [b["count"] for b in bins] == [1, 2, 0, 1, 2]
    assert bins[1]["confidence"] == pytest.approx(0.325) and bins[1]["accuracy"] == pytest.approx(0.5)
    assert bins[2]["confidence"] is None and bins[2]["accuracy"] is None
    assert bins[4]["lower"] == pytest.approx(0.8) and bins[4]["upper"] == pytest.approx(1.0)


def test_ece_bin_edges_are_closed_on_the_right():
    _, bins = expected_calibration_error([0.0, 0.2, 0.4, 1.0], [0, 0, 1, 1], n_bins=5)
    assert [b["count"] for b in bins] == [2, 1, 0, 0, 1]


def test_ece_quantile_strategy_and_errors():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=1000)
    y = (rng.uniform(size=1000) < p).astype(float)  # calibrated by construction
    ece, bins = expected_calibration_error(p, y, n_bins=10, strategy="quantile")
    assert ece < 0.06
    counts = [b["count"] for b in bins]
    assert sum(counts) == 1000 and max(counts) - min(counts) <= 2
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [1, 0])
    with pytest.raises(ValueError):
        expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [1], strategy="nope")


def test_pairwise_calibration_uses_both_orderings():
    # All margins 0: every probability is 0.5, half the labels are 1: perfectly calibrated.
    ece, bins = pairwise_calibration([0.0, 0.0, 0.0])
    assert ece == pytest.approx(0.0)
    assert sum(b["count"] for b in bins) == 6
    # Confident and right on one pair, confident and wrong on the other.
    s = 1 / (1 + math.exp(-10))
    ece, bins = pairwise_calibration([10.0, -10.0], n_bins=10)
    # Top bin: (s, label 1) and (1 - σ(-10) = s, label 0): conf s, acc .5; bottom bin mirrors it.
    assert ece == pytest.approx(abs(s - 0.5))
    assert bins[-1]["count"] == 2 and bins[-1]["accuracy"] == pytest.approx(0.5)
    # Confident and always right: ECE = 1 - s.
    ece, _ = pairwise_calibration([10.0, 10.0])
    assert ece == pytest.approx(1 - s)


def test_distinct_n_by_hand():
    toks = [[1, 2, 3], [1, 2, 4]]
    assert distinct_n(toks, 1) == pytest.approx(4 / 6)  # {1,2,3,4} of 6 unigrams
    assert distinct_n(toks, 2) == pytest.approx(3 / 4)  # (1,2) twice, (2,3), (2,4)
    assert distinct_n(toks, 3) == pytest.approx(2 / 2)
    assert distinct_n(toks, 4) == 0.0  # no 4-gram at all
    assert distinct_n(["a b a", "b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b", "b a"], 2) == pytest.approx(1.0)  # n-grams never cross samples


def test_sentence_bleu_by_hand():
    # p1 = 2/3, p2 = 1/2; trigram: no match -> epsilon 0.1 over 1 trigram; no 4-gram in a 3-token hypothesis:
    # left out (sacrebleu's effective order), so the mean is over 3 orders
    assert sentence_bleu("the cat sat", ["the cat ran"], max_n=2) == pytest.approx(math.sqrt(1 / 3))
    assert sentence_bleu("the cat sat", ["the cat ran"]) == pytest.approx((2 / 3 * 1 / 2 * 0.1) ** (1 / 3))
    # Brevity penalty: c = 2, r = 4 -> exp(1 - 2) ; p1 = p2 = 1.
    assert sentence_bleu("a b", ["a b c d"], max_n=2) == pytest.approx(math.exp(-1))
    # Clipping: "the" counted at most once (its max count in a reference).
    assert sentence_bleu("the the the the", ["the cat"], max_n=1) == pytest.approx(0.25)
    # Closest reference length, the shorter on a tie: r = 2 < c = 3, no penalty.
    assert sentence_bleu("a b c", ["a b", "a b c d"], max_n=1) == pytest.approx(1.0)
    # No unigram match: 0 whatever the smoothing; empty hypothesis: 0.
    assert sentence_bleu("x y", ["a b"]) == 0.0
    assert sentence_bleu("", ["a b"]) == 0.0


def test_self_bleu_by_hand():
    # "a b" vs {"a b", "c d"}: 1 ; same for the second ; "c d" vs {"a b", "a b"}: 0.
    assert self_bleu(["a b", "a b", "c d"], max_n=1) == pytest.approx(2 / 3)
    assert self_bleu(["the cat sat", "the cat ran"], max_n=2) == pytest.approx(math.sqrt(1 / 3))
    assert self_bleu([[1, 2, 3, 4], [1, 2, 3, 4]]) == pytest.approx(1.0)
    # Identical 3-token samples have no 4-gram: that order is left out (NLTK's method 1 would floor it)
    assert self_bleu([[1, 2, 3], [1, 2, 3]]) == pytest.approx(1.0)
    # token ids that read alike as text stay distinct tokens: 12 is not "1 2"
    assert self_bleu([[12, 3], [1, 2, 3]], max_n=1) == pytest.approx((0.5 * math.exp(1 - 3 / 2) + 1 / 3) / 2)
    assert math.isnan(self_bleu(["only one"]))


def _bleu_written_out(hyp: list, refs: list[list], max_n: int = 4, eps: float = 0.1) -> float:
    """Papineni et al. 2002 with Chen & Cherry's smoothing 1 and effective order, from the definitions."""
    def grams(t, n):
        return Counter(tuple(t[i:i + n]) for i in range(len(t) - n + 1))
    logs = []
    for n in range(1, max_n + 1):
        h = grams(hyp, n)
        if not h:
            break
        best = Counter()
        for r in refs:
            best |= grams(r, n)
        match = sum(min(c, best[g]) for g, c in h.items())
        if match == 0 and n == 1:
            return 0.0
        logs.append(math.log((match or eps) / sum(h.values())))
    r = min((len(x) for x in refs), key=lambda k: (abs(k - len(hyp)), k))
    bp = 1.0 if len(hyp) >= r else math.exp(1 - r / len(hyp))
    return bp * math.exp(sum(logs) / len(logs))


def test_self_bleu_matches_the_formula_written_out():
    rng = np.random.default_rng(0)
    for _ in range(30):
        samples = [list(rng.integers(0, 6, size=rng.integers(1, 12))) for _ in range(rng.integers(2, 5))]
        want = np.mean([_bleu_written_out(samples[i], samples[:i] + samples[i + 1:]) for i in range(len(samples))])
        assert self_bleu(samples) == pytest.approx(want, rel=1e-9, abs=1e-12), samples


def test_kl_estimators_on_known_categoricals():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    q = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.1], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    x = torch.multinomial(p, 20000, replacement=True, generator=g)
    lp, lq = p.log()[x][:, None], q.log()[x][:, None]
    out = kl_estimate(lp, lq, torch.ones_like(lp))
    assert abs(out["kl"] - exact) < 4 * out["kl_std_err"]
    assert abs(out["kl"] - exact) < 0.02
    assert abs(out["kl_k3"] - exact) < 0.02
    # Sequences of 4 i.i.d. tokens, the last one padding with garbage: KL of the sequence = 3 * exact.
    lp3, lq3 = p.log()[x].reshape(-1, 4), q.log()[x].reshape(-1, 4)
    mask = torch.ones_like(lp3)
    mask[:, -1] = 0
    lp3[:, -1], lq3[:, -1] = 123.0, -456.0
    out3 = kl_estimate(lp3, lq3, mask)
    assert out3["kl"] == pytest.approx(3 * exact, abs=0.05)
    assert out3["kl_k3"] == pytest.approx(3 * exact, abs=0.05)
    assert out3["kl_per_token"] == pytest.approx(exact, abs=0.02)


def test_kl_of_identical_models_is_zero():
    lp = torch.randn(3, 5)
    out = kl_estimate(lp, lp.clone(), torch.ones(3, 5))
    assert out["kl"] == 0.0 and out["kl_k3"] == 0.0


def test_entropy_of_known_distributions():
    probs = torch.tensor([0.5, 0.25, 0.25])
    logits = probs.log().reshape(1, 1, 3) + 7.0  # shift: softmax unchanged
    assert mean_entropy(logits) == pytest.approx(1.5 * math.log(2), rel=1e-6)
    uniform = torch.zeros(2, 3, 50)
    assert mean_entropy(uniform) == pytest.approx(math.log(50), rel=1e-6)
    # Per-token entropies with a mask: mean over masked tokens only.
    ent = torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert mean_entropy(ent, mask) == pytest.approx(2.0)
    assert math.isnan(mean_entropy(ent, torch.zeros_like(mask)))
