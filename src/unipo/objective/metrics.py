"""What the objective reports about one batch besides its losses: the rewards each side gets, the plain DPO
log-ratio margin, the mean token log-probs and the detached scalar metrics (under TRL's names: ``rewards/*``,
``logps/*``, ``logits``, ``logratio/*``, ``weights/*``) and a pair weighting's (``pair_weighting/*``).

:func:`summarise` and :func:`pair_weighting_metrics` are called by :meth:`unipo.objective.Objective.loss` once the
pair losses are computed; nothing here has gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unipo.objective.listwise import per_pair_max
from unipo.objective.sides import Side


@dataclass(frozen=True)
class BatchSummary:
    """The detached per-pair values and scalar metrics of one batch (the fields of
    :class:`~unipo.objective.LossOutput` other than the losses and the pair weights)."""

    metrics: dict[str, torch.Tensor]
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    logits: torch.Tensor
    log_ratio_margins: torch.Tensor | None
    mean_logps: dict[str, torch.Tensor]


def _score_weights_metrics(name: str, w: torch.Tensor | None, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    if w is None:
        return {}
    vals = w.detach()[mask]
    return {f"weights/{name}_mean": vals.mean(),
            f"weights/{name}_std": vals.std() if vals.numel() > 1 else vals.new_zeros(())}


def _log_ratio_margins(chosen: Side, rejected: Side, groups: torch.Tensor | None,
                       n_pairs: int) -> torch.Tensor | None:
    """The plain DPO log-ratio Σ_t ρ_t(y_w) − Σ_t ρ_t(y_l) (the strongest rejected response per pair), comparable
    across variants (a transformed score, e.g. MinorDPO's, is not); None without reference log-probs."""
    if chosen.ref_logps is None or rejected.ref_logps is None:
        return None
    rho_l = (rejected.logps - rejected.ref_logps).sum(-1)
    return ((chosen.logps - chosen.ref_logps).sum(-1)
            - (rho_l if groups is None else per_pair_max(rho_l, groups, n_pairs))).detach()


def pair_weighting_metrics(factor: torch.Tensor | None, added: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """A pair weighting's metrics: the mean factor on the pair losses (``pair_weighting/mean``) and the mean term it
    adds after the factor (``pair_weighting/added``, Uni-DPO's calibrated NLL), each when the part returns it."""
    out = {}
    if factor is not None:
        out["pair_weighting/mean"] = factor.detach().mean()
    if added is not None:
        out["pair_weighting/added"] = added.detach().mean()
    return out


def summarise(chosen: Side, rejected: Side, *, beta: float, h_w: torch.Tensor, h_l: torch.Tensor,
              logits: torch.Tensor, score_weights: tuple[torch.Tensor | None, torch.Tensor | None],
              groups: torch.Tensor | None, n_pairs: int) -> BatchSummary:
    """Rewards β·h per side, the batch's scalar metrics, the plain DPO margin and the mean token log-probs. With
    several rejected responses per pair (``groups``), each pair's rejected values are those of its STRONGEST
    rejected response (the largest reward and log-ratio, the smallest logit): the chosen must beat every one."""
    metrics: dict[str, torch.Tensor] = {}
    rw, rl = (beta * h_w).detach(), (beta * h_l).detach()
    if groups is not None:
        metrics["rewards/rejected_all"] = rl.mean()
        rl = per_pair_max(rl, groups, n_pairs)
    metrics.update({
        "rewards/chosen": rw.mean(), "rewards/rejected": rl.mean(), "rewards/margins": (rw - rl).mean(),
        "rewards/accuracies": (rw > rl).float().mean(),
        "logps/chosen": chosen.logps.sum(-1).detach().mean(),
        "logps/rejected": rejected.logps.sum(-1).detach().mean(), "logits": logits.detach().mean(),
        **_score_weights_metrics("chosen", score_weights[0], chosen.mask),
        **_score_weights_metrics("rejected", score_weights[1], rejected.mask),
    })
    margins = _log_ratio_margins(chosen, rejected, groups, n_pairs)
    if margins is not None:
        metrics["logratio/margins"] = margins.mean()
        metrics["logratio/accuracies"] = (margins > 0).float().mean()
    mean_logps = {f"mean_logps/{s.name}": (s.logps.sum(-1) / s.lengths).detach() for s in (chosen, rejected)}
    z = logits.detach() if groups is None else -per_pair_max(-logits.detach(), groups, n_pairs)
    return BatchSummary(metrics, rw, rl, z, margins, mean_logps)
