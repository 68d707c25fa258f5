"""Token weights ω_t on the token log-ratios (part 2 of the unifying view).

Each function returns ``(policy_weights, prior_weights)``: usually one tensor for both terms of
ρ_t = a_t − log ζ_t; BMC's released code weights the reference term differently, hence two.
``None`` means weight 1 everywhere.
"""

from __future__ import annotations

import torch

from unipo.objective.protocols import Params
from unipo.objective.registry import Needs, Param, PresetSpec, StatefulPart, register
from unipo.objective.sides import Side

Weights = tuple[torch.Tensor | None, torch.Tensor | None]


@register("weights", "none", formula="ω_t = 1", neutral=True)
def no_weights(side: Side, params: Params) -> Weights:
    """Every response token counts once."""
    return None, None


@register("weights", "given", formula="ω_t = w_t (an input tensor)",
          needs=Needs(inputs=("weights",), signal="sparsepo_masks", signal_when="kl_masks", token_reference=True),
          source="TIS-DPO (Liu et al., ICLR 2025 version) Eq. 15–19: importance weights; "
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
          source="BMC (Jiang et al., ICLR 2025 version), Eq. 4–6",
          needs=Needs(inputs=("diff_mask",), token_reference=True))
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


@register("weights", "hdpo", params={
    "hdpo_alpha": Param(0.95, "α: the scale of the policy's log-probability (α < 1 sharpens the policy, lowers its "
                              "entropy; α = 1 is DPO)", lo=0, lo_open=True)},
          formula="ω_t = α on the policy term, 1 on the prior term: s = Σ_t (α a_t − log ζ_t)",
          source="H-DPO (Omura et al. 2024, \"Entropy Controllable Direct Preference Optimization\", arXiv 2411.07595)",
          preset=PresetSpec("hdpo", "−log σ(β[(α log π − log π_ref)(y_w) − (α log π − log π_ref)(y_l)])",
                            "Omura et al. 2024 (H-DPO), arXiv 2411.07595: the loss as the paper states it (no "
                            "released code was found)",
                            "in the MI-DPO view: s = α·Σ(a − r/α), the score against the prior ζ ∝ π_ref^(1/α), scaled "
                            "by α so that β is H-DPO's β; α = 0.95 is unipo's default (the paper sweeps α ≤ 1)"))
def hdpo_weights(side: Side, params: Params) -> Weights:
    """H-DPO's entropy control: the policy's log-probability is multiplied by α and the prior's is not, which is
    the MI-DPO score against a tempered reference ζ ∝ π_ref^(1/α) (times α). Occupies the weights slot, so it
    does not combine with BMC or given (TIS-DPO / SparsePO) weights."""
    return torch.full_like(side.logps, float(params["hdpo_alpha"])), None


_MASK64 = (1 << 64) - 1


def _i64(value: int) -> int:
    """An unsigned 64-bit constant as the signed int64 torch stores."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = _i64(0x9E3779B97F4A7C15), _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser (Steele, Lea, Flood 2014) on int64 tensors, elementwise: a counter-based hash, so
    each value depends on its own input only (not on the tensor's shape or the device; int64 products wrap)."""
    z = x + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


@register("weights", "sampo", params={
          "sampo_seed": Param(0, "seed of the token sampler (with the batch count and each pair's identity)", lo=0)},
          formula="ω_t = 1 on min(|y_w|, |y_l|) tokens drawn uniformly without replacement from the response, 0 "
                  "elsewhere (the shorter response keeps every token); a fresh draw per training batch",
          source="SamPO (Lu et al. 2024, arXiv 2406.10957); released code LuJunru/SamPO dpo_trainer.py::"
                 "get_batch_logps (len_norm)", needs=Needs(token_reference=True),
          preset=PresetSpec("sampo", "−log σ(β(Σ_{t∈S_w} ρ_t(y_w) − Σ_{t∈S_l} ρ_t(y_l))),  |S_w| = |S_l| = "
                                     "min(|y_w|, |y_l|), S drawn uniformly without replacement",
                            "Lu et al. 2024 (SamPO), arXiv 2406.10957; the released code LuJunru/SamPO",
                            "one token subset per side for policy AND reference (the paper's down-sampled KL); the "
                            "released code draws the policy's and the reference's subsets independently (two forward "
                            "passes, torch.multinomial each). A fresh draw per training batch, seeded from "
                            "(sampo_seed, the batch count, the pair's dataset row): independent of padding and "
                            "layout, the same on a resumed run"))
class SamPOWeights(StatefulPart):
    """SamPO's down-sampling: the longer response of each pair keeps a uniformly drawn subset of as many tokens
    as the shorter one has, so both sequence log-ratios sum the same number of token terms (the shorter keeps
    every token). A fresh subset per training batch, as the released code draws one at every forward pass: the
    token keys are a hash of (``sampo_seed``, the objective's count of training batches, the pair's identity, the
    side, the token's position among the response's tokens), so the draw does not depend on the tensor layout
    (padding width, offsets), the batch's other pairs or the device, and a resumed run (the count is in the
    objective's state) draws what the uninterrupted run drew. The pair's identity is its dataset row
    (``ObjectiveInputs.pair_ids``, which ``unipo train`` supplies) or, without it, its position in the batch. The
    count advances after the rejected side of a training batch; scoring in evaluation mode draws with the current
    count and advances nothing."""

    def __init__(self, params):
        super().__init__(params)
        self.seed, self.steps = int(params["sampo_seed"]), 0

    def __call__(self, side: Side, params: Params) -> Weights:
        mask = side.mask
        own = mask.sum(-1)
        other = side.partner_mask.sum(-1) if side.partner_mask is not None else own
        keep = torch.minimum(own, other)
        pairs = side.pair_ids if side.pair_ids is not None else torch.arange(mask.shape[0], device=mask.device)
        base = splitmix64(torch.tensor(self.seed, dtype=torch.int64, device=mask.device))
        base = splitmix64(base ^ self.steps)
        base = splitmix64(base ^ (0 if side.name == "chosen" else 1))
        base = splitmix64(base ^ pairs.to(device=mask.device, dtype=torch.int64))  # [B]
        position = torch.cumsum(mask.to(torch.int64), dim=-1) - 1  # among the response's tokens
        keys = splitmix64(base[:, None] ^ splitmix64(position))
        keys = keys.masked_fill(~mask, torch.iinfo(torch.int64).max)  # padding sorts last
        rank = keys.argsort(dim=-1, stable=True).argsort(dim=-1)
        w = ((rank < keep[:, None]) & mask).to(side.logps.dtype)
        if self.training and side.name == "rejected":
            self.steps += 1
        self.metrics = {"sampo/steps": torch.tensor(float(self.steps))}
        return w, w

    def state_dict(self) -> dict[str, float]:
        return {"steps": float(self.steps)}

    def load_state_dict(self, state) -> None:
        self.steps = int(state.get("steps", 0))


@register("weights", "ld", params={
    "ld_alpha": Param(0.5, "α: weight of the tokens past the shorter response's length (1 = DPO; TRL's ld_alpha)",
                      lo=0, hi=1)},
          formula="ω_t = 1 for t ≤ min(|y_w|, |y_l|), α after (on π_θ and π_ref alike)",
          source="LD-DPO (Liu et al. 2024, arXiv 2409.06411), as TRL's DPOTrainer ld_alpha computes it "
                 "(trl/trainer/dpo_trainer.py, TRL 1.16)", needs=Needs(token_reference=True),
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
