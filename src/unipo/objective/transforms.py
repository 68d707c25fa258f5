"""One-sided transforms (part 5 of the unifying view).

Each receives the linked score h of its side and the raw sequence log-ratio s, and returns the new h.
"""

from __future__ import annotations

import torch

from unipo.objective.protocols import Params
from unipo.objective.registry import Param, PresetSpec, register


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


@register("rejected_transform", "shift", params={
    "shift_lambda": Param(0.95, "f(λ): the factor on the rejected side's log-ratio (1 = DPO; below 1 raises the "
                                "chosen probability at the cost of the reward margin)", lo=0)},
          formula="λ·h_l",
          source="DPO-Shift (Yang et al., ICML 2025, arXiv 2502.07599), the DPO-Shift loss of §3; released code "
                 "Meaquadddd/DPO-Shift scripts/dposhift_trainer.py::dpo_loss (dpo_lambda, strategy 'fixed')",
          preset=PresetSpec("dpo_shift", "−log σ(β·ρ(y_w) − f(λ)·β·ρ(y_l))",
                            "Yang et al., ICML 2025 (DPO-Shift, arXiv 2502.07599); the released code "
                            "(Meaquadddd/DPO-Shift, dpo_lambda_strategy 'fixed')",
                            "f(λ) = shift_lambda = 0.95, the fixed value of the authors' released models (their "
                            "config's default 1.0 is DPO; the paper sweeps 0.55–0.99); the released code's linear "
                            "schedules of λ over training ('increase_linear' / 'decrease_linear') are not offered"))
def dpo_shift(h: torch.Tensor, s: torch.Tensor, params: Params) -> torch.Tensor:
    """DPO-Shift: the rejected side's score is multiplied by f(λ) inside the sigmoid, β(h_w − f(λ)·h_l). With
    f(λ) < 1 the optimum moves towards a higher chosen likelihood (against DPO's likelihood displacement) and a
    smaller reward margin. With the reverse-KL link this is the released code's loss exactly; under another link
    unipo scales the linked score f′(u_l) (the released code handles its f-divergences differently)."""
    return float(params["shift_lambda"]) * h
