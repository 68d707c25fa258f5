"""Priors ζ over response tokens (part 1 of the unifying view).

The general loss of Tutnov et al. 2025 (arXiv 2501.01544, Eq. 1) scores each response by
log π(y|x) − log ζ(y); the prior's per-token log-probabilities are returned here (or ``None`` for a
constant prior, whose constant cancels between the two sides).
"""

from __future__ import annotations

import torch

from unipo.objective.protocols import Params
from unipo.objective.registry import Needs, register
from unipo.objective.sides import Side


@register("prior", "reference", formula="log ζ(y_t) = r_t = log π_ref(y_t|x,y_<t)",
          source="Rafailov et al. 2023 (DPO), Eq. 7", needs=Needs(inputs=("ref_logps",), reference=True))
def reference_prior(side: Side, params: Params) -> torch.Tensor:
    """ζ = π_ref: the token log-ratio is ρ_t = a_t − r_t, which gives DPO and its descendants."""
    return side.ref_logps


@register("prior", "none", formula="log ζ(y_t) = const (cancels)",
          source="DPO paper's released code (reference_free); SimPO (Meng et al. 2024)")
def constant_prior(side: Side, params: Params) -> None:
    """A constant prior: the score is the policy log-probability alone (reference-free)."""
    return None


@register("prior", "learned", formula="log ζ(y_t) = r_t + g_φ(h_ref)_t",
          source="open question of Tutnov et al. 2025, Sec. 5 (learned prior)",
          needs=Needs(inputs=("ref_logps", "prior_offsets"), reference=True, live_reference=True,
                      signal="learned_prior"))
def learned_prior(side: Side, params: Params) -> torch.Tensor:
    """A prior learned jointly with the policy: the reference plus a per-token offset g_φ produced by a
    small head over the reference's hidden states (see ``unipo.models.signals.LearnedPrior``). Its size is kept
    small by the ``prior_reg_weight`` auxiliary term λ·(mean g²(y_w) + mean g²(y_l))."""
    return side.ref_logps + side.prior_offsets
