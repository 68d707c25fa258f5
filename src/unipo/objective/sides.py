"""The objective's typed inputs: everything known about the two responses of each pair.

:class:`Side` holds one side's per-token tensors, :class:`ObjectiveInputs` the pair of them (what
:meth:`unipo.objective.Objective.loss` takes), and :class:`PairTerms` what a pair loss receives. The optional fields
of :class:`Side` and :class:`ObjectiveInputs` are built from the one input table, :data:`unipo.objective.inputs.INPUTS`
(a field per input): an input is declared there, never here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, make_dataclass, replace
from typing import Any

import torch

from unipo.errors import UnipoError
from unipo.objective.inputs import KEYWORDS, PAIR_INPUTS, SIDE_NAMES, SIDE_SPECS, input_keywords

__all__ = ["KEYWORDS", "SIDE_NAMES", "ObjectiveInputs", "PairLossOut", "PairTerms", "Side"]

class _SideMethods:
    """The methods of :class:`Side` (its fields come from the input table)."""

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
        """The optional inputs by field name (per token ``[B, T]``, or per response ``[B]``: the input table's
        ``per``)."""
        return {name: getattr(self, name) for name in SIDE_SPECS}


def _optional(names) -> list[tuple[str, str, Any]]:
    return [(name, "torch.Tensor | None", field(default=None)) for name in names]


Side = make_dataclass("Side", [
    ("name", "str"),  # "chosen" or "rejected"
    ("logps", "torch.Tensor"),
    ("mask", "torch.Tensor"),
    *_optional(SIDE_SPECS),
    # the OTHER response's mask [B, T'] (set by the objective, not an input): SamPO's sampler and LD-DPO's shared
    # length read its lengths (other_lengths)
    ("partner_mask", "torch.Tensor | None", field(default=None)),
    # each pair's identity [B] (long; set by the objective from ObjectiveInputs.pair_ids, not an input): SamPO's draw
    # is keyed by it
    ("pair_ids", "torch.Tensor | None", field(default=None)),
], bases=(_SideMethods,), frozen=True, namespace={"__module__": __name__, "__doc__": """\
Per-token tensors ``[B, T]`` (B pairs, T tokens) for the chosen or the rejected responses.

    ``name`` is ``chosen`` or ``rejected``; ``logps`` are the policy's log-probabilities a_t of the response tokens
    (with gradient), ``mask`` is True on response tokens. The optional fields are the per-token (``[B, T]``) and
    per-response (``[B]``, e.g. ``score``) inputs of :data:`unipo.objective.inputs.INPUTS` (one field each, same
    name), read only by the parts that declare them in their :class:`~unipo.objective.registry.Needs`.
    ``partner_mask`` (the other response's mask, for :attr:`other_lengths`) and ``pair_ids`` (each pair's identity)
    are set by the objective, not inputs.
    """})


def _from_tensors(cls, *, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                  chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, policy_gold_logps: torch.Tensor | None = None,
                  gold_mask: torch.Tensor | None = None, **optional: torch.Tensor | None):
    """From the keyword form of :func:`unipo.compute_loss` (``ref_chosen_logps``, ``chosen_weights``, …,
    ``pair_weights``): every keyword of :func:`~unipo.objective.inputs.input_keywords`, and the gold response's
    ``policy_gold_logps`` / ``gold_mask`` (TPO; both or neither)."""
    if (policy_gold_logps is None) != (gold_mask is None):
        raise UnipoError("give policy_gold_logps and gold_mask together (the gold response's log-probs and mask)")
    keywords = input_keywords()
    unknown = set(optional) - set(keywords)
    if unknown:
        raise UnipoError(f"unknown inputs {sorted(unknown)}; allowed: {sorted(keywords)}")
    per_side: dict[str, dict[str, Any]] = {"chosen": {}, "rejected": {}}
    per_pair: dict[str, Any] = {}
    for key, value in optional.items():
        name, side = keywords[key]
        (per_pair if side is None else per_side[side])[name] = value
    return cls(Side("chosen", policy_chosen_logps, chosen_mask, **per_side["chosen"]),
               Side("rejected", policy_rejected_logps, rejected_mask, **per_side["rejected"]), **per_pair,
               gold=None if gold_mask is None else Side("gold", policy_gold_logps, gold_mask))


def _with_inputs(self, per_side: Mapping[str, Mapping[str, torch.Tensor]]):
    """A copy with more optional inputs: ``{"chosen": {"weights": ...}, "rejected": {...}}``."""
    return replace(self, chosen=replace(self.chosen, **per_side.get("chosen", {})),
                   rejected=replace(self.rejected, **per_side.get("rejected", {})))


ObjectiveInputs = make_dataclass("ObjectiveInputs", [
    ("chosen", "Side"),
    ("rejected", "Side"),
    *_optional(PAIR_INPUTS),
    # a third, gold response per pair (TPO): its policy log-probs and mask [B, T''] (name "gold"); read only by the
    # gold NLL term (gold_nll_weight), None for every other objective
    ("gold", "Side | None", field(default=None)),
], frozen=True, namespace={
    "__module__": __name__, "from_tensors": classmethod(_from_tensors), "with_inputs": _with_inputs,
    "__doc__": """\
The objective's inputs for one batch: one :class:`Side` per response, and the per-pair inputs of
    :data:`unipo.objective.inputs.INPUTS` (one field each): ``pair_weights`` (``[B]``, ≥ 0: the batch loss is then
    Σ w_i ℓ_i / Σ w_i instead of the mean), ``rejected_pair`` and ``pair_ids``.

    Several rejected responses per pair (listwise, :mod:`unipo.objective.listwise`): ``rejected`` holds one
    row per rejected response (``[N, T]``, each pair's rows contiguous, in pair order) and ``rejected_pair``
    (long ``[N]``) the pair of each row; None means one rejected row per pair, row i for pair i.

    ``pair_ids`` (long ``[B]``): each pair's identity, its row in the dataset (``unipo train`` supplies it), read by
    parts that draw at random per pair (SamPO); None: the pair's position in the batch.

    ``gold`` (a :class:`Side` named ``gold``, ``[B, T'']``): the policy's log-probs of a third, gold response per
    pair (TPO, Saeidi et al. 2024, arXiv 2405.16681), read only by the objective's gold NLL term."""})


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


@dataclass(frozen=True)
class PairLossOut:
    """What a pair loss returns: ``losses`` ``[B]`` (one per pair, with gradient) and, for a pair loss that also
    selects pairs (β-DPO's filtering), ``selected`` ``[B]`` in {0, 1}: the objective then weights each pair's loss
    by it (:attr:`unipo.objective.LossOutput.pair_weights`); None keeps every pair."""

    losses: torch.Tensor
    selected: torch.Tensor | None = None
