"""Aggregation of per-token terms into a sequence score (part 3 of the unifying view)."""

from __future__ import annotations

import torch

from unipo.objective.registry import register


@register("aggregation", "sum", formula="Σ_t M_t x_t", source="DPO (Rafailov et al. 2023)")
def sum_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sequence log-ratio is a SUM over response tokens."""
    return (values * mask).sum(-1)


@register("aggregation", "mean", formula="Σ_t M_t x_t / |y|",
          source="SimPO (Meng et al. 2024) Eq. 4; length-normalised IPO / DPO")
def mean_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length normalisation: the sum divided by the number of response tokens |y| (not by Σω)."""
    return (values * mask).sum(-1) / mask.sum(-1)
