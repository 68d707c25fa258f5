"""``train(config)``: from a model name and a preference file to a trained model directory (a :class:`TrainResult`).

Four stages, each a function:

1. :func:`unipo.training.plan.plan_training` — pure validation, no model and no data read: the objective, what
   it needs from the data (token-weight columns, BMC diff masks), the token signal, the reference mode; a bad
   combination fails here, in a second, before anything is loaded;
2. :func:`load_data` and :func:`load_models` — tokenizer, pairs (with a summary of what was truncated or
   dropped), policy (+ LoRA), reference (a copy, or precomputed log-probs), token signal;
3. :func:`build_trainer` — transformers' Trainer with the objective as its loss (:class:`PreferenceTrainer`);
4. :func:`save_final_model` (every process) and :func:`write_outputs` — model, tokenizer, resolved config,
   metrics, data summary, model card (the files of :class:`~unipo.training.rundir.RunDir`).

Plots and other extras come in through Trainer callbacks (``train(cfg, callbacks=[...])``): the training
layer imports nothing from the pipelines above it.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset

from unipo.errors import ConfigError, UnipoError
from unipo.io.console import log, progress_bars
from unipo.training import rundir
from unipo.training.config import TrainConfig
from unipo.training.nonfinite import NonFiniteError
from unipo.training.plan import DataSettings, TrainingPlan, check_listwise_rows, plan_training, prepare_data
from unipo.training.rundir import RunDir


class PairsDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: list[dict[str, Any]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.pairs[i]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the run directory it wrote, the final metrics (the last value of every logged
    key, the final evaluation's and the mean training loss over the whole run) and every logged step."""

    run: RunDir
    final_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


# -- 2. load ----------------------------------------------------------------------------------------------
@dataclass
class RunData:
    """The pairs of a run: a memory-mapped :class:`~unipo.data.table.PairsTable` (or, with a precomputed
    reference, which adds the reference's log-probs to every pair, a list of dicts)."""

    train: Any
    eval: Any | None
    summary: Any


def load_data(plan: TrainingPlan, tokenizer) -> RunData:
    """Training pairs, and evaluation pairs from ``eval_data`` or a seeded ``eval_fraction`` hold-out."""
    from unipo.data.table import take

    cfg = plan.cfg
    settings = DataSettings.of(cfg)
    columns = {"needs": plan.needs, "materialize": plan.reference == "precomputed"}
    if cfg.data_streaming:  # read and tokenised as training consumes it (data/stream.py); eval_data prepared
        from unipo.data.stream import open_stream

        train_rows = open_stream(cfg.data, tokenizer, settings.options(cfg.limit, plan.needs),
                                 buffer_size=cfg.stream_buffer, seed=cfg.seed,
                                 listwise_refusal=plan.objective.listwise_refusal(), log=log)
        summary = train_rows.summary
    else:
        train_rows, summary = prepare_data(settings, tokenizer, cfg.data, cfg.limit, **columns)
        check_listwise_rows(plan.objective, train_rows, cfg.data)
    eval_rows = None
    if cfg.eval_data:
        eval_rows, _ = prepare_data(settings, tokenizer, cfg.eval_data, cfg.eval_limit, **columns)
        check_listwise_rows(plan.objective, eval_rows, cfg.eval_data)
    elif cfg.eval_fraction > 0:
        n_eval = max(1, int(len(train_rows) * cfg.eval_fraction))
        perm = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        eval_rows = take(train_rows, perm[:n_eval])
        train_rows = take(train_rows, perm[n_eval:])
    return RunData(train_rows, eval_rows, summary)


@dataclass
class RunModels:
    model_path: str
    tokenizer: Any
    policy: torch.nn.Module
    ref_model: torch.nn.Module | None
    token_signal: torch.nn.Module | None
    signal_sizes: dict[str, int] | None
    collate: Any
    precision: str


