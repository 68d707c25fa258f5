"""The non-finite guard: a training step whose loss or gradient norm is NaN or infinite is never applied.

Issue 23, item 1: a run that diverged used to keep training on NaN weights, save them over every good
checkpoint and exit 0. Here, at every optimizer step, before the update:

- each process records whether any of its micro-batch losses was not finite, and whether the (clipped-from)
  gradient norm is; the flags are **summed over the processes** (DDP / FSDP: one all-reduce of three numbers),
  so every rank takes the same decision and no rank steps alone;
- a bad step's gradients are dropped (``set_to_none``: the optimizer then leaves every parameter and its
  moments untouched), so its update is not applied;
- ``nan_policy: stop`` (the default) ends the run at that step with :class:`NonFiniteError` (the training job
  turns it into one line naming the step, the quantity, the last finite checkpoint and what to try);
  ``nan_policy: skip_step`` skips the batch, counts it (``skipped_steps`` in the logs) and stops only after
  ``nan_skip_limit`` bad steps in a row.

Saving is guarded too (:func:`nonfinite_parameters`): a checkpoint or final model whose weights are not all
finite (a finite update can still overflow float32, e.g. a learning rate of 1e39) is never written, so the
newest checkpoint on disk is always finite and ``save_total_limit`` rotation can never delete the last good one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from unipo.errors import UnipoError

#: indices of the flags each process contributes (summed over processes)
LOSS_NAN, LOSS_INF, GRAD_BAD = 0, 1, 2


class NonFiniteError(UnipoError):
    """A step's loss or gradient norm (or the weights about to be saved) is not finite; the run stops.

    ``step``: the optimizer step (1-based) that failed; ``quantity``: ``loss``, ``gradient norm`` or
    ``weights``; ``value``: what it was (``nan``, ``inf``, or the number of non-finite tensors for weights)."""

    def __init__(self, step: int, quantity: str, value: str, skipped_in_a_row: int = 0):
        self.step, self.quantity, self.value, self.skipped_in_a_row = step, quantity, value, skipped_in_a_row
        super().__init__(describe(step, quantity, value, skipped_in_a_row))


def describe(step: int, quantity: str, value: str, skipped_in_a_row: int = 0) -> str:
    """``step 3: the loss is nan`` (plus how many steps in a row were skipped before, under skip_step)."""
    what = (f"the weights are not finite ({value}) after this step's update" if quantity == "weights"
            else f"the {quantity} is {value}")
    run = f" ({skipped_in_a_row} non-finite steps in a row, the nan_skip_limit)" if skipped_in_a_row else ""
    return f"step {step}: {what}{run}"


def as_float(value: float | torch.Tensor | None) -> float:
    """A gradient norm as a Python float (a DTensor, FSDP2's, gathered first); None as NaN."""
    if value is None:
        return float("nan")
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return float(value)


def local_flags(losses: Iterable[torch.Tensor], grad_norm: float | torch.Tensor | None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """This process's flags for one optimizer step: [a loss is NaN, a loss is ±inf, the grad norm is not finite]
    (float, so that summing over processes counts the processes that saw each)."""
    stacked = torch.stack([loss.detach().float().reshape(()) for loss in losses]) if losses else torch.zeros(0)
    nan = bool(torch.isnan(stacked).any())
    inf = bool(torch.isinf(stacked).any())
    grad_bad = grad_norm is not None and not math.isfinite(as_float(grad_norm))
    return torch.tensor([nan, inf, grad_bad], dtype=torch.float32, device=device)


@dataclass(frozen=True)
class Decision:
    """What to do with one optimizer step: ``apply`` it, or not (then ``stop`` or skip); ``quantity`` and
    ``value`` say what was not finite."""

    apply: bool
    stop: bool = False
    quantity: str | None = None
    value: str | None = None


class NonFiniteGuard:
    """The decision rule (pure: no model, no process group). ``decide`` takes the flags already summed over the
    processes (:func:`local_flags`, then the trainer's all-reduce), so every process decides alike."""

    def __init__(self, policy: str = "stop", skip_limit: int = 5):
        if policy not in ("stop", "skip_step"):
            raise ValueError(f"nan_policy must be stop or skip_step, got {policy!r}")
        self.policy, self.skip_limit = policy, int(skip_limit)
        self.in_a_row = 0
        self.skipped = 0  # bad steps skipped in all (restored from the logs on resume)

    def decide(self, flags: torch.Tensor, grad_norm: float | torch.Tensor | None) -> Decision:
        nan, inf, grad_bad = (float(v) > 0 for v in flags.tolist())
        if not (nan or inf or grad_bad):
            self.in_a_row = 0
            return Decision(apply=True)
        if nan or inf:
            quantity, value = "loss", "nan" if nan else "inf"
        else:
            quantity, value = "gradient norm", str(as_float(grad_norm)).lower()
        self.in_a_row += 1
        if self.policy == "skip_step" and self.in_a_row < self.skip_limit:
            self.skipped += 1
            return Decision(apply=False, quantity=quantity, value=value)
        return Decision(apply=False, stop=True, quantity=quantity, value=value)


def nonfinite_parameters(params: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the parameters (this process's shard of each: a DTensor's local tensor) holding NaN or ±inf."""
    bad = []
    for name, p in params:
        local = p.to_local() if hasattr(p, "to_local") else p
        if local.numel() and not bool(torch.isfinite(local.detach()).all()):
            bad.append(name)
    return bad


def way_out(quantity: str, step: int, checkpoint: str | None, out_dir: str, save_steps: int,
            learning_rate: float, beta: float | None, policy: str) -> str:
    """The rest of the line after :func:`describe`: what was kept, where, and what to try."""
    done = ("nothing of this step was saved" if quantity == "weights" else "this step's update was not applied")
    if checkpoint:
        kept = (f"the last finite checkpoint is {checkpoint} (a complete model directory, kept; no final model "
                f"was written to {out_dir})")
    else:
        kept = f"no checkpoint was written before step {step} (save_steps {save_steps}): nothing was saved"
    lower = f"a lower --learning-rate (now {learning_rate:g})" + (f" or --beta (now {beta:g})" if beta else "")
    skip = ("" if policy == "skip_step" else
            "; or --resume --nan-policy skip_step to skip such batches" if checkpoint else
            "; or --nan-policy skip_step to skip such batches")
    return f"; {done} and training stopped; {kept}. Try {lower} and --overwrite to start again{skip}"
