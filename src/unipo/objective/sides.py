"""The objective's typed inputs: everything known about the two responses of each pair.

:class:`Side` holds one side's per-token tensors, :class:`ObjectiveInputs` the pair of them (what
:meth:`unipo.objective.Objective.loss` takes), and :class:`PairTerms` what a pair loss receives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch

from unipo.errors import UnipoError

SIDE_NAMES = ("chosen", "rejected")
#: keyword of each optional per-token input in :func:`unipo.compute_loss`, by :class:`Side` field
KEYWORDS = {
    "ref_logps": "ref_{}_logps",
    "weights": "{}_weights",
    "kl": "{}_kl",
    "kl_weights": "{}_kl_weights",
    "diff_mask": "{}_diff_mask",
    "prior_offsets": "{}_prior_offsets",
    "log_sum_sq_probs": "{}_log_sum_sq_probs",
    "eps_plus_logps": "{}_eps_plus_logps",
    "eps_minus_logps": "{}_eps_minus_logps",
    "score": "{}_score",
}
#: the optional inputs that hold one value per response (``[B]``) instead of one per token (``[B, T]``)
PER_RESPONSE = frozenset({"score"})


@dataclass(frozen=True)
class Side:
    """Per-token tensors ``[B, T]`` (B pairs, T tokens) for the chosen or the rejected responses.

    ``logps`` are the policy's log-probabilities a_t of the response tokens (with gradient), ``mask`` is True
    on response tokens. The optional fields are read only by the parts that declare them in their
    :class:`~unipo.objective.registry.Needs` (their meaning: :data:`unipo.objective.registry.SIDE_INPUTS`).
    """

    name: str  # "chosen" or "rejected"
    logps: torch.Tensor
    mask: torch.Tensor
    ref_logps: torch.Tensor | None = None
    weights: torch.Tensor | None = None  # token weights ω_t (TIS-DPO weights, SparsePO token masks m^u)
    kl: torch.Tensor | None = None  # per-position KL (direction as the KL part declares)
    kl_weights: torch.Tensor | None = None  # weights on the KL term (SparsePO m^d)
    diff_mask: torch.Tensor | None = None  # BMC: 1 on tokens that differ from the other response
    prior_offsets: torch.Tensor | None = None  # learned prior: per-token offset added to the reference
    log_sum_sq_probs: torch.Tensor | None = None  # WPO: log Σ_v π_θ(v)² per position (no gradient)
    eps_plus_logps: torch.Tensor | None = None  # ε-DPO: log-probs under log softmax((1 + ε) z_θ − ε z_ref)
    eps_minus_logps: torch.Tensor | None = None  # ε-DPO: log-probs under log softmax((1 − ε) z_θ + ε z_ref)
    score: torch.Tensor | None = None  # [B], one per response: its score from the data (Uni-DPO's quality weight)
    #: the OTHER response's mask [B, T'] (set by the objective, not an input): SamPO's sampler and LD-DPO's
    #: shared length read its lengths (:attr:`other_lengths`)
    partner_mask: torch.Tensor | None = None
    #: each pair's identity ``[B]`` (long; set by the objective from :attr:`ObjectiveInputs.pair_ids`, not an input):
    #: SamPO's draw is keyed by it
    pair_ids: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        """|y| = Σ_t M_t, as a float tensor ``[B]``."""
        return self.mask.sum(-1).to(self.logps.dtype)

    @property
    def other_lengths(self) -> torch.Tensor:
        """|y| of the OTHER response of the pair ``[B]`` (from :attr:`partner_mask`; this side's own lengths
        when the objective has not set a partner)."""
        return self.lengths if self.partner_mask is None else self.partner_mask.sum(-1).to(self.logps.dtype)

    def optional(self) -> dict[str, torch.Tensor | None]:
        """The optional inputs by field name (per token ``[B, T]``, or per response ``[B]``: :data:`PER_RESPONSE`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in KEYWORDS}


