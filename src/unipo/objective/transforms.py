"""One-sided transforms (part 5 of the unifying view).

Each receives the linked score h of its side and the raw sequence log-ratio s, and returns the new h.
"""

from __future__ import annotations

import torch

from unipo.objective.protocols import Params
from unipo.objective.registry import Param, register


@register("chosen_transform", "none", formula="h_w", neutral=True)
def chosen_identity(h: torch.Tensor, s: torch.Tensor, params: Params) -> torch.Tensor:
    """No change."""
    return h


@register("chosen_transform", "dpop", params={
    "dpop_lambda": Param(50.0, "λ: weight of the penalty on a negative chosen log-ratio", lo=0)},
          formula="h_w − λ·max(0, −ρ(y_w))", source="DPO-Positive (Pal et al. 2024), Eq. 3")
def dpo_positive(h: torch.Tensor, s: torch.Tensor, params: Params) -> torch.Tensor:
    """DPOP: penalise the chosen side when its log-ratio falls below zero; the penalty sits INSIDE the
    sigmoid, β(Δ − λ·max(0, −ρ(y_w)))."""
    return h - float(params["dpop_lambda"]) * torch.relu(-s)


@register("rejected_transform", "none", formula="h_l", neutral=True)
def rejected_identity(h: torch.Tensor, s: torch.Tensor, params: Params) -> torch.Tensor:
    """No change."""
    return h


@register("rejected_transform", "minor", formula="max(0, h_l)",
          source="MinorDPO (Xie et al. 2024, arXiv 2408.09834), Eq. 8")
def minor_clamp(h: torch.Tensor, s: torch.Tensor, params: Params) -> torch.Tensor:
    """MinorDPO: the rejected side is pushed down only while π_θ(y_l) > π_ref(y_l)."""
    return torch.relu(h)
