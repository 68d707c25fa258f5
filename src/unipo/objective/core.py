"""The objective: per-token tensors in, per-example losses and metrics out.

    z = β·(h_w − h_l − D) − γ − α_len·(|y_w| − |y_l|),   loss = ℓ(z, …) + auxiliary terms

with, for each side, s = agg_t(ω_t·a_t − ω'_t·log ζ_t) (prior, weights, aggregation), h = f′(s) (link)
then the one-sided transforms, D the KL term and ℓ the pair loss: the general loss of Tutnov et al. 2025
(arXiv 2501.01544, Eq. 1) made concrete. Everything is computed in at least float32 whatever the input dtype, with
no Python loop over the batch or the tokens. This module imports no transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from unipo.errors import UnipoError
from unipo.objective.config import ObjectiveConfig, resolve
from unipo.objective.pair_losses import PairTerms
from unipo.objective.registry import KINDS
from unipo.objective.sides import Side

#: optional per-token inputs, by keyword, and the Side field each fills
SIDE_INPUTS = {
    "ref_{}_logps": "ref_logps",
    "{}_weights": "weights",
    "{}_kl": "kl",
    "{}_kl_weights": "kl_weights",
    "{}_diff_mask": "diff_mask",
    "{}_prior_offsets": "prior_offsets",
}


@dataclass
class LossOutput:
    """``losses`` [batch] with gradient; ``metrics`` detached scalars; per-example rewards for evaluation."""

    losses: torch.Tensor
    metrics: dict[str, torch.Tensor]
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    logits: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        return self.losses.mean()


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bfloat16 / float16 inputs are computed in float32; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where, not multiply: padding may hold -inf or NaN
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


class Objective:
    """A resolved objective, callable on per-token tensors. Build it once; call it every step."""

    def __init__(self, variant: str | Mapping[str, Any] | ObjectiveConfig = "dpo", **params: Any):
        self.config = variant if isinstance(variant, ObjectiveConfig) else resolve(variant, params)
        self.parts = {kind: self.config.part(kind) for kind in KINDS}
        self.params = self.config.params

    @property
    def needs_reference(self) -> bool:
        return self.config.needs_reference

    def required_inputs(self) -> set[str]:
        """The Side fields that the selected parts read (besides logps and mask)."""
        return {name for part in self.parts.values() for name in part.inputs}

    def _side(self, name: str, logps: torch.Tensor, mask: torch.Tensor, extra: dict) -> Side:
        if logps.dim() != 2 or mask.shape != logps.shape:
            raise UnipoError(f"{name}: logps and mask must both be [batch, tokens]; got {tuple(logps.shape)} "
                             f"and {tuple(mask.shape)}")
        mask = mask.bool()
        lengths = mask.sum(-1)
        if bool((lengths == 0).any()):
            bad = torch.nonzero(lengths == 0).flatten().tolist()
            raise UnipoError(f"{name} response has zero tokens at batch index {bad}: every response needs at "
                             f"least one token (check truncation / max_length)")
        # padding may hold -inf or NaN: zero every input there ONCE, with `where`, so that neither values
        # nor gradients downstream can pick it up (0 * NaN would poison the gradient)
        fields = {}
        for pattern, attr in SIDE_INPUTS.items():
            value = extra.get(pattern.format(name))
            if value is not None:
                if value.shape != logps.shape:
                    raise UnipoError(f"{pattern.format(name)} has shape {tuple(value.shape)}, expected "
                                     f"{tuple(logps.shape)} like {name} logps")
                value = value if value.dtype == torch.bool else _masked(_upcast(value), mask)
            fields[attr] = value
        side = Side(name, _masked(_upcast(logps), mask), mask, **fields)
        for part in self.parts.values():
            for attr in part.inputs:
                if getattr(side, attr) is None:
                    key = next(p for p, a in SIDE_INPUTS.items() if a == attr).format(name)
                    raise UnipoError(f"{part.kind}={part.name} needs the input {key!r}, which was not given")
        return side

    def _score(self, side: Side) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (s, h, aggregated policy term, aggregated prior term) for one side."""
        agg = self.parts["aggregation"].fn
        prior = self.parts["prior"].fn(side, self.params)
        pw, zw = self.parts["weights"].fn(side, self.params)
        a = side.logps if pw is None else side.logps * pw
        pol = agg(a, side.mask)  # every input is already zero on padding (see _side)
        if prior is None:
            pri = torch.zeros_like(pol)
        else:
            z = prior if zw is None else prior * zw
            pri = agg(z, side.mask)
        s = pol - pri
        h = self.parts["link"].fn(s, self.params)
        return s, h, pol, pri

    def __call__(self, *, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, **inputs: torch.Tensor | None
                 ) -> LossOutput:
        allowed = {p.format(n) for p in SIDE_INPUTS for n in ("chosen", "rejected")}
        unknown = set(inputs) - allowed
        if unknown:
            raise UnipoError(f"unknown inputs {sorted(unknown)}; allowed: {sorted(allowed)}")
        chosen = self._side("chosen", policy_chosen_logps, chosen_mask, inputs)
        rejected = self._side("rejected", policy_rejected_logps, rejected_mask, inputs)
        p = self.params
        beta = float(p["beta"])
        metrics: dict[str, torch.Tensor] = {}

        s_w, h_w, pol_w, pri_w = self._score(chosen)
        s_l, h_l, pol_l, pri_l = self._score(rejected)
        h_w = self.parts["chosen_transform"].fn(h_w, s_w, p)
        h_l = self.parts["rejected_transform"].fn(h_l, s_l, p)
        kl = self.parts["kl"].fn(chosen, rejected, self.parts["aggregation"].fn, p, metrics)
        inner = h_w - h_l if kl is None else h_w - h_l - kl
        gamma = float(p["gamma"]) + (float(p["gamma_beta_ratio"]) * beta if p["gamma_beta_ratio"] else 0.0)
        logits = beta * inner - gamma
        if p["length_alpha"]:
            logits = logits - float(p["length_alpha"]) * (chosen.lengths - rejected.lengths)
        terms = PairTerms(logits, beta, h_w, h_l, pol_w, pol_l, pri_w, pri_l)
        losses = self.parts["pair_loss"].fn(terms, p)

        if p["nll_weight"]:
            nll = -chosen.logps.sum(-1) / chosen.lengths
            losses = losses + float(p["nll_weight"]) * nll
            metrics["nll"] = nll.detach().mean()
        if p["l1_weight"]:
            l1 = sum(m.abs().sum(-1) / side.lengths
                     for side in (chosen, rejected) for m in {id(x): x for x in (side.weights, side.kl_weights)
                                                              if x is not None}.values())
            losses = losses + float(p["l1_weight"]) * l1
        if p["prior_reg_weight"] and chosen.prior_offsets is not None:
            reg = sum((side.prior_offsets ** 2).sum(-1) / side.lengths
                      for side in (chosen, rejected))
            losses = losses + float(p["prior_reg_weight"]) * reg
            metrics["prior/offset_rms"] = reg.detach().div(2).sqrt().mean()

        rw, rl = (beta * h_w).detach(), (beta * h_l).detach()
        metrics.update({
            "rewards/chosen": rw.mean(),
            "rewards/rejected": rl.mean(),
            "rewards/margins": (rw - rl).mean(),
            "rewards/accuracies": (rw > rl).float().mean(),
            "logps/chosen": chosen.logps.sum(-1).detach().mean(),
            "logps/rejected": rejected.logps.sum(-1).detach().mean(),
            "logits": logits.detach().mean(),
        })
        for side in (chosen, rejected):
            w = side.weights
            if w is None and self.config.parts["weights"] == "bmc":
                w = self.parts["weights"].fn(side, p)[0]
            if w is not None:
                vals = w.detach()[side.mask]
                metrics[f"weights/{side.name}_mean"] = vals.mean()
                metrics[f"weights/{side.name}_std"] = vals.std() if vals.numel() > 1 else vals.new_zeros(())
        return LossOutput(losses, metrics, rw, rl, logits.detach())


