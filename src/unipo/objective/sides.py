"""The per-side inputs of the objective: everything known about one response of each pair."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Side:
    """Per-token tensors ``[batch, tokens]`` for the chosen or the rejected responses.

    ``logps`` are the policy's log-probabilities a_t of the response tokens (with gradient), ``mask`` is 1 on
    response tokens. The optional fields are read only by the parts that need them.
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

    @property
    def lengths(self) -> torch.Tensor:
        """|y| = Σ_t M_t, as float."""
        return self.mask.sum(-1)
