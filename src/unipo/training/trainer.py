"""``PreferenceTrainer``: transformers' Trainer with the unified objective as its loss.

Trainer brings checkpointing and resume, mixed precision, gradient accumulation, logging integrations
(``report_to``), the progress bar and distributed launch (DDP / FSDP / DeepSpeed through accelerate).
This class adds only what is ours: the packed preference forward, the reference, the objective and its
metrics (TRL's names: rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/*).
"""

from __future__ import annotations

import torch
from transformers import Trainer

from unipo.layout import PAD_SEGMENT, PackedBatch
from unipo.models.signals import SIGNAL_ATTRIBUTE, attach_signal, is_signal_key
from unipo.objective import Objective
from unipo.training.console import use_console
from unipo.training.metrics import PairWeightedMeans
from unipo.training.nonfinite import NonFiniteError, NonFiniteGuard, as_float, local_flags, nonfinite_parameters
from unipo.training.ref_sync import BEMAReferenceCallback, BEMASchedule, ReferenceSyncCallback
from unipo.training.reference import Reference, check_reference_mode
from unipo.training.rundir import RunDir
from unipo.training.step import preference_step


class CompactRandomSampler(torch.utils.data.Sampler[int]):
    """The order of accelerate's ``SeedableRandomSampler`` (the one Trainer's default ``RandomSampler`` becomes):
    epoch e is ``torch.randperm(n)`` from a generator seeded with ``seed + e``, kept as a numpy array (8 bytes a
    pair) rather than a Python list of n ints (about 36 bytes a pair, 36 MB at a million pairs, which would
    grow memory with the data). Not a ``RandomSampler``, so accelerate uses it as it is."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        yield from map(int, torch.randperm(self.n, generator=g).numpy())
        self.epoch += 1  # as SeedableRandomSampler: the next pass is the next epoch unless set_epoch says


class PreferenceTrainer(Trainer):
    def __init__(self, *args, objective: Objective, ref_model: torch.nn.Module | None = None,
                 reference_mode: str = "copy", chunk_size: int = 1024, head_dtype: torch.dtype | None = None,
                 token_signal: torch.nn.Module | None = None, ref_sync: tuple[float, int] | None = None,
                 ref_bema: BEMASchedule | None = None, nan_policy: str = "stop", nan_skip_limit: int = 5,
                 **kwargs):
        # a token signal (SparsePO mask network, learned prior head, ...) is a submodule of the policy before the
        # engine wraps it: DDP all-reduces its gradients, FSDP / ZeRO-3 shard it, Trainer's optimizer, gradient
        # clipping and engine checkpoints include it (models.signals.attach_signal)
        self.token_signal = token_signal
        model = kwargs.get("model", args[0] if args else None)
        if token_signal is not None and model is not None \
                and getattr(model, SIGNAL_ATTRIBUTE, None) is not token_signal:
            attach_signal(model, token_signal)
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.chunk_size = chunk_size
        self.head_dtype = head_dtype
        # our loss is a mean per example: let Trainer divide by the accumulation steps
        self.model_accepts_loss_kwargs = False
        check_reference_mode(objective, reference_mode)
        self.ref_model = None
        if ref_model is not None:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                # sharded for inference under the engine (FSDP / ZeRO-3): not a full copy per process
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            else:
                self.ref_model = ref_model.to(self.accelerator.device)
        # the reference computes exactly as the policy does: under the same autocast (mixed precision)
        autocast_dtype = torch.bfloat16 if self.args.bf16 else (torch.float16 if self.args.fp16 else None)
        self.reference = Reference(reference_mode, self.ref_model, autocast_dtype=autocast_dtype)
        self.ref_sync = ref_sync
        self.bema: BEMAReferenceCallback | None = None
        if ref_sync is not None or ref_bema is not None:  # the reference copy follows the policy (ref_sync.py)
            if self.ref_model is None or self.is_deepspeed_enabled or self.is_fsdp_enabled:
                raise ValueError("ref_sync needs a reference copy (reference: copy) outside DeepSpeed/FSDP")
        if ref_sync is not None:  # TR-DPO
            self.add_callback(ReferenceSyncCallback(self.ref_model, *ref_sync))
        if ref_bema is not None:  # BEMA
            self.bema = BEMAReferenceCallback(self.ref_model, ref_bema)
            self.add_callback(self.bema)
        # the loss and the objective's metrics, weighted by the pairs of each batch and each process (metrics.py)
        self._metrics = {"train": PairWeightedMeans(), "eval": PairWeightedMeans()}
        self._tokens = 0  # real (not padding) tokens trained on since the last log, this process
        # a step whose loss or gradient norm is not finite is never applied (training/nonfinite.py)
        self.guard = NonFiniteGuard(nan_policy, nan_skip_limit)
        self._step_losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses, this process
        self._skipped_before: int | None = None  # skipped steps of the sessions before a resume (from the logs)
        use_console(self)  # one readable line per logging step instead of a raw dict

    # -- token signals: trained jointly, in their own optimiser parameter group ----------------------
    def create_optimizer(self, model=None):
        """Trainer's optimizer, with the token signal's parameters moved out of the model's groups into their
        own (weight decay ``token_signal.weight_decay``, its own ``learning_rate`` or the run's)."""
        optimizer = super().create_optimizer(model)
        if self.token_signal is not None and not getattr(self, "_signal_group_added", False):
            params = [p for p in self.token_signal.parameters() if p.requires_grad]
            ids = {id(p) for p in params}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            if params:
                # its own peak learning rate if it has one (token_signal {learning_rate: ...}), else the policy's;
                # the schedule (warm-up, decay) scales both groups alike
                lr = getattr(self.token_signal, "learning_rate", None) or self.args.learning_rate
                optimizer.add_param_group({"params": params, "lr": lr,
                                           "weight_decay": float(getattr(self.token_signal, "weight_decay", 0.0)),
                                           "initial_lr": lr})
            self._signal_group_added = True
        return optimizer

    def _save(self, output_dir=None, state_dict=None):
        """The model without the token signal's keys (it is not part of the model a user loads), the signal's
        weights in ``unipo_signal.safetensors`` beside it, and the objective's state (β-DPO / α-DPO moving
        statistics, this process's) in ``unipo_objective_state.json``."""
        self._save_objective_state(output_dir)
        if self.token_signal is None:
            return super()._save(output_dir, state_dict)
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        signal_state = {k.split(SIGNAL_ATTRIBUTE + ".", 1)[1]: v for k, v in state_dict.items() if is_signal_key(k)}
        super()._save(output_dir, {k: v for k, v in state_dict.items() if not is_signal_key(k)})
        if self.args.should_save:
            from safetensors.torch import save_file

            if not signal_state:  # a state dict that does not hold the signal (PEFT's adapter-only one)
                signal_state = self.token_signal.state_dict()
            out = output_dir or self.args.output_dir
            save_file({k: v.detach().cpu().contiguous() for k, v in signal_state.items()},
                      str(RunDir(out).signal_weights_file))

    def _save_objective_state(self, output_dir: str | None) -> None:
        objective_state = self.objective.state_dict()
        if objective_state and self.args.should_save:
            import json
            import os

            out = output_dir or self.args.output_dir
            os.makedirs(out, exist_ok=True)
            with open(f"{out}/{RunDir.OBJECTIVE_STATE}", "w", encoding="utf-8") as f:
                json.dump(objective_state, f)

    def _save_checkpoint(self, model, trial):
        """With ref_sync, the reference it has reached goes into the checkpoint too, written before Trainer's
        files (``trainer_state.json``, written last, marks a checkpoint complete). Weights that are not all
        finite are never saved (:meth:`check_weights_finite`)."""
        self.check_weights_finite()
        if (self.ref_sync is not None or self.bema is not None) and self.args.should_save:
            import os

            from safetensors.torch import save_file, save_model

            ckpt = str(RunDir(self._get_output_dir(trial=trial)).checkpoint(self.state.global_step))
            os.makedirs(ckpt, exist_ok=True)
            save_model(self.ref_model, os.path.join(ckpt, RunDir.REFERENCE_WEIGHTS))  # tied weights stored once
            if self.bema is not None:  # θ₀, the EMA and the BEMA weights: resume continues the same average
                save_file(self.bema.state_dict(), os.path.join(ckpt, RunDir.BEMA_STATE))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The model, then the token signal from ``unipo_signal.safetensors`` (under FSDP / DeepSpeed the
        engine's own checkpoint already restored it, as part of the policy)."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_reference(resume_from_checkpoint)
        import os

        state_path = f"{resume_from_checkpoint}/{RunDir.OBJECTIVE_STATE}"
        if os.path.exists(state_path):  # every process resumes from the saving process's statistics
            import json

            with open(state_path, encoding="utf-8") as f:
                self.objective.load_state_dict(json.load(f))
        if self.token_signal is None or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return
        path = str(RunDir(resume_from_checkpoint).signal_weights_file)
        if os.path.exists(path):
            from safetensors.torch import load_file

            self.token_signal.load_state_dict(load_file(path))
        elif list(self.token_signal.parameters()):
            import warnings

            warnings.warn(f"{path} not found: the token signal starts from its initial weights", stacklevel=2)

    def _load_reference(self, checkpoint: str) -> None:
        """Resume TR-DPO with the reference the checkpoint recorded (a missing file is an error: the starting
        model would silently replace a reference that had moved)."""
        if self.ref_sync is None and self.bema is None:
            return
        import os

        from safetensors.torch import load_file, load_model

        from unipo.errors import UnipoError

        names = [RunDir.REFERENCE_WEIGHTS] + ([RunDir.BEMA_STATE] if self.bema is not None else [])
        paths = [os.path.join(checkpoint, name) for name in names]
        for path in paths:
            if not os.path.exists(path):
                raise UnipoError(f"{path} not found: this checkpoint does not hold the synced reference (and BEMA "
                                 f"state) that ref_sync needs to resume exactly; pass --overwrite to start again")
        load_model(self.ref_model, paths[0], device=str(next(self.ref_model.parameters()).device))
        if self.bema is not None:
            self.bema.load_state_dict(load_file(paths[1]))

    def _issue_warnings_after_load(self, load_result) -> None:
        """Trainer's warning about missing keys, without the keys of tied parameters: with tied embeddings the
        checkpoint stores ``lm_head.weight`` once, as the embedding, and loading that fills both; nor those of
        the token signal, which is restored from ``unipo_signal.safetensors``."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        missing = set(load_result.missing_keys)
        loaded = [p for name, p in params.items() if name not in missing]

        def tied(key: str) -> bool:
            return key in params and any(params[key] is p for p in loaded)

        kept = [k for k in load_result.missing_keys if not tied(k) and not is_signal_key(k)]
        super()._issue_warnings_after_load(load_result._replace(missing_keys=kept))

    # -- the non-finite guard (training/nonfinite.py) -------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_losses.append(loss.detach())
        return loss

    def _get_train_sampler(self, train_dataset=None):
        """Trainer's sampler; its default ``RandomSampler`` (which accelerate makes a ``SeedableRandomSampler``
        seeded with ``data_seed``) as :class:`CompactRandomSampler`, the same order without a list of every index."""
        sampler = super()._get_train_sampler(train_dataset)
        seedable = self.accelerator.dataloader_config.use_seedable_sampler
        if type(sampler) is torch.utils.data.RandomSampler and seedable and self.args.data_seed is not None \
                and not sampler.replacement:
            return CompactRandomSampler(len(sampler.data_source), self.args.data_seed)
        return sampler

    def _get_grad_norm(self, model, grad_norm=None):
        """Trainer's gradient norm (after clipping computed it), then the guard's decision, taken alike by every
        process (the flags are summed over them): a bad step's gradients are dropped, so the optimizer step
        that follows leaves every parameter and its moments as they were; under ``stop`` the run ends here."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        losses, self._step_losses = self._step_losses, []
        flags = self.accelerator.reduce(local_flags(losses, grad_norm, self.accelerator.device), "sum")
        decision = self.guard.decide(flags, grad_norm)
        if decision.apply:
            return grad_norm
        model.zero_grad(set_to_none=True)
        if decision.stop:
            self._log_failed_step(losses, grad_norm)
            raise NonFiniteError(self.state.global_step, decision.quantity, decision.value,
                                 self.guard.in_a_row if self.guard.policy == "skip_step" else 0)
        return grad_norm

    def _log_failed_step(self, losses: list[torch.Tensor], grad_norm) -> None:
        """Log the step that stops the run (its loss and gradient norm as they were: ``nan``, never 0) under
        its own step number, then leave ``state.global_step`` at that step (nothing of it is saved)."""
        loss = torch.stack(losses).float().sum() if losses else torch.tensor(float("nan"))
        loss = self.accelerator.reduce(loss.to(self.accelerator.device), "mean").item()
        self.state.global_step += 1
        self.log({"loss": loss, "grad_norm": as_float(grad_norm),
                  "learning_rate": self._get_learning_rate()})

    def _maybe_log_save_evaluate(self, tr_loss, *args, **kwargs):
        """Trainer's, then a running loss that went NaN is reset once logged (Trainer resets it by subtracting it
        from itself, which leaves a NaN for ever: every later step would log nan)."""
        super()._maybe_log_save_evaluate(tr_loss, *args, **kwargs)
        if self._globalstep_last_logged == self.state.global_step and not bool(torch.isfinite(tr_loss).all()):
            tr_loss.zero_()

    def check_weights_finite(self) -> None:
        """Raise :class:`NonFiniteError` (on every process alike) when any weight is NaN or ±inf, before a save."""
        bad = nonfinite_parameters(self.model.named_parameters())
        flag = self.accelerator.reduce(torch.tensor(float(len(bad)), device=self.accelerator.device), "sum")
        if float(flag) > 0:
            raise NonFiniteError(self.state.global_step, "weights", f"{int(float(flag))} tensors hold NaN or inf")

    # -- the loss ------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = preference_step(model, self.reference, inputs, self.objective, token_signal=self.token_signal,
                              chunk_size=self.chunk_size, head_dtype=self.head_dtype)
        mode = "train" if model.training else "eval"
        if model.training:
            self._tokens += int((inputs["segments"] != PAD_SEGMENT).sum())
        self._metrics[mode].add({"loss": out.loss.detach(), **out.metrics}, PackedBatch.from_dict(inputs).num_pairs)
        return (out.loss, out) if return_outputs else out.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- logging ------------------------------------------------------------------------------------
    def _sum_across(self, t: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return t
        return self.accelerator.reduce(t.to(self.accelerator.device), "sum").cpu()

    def _keys_across(self, keys: list[str]) -> list[list[str]]:
        if self.accelerator.num_processes == 1:
            return [keys]
        from accelerate.utils import gather_object

        return gather_object([keys])

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        mode = "train" if "loss" in logs else "eval"
        prefix = "eval_" if mode == "eval" else ""
        if self._metrics[mode] or "loss" in logs or "eval_loss" in logs:  # every process logs at the same steps
            # the loss too: Trainer's is a mean of per-step (eval: per-row) means, averaged over the processes
            logs.update({prefix + k: v for k, v in self._metrics[mode].reduce(self._sum_across,
                                                                               self._keys_across).items()})
        if mode == "train" and self.args.include_num_input_tokens_seen == "no":
            # exact token count (Trainer's own counts padding, or guesses it from the pad id); kept in the
            # checkpointed TrainerState, so it continues across a resume
            t = torch.tensor(self._tokens, device=self.accelerator.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += int(self.accelerator.reduce(t, "sum").item())
            self._tokens = 0
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
        if mode == "train" and self.guard.policy == "skip_step":
            if self._skipped_before is None:  # a resumed run's history holds the earlier sessions' count
                self._skipped_before = max((h.get("skipped_steps", 0) for h in self.state.log_history), default=0)
            logs["skipped_steps"] = self._skipped_before + self.guard.skipped
        super().log(logs, *args, **kwargs)

