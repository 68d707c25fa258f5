"""One preference step: policy and reference over a packed batch, the token signal, then the objective.

:func:`preference_step` is the single place where a batch becomes a loss. ``PreferenceTrainer.compute_loss``
calls it for training and for the Trainer's evaluation loop, and ``unipo eval`` calls it to score held-out
pairs, so the numbers a run logs and the numbers its evaluation reports come from the same code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from unipo.layout import PackedBatch, SideLayout
from unipo.models.forward import ForwardOutput, ReferenceOutputs, response_logps
from unipo.models.signals import SignalOutput
from unipo.objective import LossOutput, Objective
from unipo.objective.inputs import PAIR_INPUTS, SIDE_SPECS, InputSpec
from unipo.objective.sides import ObjectiveInputs, Side
from unipo.training.reference import Reference


def _produced(spec: InputSpec, name: str, layout: SideLayout, reference: ReferenceOutputs, policy: ForwardOutput,
              signal: SignalOutput | None) -> torch.Tensor | None:
    """Side ``name``'s value of a per-token or per-response input, from its producers in the input table (the last
    one that gives a value wins: a token signal over the data's column)."""
    value = None
    for producer in spec.producers:
        if producer.source == "data":
            found = getattr(layout, producer.attribute)
        elif producer.source == "signal":
            found = signal.inputs.get(name, {}).get(spec.name) if signal is not None else None
        else:  # per-side outputs of a model pass
            sides = getattr(reference if producer.source == "reference" else policy, producer.attribute)
            found = sides[name] if sides is not None else None
        value = found if found is not None else value
    return value


def objective_inputs(batch: PackedBatch, reference: ReferenceOutputs, policy: ForwardOutput,
                     signal: SignalOutput | None = None) -> ObjectiveInputs:
    """Assemble the objective's inputs: the policy's log-probs and masks, then every input of the input table
    (:data:`unipo.objective.inputs.INPUTS`) from its producer: the reference's log-probs, the policy pass's
    per-position KL and statistics, the batch's data columns of each side (token weights, BMC diff masks, the
    responses' scores) and per-pair columns, and what the token signal produced."""
    sides = {}
    for name, layout in batch.sides.items():
        fields = {spec.name: _produced(spec, name, layout, reference, policy, signal) for spec in SIDE_SPECS.values()}
        sides[name] = Side(name, policy.logps[name], layout.mask, **fields)
    per_pair = {spec.name: getattr(batch, spec.producers[0].attribute) for spec in PAIR_INPUTS.values()}
    gold = None if policy.gold_logps is None or batch.gold is None else Side("gold", policy.gold_logps,
                                                                             batch.gold.mask)
    return ObjectiveInputs(sides["chosen"], sides["rejected"], **per_pair, gold=gold)


def preference_step(policy: torch.nn.Module, reference: Reference, batch: PackedBatch | Mapping[str, torch.Tensor],
                    objective: Objective, *, token_signal: torch.nn.Module | None = None, chunk_size: int = 1024,
                    head_dtype: torch.dtype | None = None) -> LossOutput:
    """The objective's :class:`~unipo.objective.LossOutput` for ``batch`` (with gradient into the policy and
    the token signal; the reference never gets one). The token signal's metrics join the objective's."""
    batch = PackedBatch.from_dict(batch)
    kl_direction, perturbation = objective.requirements.kl_direction, objective.requirements.perturbation
    need_layers = token_signal is not None and getattr(token_signal, "needs_hidden_states", False)
    # every token signal reads the reference's hidden states (the learned prior its final ones)
    need_hidden = kl_direction is not None or token_signal is not None or perturbation is not None
    ref = reference.outputs(policy, batch, chunk_size=chunk_size, need_layers=need_layers, head_dtype=head_dtype,
                            need_hidden=need_hidden)
    pol = response_logps(policy, batch, chunk_size=chunk_size, reference=ref, kl_direction=kl_direction,
                         head_dtype=head_dtype,
                         log_sum_sq="log_sum_sq_probs" in objective.requirements.inputs,  # WPO's weights
                         perturbation=perturbation)  # ε-DPO's perturbed policies
    ref = ref.with_logps(batch, chunk_size, head_dtype)
    signal = None
    if token_signal is not None:
        token_signal.train(policy.training)  # its dropout follows the policy's mode
        signal = token_signal(ref, batch)
    objective.train(policy.training)  # stateful parts (β-DPO, α-DPO) update their statistics only in training
    out = objective.loss(objective_inputs(batch, ref, pol, signal))
    if signal is not None:
        out.metrics.update(signal.metrics)
    return out