def load_models(plan: TrainingPlan, model_path: str, tokenizer, data: RunData) -> RunModels:
    """Policy (+ LoRA), reference (a frozen copy; or its log-probs precomputed into ``data`` and the copy
    dropped) and token signal, on the precision this machine runs fast."""
    from unipo.models.loading import apply_lora, choose_precision, load_model, resolve_dtype, resolve_model_path
    from unipo.models.signals import build_signal, signal_sizes
    from unipo.training.collate import collate_for

    cfg = plan.cfg
    precision = choose_precision(cfg.precision)
    ref_dtype = resolve_dtype(cfg.ref_dtype, precision)
    layout = partial(collate_for, pad_token_id=tokenizer.pad_token_id, share_prompt=cfg.share_prompt,
                     packing=cfg.packing)
    ref_model = None
    ref_path = resolve_model_path(cfg.ref_model) if cfg.ref_model else model_path
    if plan.reference in ("copy", "precomputed"):
        ref_model = load_model(ref_path, dtype=ref_dtype, attn_implementation=cfg.attn_implementation,
                               trainable=False)
    if plan.reference == "precomputed":
        _precompute(plan, ref_model, ref_path, tokenizer, data, layout(ref_model), ref_dtype,
                    torch.bfloat16 if precision == "bf16" else None)
        ref_model = None  # not resident during training
    policy = load_model(model_path, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    collate = layout(policy)
    log(f"attention {policy.config._attn_implementation}"
        + (" · packing: one padding-free row per batch" if collate.keywords["one_row"] else ""))
    token_signal, sizes = None, None
    if plan.signal is not None:
        sizes = signal_sizes(policy.config)
        with torch.random.fork_rng(devices=[]):  # its initial weights depend on the seed alone
            torch.manual_seed(cfg.seed)
            token_signal = build_signal(plan.signal, **sizes)
        log(f"token signal {plan.signal} · {sum(p.numel() for p in token_signal.parameters())} trainable parameters")
    if cfg.lora:
        policy = apply_lora(policy, cfg.lora)
        if cfg.gradient_checkpointing:
            policy.enable_input_require_grads()
    return RunModels(model_path, tokenizer, policy, ref_model, token_signal, sizes, collate, precision)


def _precompute(plan: TrainingPlan, ref_model, model_path: str, tokenizer, data: RunData, collate,
                ref_dtype: torch.dtype, autocast_dtype: torch.dtype | None) -> None:
    from unipo.training.reference import precompute_cached

    cfg = plan.cfg
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun / accelerate launch: split the pass over the ranks
        from accelerate import PartialState

        device = PartialState().device  # initialises the process group the Trainer then uses
    ref_model.to(device)
    for name, rows in (("train", data.train), ("eval", data.eval)):
        if rows:
            key = precompute_cached(ref_model, model_path, tokenizer, rows, collate, ref_dtype=ref_dtype,
                                    share_prompt=cfg.share_prompt, batch_size=cfg.per_device_batch_size,
                                    chunk_size=cfg.chunk_size, device=device, progress=cfg.progress,
                                    autocast_dtype=autocast_dtype)
            log(f"reference log-probs for {name} data: cache key {key}")


# -- 3. build ---------------------------------------------------------------------------------------------
def build_trainer(plan: TrainingPlan, models: RunModels, data: RunData, callbacks: list | tuple = ()):
    """A :class:`~unipo.training.trainer.PreferenceTrainer` for the plan (TrainingArguments from the config)."""
    from transformers import TrainingArguments

    from unipo.training.hf_compat import checkpointing_args
    from unipo.training.outputs import JsonlMetricsCallback
    from unipo.training.trainer import PreferenceTrainer

    cfg = plan.cfg
    args = TrainingArguments(
        output_dir=str(plan.out_dir), per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, num_train_epochs=cfg.num_epochs, max_steps=cfg.max_steps,
        seed=cfg.seed, data_seed=cfg.seed, bf16=models.precision == "bf16", use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, report_to=cfg.report_to, remove_unused_columns=False,
        **checkpointing_args(cfg.gradient_checkpointing), disable_tqdm=not cfg.progress,
        eval_strategy="steps" if data.eval and cfg.eval_steps else "no", eval_steps=cfg.eval_steps,
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
        logging_nan_inf_filter=False,  # a NaN loss is logged as nan (Trainer's filter made it 0 or a past mean)
    )
    return PreferenceTrainer(
        model=models.policy, args=args,
        train_dataset=data.train if isinstance(data.train, IterableDataset) else PairsDataset(data.train),
        eval_dataset=PairsDataset(data.eval) if data.eval else None, data_collator=models.collate,
        processing_class=models.tokenizer, objective=plan.objective, ref_model=models.ref_model,
        reference_mode=plan.reference, chunk_size=cfg.chunk_size,
        head_dtype=torch.bfloat16 if models.precision == "bf16" else None,
        callbacks=[JsonlMetricsCallback(plan.run.metrics_file), *callbacks],
        token_signal=models.token_signal, ref_sync=cfg.ref_sync_schedule(), ref_bema=cfg.ref_bema_schedule(),
        nan_policy=cfg.nan_policy, nan_skip_limit=cfg.nan_skip_limit,
    )


# -- 4. write ---------------------------------------------------------------------------------------------
def save_final_model(trainer, out_dir: Path) -> None:
    """The trained model (with a token signal, also its weights: PreferenceTrainer._save), called
    by EVERY process: under FSDP and DeepSpeed gathering the full state dict is a collective (Trainer writes on
    the main process only). Under FSDP the final model is gathered whole (``FULL_STATE_DICT``) whatever the
    checkpoints' state-dict type, so the output directory holds a model that ``from_pretrained`` loads. Weights
    that are not all finite are never saved (:class:`~unipo.training.nonfinite.NonFiniteError`)."""
    trainer.check_weights_finite()
    if getattr(trainer, "is_fsdp_enabled", False):
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out_dir))


