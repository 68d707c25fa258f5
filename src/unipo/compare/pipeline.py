"""``unipo compare``: train several variants on the same data and seed, evaluate each, write one report.

Each variant gets ``OUT/runs/NAME``. A run whose model and ``eval.json`` exist is not redone, and a trained
run without ``eval.json`` is only evaluated, so an interrupted comparison resumes where it stopped (delete
the ``eval.json`` files and ``reference_eval.json`` to re-evaluate without retraining). The reference model
itself is evaluated once as the ``reference`` row: the "before" of every before/after.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from unipo.compare.config import CompareConfig
from unipo.errors import ConfigError
from unipo.eval.config import EvalOptions, JudgeOptions
from unipo.io.atomic import atomic_write_text
from unipo.io.console import log
from unipo.objective import resolve
from unipo.training.config import TrainConfig
from unipo.training.rundir import EvalRecord, RunConfig, RunDir


def run_name(variant: Any) -> str:
    if isinstance(variant, str):
        return variant.replace("_", "-")
    spec = dict(variant)
    name = str(spec.pop("preset", spec.pop("variant", "dpo"))).replace("_", "-")
    return name + "".join(f"_{k}={v}" for k, v in sorted(_flat(spec).items()))


def _flat(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``token_signal.learning_rate``), for directory names."""
    out: dict[str, Any] = {}
    for k, v in spec.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


#: TrainConfig keys that a sweep or a variant mapping may not set: each run's own directory and lifecycle
UNSWEPT_KEYS = frozenset({"variant", "output_dir", "resume", "overwrite"})


def is_training_key(key: str) -> bool:
    """A key of the training configuration (``learning_rate``, ``max_steps``, ...) rather than of the objective.
    ``beta`` is the objective's (TrainConfig's ``beta`` is only a shortcut for it); no other TrainConfig key is
    also a part kind or parameter of the objective."""
    return key in TrainConfig.keys() and key != "beta"


def split_spec(spec: Any) -> tuple[Any, dict[str, Any]]:
    """A variant (a preset name, or a mapping that may hold training keys, e.g. from ``--sweep
    learning_rate=...``) → (the objective's spec, the TrainConfig overrides of that run)."""
    if not isinstance(spec, dict):
        return spec, {}
    training = {k: v for k, v in spec.items() if is_training_key(k)}
    refused = sorted(set(training) & UNSWEPT_KEYS)
    if refused:
        raise ConfigError(f"compare: {', '.join(refused)} cannot be set per variant or swept (each run has its own "
                          f"directory under OUT/runs)")
    return {k: v for k, v in spec.items() if k not in training}, training


def expand_sweep(variants: list[Any], sweep: dict[str, list[Any]] | None) -> list[Any]:
    """Cross every variant with every value of every swept key: an objective parameter (``{beta: [0.05,
    0.1]}``) or a training key (``{learning_rate: [5e-7, 1e-6]}``, :func:`split_spec` tells them apart)."""
    out: list[Any] = list(variants)
    for key, values in (sweep or {}).items():
        new = []
        for v in out:
            for value in values:
                spec = dict(v) if isinstance(v, dict) else {"preset": v}
                spec[key] = value
                new.append(spec)
        out = new
    return out


