"""The objective: per-token tensors in, per-example losses and metrics out.

    z = β·(h_w − h_l − D) − γ − α_len·(|y_w| − |y_l|),   loss = ℓ(z, …) + auxiliary terms

with, for each side, s = agg_t(ω_t·a_t − ω'_t·log ζ_t) (prior, weights, aggregation), h = f′(s) (link)
then the one-sided transforms, D the KL term and ℓ the pair loss: the general loss of Tutnov et al. 2025
(arXiv 2501.01544, Eq. 1) made concrete. Everything is computed in at least float32 whatever the input dtype, with
no Python loop over the batch or the tokens. This module imports no transformers.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from unipo.errors import UnipoError
from unipo.objective.config import ObjectiveConfig, Requirements, resolve
from unipo.objective.inputs import SIDE_INPUTS, SIDE_SPECS, input_keywords
from unipo.objective.listwise import check_groups
from unipo.objective.metrics import pair_weighting_metrics, summarise
from unipo.objective.registry import KINDS, StatefulPart, parts
from unipo.objective.sides import ObjectiveInputs, PairLossOut, PairTerms, Side


@dataclass
class LossOutput:
    """The objective's output for one batch of B pairs.

    - ``losses`` ``[B]`` with gradient (``loss`` is their mean); ``metrics``: detached scalars (TRL's names);
    - ``chosen_rewards`` / ``rejected_rewards`` ``[B]``: β·h per side, the rewards the loss compares;
    - ``logits`` ``[B]``: the combined logit z;
    - ``log_ratio_margins`` ``[B]``: the plain DPO margin Σ_t ρ_t(y_w) − Σ_t ρ_t(y_l), ρ_t = a_t − r_t, whatever
      the variant (None without reference log-probs), so that variants compare on one scale;
    - with several rejected responses per pair (``ObjectiveInputs.rejected_pair``), each pair's rejected
      values are those of its STRONGEST rejected response (the largest reward, the largest log-ratio; the
      smallest logit), so a pair counts as accurate when the chosen beats every rejected response;
    - ``extras``: ``mean_logps/chosen`` and ``mean_logps/rejected`` ``[B]``, the policy's mean token log-prob of
      each response (detached; f-DPO's calibration, :func:`unipo.eval.metrics.fdpo_calibration`);
    - ``pair_weights`` ``[B]``: the pairs' weights when given, times the pair loss's selection when it selects
      pairs (β-DPO's filtering); ``loss`` is then Σ w_i ℓ_i / Σ w_i.
    """

    losses: torch.Tensor
    metrics: dict[str, torch.Tensor]
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    logits: torch.Tensor
    log_ratio_margins: torch.Tensor | None = None
    pair_weights: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        """The batch loss: the mean of ``losses``, or their weighted mean (0 when every weight is 0)."""
        if self.pair_weights is None:
            return self.losses.mean()
        w = self.pair_weights.to(self.losses.dtype)
        return (w * self.losses).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (bfloat16 / float16 inputs are computed in float32; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where, not multiply: padding may hold -inf or NaN
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))


def _per_response(key: str, value: torch.Tensor, logps: torch.Tensor) -> torch.Tensor:
    """A per-response input (``[B]``, e.g. the data's scores) checked finite and of the batch's shape, detached (a
    constant of the objective) and in the dtype the objective computes in."""
    if value.shape != logps.shape[:1] or not bool(torch.isfinite(value).all()):
        raise UnipoError(f"{key} must be finite, one value per response: shape {tuple(logps.shape[:1])}, got "
                         f"{tuple(value.shape)}")
    return value.detach().to(torch.promote_types(_upcast(value).dtype, _upcast(logps).dtype))


class Objective:
    """A resolved objective, callable on per-token tensors. Build it once; call it every step."""

    def __init__(self, variant: str | Mapping[str, Any] | ObjectiveConfig = "dpo", **params: Any):
        self.config = variant if isinstance(variant, ObjectiveConfig) else resolve(variant, params)
        self.parts = {kind: self.config.part(kind) for kind in KINDS}
        self.params = self.config.params
        # a stateful part (a class) gets its own instance per objective; a plain part is its function
        self.fns = {kind: part.fn(self.params) if part.stateful else part.fn for kind, part in self.parts.items()}
        self.training = True

    def train(self, mode: bool = True) -> Objective:
        """Training mode (the default) lets stateful parts update their statistics; ``train(False)`` (held-out
        scoring) freezes them. ``preference_step`` sets it from the policy's mode."""
        self.training = mode
        for fn in self.fns.values():
            if isinstance(fn, StatefulPart):
                fn.training = mode
        return self

    def state_dict(self) -> dict[str, dict[str, float]]:
        """The stateful parts' state by kind (plain floats; empty for a stateless objective)."""
        states = {kind: fn.state_dict() for kind, fn in self.fns.items() if isinstance(fn, StatefulPart)}
        return {kind: state for kind, state in states.items() if state}

    def load_state_dict(self, state: Mapping[str, Mapping[str, float]]) -> None:
        for kind, part_state in state.items():
            fn = self.fns.get(kind)
            if isinstance(fn, StatefulPart):
                fn.load_state_dict(part_state)

    @property
    def requirements(self) -> Requirements:
        return self.config.requirements

    @property
    def needs_reference(self) -> bool:
        return self.config.needs_reference

    def required_inputs(self) -> set[str]:
        """The Side fields that the selected parts read (besides logps and mask)."""
        return set(self.requirements.inputs)

    def _check(self, side: Side) -> Side:
        """Validate shapes, upcast, and zero every input on padding ONCE (with ``where``), so that neither
        values nor gradients downstream can pick up the -inf / NaN that padding may hold."""
        logps, mask = side.logps, side.mask
        if logps.dim() != 2 or mask.shape != logps.shape:
            raise UnipoError(f"{side.name}: logps and mask must both be [batch, tokens]; got {tuple(logps.shape)} "
                             f"and {tuple(mask.shape)}")
        mask = mask.bool()
        lengths = mask.sum(-1)
        if bool((lengths == 0).any()):
            bad = torch.nonzero(lengths == 0).flatten().tolist()
            raise UnipoError(f"{side.name} response has zero tokens at batch index {bad}: every response needs at "
                             f"least one token (check truncation / max_length)")
        fields = {}
        for attr, value in side.optional().items():
            spec = SIDE_SPECS[attr]
            key = spec.key(side.name)
            if value is not None:
                if spec.per == "response":  # one value per response: [B], finite, a constant (the data's)
                    fields[attr] = _per_response(key, value, logps)
                    continue
                if value.shape != logps.shape:
                    raise UnipoError(f"{key} has shape {tuple(value.shape)}, expected {tuple(logps.shape)} like "
                                     f"{side.name} logps")
                value = value if value.dtype == torch.bool else _masked(_upcast(value), mask)
                if spec.constant:  # the reference is a constant of the objective: never any gradient
                    value = value.detach()
            elif attr in self.requirements.inputs:
                who = next(f"{p.kind}={p.name}" for p in self.parts.values() if attr in p.inputs)
                raise UnipoError(f"{who} needs the input {key!r} ({SIDE_INPUTS[attr]}), which was not given")
            fields[attr] = value
        return replace(side, logps=_masked(_upcast(logps), mask), mask=mask, **fields)

    def _score(self, side: Side) -> tuple[torch.Tensor, ...]:
        """Return (s, h, aggregated policy term, aggregated prior term, policy token weights) for one side."""
        agg = self.fns["aggregation"]
        prior = self.fns["prior"](side, self.params)
        pw, zw = self.fns["weights"](side, self.params)
        pol = agg(side.logps if pw is None else side.logps * pw, side.mask)  # inputs are zero on padding
        pri = torch.zeros_like(pol) if prior is None else agg(prior if zw is None else prior * zw, side.mask)
        s = pol - pri
        return s, self.fns["link"](s, self.params), pol, pri, pw

    def _nll(self, side: Side) -> torch.Tensor:
        """``[B]``: the NLL of ``side``'s responses, each pair's mean over its tokens, or with ``nll_token_mean`` one
        mean over the batch's tokens (TRL's CPO / ORPO / "sft" / TPO), spread over the pairs so that their mean is
        it."""
        if self.params["nll_token_mean"]:
            return -side.logps.sum(-1) * (side.lengths.numel() / side.lengths.sum())
        return -side.logps.sum(-1) / side.lengths

    def _gold_nll(self, gold: Side | None, n_pairs: int) -> torch.Tensor:
        """``[B]``: NLL(y_gold), TPO's term on a third, gold response (Saeidi et al. 2024, arXiv 2405.16681; read in
        TRL's ``TPOTrainer._compute_loss``: ``F.cross_entropy`` over every gold token of the batch, which
        ``nll_token_mean: true`` gives)."""
        if gold is None:
            raise UnipoError("gold_nll_weight > 0 needs the policy's log-probs of a gold response per pair "
                             "(ObjectiveInputs.gold; in training the data's gold_column, default 'reference')")
        logps, mask = gold.logps, gold.mask.bool()
        if logps.dim() != 2 or mask.shape != logps.shape or logps.shape[0] != n_pairs:
            raise UnipoError(f"gold: logps and mask must both be [pairs, tokens] with one row per pair ({n_pairs}); "
                             f"got {tuple(logps.shape)} and {tuple(mask.shape)}")
        if bool((mask.sum(-1) == 0).any()):
            bad = torch.nonzero(mask.sum(-1) == 0).flatten().tolist()
            raise UnipoError(f"gold response has zero tokens at batch index {bad}: every response needs at least one "
                             f"token (check truncation / max_length)")
        return self._nll(Side("gold", _masked(_upcast(logps), mask), mask))

    def _auxiliary(self, chosen: Side, rejected: Side, gold: Side | None = None
                   ) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
        """The terms added to the pair loss: NLL of the chosen response, NLL of the gold response (TPO), L1 on
        token masks, the learned prior's regulariser (each only when its weight is non-zero)."""
        p, total, metrics = self.params, 0.0, {}
        if p["nll_weight"]:
            nll = self._nll(chosen)
            total = total + float(p["nll_weight"]) * nll
            metrics["nll"] = nll.detach().mean()
        if p["gold_nll_weight"]:
            gold_nll = self._gold_nll(gold, chosen.logps.shape[0])
            total = total + float(p["gold_nll_weight"]) * gold_nll
            metrics["gold_nll"] = gold_nll.detach().mean()
        if p["l1_weight"]:
            l1 = sum(m.abs().sum(-1) / side.lengths
                     for side in (chosen, rejected) for m in {id(x): x for x in (side.weights, side.kl_weights)
                                                              if x is not None}.values())
            total = total + float(p["l1_weight"]) * l1
        if p["prior_reg_weight"] and chosen.prior_offsets is not None:
            reg = sum((side.prior_offsets ** 2).sum(-1) / side.lengths for side in (chosen, rejected))
            total = total + float(p["prior_reg_weight"]) * reg
            metrics["prior/offset_rms"] = reg.detach().div(2).sqrt().mean()
        return total, metrics

    def listwise_refusal(self) -> str | None:
        """Why this objective cannot take several rejected responses per pair, or None when it can: that needs
        a pair loss registered ``listwise`` and sequence-level parts only (:mod:`unipo.objective.listwise`)."""
        loss, req = self.parts["pair_loss"], self.requirements
        if not loss.listwise:
            names = ", ".join(n for n, part in parts("pair_loss").items() if part.listwise)
            return (f"pair_loss={loss.name} compares the chosen response with ONE rejected response; rows with "
                    f"several rejected responses need a listwise pair loss ({names}: the preset listwise_dpo, or "
                    f"pair_loss: plackett_luce)")
        per_token = sorted(req.inputs - {"ref_logps"})
        token_level = [f"{kind}={self.parts[kind].name}" for kind in ("weights", "kl") if not self.parts[kind].neutral]
        if per_token or req.kl_direction or token_level or req.signal:
            what = ", ".join(per_token + token_level)
            return (f"several rejected responses per pair work with sequence-level parts only; this objective "
                    f"also reads per-token inputs ({what})")
        return None

    def _groups(self, rejected_pair: torch.Tensor | None, chosen: Side, rejected: Side) -> torch.Tensor | None:
        if rejected_pair is None:
            return None
        refusal = self.listwise_refusal()
        if refusal:
            raise UnipoError(refusal)
        return check_groups(rejected_pair.to(chosen.logps.device), chosen.logps.shape[0], rejected.logps.shape[0])

    def loss(self, inputs: ObjectiveInputs) -> LossOutput:
        """The objective on typed inputs (see :class:`~unipo.objective.sides.ObjectiveInputs`). With
        ``rejected_pair`` every chosen-side term is repeated for each rejected row of its pair (one logit per
        comparison) and the listwise pair loss gives one loss per pair (:mod:`unipo.objective.listwise`)."""
        chosen, rejected = self._check(inputs.chosen), self._check(inputs.rejected)
        groups = self._groups(inputs.rejected_pair, chosen, rejected)
        n_pairs = chosen.logps.shape[0]

        def each(x: torch.Tensor) -> torch.Tensor:  # a chosen-side [B] value, once per comparison
            return x if groups is None else x[groups]

        # each side knows the other's mask (SamPO samples the longer response down to the shorter's length)
        if groups is None:
            ids = None if inputs.pair_ids is None else inputs.pair_ids.to(chosen.mask.device)
            chosen, rejected = (replace(chosen, partner_mask=rejected.mask, pair_ids=ids),
                                replace(rejected, partner_mask=chosen.mask, pair_ids=ids))
        p = self.params
        beta = float(p["beta"])
        s_w, h_w, pol_w, pri_w, ww = self._score(chosen)
        s_l, h_l, pol_l, pri_l, wl = self._score(rejected)
        h_w = self.fns["chosen_transform"](h_w, s_w, p)
        h_l = self.fns["rejected_transform"](h_l, s_l, p)
        kl, metrics = self.fns["kl"](chosen, rejected, self.fns["aggregation"], p)
        inner = each(h_w) - h_l if kl is None else h_w - h_l - kl
        gamma = float(p["gamma"]) + (float(p["gamma_beta_ratio"]) * beta if p["gamma_beta_ratio"] else 0.0)
        logits = beta * inner - gamma
        if p["length_alpha"]:
            logits = logits - float(p["length_alpha"]) * (each(chosen.lengths) - rejected.lengths)
        out = self.fns["pair_loss"](PairTerms(
            logits, beta, each(h_w), h_l, each(pol_w), pol_l, each(pri_w), pri_l, groups,
            None if groups is None else n_pairs, None if groups is not None else (chosen, rejected)), p)
        if not isinstance(out, PairLossOut):
            raise UnipoError(f"pair_loss={self.parts['pair_loss'].name} returned {type(out).__name__}; a pair loss "
                             f"returns PairLossOut(losses, selected=None) (unipo.objective.protocols.PairLoss)")
        # a pair weighting: a factor (with gradient only where the part keeps it: Uni-DPO's performance weight),
        # or (factor, a term added after it: Uni-DPO's calibrated NLL)
        weighting = self.fns["pair_weighting"](chosen, rejected, p)
        factor, added = weighting if isinstance(weighting, tuple) else (weighting, None)
        losses = out.losses if factor is None else out.losses * factor
        losses = losses if added is None else losses + added
        metrics.update(pair_weighting_metrics(factor, added))
        aux, aux_metrics = self._auxiliary(chosen, rejected, inputs.gold)
        metrics = {**metrics, **aux_metrics}
        for fn in self.fns.values():
            metrics.update(fn.metrics if isinstance(fn, StatefulPart) else {})
        summary = summarise(chosen, rejected, beta=beta, h_w=h_w, h_l=h_l, logits=logits, score_weights=(ww, wl),
                            groups=groups, n_pairs=n_pairs)
        weights = self._pair_weights(inputs.pair_weights, losses)
        if out.selected is not None:  # a pair loss that selects pairs (β-DPO's filtering) weights them 0 / 1
            weights = out.selected.detach().to(losses.dtype) * (1.0 if weights is None else weights)
        return LossOutput(losses + aux, {**metrics, **summary.metrics}, summary.chosen_rewards,
                          summary.rejected_rewards, summary.logits, summary.log_ratio_margins, weights,
                          summary.mean_logps)

    @staticmethod
    def _pair_weights(weights: torch.Tensor | None, losses: torch.Tensor) -> torch.Tensor | None:
        if weights is None:
            return None
        weights = weights.detach()
        if weights.shape != losses.shape:
            raise UnipoError(f"pair_weights has shape {tuple(weights.shape)}, expected {tuple(losses.shape)} (one "
                             f"weight per pair)")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise UnipoError("pair_weights must be finite and >= 0")
        return weights

    def __call__(self, *, policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 chosen_mask: torch.Tensor, rejected_mask: torch.Tensor, policy_gold_logps: torch.Tensor | None = None,
                 gold_mask: torch.Tensor | None = None, **inputs: torch.Tensor | None) -> LossOutput:
        """The keyword form: :func:`compute_loss`'s tensors (``ref_chosen_logps``, ``chosen_weights``, …)."""
        return self.loss(ObjectiveInputs.from_tensors(
            policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
            chosen_mask=chosen_mask, rejected_mask=rejected_mask, policy_gold_logps=policy_gold_logps,
            gold_mask=gold_mask, **inputs))


def compute_loss(variant: str | Mapping[str, Any], *, policy_chosen_logps: torch.Tensor,
                 policy_rejected_logps: torch.Tensor, chosen_mask: torch.Tensor, rejected_mask: torch.Tensor,
                 policy_gold_logps: torch.Tensor | None = None, gold_mask: torch.Tensor | None = None,
                 **inputs_and_params: Any) -> LossOutput:
    """Compute the unified objective for one batch.

    ``variant`` is a preset name (see :func:`variants`) or a mapping ``{"preset": ..., part/param: ...}``;
    the other keywords are either inputs of the objective (every keyword of the input table,
    :data:`unipo.objective.inputs.INPUTS`: ``ref_chosen_logps``, ``chosen_weights``, …, ``pair_weights``,
    ``rejected_pair``, ``pair_ids``; the signature lists them) or parameter / part overrides (``beta=0.2``,
    ``link="js"``). Every per-token tensor is ``[batch, tokens]``, per response token: policy / reference
    log-probabilities, masks (1 on response tokens), token weights (TIS-DPO weights, SparsePO m^u), per-position KL
    (KL(π_ref‖π_θ) for TDPO / SparsePO, KL(π_θ‖π_ref) for TIS-DPO), SparsePO KL masks m^d, BMC diff masks and
    learned-prior offsets, WPO's log Σ_v π_θ(v)², ε-DPO's perturbed log-probs. ``chosen_score`` / ``rejected_score``
    are ``[batch]``, one score per response from the data (Uni-DPO's quality weight). ``pair_weights`` ([batch], ≥ 0)
    makes ``.loss`` the weighted mean of the pairs' losses.
    ``rejected_pair`` (long [rows of the rejected tensors]): several rejected responses per pair, the pair of each
    rejected row (listwise pair losses only, :mod:`unipo.objective.listwise`). ``policy_gold_logps`` /
    ``gold_mask`` (``[batch, tokens']``): the policy's log-probs of a third, gold response per pair, read only by the
    gold NLL term (``gold_nll_weight``, TPO). Returns a
    :class:`LossOutput` with ``.losses`` ([batch], with gradient), ``.loss`` and ``.metrics``.
    """
    keywords = input_keywords()
    inputs = {k: v for k, v in inputs_and_params.items() if k in keywords}
    params = {k: v for k, v in inputs_and_params.items() if k not in keywords}
    return Objective(variant, **params)(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        chosen_mask=chosen_mask, rejected_mask=rejected_mask, policy_gold_logps=policy_gold_logps,
        gold_mask=gold_mask, **inputs)


def _signature_from_table(fn: Any) -> inspect.Signature:
    """``fn``'s signature with one keyword (default None) per input of the table, before ``**params``."""
    sig = inspect.signature(fn)
    head = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    table = [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None, annotation="torch.Tensor | None")
             for key in input_keywords()]
    params = inspect.Parameter("params", inspect.Parameter.VAR_KEYWORD, annotation="Any")
    return sig.replace(parameters=[*head, *table, params])


compute_loss.__signature__ = _signature_from_table(compute_loss)  # type: ignore[attr-defined]


def variants() -> list[str]:
    """The names of every preset."""
    from unipo.objective.presets import PRESETS

    return list(PRESETS)