def write_outputs(plan: TrainingPlan, models: RunModels, data: RunData, trainer, final: dict[str, Any]) -> None:
    """Tokenizer, token signal spec, resolved config, metrics, data summary and model card (main process)."""
    from unipo.models.loading import resolve_model_path
    from unipo.training.outputs import model_card

    run = plan.run  # the model itself is saved by every process before (save_final_model)
    models.tokenizer.save_pretrained(str(run.path))
    if plan.signal is not None:
        run.write_signal_spec({**plan.signal, **models.signal_sizes})
    run.write_metrics(trainer.state.log_history)
    trainer.state.save_to_json(str(run.trainer_state_file))  # marks the run finished, with its step
    resolved = {**plan.cfg.to_dict(), "model_path": models.model_path, "reference": plan.reference,
                "ref_model_path": resolve_model_path(plan.cfg.ref_model) if plan.cfg.ref_model else models.model_path,
                "precision": models.precision, "token_signal": plan.signal,
                "objective": plan.objective.config.to_dict()}
    run.write_config(resolved)
    summary = data.summary.to_dict()
    run.write_data_summary(summary)
    card_metrics = {k: v for k, v in final.items() if "/" in k or "loss" in k}
    run.write_card(model_card(resolved, plan.objective.config.to_dict(), summary, card_metrics))
    log(f"saved model, {run.METRICS} and {run.CARD} to {run.path}")


def train(cfg: TrainConfig, callbacks: list | tuple = ()) -> TrainResult:
    """Run one training job; return its :class:`TrainResult` (the run directory, the final metrics, the history).

    ``callbacks``: extra :class:`transformers.TrainerCallback` objects (e.g. the training-curve plot that
    ``unipo train`` adds). The output directory is locked for the whole run (one writer), checked before any
    model loads (writable, enough disk), and never holds two runs mixed (:class:`~unipo.training.rundir.RunDir`).
    ``progress: false`` also silences transformers' own progress bars (loading and writing weights)."""
    from unipo.io.disk import preflight
    from unipo.models.checks import check_model_dir
    from unipo.models.loading import resolve_model_path

    plan = plan_training(cfg)
    run = plan.run
    model_path = resolve_model_path(cfg.model)
    check_model_dir(model_path, tokenizer=True)  # a damaged directory: one line before any work
    check_positions(cfg, model_path, resolve_model_path(cfg.ref_model) if cfg.ref_model else None)
    created = rundir.first_missing(run.path)  # removed again if the run is refused before writing anything
    try:
        preflight(run.path, need_bytes=rundir.disk_need(model_path, cfg), what="this run")
        with run.lock("unipo train"), progress_bars(cfg.progress):
            run.prepare(resume=cfg.resume, overwrite=cfg.overwrite, log=log)
            done = run.finished_steps() if cfg.resume else None
            if done is not None and (cfg.max_steps <= done if cfg.max_steps > 0 else True):
                log(f"{run.path} holds a finished run ({done} steps): nothing to train (raise --max-steps to "
                    f"train further, or pass --overwrite to start again)")
                return TrainResult(run, run.final_metrics(), [])
            return _run(plan, model_path, callbacks)
    except BaseException:
        if created is not None:
            RunDir(created).remove_if_unused()
        raise