def run_dir_of(out: Path, name: str, seed: int | None) -> Path:
    """``OUT/runs/NAME`` for a single-seed comparison, ``OUT/runs/NAME/seed-S`` for one seed of several."""
    return out / "runs" / name if seed is None else out / "runs" / name / f"seed-{seed}"


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Train and evaluate each variant of ``cfg`` (:class:`~unipo.compare.config.CompareConfig`); write
    ``OUT/report.md`` and friends; return the runs' records. One comparison writes ``cfg.out`` at a time
    (:meth:`unipo.training.rundir.RunDir.lock`).

    With ``cfg.seeds`` every variant is trained and evaluated under each seed (``OUT/runs/NAME/seed-S``, resumable
    per variant and seed); the report gives each metric as mean ± standard error over the seeds and each variant's
    paired difference from ``cfg.baseline`` (a run name or ``reference``; default the first variant) with a 95%
    two-way bootstrap interval (:mod:`unipo.eval.stats`). ``cfg.keep_models`` False: once a run is evaluated, its
    checkpoints and weights are deleted (its configuration, metrics and ``eval.json`` stay): a sweep of many runs
    needs the disk of one (a checkpoint with its optimizer state is about 12 bytes per parameter)."""
    from unipo.io.disk import preflight

    cfg.check()
    preflight(cfg.out, what="this comparison")
    with RunDir(cfg.out).lock("unipo compare"):
        return _compare(cfg)


def _compare(cfg: CompareConfig) -> dict[str, Any]:
    from unipo.eval.report import write_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = expand_sweep(cfg.variants, cfg.sweep)
    names = [run_name(spec) for spec in specs]
    if cfg.baseline is not None and cfg.baseline not in {*names, "reference"}:
        raise ConfigError(f"compare: --baseline {cfg.baseline!r} is not one of the runs {names} or 'reference'")
    per_seed = cfg.seeds if cfg.seeds is not None else [None]
    configs = {(run_name(spec), s): run_config_for(cfg.base, spec, out, cfg.train_overrides.get(run_name(spec)),
                                                   seed=s)
               for s in per_seed for spec in specs}  # fail fast, before training
    held_out = cfg.eval_data or cfg.base.eval_data or cfg.base.data
    if held_out is None:
        raise ConfigError("compare needs data (and ideally held-out eval_data)")
    records: dict[tuple[str, int | None], dict[str, Any]] = {}
    for s in per_seed:  # a seed's variants together: each finished seed is a complete paired block
        for spec in specs:
            name = run_name(spec)
            label = name if s is None else f"{name} (seed {s})"
            run_dir = run_dir_of(out, name, s)
            evaluation = cfg.evaluation if s is None else dataclasses.replace(cfg.evaluation, seed=s)
            _train_and_evaluate(configs[(name, s)], run_dir, label, held_out, evaluation, cfg.judge)
            if not cfg.keep_models:
                RunDir(run_dir).prune()
            records[(name, s)] = _run_record(run_dir, spec)
    reference = None
    if cfg.include_reference and specs:
        reference = _reference_record(cfg.base, out, run_dir_of(out, names[0], per_seed[0]), held_out,
                                      cfg.evaluation)
    if cfg.seeds is None:
        runs = {name: records[(name, None)] for name in names}
        if reference is not None:
            runs = {"reference": reference, **runs}
        files = write_report(out, runs, title=cfg.title)
    else:
        from unipo.compare.seeds import write_seeds_report

        runs, files = write_seeds_report(out, records, names, cfg.seeds, reference, title=cfg.title,
                                         baseline=cfg.baseline or names[0])
    log(f"report: {files['report']}")
    return runs


def _train_and_evaluate(cfg: TrainConfig, run_dir: Path, label: str, held_out: str, evaluation: EvalOptions,
                        judge: JudgeOptions | None) -> None:
    """Train ``cfg`` into ``run_dir`` and evaluate it, skipping what an earlier (interrupted) call finished."""
    from unipo.eval.evaluate import evaluate_run
    from unipo.training.train import train

    if RunDir(run_dir).evaluated:
        log(f"{label}: finished earlier, not retrained")
        return
    if RunDir(run_dir).trained:
        log(f"{label}: trained earlier, not retrained")
    else:
        log(f"{label}: training")
        train(cfg)
    log(f"{label}: evaluating on {held_out}")
    evaluate_run(run_dir, held_out, evaluation, judge)


def _run_record(run_dir: Path, spec: Any) -> dict[str, Any]:
    """What the report needs of one finished run: its metrics, per-item results, history and configuration."""
    run = RunDir(run_dir)
    record = run.eval_record()
    objective = resolve(run.objective())
    return {"metrics": record.metrics, "calibration_bins": record.calibration_bins,
            "items": record_items(record),
            "history": [h for h in run.metrics() if "loss" in h],
            "config": {"variant": objective.name, **objective.changes(), **split_spec(spec)[1]}}


def record_items(record: EvalRecord) -> dict[str, list[float]]:
    """Per held-out item, the values whose means are the paired metrics (:data:`unipo.compare.seeds.PAIRED`), from
    an eval record (:meth:`RunDir.eval_record`): its ``items`` and, from its per-pair DPO margins, the margin and
    the pair accuracy."""
    from unipo.compare.seeds import PAIRED
    from unipo.eval.stats import pair_accuracy

    items = {k: v for k, v in record.items.items() if k in PAIRED}
    margins = record.pair_margins.get("dpo")
    if margins:
        items["dpo_margin"] = list(margins)
        items["dpo_reward_accuracy"] = pair_accuracy(margins)
    return items


def _reference_record(base: TrainConfig, out: Path, first: Path, held_out: str,
                      evaluation: EvalOptions) -> dict[str, Any]:
    """The starting model evaluated once on the held-out data (``OUT/reference_eval.json``): the "before" row."""
    ref_file = out / "reference_eval.json"
    if not ref_file.exists():
        from unipo.eval.evaluate import evaluate_models, prompt_verifier, with_reference_logps
        from unipo.models.loading import load_model, load_tokenizer
        from unipo.objective import Objective
        from unipo.training.plan import DataSettings, prepare_data

        log("reference: evaluating the starting model (the 'before' row)")
        model_path = RunDir(first).config().model_path
        tok = load_tokenizer(str(first))
        obj = Objective("dpo", beta=base.beta or 0.1)
        # held-out pairs are scored unweighted
        unweighted = dataclasses.replace(DataSettings.of(base), weight_column=None)
        pairs, _ = prepare_data(unweighted, tok, held_out, evaluation.limit)
        ref = load_model(model_path, dtype=torch.float32, trainable=False)
        with_reference_logps(ref, model_path, tok, pairs, share_prompt=base.share_prompt,
                             packing=base.packing, batch_size=evaluation.batch_size)
        res = evaluate_models(ref, ref, tok, obj, pairs, share_prompt=base.share_prompt, packing=base.packing,
                              verifier=prompt_verifier(tok, pairs, evaluation.task, evaluation.verifier),
                              n_prompts=evaluation.n_prompts, n_samples=evaluation.n_samples,
                              max_new_tokens=evaluation.max_new_tokens, batch_size=evaluation.batch_size,
                              seed=evaluation.seed)
        atomic_write_text(ref_file, json.dumps(res, indent=2, default=str))
    res = EvalRecord.from_dict(json.loads(ref_file.read_text()))
    return {"metrics": res.metrics, "items": record_items(res), "config": {"variant": "(starting model)"}}


def run_config_for(base: TrainConfig, spec: Any, out: Path, overrides: dict[str, Any] | None = None, *,
                   seed: int | None = None) -> TrainConfig:
    """The training configuration of one variant's run: ``base`` with the run's ``overrides`` (compare's
    ``train_overrides``), the variant's objective, its training keys (validated as ``unipo train`` validates
    them) and its directory ``OUT/runs/NAME`` (``OUT/runs/NAME/seed-S`` with its own ``seed``)."""
    objective, training = split_spec(spec)
    resolve(objective if isinstance(objective, dict) else {"preset": objective})
    cfg = TrainConfig.from_dict({**copy.deepcopy(base.to_dict()), **(overrides or {}), **training,
                                 **({"seed": seed} if seed is not None else {}),
                                 "variant": objective,
                                 "output_dir": str(run_dir_of(out, run_name(spec), seed)),
                                 "resume": True,  # an interrupted variant continues from its last checkpoint
                                 "plots": False}, source=f"compare, variant {run_name(spec)}")
    return cfg


def read_config(run_dir: Path) -> RunConfig:
    """The configuration a run saved (:meth:`RunDir.config`)."""
    return RunDir(run_dir).config()
