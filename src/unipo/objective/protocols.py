"""The signature of each part kind, as a :class:`typing.Protocol` (what :func:`~unipo.objective.registry.register`
expects of the decorated function). ``params`` is the resolved parameter mapping of the whole objective."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from unipo.objective.sides import PairLossOut, PairTerms, Side

Params = Mapping[str, Any]
Metrics = dict[str, torch.Tensor]


class Prior(Protocol):
    def __call__(self, side: Side, params: Params) -> torch.Tensor | None:
        """Per-token prior log-probs log ζ_t ``[B, T]``, or None for a constant prior (it cancels)."""


class TokenWeights(Protocol):
    def __call__(self, side: Side, params: Params) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(weights on the policy term, weights on the prior term), each ``[B, T]`` or None (= 1)."""


class Aggregation(Protocol):
    def __call__(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-token ``[B, T]`` values (zero on padding) → one score per sequence ``[B]``."""


class Link(Protocol):
    def __call__(self, s: torch.Tensor, params: Params) -> torch.Tensor:
        """f-DPO link: the sequence log-ratio s ``[B]`` → h ``[B]``."""


class Transform(Protocol):
    def __call__(self, h: torch.Tensor, s: torch.Tensor, params: Params) -> torch.Tensor:
        """One-sided transform of a side's linked score h, given its raw log-ratio s; each ``[B]``."""


class KLTerm(Protocol):
    def __call__(self, chosen: Side, rejected: Side, agg: Aggregation, params: Params
                 ) -> tuple[torch.Tensor | None, Metrics]:
        """(D ``[B]`` subtracted inside the sigmoid, or None; detached metrics such as ``kl/chosen``)."""


class PairLoss(Protocol):
    def __call__(self, terms: PairTerms, params: Params) -> PairLossOut:
        """Per-pair losses ``[B]``, and the pairs selected when the loss selects pairs
        (:class:`~unipo.objective.sides.PairLossOut`)."""


class PairWeighting(Protocol):
    def __call__(self, chosen: Side, rejected: Side, params: Params
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
        """A factor ``[B]`` that multiplies each pair's loss, or None (= 1); or (factor, term): a term ``[B]``
        added to each pair's loss after the factor (Uni-DPO's calibrated NLL). The factor carries gradient only
        where the part computes it with gradient (WPO's never does; Uni-DPO's performance weight does, as its
        released code)."""


PROTOCOLS: dict[str, type] = {
    "prior": Prior, "weights": TokenWeights, "aggregation": Aggregation, "link": Link,
    "chosen_transform": Transform, "rejected_transform": Transform, "kl": KLTerm, "pair_loss": PairLoss,
    "pair_weighting": PairWeighting,
}
