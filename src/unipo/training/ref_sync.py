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

``ref_sync: bema`` instead makes the reference a bias-corrected exponential moving average of the policy (BEMA,
Block & Zhang 2025, arXiv 2508.00180), as TRL's experimental ``BEMACallback(update_ref_model=True)`` does
(:class:`BEMAReferenceCallback`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from unipo.models.forward import unwrap


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


# -- BEMA: the reference follows a bias-corrected EMA of the policy ---------------------------------------------


@dataclass(frozen=True)
class BEMASchedule:
    """BEMA's hyper-parameters, with TRL's names and defaults (``trl.experimental.bema_for_ref_model.BEMACallback``,
    TRL 1.16; the paper's symbols in brackets): ``update_freq`` [φ], ``ema_power`` [κ], ``bias_power`` [η], ``lag``
    [ρ], ``update_after`` [τ], ``multiplier`` [γ], ``min_ema_multiplier``; ``ref_update_freq`` /
    ``ref_update_after``: TRL's ``ref_model_update_freq`` / ``ref_model_update_after`` (the reference takes the BEMA
    weights after every ``ref_update_freq``-th step from ``ref_update_after`` on)."""

    update_freq: int = 400
    ema_power: float = 0.5
    bias_power: float = 0.2
    lag: float = 10
    update_after: int = 0
    multiplier: float = 1.0
    min_ema_multiplier: float = 0.0
    ref_update_freq: int = 400
    ref_update_after: int = 0


class BEMAReferenceCallback(TrainerCallback):
    """BEMA reference updates (Block & Zhang 2025, "EMA Without the Lag: Bias-Corrected Iterate Averaging Schemes",
    arXiv 2508.00180), computed as TRL's experimental ``BEMACallback(update_ref_model=True)`` computes them:

        EMA_t = (1 − β_t)·EMA + β_t·θ_t,   β_t = max((ρ + γt)^(−κ), min_ema_multiplier)
        θ'_t  = EMA_t + α_t·(θ_t − θ₀),     α_t = (ρ + γt)^(−η)

    every φ optimizer steps after τ (θ₀ and the EMA are the policy at step τ, or at the start of training for
    τ = 0), and the reference ← θ' every ``ref_update_freq`` steps from ``ref_update_after`` on (θ' is the policy at
    the start until the first BEMA update). The buffers are kept on ``device`` (CPU by default, as TRL) in each
    parameter's own dtype, like TRL's. Unlike TRL's callback, θ₀, the EMA and θ' are saved with every checkpoint
    (:meth:`state_dict`) and restored on resume (TRL's restarts them from the resumed model)."""

    def __init__(self, reference: torch.nn.Module, schedule: BEMASchedule, device: str = "cpu"):
        self.reference, self.schedule, self.device = reference, schedule, device
        self.theta0: dict[str, torch.Tensor] = {}
        self.ema: dict[str, torch.Tensor] = {}
        self.bema: dict[str, torch.Tensor] = {}
        self.restored = False

    @staticmethod
    def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}

    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.restored or model is None:  # resumed: the checkpoint's state stands
            return
        for name, p in self._trainable(model).items():
            self.theta0[name] = p.detach().clone().to(self.device)
            self.ema[name] = self.theta0[name].clone()
            self.bema[name] = self.theta0[name].clone()

    def _factor(self, step: int, power: float) -> float:
        return (self.schedule.lag + self.schedule.multiplier * step) ** (-power)

    @torch.no_grad()
    def _update(self, model: torch.nn.Module, step: int) -> None:
        beta = max(self._factor(step, self.schedule.ema_power), self.schedule.min_ema_multiplier)
        alpha = self._factor(step, self.schedule.bias_power)
        for name, p in self._trainable(model).items():
            theta = p.detach().to(self.device)
            self.ema[name].mul_(1 - beta).add_(theta, alpha=beta)
            self.bema[name].copy_(self.ema[name] + alpha * (theta - self.theta0[name]))

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        step, s = state.global_step, self.schedule
        if model is None or step < s.update_after:
            return
        if step == s.update_after:
            for name, p in self._trainable(model).items():
                self.theta0[name].copy_(p)
                self.ema[name].copy_(p)
        elif (step - s.update_after) % s.update_freq == 0:
            self._update(model, step)
        if step >= s.ref_update_after and (step - s.ref_update_after) % s.ref_update_freq == 0:
            policy = dict(unwrap(model).named_parameters())
            for name, target in unwrap(self.reference).named_parameters():
                target.copy_(self.bema[name] if name in self.bema else policy[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """θ₀, the EMA and θ' by parameter name (``theta0/…``, ``ema/…``, ``bema/…``), for a checkpoint."""
        return {f"{kind}/{name}": t.contiguous() for kind, table in (("theta0", self.theta0), ("ema", self.ema),
                                                                   ("bema", self.bema)) for name, t in table.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            kind, name = key.split("/", 1)
            getattr(self, kind)[name] = value.to(self.device)
        self.restored = True
