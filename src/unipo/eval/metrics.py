"""Evaluation metrics for preference-optimised policies: accuracy, calibration, diversity, KL, entropy.

Pure numpy / torch (no transformers). Every function takes plain sequences, numpy arrays or torch
tensors and returns Python floats (or lists of dicts of floats), so results serialise to JSON directly.

Why these metrics: f-DPO (Wang et al., ICLR 2024, "Beyond Reverse KL", arXiv 2309.16240) reports that
the choice of divergence trades off alignment accuracy, generation diversity and expected calibration
error (ECE); evaluating a variant therefore needs all three, plus the KL to the reference model that
the objective regularises (the reward-vs-KL frontier of Gao et al. 2023, "Scaling Laws for Reward
Model Overoptimization", arXiv 2210.10760).

Sources for each metric are cited in its docstring.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = [
    "reward_accuracy_and_margin",
    "expected_calibration_error",
    "pairwise_calibration",
    "distinct_n",
    "sentence_bleu",
    "self_bleu",
    "kl_estimate",
    "token_entropies",
    "mean_entropy",
]

ArrayLike = Any  # sequence of numbers, numpy array or torch tensor


def _to_numpy(x: ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy().astype(dtype)
    return np.asarray(x, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Reward accuracy and margin
# --------------------------------------------------------------------------------------------------

def reward_accuracy_and_margin(margins: ArrayLike) -> dict[str, float]:
    """Share of pairs whose implicit reward prefers the chosen response, and the mean reward margin.

    ``margins`` are per-pair implicit reward margins r(x, y_w) − r(x, y_l); for DPO the implicit
    reward is β·log π_θ(y|x)/π_ref(y|x) (Rafailov et al. 2023, arXiv 2305.18290), so the margin
    is βΔ. This is the "rewards/accuracies" and "rewards/margins" pair that TRL's DPOTrainer logs,
    except for ties: a margin of exactly 0 counts as half a correct pair (a coin flip), where TRL
    counts it as wrong. Empty input gives NaN.

    Returns ``{"reward_accuracy", "margin", "margin_std", "n", "reward_accuracy_se", "margin_se"}``
    (``margin_std`` is the population standard deviation of the margins; the ``_se`` entries are standard
    errors of the two means, sample standard deviation / √n, NaN for fewer than two pairs).
    """
    m = _to_numpy(margins).reshape(-1)
    if m.size == 0:
        return {"reward_accuracy": math.nan, "margin": math.nan, "margin_std": math.nan, "n": 0.0,
                "reward_accuracy_se": math.nan, "margin_se": math.nan}
    correct = (m > 0).astype(np.float64) + 0.5 * (m == 0).astype(np.float64)

    def se(x: np.ndarray) -> float:
        return float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan

    return {
        "reward_accuracy": float(correct.mean()),
        "margin": float(m.mean()),
        "margin_std": float(m.std()),
        "n": float(m.size),
        "reward_accuracy_se": se(correct),
        "margin_se": se(m),
    }


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------

def expected_calibration_error(
    probs: ArrayLike, labels: ArrayLike, n_bins: int = 10, strategy: str = "uniform",
) -> tuple[float, list[dict[str, float | int | None]]]:
    """Expected calibration error of binary probabilities, and the reliability-diagram bins.

    ECE = Σ_b (n_b / N) · |acc_b − conf_b| (Naeini et al. 2015, AAAI; Guo et al. 2017, "On Calibration
    of Modern Neural Networks", ICML), where for the samples falling in bin b, conf_b is the
    mean predicted probability of the event and acc_b the observed frequency of the event (the mean
    label).

    Args:
        probs: predicted probability that the label is 1, each in [0, 1].
        labels: observed labels in {0, 1}.
        n_bins: number of bins.
        strategy: ``"uniform"``: equal-width bins ((k−1)/M, k/M], the first bin also holding 0, as in
            Guo et al.; ``"quantile"``: edges at the quantiles of ``probs`` (roughly equal counts; repeated
            edges are merged, so there may be fewer bins), intervals closed on the right likewise.

    Returns:
        ``(ece, bins)``; each bin is ``{"lower", "upper", "count", "confidence", "accuracy"}`` with
        ``confidence``/``accuracy`` ``None`` for an empty bin. Empty input gives ``(nan, bins)``.
    """
    p = _to_numpy(probs).reshape(-1)
    y = _to_numpy(labels).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"probs and labels differ in length: {p.size} vs {y.size}")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if p.size and (np.any(p < 0) or np.any(p > 1) or np.any(np.isnan(p))):
        raise ValueError("probs must lie in [0, 1]")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        if p.size == 0:
            edges = np.linspace(0.0, 1.0, n_bins + 1)
        else:
            edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
            edges[0], edges[-1] = 0.0, 1.0
            edges = np.unique(edges)
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    # side="left" puts a value equal to an inner edge into the lower bin: intervals (lo, hi].
    idx = np.searchsorted(edges[1:-1], p, side="left")
    n = p.size
    ece = 0.0
    bins: list[dict[str, float | int | None]] = []
    for b in range(len(edges) - 1):
        sel = idx == b
        count = int(sel.sum())
        if count:
            conf = float(p[sel].mean())
            acc = float(y[sel].mean())
            ece += count / n * abs(acc - conf)
        else:
            conf = acc = None
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": conf, "accuracy": acc})
    return (float(ece) if n else math.nan), bins


def pairwise_calibration(
    margins: ArrayLike, n_bins: int = 10, strategy: str = "uniform",
) -> tuple[float, list[dict[str, float | int | None]]]:
    """ECE of the implicit preference probability σ(margin) on preference pairs.

    The implicit Bradley–Terry model of DPO (Rafailov et al. 2023) predicts
    P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)) = σ(margin). On a preference dataset the observed label
    "the chosen response is preferred" is always 1, so ECE over (σ(m), 1) alone would only measure how
    far the probabilities are from 1. We therefore evaluate both orderings of every pair: (σ(m), label
    1) for (y_w, y_l) and (1 − σ(m) = σ(−m), label 0) for (y_l, y_w). The reliability diagram is then
    symmetric about 0.5, and a model that always says 0.5 is perfectly calibrated only if it is right
    half the time. This is the calibration of the pairwise preference probability the f-DPO paper
    (Wang et al., ICLR 2024) reports as ECE.

    ``margins`` must already include β (implicit reward margins, as in
    :func:`reward_accuracy_and_margin`). Returns ``(ece, bins)`` as
    :func:`expected_calibration_error` does.
    """
    m = _to_numpy(margins).reshape(-1)
    p = 1.0 / (1.0 + np.exp(-np.clip(m, -700, 700)))
    probs = np.concatenate([p, 1.0 - p])
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    return expected_calibration_error(probs, labels, n_bins=n_bins, strategy=strategy)


# --------------------------------------------------------------------------------------------------
# Diversity
# --------------------------------------------------------------------------------------------------

def _tokens(sample: str | Sequence[Hashable]) -> list[Hashable]:
    """A string is split on whitespace; a sequence (token ids or words) is used as is."""
    if isinstance(sample, str):
        return list(sample.split())
    return list(sample)


def _ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple[Hashable, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[str | Sequence[Hashable]], n: int) -> float:
    """Distinct-n: the number of unique n-grams divided by the total number of n-grams in the set.

    Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"
    (NAACL). N-grams do not cross sample boundaries. Strings are split on whitespace; lists of
    tokens (e.g. token ids) are used as given. Returns 0.0 when the set contains no n-gram.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    total = 0
    unique: set[tuple[Hashable, ...]] = set()
    for s in samples:
        grams = _ngrams(_tokens(s), n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


@lru_cache(maxsize=8)
def _bleu(max_n: int, epsilon: float) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none", smooth_method="floor", smooth_value=epsilon, effective_order=True,
                max_ngram_order=max_n)


