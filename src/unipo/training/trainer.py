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

from unipo.layout import PAD_SEGMENT
from unipo.objective import Objective
from unipo.training.console import use_console
from unipo.training.reference import Reference, check_reference_mode
from unipo.training.step import preference_step


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
        self.chunk_size = chunk_size
        self.head_dtype = head_dtype
        # our loss is a mean per example: let Trainer divide by the accumulation steps
        self.model_accepts_loss_kwargs = False
        check_reference_mode(objective, reference_mode)
        self.ref_model = None
        if ref_model is not None:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            else:
                self.ref_model = ref_model.to(self.accelerator.device)
        # the reference computes exactly as the policy does: under the same autocast (mixed precision)
        autocast_dtype = torch.bfloat16 if self.args.bf16 else (torch.float16 if self.args.fp16 else None)
        self.reference = Reference(reference_mode, self.ref_model, autocast_dtype=autocast_dtype)
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._tokens = 0  # real (not padding) tokens trained on since the last log, this process
        use_console(self)  # one readable line per logging step instead of a raw dict

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

    def _issue_warnings_after_load(self, load_result) -> None:
        """Trainer's warning about missing keys, without the keys of tied parameters: with tied embeddings the
        checkpoint stores ``lm_head.weight`` once, as the embedding, and loading that fills both."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        missing = set(load_result.missing_keys)
        loaded = [p for name, p in params.items() if name not in missing]

        def tied(key: str) -> bool:
            return key in params and any(params[key] is p for p in loaded)

        kept = [k for k in load_result.missing_keys if not tied(k)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=kept))

    # -- the loss ------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = preference_step(model, self.reference, inputs, self.objective, token_signal=self.token_signal,
                              chunk_size=self.chunk_size, head_dtype=self.head_dtype)
        mode = "train" if model.training else "eval"
        if model.training:
            self._tokens += int((inputs["segments"] != PAD_SEGMENT).sum())
        for key, value in out.metrics.items():
            self._metrics[mode][key].append(float(value))
        return (out.loss, out) if return_outputs else out.loss

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
        if mode == "train" and self.args.include_num_input_tokens_seen == "no":
            # exact token count (Trainer's own counts padding, or guesses it from the pad id); kept in the
            # checkpointed TrainerState, so it continues across a resume
            t = torch.tensor(self._tokens, device=self.accelerator.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += int(self.accelerator.reduce(t, "sum").item())
            self._tokens = 0
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
        super().log(logs, *args, **kwargs)

