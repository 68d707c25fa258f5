"""``PreferenceTrainer``: transformers' Trainer with the unified objective as its loss.

Trainer brings checkpointing and resume, mixed precision, gradient accumulation, logging integrations
(``report_to``), the progress bar and distributed launch (DDP / FSDP / DeepSpeed through accelerate).
This class adds only what is ours: the packed preference forward, the reference, the objective and its
metrics (TRL's names: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/*).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer

from unipo.errors import ConfigError
from unipo.models.forward import response_logps
from unipo.objective import Objective
from unipo.training.reference import reference_pass

#: batch keys passed to the objective as they are
PASSTHROUGH = ("chosen_weights", "rejected_weights", "chosen_diff_mask", "rejected_diff_mask",
               "ref_chosen_logps", "ref_rejected_logps")


class PreferenceTrainer(Trainer):
    def __init__(self, *args, objective: Objective, ref_model: torch.nn.Module | None = None,
                 reference_mode: str = "copy", chunk_size: int = 1024, head_dtype: torch.dtype | None = None,
                 token_signal: torch.nn.Module | None = None, **kwargs):
        # a token signal (SparsePO mask network, learned prior head, ...) must exist before the optimizer
        self.token_signal = token_signal
        super().__init__(*args, **kwargs)
        if token_signal is not None:
            self.token_signal.to(self.accelerator.device)
        self.objective = objective
        self.reference_mode = reference_mode
        self.chunk_size = chunk_size
        self.head_dtype = head_dtype
        # our loss is a mean per example: let Trainer divide by the accumulation steps
        self.model_accepts_loss_kwargs = False
        self.kl_direction = objective.config.kl_direction
        if self.kl_direction and reference_mode == "precomputed":
            raise ConfigError(f"variant {objective.config.name} needs the reference model's full next-token "
                              f"distributions (per-position KL); precomputed reference log-probs cannot serve "
                              f"it: use reference: copy (or adapter with LoRA)")
        self.ref_model = None
        if ref_model is not None:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            else:
                self.ref_model = ref_model.to(self.accelerator.device)
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # -- token signals: trained jointly, in their own optimiser parameter group ----------------------
    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.token_signal is not None and not getattr(self, "_signal_group_added", False):
            params = [p for p in self.token_signal.parameters() if p.requires_grad]
            if params:
                optimizer.add_param_group({"params": params, "lr": self.args.learning_rate,
                                           "weight_decay": float(getattr(self.token_signal, "weight_decay", 0.0)),
                                           "initial_lr": self.args.learning_rate})
                # Trainer clips, and zeroes after the step, the MODEL's gradients only: the signal's are
                # all-reduced across processes (it is not wrapped in DDP) and clipped (separately, at the same
                # max_grad_norm) before each optimizer step, and zeroed after it
                def pre_step(*_):
                    grads = [p.grad for p in params if p.grad is not None]
                    if grads and self.accelerator.num_processes > 1:
                        for g in grads:
                            torch.distributed.all_reduce(g, op=torch.distributed.ReduceOp.AVG)
                    if grads and self.args.max_grad_norm and self.args.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)

                optimizer.register_step_pre_hook(pre_step)
                optimizer.register_step_post_hook(lambda *_: self.token_signal.zero_grad(set_to_none=True))
            self._signal_group_added = True
        return optimizer

    def _save(self, output_dir=None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.token_signal is not None and self.args.should_save:
            from safetensors.torch import save_file

            out = output_dir or self.args.output_dir
            save_file({k: v.detach().cpu().contiguous() for k, v in self.token_signal.state_dict().items()},
                      f"{out}/unipo_signal.safetensors")

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = f"{resume_from_checkpoint}/unipo_signal.safetensors"
        import os

        if self.token_signal is not None and os.path.exists(path):
            from safetensors.torch import load_file

            self.token_signal.load_state_dict(load_file(path))
        elif self.token_signal is not None and list(self.token_signal.parameters()):
            import warnings

            warnings.warn(f"{path} not found: the token signal starts from its initial weights", stacklevel=2)

    # -- the loss ------------------------------------------------------------------------------------
    def _reference(self, model, inputs) -> dict:
        if self.reference_mode in ("precomputed", "none"):
            return {}
        need_layers = self.token_signal is not None and getattr(self.token_signal, "needs_hidden_states", False)
        extra = {"output_hidden_states": True} if need_layers else {}
        # every token signal reads the reference's hidden states (the learned prior its final ones)
        return reference_pass(model, self.ref_model, inputs, chunk_size=self.chunk_size,
                              need_hidden=self.kl_direction is not None or self.token_signal is not None, **extra)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ref = self._reference(model, inputs)
        pol = response_logps(model, inputs, chunk_size=self.chunk_size, ref=ref, ref_head=ref.get("head"),
                             kl_direction=self.kl_direction, head_dtype=self.head_dtype)
        extra = objective_inputs(inputs, ref, pol, self.chunk_size)
        mode = "train" if model.training else "eval"
        if self.token_signal is not None:  # per-token tensors, e.g. chosen_weights / chosen_prior_offsets
            self.token_signal.train(model.training)  # its dropout follows the policy's mode
            extra.update(self.token_signal(ref, inputs))
            for key, value in getattr(self.token_signal, "metrics", {}).items():
                self._metrics[mode][key].append(float(value))
        out = self.objective(policy_chosen_logps=pol["chosen_logps"], policy_rejected_logps=pol["rejected_logps"],
                             chosen_mask=inputs["chosen_mask"], rejected_mask=inputs["rejected_mask"], **extra)
        for key, value in out.metrics.items():
            self._metrics[mode][key].append(float(value))
        loss = out.loss
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- logging ------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        mode = "train" if "loss" in logs else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                t = torch.tensor(sum(values) / len(values), device=self.accelerator.device)
                logs[prefix + key] = self.accelerator.reduce(t, "mean").item()
        self._metrics[mode].clear()
        super().log(logs, *args, **kwargs)


def objective_inputs(batch: dict, ref: dict, pol: dict, chunk_size: int) -> dict[str, torch.Tensor]:
    """What the objective reads besides the policy log-probs and masks: the batch's per-token columns, the
    reference log-probs (computed here from the reference pass's hidden states when that pass kept them
    instead, which it does for KL variants and token signals) and the per-position KL."""
    if "head" in ref and "ref_chosen_logps" not in ref:
        with torch.no_grad():
            ref.update(response_logps_from_hidden(ref, batch, chunk_size))
    extra = {k: batch[k] for k in PASSTHROUGH if k in batch}
    extra.update({k: ref[k] for k in ("ref_chosen_logps", "ref_rejected_logps") if k in ref})
    extra.update({f"{s}_kl": pol[f"{s}_kl"] for s in ("chosen", "rejected") if f"{s}_kl" in pol})
    return extra


def response_logps_from_hidden(ref: dict, inputs: dict, chunk_size: int) -> dict[str, torch.Tensor]:
    """Reference log-probs from the reference hidden states already gathered for the KL term."""
    from unipo.models.forward import scatter_tokens
    from unipo.models.logprobs import token_logps

    out = {}
    for side in ("chosen", "rejected"):
        labels = inputs[f"{side}_labels"][inputs[f"{side}_mask"]]
        lp, _ = token_logps(ref[f"{side}_hidden"], ref["head"], labels, chunk_size=chunk_size)
        out[f"ref_{side}_logps"] = scatter_tokens(lp, inputs[f"{side}_mask"])
    return out
