"""Per-pair factors on the pair loss, computed from the pair itself (a part kind after the pair loss).

Unlike data weights (``pair_weights``, a weighted MEAN over the batch), a pair weighting multiplies each pair's
loss and the batch loss stays a plain mean, as in WPO and TRL's ``use_weighting``. A factor carries gradient only
where its part computes it with gradient: WPO's never does, Uni-DPO's performance weight does (as its released
code). A weighting may also return a term added to each pair's loss after the factor (Uni-DPO's calibrated NLL).
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


_UNI_SOURCE = ("Uni-DPO (Peng et al., ICLR 2026, arXiv 2506.10054; first titled Omni-DPO): the loss "
               "−E[w_qual·w_perf·log σ(Δ_r)] + λ·L_c-NLL (its overall objective; equation numbers not checked), "
               "read with the released code pspdada/Uni-DPO Textual/train/scripts/uni_dpo_trainer.py::uni_dpo_loss "
               "(lines 1021–1070) and compute_w_qual (978–980); defaults from "
               "Textual/train/configs/Llama-3-8B-Base-SFT.yaml")


def _response_logp(side: Side, length_norm: bool, of_reference: bool = False) -> torch.Tensor:
    """log π(y) of each response ``[B]``: the sum over its tokens, or their mean (``length_norm``: the released
    code's ``dpo_length_norm``); the reference's when ``of_reference`` (no gradient)."""
    values = side.ref_logps if of_reference else side.logps
    total = values.sum(-1)  # inputs are zero on padding
    return total / side.lengths if length_norm else total


@register("pair_weighting", "uni_dpo", params={
    "uni_eta": Param(0.7, "η of the quality weight w_qual = σ(η(s_w − s_l)) on the data's scores (the released "
                          "configs: 0.7; the config class's default 0.1)", lo=0),
    "uni_tau_ref": Param(0.8, "τ_ref of the performance weight w_perf = (1 − σ(β(log π(y_w) − log π(y_l)) − τ_ref))^γ "
                              "(the released configs: 0.8, 1.0 for Llama-3-8B-Instruct, 2.0 for math)"),
    "uni_gamma": Param(3.0, "γ, the focal exponent of the performance weight (the released configs: 3.0)", lo=0),
    "uni_nll_lambda": Param(0.001, "λ of the calibrated NLL −λ·1[log π_ref(y_w) > log π(y_w)]·1[s_w ≥ τ_good]·"
                                   "log π(y_w) (the released textual configs: 0.001; math 0.2; 0: off)", lo=0),
    "uni_tau_good": Param(3.2, "τ_good: the calibrated NLL acts only on chosen responses scored at least this "
                               "(in the data's score units; the released textual configs: 3.2, math 8.0)"),
    "uni_length_norm": Param(True, "the performance weight and the calibrated NLL read mean token log-probs (the "
                                   "released configs' dpo_length_norm: true); false: sums", kind="bool"),
    "uni_perf_grad": Param(True, "the performance weight carries gradient, as in the released code (a focal loss); "
                                 "false: a constant of the step, like WPO's weight", kind="bool")},
          formula="ℓ ← σ(η(s_w − s_l))·(1 − σ(β(log π(y_w) − log π(y_l)) − τ_ref))^γ·ℓ "
                  "− λ·1[log π_ref(y_w) > log π(y_w)]·1[s_w ≥ τ_good]·log π(y_w)  (log π: mean token log-probs)",
          source=_UNI_SOURCE, needs=Needs(inputs=("ref_logps", "score"), reference=True),
          preset=PresetSpec("uni_dpo", "−σ(η(s_w − s_l))·(1 − σ(β(ā_w − ā_l) − τ_ref))^γ·log σ(β(ρ̄(y_w) − ρ̄(y_l))) "
                                       "− λ·1[r̄_w > ā_w]·1[s_w ≥ τ_good]·ā_w",
                            "Peng et al., ICLR 2026 (Uni-DPO, arXiv 2506.10054), formula and defaults read from the "
                            "authors' released code (pspdada/Uni-DPO, uni_dpo_trainer.py::uni_dpo_loss; "
                            "configs/Llama-3-8B-Base-SFT.yaml)",
                            "needs a score per response from the data (score_columns, e.g. UltraFeedback's "
                            "score_chosen / score_rejected); β 2.0 on length-normalised log-ratios as the released "
                            "configs (dpo_length_norm: true); the performance weight carries gradient as in the "
                            "released code (uni_perf_grad: false detaches it)",
                            config={"aggregation": "mean", "beta": 2.0}))
def uni_dpo_weighting(chosen: Side, rejected: Side, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """Uni-DPO's dual-perspective weight and its calibrated NLL (arXiv 2506.10054, its overall objective; released code
    ``uni_dpo_loss``): the quality weight w_qual = σ(η(s_w − s_l)) from the data's scores, the performance weight
    w_perf = (1 − σ(β(log π(y_w) − log π(y_l)) − τ_ref))^γ from the policy alone (a focal factor that fades on
    pairs the policy already separates; with gradient, as the released code), and the term
    −λ·c·log π(y_w), c = 1 where the policy has fallen below the reference on a chosen response scored ≥ τ_good.
    Returns (w_qual·w_perf, the term) ``[B]`` each."""
    norm, beta = bool(params["uni_length_norm"]), float(params["beta"])
    pol_w, pol_l = _response_logp(chosen, norm), _response_logp(rejected, norm)
    w_qual = torch.sigmoid(float(params["uni_eta"]) * (chosen.score - rejected.score))
    margin = pol_w - pol_l if params["uni_perf_grad"] else (pol_w - pol_l).detach()
    # 1 − σ(β·margin − τ_ref) written as σ(τ_ref − β·margin)
    w_perf = torch.sigmoid(float(params["uni_tau_ref"]) - beta * margin) ** float(params["uni_gamma"])
    below = _response_logp(chosen, norm, of_reference=True) > pol_w.detach()
    calibrated = below & (chosen.score >= float(params["uni_tau_good"]))
    term = -float(params["uni_nll_lambda"]) * calibrated.to(pol_w.dtype) * pol_w
    return w_qual * w_perf, term