def check_positions(cfg: TrainConfig, model_path: str, ref_path: str | None) -> None:
    """``max_length`` must fit the model's (and the reference's) position limit, read from its ``config.json``
    before anything loads (a hub name, or a configuration that does not load, is left to the model loader)."""
    for path in dict.fromkeys(p for p in (model_path, ref_path) if p):
        if not (Path(path) / "config.json").is_file():
            continue
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError, KeyError):
            continue
        config = getattr(config, "text_config", None) or config
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and cfg.max_length > limit:
            raise ConfigError(f"max_length {cfg.max_length} is above the position limit of the model {path} "
                              f"(max_position_embeddings {limit} in its config.json): lower --max-length to at "
                              f"most {limit}")


def _run(plan: TrainingPlan, model_path: str, callbacks) -> TrainResult:
    from transformers import set_seed

    from unipo.io.atomic import is_file_system_error
    from unipo.io.disk import describe_os_error
    from unipo.models.loading import load_tokenizer
    from unipo.training.outputs import CheckpointConfigCallback

    cfg, run = plan.cfg, plan.run
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(model_path)
    data = load_data(plan, tokenizer)
    models = load_models(plan, model_path, tokenizer, data)
    log(f"model {model_path} · variant {plan.objective.config.name} · reference {plan.reference} · precision "
        f"{models.precision} · {len(data.train) if hasattr(data.train, '__len__') else 'streamed'} training pairs"
        + (f", {len(data.eval)} eval pairs" if data.eval else ""))
    resolved = plan.resolved()
    trainer = build_trainer(plan, models, data, [CheckpointConfigCallback(resolved), *callbacks])
    resume_from = run.last_complete_checkpoint(log) if cfg.resume else None
    if cfg.resume:
        run.check_resume(resume_from, resolved)
        log(f"resuming from {resume_from}" if resume_from else "no checkpoint to resume from: starting fresh")
    saving_final = False  # a failure while the final model is written: its half-written files are removed
    try:
        trainer.train(resume_from_checkpoint=resume_from)
        final: dict[str, Any] = trainer.evaluate() if data.eval else {}
        saving_final = True
        save_final_model(trainer, plan.out_dir)
        if not trainer.is_world_process_zero():
            return TrainResult(run, final)
        history = trainer.state.log_history
        for entry in history:
            final.update({k: v for k, v in entry.items() if k not in final or not k.startswith("eval_")})
        losses = [h["loss"] for h in history if "loss" in h and math.isfinite(h["loss"])]
        if losses:  # over every step of the run, also those before a resume (Trainer's covers this session's)
            final["train_loss"] = sum(losses) / len(losses)  # nan_policy skip_step: the skipped steps left out
        write_outputs(plan, models, data, trainer, final)
    except NonFiniteError as exc:
        raise UnipoError(str(exc) + nonfinite_way_out(exc, plan)) from None
    except Exception as exc:
        # a file-system error of any type (the tokenizers library raises a plain Exception), or one already
        # described (unipo.io.atomic): what it left half-written goes, the error is one line
        if not (isinstance(exc, UnipoError) or is_file_system_error(exc)):
            raise
        run.remove_partial_checkpoints(log)
        if saving_final:
            run.remove_final_outputs(log)
        if isinstance(exc, UnipoError):
            raise
        raise UnipoError(describe_os_error(exc, plan.out_dir)) from None
    finally:
        _finish_trackers(cfg.report_to)
    return TrainResult(run, final, history)


def nonfinite_way_out(exc: NonFiniteError, plan: TrainingPlan) -> str:
    """What a run stopped by the non-finite guard kept (its newest checkpoint, finite by construction: weights that
    are not finite are never saved) and what to try (docs/faults.md)."""
    from unipo.training.nonfinite import way_out

    cfg = plan.cfg
    checkpoint = plan.run.last_complete_checkpoint(log)
    beta = plan.objective.config.params.get("beta")
    return way_out(exc.quantity, exc.step, checkpoint, str(plan.out_dir), cfg.save_steps, cfg.learning_rate,
                   beta, cfg.nan_policy)


def _finish_trackers(report_to: list[str]) -> None:
    """Close this run's wandb run after the final evaluation (transformers' WandbCallback leaves it open, and
    the next training in the same process, e.g. the next variant of ``unipo compare``, would log into it)."""
    wandb = sys.modules.get("wandb")
    if "wandb" in report_to and wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