@dataclass(frozen=True)
class ObjectiveInputs:
    """The objective's inputs for one batch: one :class:`Side` per response, and optionally a weight per pair
    (``[B]``, ≥ 0): the batch loss is then Σ w_i ℓ_i / Σ w_i instead of the mean.

    Several rejected responses per pair (listwise, :mod:`unipo.objective.listwise`): ``rejected`` holds one
    row per rejected response (``[N, T]``, each pair's rows contiguous, in pair order) and ``rejected_pair``
    (long ``[N]``) the pair of each row; None means one rejected row per pair, row i for pair i.

    ``pair_ids`` (long ``[B]``): each pair's identity, its row in the dataset (``unipo train`` supplies it), read by
    parts that draw at random per pair (SamPO); None: the pair's position in the batch."""

    chosen: Side
    rejected: Side
    pair_weights: torch.Tensor | None = None
    rejected_pair: torch.Tensor | None = None
    pair_ids: torch.Tensor | None = None

    @classmethod
    def from_tensors(cls, *, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                     chosen_mask: torch.Tensor, rejected_mask: torch.Tensor,
                     pair_weights: torch.Tensor | None = None, rejected_pair: torch.Tensor | None = None,
                     pair_ids: torch.Tensor | None = None, **optional: torch.Tensor | None) -> ObjectiveInputs:
        """From the keyword form of :func:`unipo.compute_loss` (``ref_chosen_logps``, ``chosen_weights``, …)."""
        allowed = {p.format(n) for p in KEYWORDS.values() for n in SIDE_NAMES}
        unknown = set(optional) - allowed
        if unknown:
            raise UnipoError(f"unknown inputs {sorted(unknown)}; allowed: {sorted(allowed)}")
        sides = {}
        for name, logps, mask in (("chosen", policy_chosen_logps, chosen_mask),
                                  ("rejected", policy_rejected_logps, rejected_mask)):
            extra = {attr: optional.get(pattern.format(name)) for attr, pattern in KEYWORDS.items()}
            sides[name] = Side(name, logps, mask, **extra)
        return cls(sides["chosen"], sides["rejected"], pair_weights, rejected_pair, pair_ids)

    def with_inputs(self, per_side: Mapping[str, Mapping[str, torch.Tensor]]) -> ObjectiveInputs:
        """A copy with more optional inputs: ``{"chosen": {"weights": ...}, "rejected": {...}}``."""
        return replace(self, chosen=replace(self.chosen, **per_side.get("chosen", {})),
                       rejected=replace(self.rejected, **per_side.get("rejected", {})))


@dataclass(frozen=True)
class PairTerms:
    """What a pair loss receives, each ``[batch]`` (``[comparisons]`` with ``groups``): the combined logit
    z = β(h_w − h_l − D) − γ − α_len(|y_w| − |y_l|) and, for the losses that treat the sides separately, the
    per-side scores."""

    logits: torch.Tensor  # z
    beta: float
    chosen: torch.Tensor  # h_w: linked, transformed sequence score of the chosen side
    rejected: torch.Tensor  # h_l
    policy_chosen: torch.Tensor  # aggregated policy log-probs only (AOT)
    policy_rejected: torch.Tensor
    prior_chosen: torch.Tensor  # aggregated prior log-probs only (AOT); zeros for a constant prior
    prior_rejected: torch.Tensor
    #: several rejected responses per pair: every tensor above is then [N] (one entry per comparison of a
    #: chosen with one of its rejected responses) and ``groups`` [N] names each one's pair (of ``num_pairs``);
    #: only pair losses registered ``listwise`` receive it (:mod:`unipo.objective.listwise`)
    groups: torch.Tensor | None = None
    num_pairs: int | None = None
    #: the two checked sides (per-token inputs zero on padding), for a pair loss that reads more than the scores
    #: (ε-DPO's perturbed log-probs); None with several rejected responses per pair
    sides: tuple[Side, Side] | None = None
