"""f-DPO links (part 4 of the unifying view): Wang et al., ICLR 2024, "Beyond Reverse KL", Thm. 1.

The loss is −log σ(β f′(u_w) − β f′(u_l)) with log u = the sequence log-ratio s. Every link is written as
a function of s, stably, and keeps f′'s constant so that h(0) = 0 and sign(h) = sign(s): a one-sided
transform on h then means the same thing under every link. Exponentials of sequence log-ratios overflow:
their exponent is clamped at ``EXP_CLAMP`` (80, safe in float32 and bfloat16; the objective computes in
float32), so for a log-ratio beyond ±80/α the gradient of the forward-KL and α links vanishes on that side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unipo.objective.protocols import Params
from unipo.objective.registry import Param, register

EXP_CLAMP = 80.0


def capped_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(min(x, 80)): finite in float32 and bfloat16."""
    return torch.exp(x.clamp(max=EXP_CLAMP))


@register("link", "reverse_kl", formula="f′(u) = log u + 1  →  s", source="DPO = f-DPO with reverse KL",
          neutral=True)
def reverse_kl(s: torch.Tensor, params: Params) -> torch.Tensor:
    """Reverse KL: the identity on the log-ratio (the constant +1 cancels between the sides)."""
    return s


@register("link", "forward_kl", formula="f′(u) = 1 − 1/u  →  1 − exp(−s)", source="f-DPO, Table 1")
def forward_kl(s: torch.Tensor, params: Params) -> torch.Tensor:
    """Forward KL, with f′'s constant kept (as TRL writes it): 1 − exp(−s) is 0 at s = 0 and has the sign
    of s, like every link here, so that a one-sided transform on h (MinorDPO's max(0, h_l)) acts where the
    log-ratio is positive. The constant cancels in h_w − h_l; dropping it made MinorDPO ∘ forward-KL
    clamp the rejected side to 0 everywhere (no gradient)."""
    return 1.0 - capped_exp(-s)


@register("link", "js", formula="f′(u) = log(2u/(1+u))  →  log 2 − softplus(−s)", source="f-DPO, Table 1")
def jensen_shannon(s: torch.Tensor, params: Params) -> torch.Tensor:
    """Jensen–Shannon divergence, computed as log 2 + log σ(s) without overflow."""
    return math.log(2.0) - F.softplus(-s)


@register("link", "alpha", params={"f_alpha": Param(0.5, "the paper's α of the α-divergence", lo=0, hi=1, lo_open=True,
                                                 hi_open=True)},
          formula="f′(u) = (1 − u^(−α))/α  →  (1 − exp(−α s))/α, 0 < α < 1", source="f-DPO, Table 1")
def alpha_divergence(s: torch.Tensor, params: Params) -> torch.Tensor:
    """α-divergence with the PAPER's α. TRL's ``f_alpha_divergence_coef`` equals 1 − α (they agree only
    at α = 0.5)."""
    alpha = float(params["f_alpha"])
    return (1.0 - capped_exp(-alpha * s)) / alpha
