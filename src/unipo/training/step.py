"""One preference step: policy and reference over a packed batch, the token signal, then the objective.

:func:`preference_step` is the single place where a batch becomes a loss. ``PreferenceTrainer.compute_loss``
calls it for training and for the Trainer's evaluation loop, and ``unipo eval`` calls it to score held-out
pairs, so the numbers a run logs and the numbers its evaluation reports come from the same code.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from unipo.layout import PackedBatch
from unipo.models.forward import ForwardOutput, ReferenceOutputs, response_logps
from unipo.models.signals import SignalOutput
from unipo.objective import LossOutput, Objective
from unipo.objective.sides import ObjectiveInputs, Side
from unipo.training.reference import Reference


def objective_inputs(batch: PackedBatch, reference: ReferenceOutputs, policy: ForwardOutput,
                     signal: SignalOutput | None = None) -> ObjectiveInputs:
    """Assemble the objective's inputs: the policy's log-probs and masks, the reference's log-probs, the
    per-position KL, the batch's data columns (token weights, BMC diff masks, the responses' scores) and what the token
    signal produced."""
    sides = {}
    for name, layout in batch.sides.items():
        fields = {
            "ref_logps": reference.logps[name] if reference.logps is not None else None,
            "kl": policy.kl[name] if policy.kl is not None else None,
            "weights": layout.weights,
            "diff_mask": layout.diff_mask,
            "log_sum_sq_probs": policy.log_sum_sq[name] if policy.log_sum_sq is not None else None,
            "eps_plus_logps": policy.eps_plus[name] if policy.eps_plus is not None else None,
            "eps_minus_logps": policy.eps_minus[name] if policy.eps_minus is not None else None,
            "score": batch.scores[:, 0 if name == "chosen" else 1] if batch.scores is not None else None,
            **(signal.inputs.get(name, {}) if signal is not None else {}),
        }
        sides[name] = Side(name, policy.logps[name], layout.mask, **fields)
    return ObjectiveInputs(sides["chosen"], sides["rejected"], batch.pair_weights, batch.rejected_pair,
                           pair_ids=batch.index)


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
