"""``train(config)``: from a model name and a preference file to a trained model directory.

Order of work: resolve the objective (fails fast on a bad variant) → tokenizer → data (with a summary of
what was truncated or dropped) → policy (+ LoRA) → reference → Trainer → save model, config, metrics,
curves and model card.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

from unipo.errors import ConfigError, UnipoError
from unipo.objective import Objective
from unipo.training.config import TrainConfig


class PairsDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: list[dict[str, Any]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.pairs[i]


def log(msg: str) -> None:
    print(f"unipo: {msg}", file=sys.stderr, flush=True)


def prepare_data(cfg: TrainConfig, tokenizer, objective: Objective, source: str, limit: int | None,
                 signal_weights: bool = False):
    """Tokenize ``source``; ``signal_weights``: a token signal supplies the token weights (SparsePO masks), so
    the data need not carry weight columns."""
    from unipo.data.tokenize import prepare_pairs

    weights_columns = tuple(cfg.weights_columns) if cfg.weights_columns else None
    if objective.config.parts["weights"] == "given" and weights_columns is None and not signal_weights:
        weights_columns = ("chosen_weights", "rejected_weights")
    pairs, summary = prepare_pairs(
        source, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
        truncation_mode=cfg.truncation_mode, bmc_masks=objective.config.parts["weights"] == "bmc",
        weights_columns=weights_columns, limit=limit, on_invalid=cfg.on_invalid)
    log(summary.format())
    if not pairs:
        raise UnipoError(f"{source}: no usable preference pairs (see the summary above)")
    rows = []
    for i, p in enumerate(pairs):
        d = {k: v for k, v in p.to_dict().items() if v is not None}
        d["index"] = i
        rows.append(d)
    return rows, summary


def last_complete_checkpoint(out_dir: Path) -> str | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (written last by Trainer) exists: a run
    killed while writing a checkpoint resumes from the one before, not from a half-written one."""
    ckpts = [p for p in Path(out_dir).glob("checkpoint-*") if p.name.rpartition("-")[2].isdigit()]
    for ckpt in sorted(ckpts, key=lambda p: int(p.name.rpartition("-")[2]), reverse=True):
        if (ckpt / "trainer_state.json").exists():
            return str(ckpt)
        log(f"{ckpt} is incomplete (killed while saving?): skipped")
    return None


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one training job; return a dict with the output directory and the final metrics."""
    from transformers import TrainingArguments, set_seed

    from unipo.models.loading import (
        apply_lora,
        choose_precision,
        load_model,
        load_tokenizer,
        resolve_dtype,
        resolve_model_path,
    )
    from unipo.models.signals import build_signal, resolve_signal_spec
    from unipo.training.collate import collate_for
    from unipo.training.outputs import JsonlMetricsCallback, model_card, write_config, write_metrics
    from unipo.training.reference import precompute_cached
    from unipo.training.trainer import PreferenceTrainer

    if not cfg.data:
        raise ConfigError("no training data: give --data FILE (or `data:` in the config)")
    objective = Objective(cfg.objective_spec())
    signal_spec = resolve_signal_spec(cfg.token_signal, objective.config, data_weights=bool(cfg.weights_columns))
    signal_weights = signal_spec is not None and signal_spec["type"] in ("sparsepo_masks", "activation_masks")
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)

    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(model_path)
    train_rows, summary = prepare_data(cfg, tokenizer, objective, cfg.data, cfg.limit, signal_weights)
    eval_rows = None
    if cfg.eval_data:
        eval_rows, _ = prepare_data(cfg, tokenizer, objective, cfg.eval_data, cfg.eval_limit, signal_weights)
    elif cfg.eval_fraction > 0:
        n_eval = max(1, int(len(train_rows) * cfg.eval_fraction))
        g = torch.Generator().manual_seed(cfg.seed)
        perm = torch.randperm(len(train_rows), generator=g).tolist()
        eval_rows = [train_rows[i] for i in perm[:n_eval]]
        train_rows = [train_rows[i] for i in perm[n_eval:]]

    precision = choose_precision(cfg.precision)
    reference = cfg.reference
    if reference == "auto":
        reference = "none" if not objective.needs_reference else ("adapter" if cfg.lora else "copy")
    if reference == "none" and objective.needs_reference:
        raise ConfigError(f"variant {objective.config.name} needs a reference model; reference: none is only for "
                          f"reference-free variants (simpo, reference_free)")
    if reference == "adapter" and not cfg.lora:
        raise ConfigError("reference: adapter needs LoRA (set lora: {r: 16})")
    if reference == "precomputed" and objective.config.kl_direction:
        raise ConfigError(f"variant {objective.config.name} needs the reference model's full next-token "
                          f"distributions for its per-position KL; precomputed reference log-probs cannot serve it "
                          f"(use reference: copy, or adapter with LoRA)")
    if signal_spec is not None and reference in ("precomputed", "none"):
        raise ConfigError(f"token_signal {signal_spec['type']} reads the reference model's hidden states during "
                          f"training; reference: {reference} cannot serve it (use reference: copy, or adapter "
                          f"with LoRA)")
    log(f"model {model_path} · variant {objective.config.name} · reference {reference} · precision {precision} · "
        f"{len(train_rows)} training pairs" + (f", {len(eval_rows)} eval pairs" if eval_rows else ""))

    ref_dtype = resolve_dtype(cfg.ref_dtype, precision)
    layout = partial(collate_for, pad_token_id=tokenizer.pad_token_id, share_prompt=cfg.share_prompt,
                     packing=cfg.packing)
    ref_model = None
    if reference in ("copy", "precomputed"):
        ref_model = load_model(model_path, dtype=ref_dtype, attn_implementation=cfg.attn_implementation,
                               trainable=False)
    if reference == "precomputed":
        collate = layout(ref_model)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        ref_model.to(device)
        for name, rows in (("train", train_rows), ("eval", eval_rows)):
            if rows:
                key = precompute_cached(ref_model, model_path, tokenizer, rows, collate, ref_dtype=ref_dtype,
                                        share_prompt=cfg.share_prompt, batch_size=cfg.per_device_batch_size,
                                        chunk_size=cfg.chunk_size, device=device, progress=cfg.progress)
                log(f"reference log-probs for {name} data: cache key {key}")
        ref_model = None  # not resident during training

    model = load_model(model_path, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    collate = layout(model)
    log(f"attention {model.config._attn_implementation}"
        + (" · packing: one padding-free row per batch" if collate.keywords["one_row"] else ""))
    token_signal = None
    if signal_spec is not None:
        text_cfg = model.config.get_text_config()
        signal_sizes = {"num_layers": text_cfg.num_hidden_layers + 1, "hidden_size": text_cfg.hidden_size}
        with torch.random.fork_rng(devices=[]):  # its initial weights depend on the seed alone
            torch.manual_seed(cfg.seed)
            token_signal = build_signal(signal_spec, **signal_sizes)
        n_params = sum(p.numel() for p in token_signal.parameters())
        log(f"token signal {signal_spec} · {n_params} trainable parameters")
    if cfg.lora:
        model = apply_lora(model, cfg.lora)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()

    use_cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, num_train_epochs=cfg.num_epochs, max_steps=cfg.max_steps,
        seed=cfg.seed, data_seed=cfg.seed, bf16=precision == "bf16", use_cpu=not use_cuda,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, report_to=cfg.report_to, remove_unused_columns=False,
        activation_checkpointing=cfg.gradient_checkpointing, disable_tqdm=not cfg.progress,
        eval_strategy="steps" if eval_rows and cfg.eval_steps else "no", eval_steps=cfg.eval_steps,
        dataloader_num_workers=0, ddp_find_unused_parameters=False,
    )
    trainer = PreferenceTrainer(
        model=model, args=args, train_dataset=PairsDataset(train_rows),
        eval_dataset=PairsDataset(eval_rows) if eval_rows else None, data_collator=collate,
        processing_class=tokenizer, objective=objective, ref_model=ref_model, reference_mode=reference,
        chunk_size=cfg.chunk_size, head_dtype=torch.bfloat16 if precision == "bf16" else None,
        callbacks=[JsonlMetricsCallback(out_dir / "metrics.jsonl")], token_signal=token_signal,
    )
    resume_from = None
    if cfg.resume:
        resume_from = last_complete_checkpoint(out_dir)
        log(f"resuming from {resume_from}" if resume_from else "no checkpoint to resume from: starting fresh")
    trainer.train(resume_from_checkpoint=resume_from)
    final: dict[str, Any] = {}
    if eval_rows:
        final.update(trainer.evaluate())
    if not trainer.is_world_process_zero():
        return {"output_dir": str(out_dir), "final": final}

    trainer.save_model(str(out_dir))  # with a token signal, also unipo_signal.safetensors (PreferenceTrainer._save)
    tokenizer.save_pretrained(str(out_dir))
    if signal_spec is not None:
        (out_dir / "unipo_signal.json").write_text(json.dumps({**signal_spec, **signal_sizes}, indent=2))
    history = trainer.state.log_history
    write_metrics(out_dir / "metrics.jsonl", history)
    for entry in history:
        final.update({k: v for k, v in entry.items() if k not in final or not k.startswith("eval_")})
    resolved = {**cfg.to_dict(), "model_path": model_path, "reference": reference, "precision": precision,
                "token_signal": signal_spec,
                "objective": objective.config.to_dict()}
    write_config(out_dir / "unipo_config.yaml", resolved)
    (out_dir / "data_summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    if cfg.plots:
        from unipo.eval.plots import training_curves

        keys = ["loss", "rewards/accuracies", "rewards/margins"]
        if objective.config.kl_direction:
            keys.append("kl/rejected")
        training_curves({objective.config.name: [h for h in history if "loss" in h]},
                        out_dir / "training_curves.png", keys=tuple(keys))
    (out_dir / "README.md").write_text(model_card(resolved, objective.config.to_dict(), summary.to_dict(),
                                                  {k: v for k, v in final.items() if "/" in k or "loss" in k}))
    log(f"saved model, metrics.jsonl, training_curves.png and README.md to {out_dir}")
    return {"output_dir": str(out_dir), "final": final, "history": history}
