"""Sequential KL terms subtracted inside the sigmoid (part 6 of the unifying view).

Each function returns ``(D, metrics)``: D a ``[batch]`` tensor (or None), and the pair logit becomes
β(h_w − h_l − D) − margins. The per-position KL inputs (``Side.kl``) are computed by the model layer over
the whole vocabulary, in the direction the part declares (``kl_direction``), and aggregated here with the
objective's aggregation.
"""

from __future__ import annotations

import torch

from unipo.objective.protocols import Aggregation, Metrics, Params
from unipo.objective.registry import Needs, Param, register
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
    1.0, "η: weight of the weighted KL term (1 in the paper's Eq. 12; the authors' released code uses "
         "alpha = 0.5 when its KL term is on, and leaves it off by default: the tisdpo_nokl preset)", lo=0)},
          formula="D = η·(Σ_t w_t KL(π_θ‖π_ref)_t (y_w) − Σ_t w_t KL(π_θ‖π_ref)_t (y_l))",
          source="TIS-DPO (Liu et al., ICLR 2025) Eq. 12",
          needs=Needs(inputs=("kl",), kl_direction="policy||ref", reference=True, live_reference=True))
def tisdpo_kl(chosen: Side, rejected: Side, agg: Aggregation, params: Params) -> tuple[torch.Tensor, Metrics]:
    """TIS-DPO's weighted sequential KL term (policy ‖ reference), weighted by the token weights. Note the
    sign: unlike TDPO, the chosen side's KL is subtracted."""
    k_w = agg(_weighted(chosen, chosen.weights), chosen.mask)
    k_l = agg(_weighted(rejected, rejected.weights), rejected.mask)
    return float(params["kl_eta"]) * (k_w - k_l), _kl_metrics(k_w, k_l)
