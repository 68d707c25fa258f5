"""Sequential KL terms subtracted inside the sigmoid (part 6 of the unifying view).

Each function returns ``(D, metrics)``: D a ``[batch]`` tensor (or None), and the pair logit becomes
β(h_w − h_l − D) − margins. The per-position KL inputs (``Side.kl``) are computed by the model layer over
the whole vocabulary, in the direction the part declares (``kl_direction``), and aggregated here with the
objective's aggregation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from unipo.objective.moving import MovingStats
from unipo.objective.protocols import Aggregation, Metrics, Params
from unipo.objective.registry import Needs, Param, PresetSpec, StatefulPart, register
from unipo.objective.sides import Side


def _weighted(side: Side, weights: torch.Tensor | None) -> torch.Tensor:
    return side.kl if weights is None else side.kl * weights


def _kl_metrics(k_w: torch.Tensor, k_l: torch.Tensor) -> Metrics:
    return {"kl/chosen": k_w.detach().mean(), "kl/rejected": k_l.detach().mean()}


@register("kl", "none", formula="D = 0", neutral=True)
def no_kl(chosen: Side, rejected: Side, agg: Aggregation, params: Params) -> tuple[None, Metrics]:
    """No KL term."""
    return None, {}


@register("kl", "tdpo", params={
    "kl_alpha": Param(1.0, "α: weight of the KL difference (TDPO2: 0.5)", lo=0),
    "kl_stopgrad_chosen": Param(False, "stop the gradient through the chosen side's KL (TDPO2)", kind="bool"),
    "kl_masks": Param(False, "weight the per-token KL by SparsePO's masks m^d", kind="bool")},
          formula="D = α·(K(y_l) − [sg]K(y_w)),  K(y) = Σ_t [m^d_t] KL(π_ref‖π_θ)_t",
          source="TDPO (Zeng et al., ICML 2024) Eq. 17 (TDPO1), Eq. 19 (TDPO2); "
                 "SparsePO (Christopoulou et al. 2024) Eq. 6 with masks m^d",
          needs=Needs(inputs=("kl",), kl_direction="ref||policy", reference=True, live_reference=True))
def tdpo_kl(chosen: Side, rejected: Side, agg: Aggregation, params: Params) -> tuple[torch.Tensor, Metrics]:
    """TDPO's sequential KL difference. TDPO1: α = 1, no stop-gradient; TDPO2: α = 0.5 with a
    stop-gradient on the CHOSEN side. With ``kl_masks`` the per-token KL is weighted by SparsePO's KL
    masks m^d (``kl_weights``; the token masks m^u when only one common mask is given)."""
    def k(side: Side) -> torch.Tensor:
        w = (side.kl_weights if side.kl_weights is not None else side.weights) if params["kl_masks"] else None
        return agg(_weighted(side, w), side.mask)

    k_w, k_l = k(chosen), k(rejected)
    metrics = _kl_metrics(k_w, k_l)
    if params["kl_stopgrad_chosen"]:
        k_w = k_w.detach()
    return float(params["kl_alpha"]) * (k_l - k_w), metrics


@register("kl", "tisdpo", params={"kl_eta": Param(
    1.0, "η: weight of the weighted KL term (1 in the paper's Eq. 16; the authors' released code uses "
         "alpha = 0.5 when its KL term is on, and leaves it off by default: the tisdpo_nokl preset)", lo=0)},
          formula="D = η·(Σ_t w_t KL(π_θ‖π_ref)_t (y_w) − Σ_t w_t KL(π_θ‖π_ref)_t (y_l))",
          source="TIS-DPO (Liu et al., ICLR 2025 version) Eq. 16",
          needs=Needs(inputs=("kl",), kl_direction="policy||ref", reference=True, live_reference=True))
def tisdpo_kl(chosen: Side, rejected: Side, agg: Aggregation, params: Params) -> tuple[torch.Tensor, Metrics]:
    """TIS-DPO's weighted sequential KL term (policy ‖ reference), weighted by the token weights. Note the
    sign: unlike TDPO, the chosen side's KL is subtracted."""
    k_w = agg(_weighted(chosen, chosen.weights), chosen.mask)
    k_l = agg(_weighted(rejected, rejected.weights), rejected.mask)
    return float(params["kl_eta"]) * (k_w - k_l), _kl_metrics(k_w, k_l)


@register("kl", "alpha_dpo", params={
    "alpha_dpo_alpha": Param(0.2, "α: weight of the adaptive margin (0 = SimPO); the authors' configs use 0.2 "
                                  "(Llama-3-Instruct), 0.05 (Mistral-Instruct)", lo=0),
    "alpha_dpo_momentum": Param(0.9, "m: momentum of the moving mean and std of M", lo=0, hi=1, hi_open=True)},
          formula="D = α·sg((M − μ)/σ),  M = (agg ρ(y_w) − agg ρ(y_l)),  μ, σ moving mean / std of M",
          source="α-DPO (Wu et al. 2024, arXiv 2410.10148); released code junkangwu/alpha-DPO "
                 "scripts/dpo_trainer.py (loss_type 'alpha-dpo', update_and_sync_ref_mean_std)",
          needs=Needs(inputs=("ref_logps",), reference=True),
          preset=PresetSpec("alpha_dpo", "−log σ(β(ā(y_w) − ā(y_l)) − γ − βα·sg((M − μ)/σ)),  M = ρ̄(y_w) − ρ̄(y_l)",
                            "Wu et al. 2024 (α-DPO, arXiv 2410.10148); read: the released code",
                            "SimPO's score with an adaptive, stop-gradient margin from the reference: the z-score of "
                            "the length-normalised DPO margin against its moving mean/std (m = 0.9, from 0, updated "
                            "before use, in training only, per process; the released code gathers all processes "
                            "and also updates in evaluation). β 2.5, γ = 0.6β, α 0.2: the authors' Llama-3-Instruct "
                            "config",
                            {"prior": "none", "aggregation": "mean", "beta": 2.5, "gamma": 1.5}))
class AlphaDPOMargin(StatefulPart):
    """α-DPO's adaptive reward margin, subtracted inside the sigmoid like a KL term (and multiplied by β there):
    the z-score of each pair's reference-relative margin M against its moving mean and standard deviation,
    stop-gradient. Reads the reference log-probs even when the score itself has no reference (prior none).
    A zero running std (a first batch of one pair) gives no margin rather than a division by zero."""

    def __init__(self, params: Mapping[str, Any]):
        super().__init__(params)
        self.stats = MovingStats(float(params["alpha_dpo_momentum"]))

    def __call__(self, chosen: Side, rejected: Side, agg: Aggregation, params: Params
                 ) -> tuple[torch.Tensor, Metrics]:
        def ratio(side: Side) -> torch.Tensor:
            return agg(side.logps.detach() - side.ref_logps, side.mask)

        margin = ratio(chosen) - ratio(rejected)
        if self.training:
            self.stats.update(margin)
        std = self.stats.std
        z = (margin - self.stats.mean) / std if std > 0 else torch.zeros_like(margin)
        self.metrics = {"alpha_dpo/margin_mean": torch.tensor(self.stats.mean),
                        "alpha_dpo/margin_std": torch.tensor(std)}
        return float(params["alpha_dpo_alpha"]) * z, {"alpha_dpo/batch_margin": margin.mean()}

    def state_dict(self) -> dict[str, float]:
        return self.stats.state_dict()

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.stats.load_state_dict(state)