def _joined(tokens: Sequence[Hashable]) -> str:
    return " ".join(str(t) for t in tokens)


def sentence_bleu(
    hypothesis: str | Sequence[Hashable], references: Sequence[str | Sequence[Hashable]],
    max_n: int = 4, epsilon: float = 0.1,
) -> float:
    """Sentence-level BLEU in [0, 1]: sacrebleu's ``BLEU.sentence_score`` on whitespace tokens.

    BLEU (Papineni et al. 2002, ACL): BP · exp(Σ_n (1/N) log p_n), p_n the clipped n-gram precision,
    BP = exp(1 − r/c) when the hypothesis length c is below the closest reference length r (the shorter
    on a tie). sacrebleu settings: ``tokenize="none"`` (strings are split on whitespace; token-id lists
    are used as they are), smoothing ``floor`` = method 1 of Chen & Cherry 2014 (a precision with no match
    gets ε = ``epsilon`` as its numerator), ``effective_order=True`` (sacrebleu's sentence-level setting:
    orders longer than the hypothesis are left out, where NLTK would floor them too). No matching
    n-gram at all, an empty hypothesis or no reference: 0.
    """
    hyp = _tokens(hypothesis)
    refs = [_tokens(r) for r in references]
    if not hyp or not refs:
        return 0.0
    score = _bleu(max_n, float(epsilon)).sentence_score(_joined(hyp), [_joined(r) for r in refs])
    return score.score / 100.0


