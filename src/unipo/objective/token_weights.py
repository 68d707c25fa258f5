"""Token weights ω_t on the token log-ratios (part 2 of the unifying view).

Each function returns ``(policy_weights, prior_weights)``: usually one tensor for both terms of
ρ_t = a_t − log ζ_t; BMC's released code weights the reference term differently, hence two.
``None`` means weight 1 everywhere.
"""

from __future__ import annotations

import torch

from unipo.objective.protocols import Params
from unipo.objective.registry import Needs, Param, PresetSpec, register
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


@register("weights", "ld", params={
    "ld_alpha": Param(0.5, "α: weight of the tokens past the shorter response's length (1 = DPO; TRL's ld_alpha)",
                      lo=0, hi=1)},
          formula="ω_t = 1 for t ≤ min(|y_w|, |y_l|), α after (on π_θ and π_ref alike)",
          source="LD-DPO (Liu et al. 2024, arXiv 2409.06411), as TRL's DPOTrainer ld_alpha computes it "
                 "(trl/trainer/dpo_trainer.py, TRL 1.16)",
          preset=PresetSpec("ld_dpo", "−log σ(β(ρ̂(y_w) − ρ̂(y_l))),  ρ̂(y) = Σ_{t≤l_p} ρ_t + α Σ_{t>l_p} ρ_t,  "
                                      "l_p = min(|y_w|, |y_l|)",
                            "Liu et al. 2024 (LD-DPO, arXiv 2409.06411); formula read from TRL's code",
                            "α scales both the policy's and the reference's log-probs of the excess tokens, as TRL "
                            "does; the paper tunes α per model (TRL has no default): 0.5 here"))
def length_desensitised_weights(side: Side, params: Params) -> Weights:
    """LD-DPO: the tokens of the longer response beyond the shorter one's length (its 'excess') count α times, on
    both terms of the log-ratio, so the verbose tail no longer dominates the sequence log-ratio. Positions are
    counted over response tokens (the mask's running sum), as TRL does."""
    position = torch.cumsum(side.mask.to(torch.int64), dim=-1)
    shared = torch.minimum(side.lengths, side.other_lengths)
    w = torch.where(position.to(side.logps.dtype) > shared[:, None],
                    torch.full((), float(params["ld_alpha"]), dtype=side.logps.dtype, device=side.logps.device),
                    torch.ones((), dtype=side.logps.dtype, device=side.logps.device))
    return w, w
