"""TR-DPO: a reference model that follows the policy during training.

Gorbatovski et al., "Learn Your Reference Model for Real Good Alignment" (TR-DPO, arXiv 2404.09656, §3):
every τ optimizer steps the reference is updated from the policy, either softly (parameter-wise
``θ_ref ← α·θ + (1−α)·θ_ref``) or hard (``θ_ref ← θ``, i.e. α = 1). The convention is TRL's
``SyncRefModelCallback`` (``trl/trainer/callbacks.py``): the update runs in ``on_step_end``, after the optimizer
step that makes ``global_step`` a multiple of τ, so the steps τ+1, 2τ+1, … are the first to see the new
reference. Unlike TRL, the mix is computed in the reference parameter's own dtype, at least float32, and written
back in that dtype: a bfloat16 reference is mixed in float32 (no bfloat16 rounding of the product terms), a
float64 one in float64.

Only a live reference copy can follow (``reference: copy``, full fine-tuning): precomputed log-probs and
``reference: none`` have no model to update, and with LoRA the reference is the policy with its adapters
switched off (:func:`unipo.training.train.plan_training` refuses those, saying why). The reference's
parameters are saved into each checkpoint (``unipo_reference.safetensors``) so that ``--resume`` continues
with the reference the run had reached (:class:`~unipo.training.trainer.PreferenceTrainer`).
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from unipo.models.forward import unwrap

#: the reference's parameters inside a checkpoint of a run with ref_sync
REFERENCE_FILE = "unipo_reference.safetensors"


@torch.no_grad()
def sync_reference(policy: torch.nn.Module, reference: torch.nn.Module, alpha: float) -> None:
    """``θ_ref ← α·θ + (1−α)·θ_ref`` for every parameter of ``reference`` (α = 1: a copy), matched by name.

    The two models must have the same architecture (a reference copy of the policy's starting model)."""
    params = dict(unwrap(policy).named_parameters())
    for name, target in unwrap(reference).named_parameters():
        source = params.get(name)
        if source is None or source.shape != target.shape:
            raise RuntimeError(f"ref_sync: the policy has no parameter {name} of shape {tuple(target.shape)}; the "
                               f"reference must be a copy of the policy's model")
        if alpha == 1.0:
            target.copy_(source)
        else:
            dtype = torch.promote_types(target.dtype, torch.float32)  # bf16/fp16 in float32; float64 stays float64
            target.copy_(target.to(dtype).mul(1.0 - alpha).add_(source.to(dtype), alpha=alpha))


class ReferenceSyncCallback(TrainerCallback):
    """Updates ``reference`` from the policy after every ``steps``-th optimizer step (TR-DPO, see the module)."""

    def __init__(self, reference: torch.nn.Module, alpha: float, steps: int):
        if not 0 < alpha <= 1 or steps < 1:
            raise ValueError(f"ref_sync needs alpha in (0, 1] and steps >= 1, got {alpha}, {steps}")
        self.reference, self.alpha, self.steps = reference, float(alpha), int(steps)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and state.global_step > 0 and state.global_step % self.steps == 0:
            sync_reference(model, self.reference, self.alpha)
