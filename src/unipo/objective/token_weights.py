"""Token weights ω_t on the token log-ratios (part 2 of the unifying view).

Each function returns ``(policy_weights, prior_weights)``: usually one tensor for both terms of
ρ_t = a_t − log ζ_t; BMC's released code weights the reference term differently, hence two.
``None`` means weight 1 everywhere.
"""

from __future__ import annotations

import torch

from unipo.objective.protocols import Params
from unipo.objective.registry import Needs, Param, register
from unipo.objective.sides import Side

Weights = tuple[torch.Tensor | None, torch.Tensor | None]


@register("weights", "none", formula="ω_t = 1", neutral=True)
def no_weights(side: Side, params: Params) -> Weights:
    """Every response token counts once."""
    return None, None


@register("weights", "given", formula="ω_t = w_t (an input tensor)",
          needs=Needs(inputs=("weights",), signal="sparsepo_masks", signal_when="kl_masks"),
          source="TIS-DPO (Liu et al., ICLR 2025) Eq. 10: importance weights; "
                 "SparsePO (Christopoulou et al. 2024) Eq. 6: token masks m^u")
def given_weights(side: Side, params: Params) -> Weights:
    """Weights supplied per token: TIS-DPO's precomputed importance weights (no gradient) or SparsePO's
    masks (with gradient into the mask network when learned)."""
    return side.weights, side.weights


@register("weights", "bmc", params={
    "bmc_delta": Param(2.0, "cap δ on the inverse-probability weight", lo=0, lo_open=True),
    "bmc_reference_weighting": Param(False, "weight the reference term by the reference's own confidence "
                                            "(the authors' released code)", kind="bool")},
          formula="λ_t = 1 + min(sg(1/π_θ(y_t)), δ) on differing tokens, 1 elsewhere",
          source="BMC (Jiang et al., ICLR 2025), Eq. 9", needs=Needs(inputs=("diff_mask",)))
def bmc_weights(side: Side, params: Params) -> Weights:
    """BMC's confidence weights: tokens where the pseudo-winning and the losing response differ are
    up-weighted by the policy's (detached) inverse probability, capped at δ. With
    ``bmc_reference_weighting`` the reference term is weighted by the reference's own confidence
    1 + min(1/π_ref(y_t), δ), as in the authors' released code."""
    delta = float(params["bmc_delta"])
    diff = side.diff_mask.to(side.logps.dtype)
    inv_p = torch.exp(-side.logps.detach()).clamp(max=delta)  # exp(-a) = 1/π; clamp first: no overflow
    policy_w = 1.0 + diff * inv_p
    if params["bmc_reference_weighting"] and side.ref_logps is not None:
        ref_inv_p = torch.exp(-side.ref_logps.detach()).clamp(max=delta)
        return policy_w, 1.0 + diff * ref_inv_p
    return policy_w, policy_w