def compute_loss(variant: str | Mapping[str, Any], *, policy_chosen_logps: torch.Tensor,
                 policy_rejected_logps: torch.Tensor, chosen_mask: torch.Tensor, rejected_mask: torch.Tensor,
                 ref_chosen_logps: torch.Tensor | None = None, ref_rejected_logps: torch.Tensor | None = None,
                 chosen_weights: torch.Tensor | None = None, rejected_weights: torch.Tensor | None = None,
                 chosen_kl: torch.Tensor | None = None, rejected_kl: torch.Tensor | None = None,
                 chosen_kl_weights: torch.Tensor | None = None, rejected_kl_weights: torch.Tensor | None = None,
                 chosen_diff_mask: torch.Tensor | None = None, rejected_diff_mask: torch.Tensor | None = None,
                 chosen_prior_offsets: torch.Tensor | None = None,
                 rejected_prior_offsets: torch.Tensor | None = None, **params: Any) -> LossOutput:
    """Compute the unified objective for one batch.

    ``variant`` is a preset name (see :func:`variants`) or a mapping ``{"preset": ..., part/param: ...}``;
    ``params`` override parameters (``beta=0.2``) or parts (``link="js"``). Every tensor is
    ``[batch, tokens]``, per response token: policy / reference log-probabilities, masks (1 on response
    tokens), token weights (TIS-DPO weights, SparsePO m^u), per-position KL (KL(π_ref‖π_θ) for TDPO /
    SparsePO, KL(π_θ‖π_ref) for TIS-DPO), SparsePO KL masks m^d, BMC diff masks and learned-prior
    offsets. Returns a :class:`LossOutput` with ``.losses`` ([batch], with gradient) and ``.metrics``.
    """
    objective = Objective(variant, **params)
    return objective(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        chosen_mask=chosen_mask, rejected_mask=rejected_mask,
        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
        chosen_weights=chosen_weights, rejected_weights=rejected_weights,
        chosen_kl=chosen_kl, rejected_kl=rejected_kl,
        chosen_kl_weights=chosen_kl_weights, rejected_kl_weights=rejected_kl_weights,
        chosen_diff_mask=chosen_diff_mask, rejected_diff_mask=rejected_diff_mask,
        chosen_prior_offsets=chosen_prior_offsets, rejected_prior_offsets=rejected_prior_offsets,
    )


def variants() -> list[str]:
    """The names of every preset."""
    from unipo.objective.presets import PRESETS

    return list(PRESETS)