def self_bleu(samples: Sequence[str | Sequence[Hashable]], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Self-BLEU: the mean BLEU of each sample against all the other samples as references.

    Zhu et al. 2018, "Texygen: A Benchmarking Platform for Text Generation Models" (SIGIR); each
    sentence BLEU is sacrebleu's (see :func:`sentence_bleu`, smoothing method 1 as Texygen's NLTK call).
    Higher means less diverse. Needs at least two samples; returns NaN otherwise.
    """
    items = [_tokens(s) for s in samples]
    if len(items) < 2:
        return math.nan
    scores = [sentence_bleu(items[i], items[:i] + items[i + 1:], max_n=max_n, epsilon=epsilon)
              for i in range(len(items))]
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------------
# KL and entropy
# --------------------------------------------------------------------------------------------------

def _as_float_tensor(x: ArrayLike) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def kl_estimate(
    logp_policy: ArrayLike, logp_ref: ArrayLike, mask: ArrayLike | None = None,
) -> dict[str, float]:
    """Monte-Carlo estimate of the sequence-level KL(π ‖ π_ref) from responses sampled from π.

    Inputs are per-token log-probabilities of the sampled response tokens, shape (N, T), under the
    policy π and the reference π_ref, and a mask (N, T) of response tokens (1) vs padding (0). The
    responses MUST be sampled from the policy itself (temperature 1, no top-k/top-p), otherwise the
    estimate is biased.

    - ``kl`` (the "k1" estimator): mean over samples of Σ_t (log π − log π_ref), unbiased for
      KL(π(·|x) ‖ π_ref(·|x)) over whole responses; high variance, can be negative.
    - ``kl_k3``: Σ_t (ρ_t − 1 − log ρ_t) with ρ_t = π_ref(y_t|·)/π(y_t|·), the k3 estimator of
      J. Schulman, "Approximating KL Divergence" (2020, http://joschu.net/blog/kl-approx.html):
      unbiased per token (E_{y~π}[ρ − 1] = 0), hence for the sum by the chain rule, always ≥ 0 and of
      lower variance when π and π_ref are close.
    - ``kl_std_err``: standard error of ``kl`` over samples; ``kl_per_token``: Σ k1 / Σ tokens.

    Empty input gives NaN.
    """
    lp = _as_float_tensor(logp_policy)
    lr = _as_float_tensor(logp_ref)
    if lp.shape != lr.shape:
        raise ValueError(f"logp_policy {tuple(lp.shape)} and logp_ref {tuple(lr.shape)} differ in shape")
    if lp.dim() == 1:
        lp, lr = lp[None], lr[None]
    m = torch.ones_like(lp) if mask is None else _as_float_tensor(mask).reshape(lp.shape)
    if lp.numel() == 0 or lp.shape[0] == 0:
        return {"kl": math.nan, "kl_k3": math.nan, "kl_std_err": math.nan, "kl_per_token": math.nan}
    diff = torch.where(m > 0, lp - lr, torch.zeros_like(lp))
    k1 = diff.sum(-1)
    log_ratio = -diff  # log(π_ref / π)
    k3 = torch.where(m > 0, torch.expm1(log_ratio) - log_ratio, torch.zeros_like(lp)).sum(-1)
    n = k1.numel()
    std_err = float(k1.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    tokens = float(m.sum())
    return {
        "kl": float(k1.mean()),
        "kl_k3": float(k3.mean()),
        "kl_std_err": std_err,
        "kl_per_token": float(k1.sum()) / tokens if tokens else math.nan,
    }


def token_entropies(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H = −Σ_v p_v log p_v of the softmax over the last dimension, computed in float32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def mean_entropy(logits_or_entropies: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Mean per-token predictive entropy (nats) over the masked positions.

    Accepts either logits (N, T, V) — the entropy of each position's full next-token distribution is
    computed in float32 — or per-token entropies (N, T). The mean is over tokens (each response token
    counts once), not over sequences. This is the "predictive entropy" diversity measure of f-DPO
    (Wang et al., ICLR 2024). Empty mask gives NaN.
    """
    x = logits_or_entropies
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        ent = token_entropies(x).to(torch.float64)
    else:
        ent = _as_float_tensor(x)
        if ent.dim() == 3:
            ent = token_entropies(ent)
    m = torch.ones_like(ent) if mask is None else _as_float_tensor(mask).reshape(ent.shape)
    total = float(m.sum())
    if total == 0:
        return math.nan
    return float((torch.where(m > 0, ent, torch.zeros_like(ent))).sum() / total)
