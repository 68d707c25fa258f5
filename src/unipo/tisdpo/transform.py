"""From per-token log-probability differences to TIS-DPO importance weights.

Liu et al., ICLR 2025 (TIS-DPO), Eq. 19 and §6.1: with d_t = log π+(y_t | x, y_<t) − log π−(y_t | x, y_<t)
from a contrastive pair of models,

    w_t = k · exp(μ · clamp(d_t, L, U)),   μ = +1 on the chosen response, −1 on the rejected response,

with the paper's defaults L = −0.5, U = 1.5, k = 1 (:func:`paper_weights`).

The authors' released code (exlaw/TIS-DPO: ``token_weight_estimation.py`` rounds every d_t to 2 decimals;
``preference_datasets.py::rank_based_transform`` ranks with Python's stable sort) maps the scores to
[0.7, 1.3] by rank instead (:func:`rank_weights`). Here the rank is taken within each response over the
signed score μ·d_t (the token that the contrastive pair finds most characteristic of the side gets 1.3,
the least 0.7, evenly spaced in between). Ties: ``ties="mean"`` (unipo's default) gives tied tokens their
mean rank, so equal scores get equal weights; ``ties="released"`` reproduces the released code: d_t rounded
to 2 decimals first, ties broken by token order (the earlier token ranks lower).

The end-of-sequence token (the last response token when it is the EOS / end-of-turn token): the released
code gives it weight 0 under every transform (``preference_datasets.py``: ``weights[:n-1] + [0]``); the
paper does not say. ``eos="auto"`` (default) keeps unipo's earlier choice, weighting it under the paper
transform and giving it 0 under the rank transform; ``eos="zero"`` gives it 0 under both (the released code),
``eos="weight"`` weights it under both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from unipo.errors import ConfigError

__all__ = ["EOS_CHOICES", "PAPER_DEFAULTS", "RANK_RANGE", "RANK_TIES", "check_transform", "paper_weights",
           "rank_weights", "side_sign"]

#: the paper's clamp bounds and scale (L, U, k), TIS-DPO §7.1
PAPER_DEFAULTS = {"lower": -0.5, "upper": 1.5, "k": 1.0}
#: the released code's weight range
RANK_RANGE = (0.7, 1.3)
TRANSFORMS = ("paper", "rank")
RANK_TIES = ("mean", "released")
EOS_CHOICES = ("auto", "zero", "weight")


def side_sign(side: str) -> float:
    """μ of Eq. 19: +1 on the chosen response, −1 on the rejected response."""
    if side not in ("chosen", "rejected"):
        raise ValueError(f"side must be 'chosen' or 'rejected', not {side!r}")
    return 1.0 if side == "chosen" else -1.0


def check_transform(transform: str, lower: float, upper: float, k: float,
                    rank_range: tuple[float, float] = RANK_RANGE) -> None:
    """Raise :class:`ConfigError` for an unknown transform or inconsistent bounds."""
    if transform not in TRANSFORMS:
        raise ConfigError(f"transform must be one of {', '.join(TRANSFORMS)}, not {transform!r}")
    if not lower < upper:
        raise ConfigError(f"the clamp bounds need lower < upper, got L={lower}, U={upper}")
    if not k > 0:
        raise ConfigError(f"the weight scale k must be positive, got {k}")
    lo, hi = rank_range
    if not 0 <= lo <= hi:
        raise ConfigError(f"the rank range needs 0 <= low <= high, got {rank_range}")


def paper_weights(diffs: Sequence[float], side: str, *, lower: float = -0.5, upper: float = 1.5,
                  k: float = 1.0) -> list[float]:
    """TIS-DPO Eq. 19: ``w_t = k·exp(μ·clamp(d_t, L, U))`` for every token of one response."""
    mu = side_sign(side)
    return [k * math.exp(mu * min(max(d, lower), upper)) for d in diffs]


def _ranks(values: Sequence[float], ties: str = "mean") -> list[float]:
    """0-based ranks; ties share their mean rank (``mean``) or keep token order (``released``: a stable sort
    of the values rounded to 2 decimals, as the authors' code does)."""
    if ties == "released":
        order = sorted(range(len(values)), key=lambda i: round(values[i], 2))
        ranks = [0.0] * len(values)
        for r, i in enumerate(order):
            ranks[i] = float(r)
        return ranks
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2
        i = j + 1
    return ranks


def rank_weights(diffs: Sequence[float], side: str, *, ends_with_eos: bool = True,
                 low: float = RANK_RANGE[0], high: float = RANK_RANGE[1], ties: str = "mean") -> list[float]:
    """The released code's mapping: rank μ·d_t within the response onto [low, high]; EOS (when
    ``ends_with_eos``) is not ranked and gets 0. A response with a single rankable token gets the middle of
    the range (the released code's 1.0 for [0.7, 1.3])."""
    if ties not in RANK_TIES:
        raise ConfigError(f"rank ties must be one of {', '.join(RANK_TIES)}, not {ties!r}")
    mu = side_sign(side)
    n = len(diffs) - (1 if ends_with_eos and diffs else 0)
    scores = [mu * d for d in diffs[:n]]
    ranks = _ranks(scores, ties)
    mid = (low + high) / 2
    out = [low + (high - low) * r / (n - 1) if n > 1 else mid for r in ranks]
    if n < len(diffs):
        out.append(0.0)
    return out
