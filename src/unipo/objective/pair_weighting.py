"""Per-pair factors on the pair loss, computed from the pair itself (a part kind after the pair loss).

Unlike data weights (``pair_weights``, a weighted MEAN over the batch), a pair weighting multiplies each pair's
loss and the batch loss stays a plain mean, as in WPO and TRL's ``use_weighting``. The factor never carries
gradient.
"""

from __future__ import annotations

import torch

from unipo.objective.links import capped_exp
from unipo.objective.protocols import Params
from unipo.objective.registry import Needs, Param, PresetSpec, register
from unipo.objective.sides import Side


@register("pair_weighting", "none", formula="1", neutral=True)
def no_pair_weighting(chosen: Side, rejected: Side, params: Params) -> None:
    """Every pair counts once."""
    return None


def wpo_sequence_weight(side: Side) -> torch.Tensor:
    """exp((1/|y|) Σ_t [log π_θ(y_t) − log Σ_v π_θ(v)²]), detached: the length-normalised probability of the
    response under the policy, each token's probability divided by Σ_v π_θ(v)² (the expected probability of a
    token sampled from π_θ at that position), so that responses sampled from the policy itself get weight ≈ 1."""
    aligned = torch.where(side.mask, side.logps.detach() - side.log_sum_sq_probs.detach(),
                          torch.zeros((), dtype=side.logps.dtype, device=side.logps.device))
    return capped_exp(aligned.sum(-1) / side.lengths)


@register("pair_weighting", "wpo", params={
    "wpo_clamp": Param(False, "clamp the pair's weight w(y_w)·w(y_l) at 1, as the authors' released code does "
                              "(wzhouad/WPO scripts/run_wpo.py); TRL does not", kind="bool")},
          formula="ℓ ← w(y_w)·w(y_l)·ℓ,  w(y) = exp(mean_t [log π_θ(y_t) − log Σ_v π_θ(v)²])  [min(·, 1): wpo_clamp]",
          source="WPO (Zhou et al., EMNLP 2024, arXiv 2406.11827), weights with sampled alignment, as TRL's "
                 "DPOTrainer use_weighting computes them (trl/trainer/dpo_trainer.py, TRL 1.16) and the authors' "
                 "released code (wzhouad/WPO scripts/run_wpo.py, which also clamps at 1)",
          needs=Needs(inputs=("log_sum_sq_probs",)),
          preset=PresetSpec("wpo", "−w(y_w)·w(y_l)·log σ(βΔ),  w(y) = exp(mean_t [log π_θ(y_t) − log Σ_v π_θ(v)²]), "
                                   "no gradient through w",
                            "Zhou et al., EMNLP 2024 (WPO, arXiv 2406.11827); formula read from TRL's code and the "
                            "authors' released code (wzhouad/WPO)",
                            "the weight-aligned form of TRL and of the authors' code (Σ_v π_θ(v)² from the chunked "
                            "LM head); the authors' code also clamps the pair weight at 1 (wpo_clamp: true); "
                            "compose with any pair loss: {preset: wpo, pair_loss: ipo}"))
def wpo_weighting(chosen: Side, rejected: Side, params: Params) -> torch.Tensor:
    """WPO: reweight each off-policy pair by how likely the CURRENT policy is to produce both responses, so that
    training on off-policy data resembles on-policy training. The product of the two sides' weights multiplies
    the pair loss; the weights are constants of the step (no gradient). ``wpo_clamp`` caps the product at 1 as the
    released code does (``torch.clamp(torch.exp(chosen_probs + rejected_probs), max=1)``)."""
    weight = wpo_sequence_weight(chosen) * wpo_sequence_weight(rejected)
    return weight.clamp(max=1.0) if params["wpo_clamp"] else weight
