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

from unipo.errors import ConfigError
from unipo.io.atomic import atomic_write_text
from unipo.objective import resolve
from unipo.training.config import TrainConfig


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


def _trained(run: Path) -> bool:
    return (run / "unipo_config.yaml").exists()  # written by train() after the final model is saved


def _finished(run: Path) -> bool:
    return _trained(run) and (run / "eval.json").exists()


def run_dir_of(out: Path, name: str, seed: int | None) -> Path:
    """``OUT/runs/NAME`` for a single-seed comparison, ``OUT/runs/NAME/seed-S`` for one seed of several."""
    return out / "runs" / name if seed is None else out / "runs" / name / f"seed-{seed}"


def compare(base: TrainConfig, variants: list[Any], out_dir: str | Path, *, eval_data: str | None = None,
            sweep: dict[str, list[Any]] | None = None, eval_kwargs: dict[str, Any] | None = None,
            include_reference: bool = True, title: str = "unipo comparison",
            train_overrides: dict[str, dict[str, Any]] | None = None, seeds: list[int] | None = None,
            baseline: str | None = None, keep_models: bool = True) -> dict[str, Any]:
    """Train and evaluate each variant; write ``OUT/report.md`` and friends; return the runs' records. One
    comparison writes ``out_dir`` at a time (:class:`unipo.io.rundir.RunDirLock`). ``train_overrides``: per run
    name (:func:`run_name`), training settings that differ from ``base`` (``{"dpo": {"learning_rate": 5e-5}}``).

    ``seeds``: train and evaluate every variant under each seed (``OUT/runs/NAME/seed-S``, resumable per
    variant and seed); the report gives each metric as mean ± standard error over the seeds and each variant's
    paired difference from ``baseline`` (a run name or ``reference``; default the first variant) with a 95%
    two-way bootstrap interval (:mod:`unipo.eval.stats`). None: one run per variant with ``base.seed``.
    ``keep_models`` False: once a run is evaluated, its checkpoints and weights are deleted (its configuration,
    metrics and ``eval.json`` stay): a sweep of many runs needs the disk of one (a checkpoint with its optimizer
    state is about 12 bytes per parameter)."""
    from unipo.io.rundir import RunDirLock, preflight

    unknown = {k for o in (train_overrides or {}).values() for k in o} - set(TrainConfig.keys())
    if unknown:
        raise ConfigError(f"train_overrides: unknown training settings {sorted(unknown)}")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"compare: seeds must be distinct and at least one, got {seeds}")
    preflight(out_dir, what="this comparison")
    with RunDirLock(out_dir, "unipo compare"):
        return _compare(base, variants, out_dir, eval_data=eval_data, sweep=sweep, eval_kwargs=eval_kwargs,
                        include_reference=include_reference, title=title, train_overrides=train_overrides or {},
                        seeds=seeds, baseline=baseline, keep_models=keep_models)


def _compare(base: TrainConfig, variants: list[Any], out_dir: str | Path, *, eval_data: str | None,
             sweep: dict[str, list[Any]] | None, eval_kwargs: dict[str, Any] | None, include_reference: bool,
             title: str, train_overrides: dict[str, dict[str, Any]], seeds: list[int] | None = None,
             baseline: str | None = None, keep_models: bool = True) -> dict[str, Any]:
    from unipo.eval.report import write_report
    from unipo.training.train import log

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = expand_sweep(variants, sweep)
    names = [run_name(spec) for spec in specs]
    if baseline is not None and baseline not in {*names, "reference"}:
        raise ConfigError(f"compare: --baseline {baseline!r} is not one of the runs {names} or 'reference'")
    per_seed = seeds if seeds is not None else [None]
    configs = {(run_name(spec), s): run_config_for(base, spec, out, train_overrides.get(run_name(spec)), seed=s)
               for s in per_seed for spec in specs}  # fail fast, before training
    held_out = eval_data or base.eval_data or base.data
    if held_out is None:
        raise ConfigError("compare needs data (and ideally held-out eval_data)")
    eval_kwargs = dict(eval_kwargs or {})
    records: dict[tuple[str, int | None], dict[str, Any]] = {}
    for s in per_seed:  # a seed's variants together: each finished seed is a complete paired block
        for spec in specs:
            name = run_name(spec)
            label = name if s is None else f"{name} (seed {s})"
            run_dir = run_dir_of(out, name, s)
            _train_and_evaluate(configs[(name, s)], run_dir, label, held_out,
                                {**eval_kwargs, **({"seed": s} if s is not None else {})})
            if not keep_models:
                prune_run(run_dir)
            records[(name, s)] = _run_record(run_dir, spec)
    reference = None
    if include_reference and specs:
        reference = _reference_record(base, out, run_dir_of(out, names[0], per_seed[0]), held_out, eval_kwargs)
    if seeds is None:
        runs = {name: records[(name, None)] for name in names}
        if reference is not None:
            runs = {"reference": reference, **runs}
        files = write_report(out, runs, title=title)
    else:
        from unipo.compare.seeds import write_seeds_report

        runs, files = write_seeds_report(out, records, names, seeds, reference, title=title,
                                         baseline=baseline or names[0])
    log(f"report: {files['report']}")
    return runs


def _train_and_evaluate(cfg: TrainConfig, run_dir: Path, label: str, held_out: str,
                        eval_kwargs: dict[str, Any]) -> None:
    """Train ``cfg`` into ``run_dir`` and evaluate it, skipping what an earlier (interrupted) call finished."""
    from unipo.eval.evaluate import evaluate_run
    from unipo.training.train import log, train

    if _finished(run_dir):
        log(f"{label}: finished earlier, not retrained")
        return
    if _trained(run_dir):
        log(f"{label}: trained earlier, not retrained")
    else:
        log(f"{label}: training")
        train(cfg)
    log(f"{label}: evaluating on {held_out}")
    evaluate_run(run_dir, held_out, **eval_kwargs)


#: what :func:`prune_run` deletes from an evaluated run: the checkpoints and the weights
PRUNED = ("checkpoint-*", "*.safetensors", "*.bin", "*.pt")


def prune_run(run_dir: Path) -> None:
    """Delete an evaluated run's checkpoints and weights, keeping what its record needs (``unipo_config.yaml``,
    ``metrics.jsonl``, ``eval.json``, the tokenizer and the model's config). Only after ``eval.json`` exists."""
    import shutil

    if not _finished(run_dir):
        raise ConfigError(f"{run_dir}: not evaluated yet; its model is kept")
    for pattern in PRUNED:
        for path in run_dir.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _run_record(run_dir: Path, spec: Any) -> dict[str, Any]:
    """What the report needs of one finished run: its metrics, per-item results, history and configuration."""
    from unipo.training.outputs import read_metrics

    record = json.loads((run_dir / "eval.json").read_text())
    objective = resolve(read_config(run_dir)["objective"])
    return {"metrics": record["metrics"], "calibration_bins": record.get("calibration_bins"),
            "items": record_items(record),
            "history": [h for h in read_metrics(run_dir / "metrics.jsonl") if "loss" in h],
            "config": {"variant": objective.name, **objective.changes(), **split_spec(spec)[1]}}


def record_items(record: dict[str, Any]) -> dict[str, list[float]]:
    """Per held-out item, the values whose means are the paired metrics (:data:`unipo.compare.seeds.PAIRED`), from
    an ``eval.json`` record: its ``items`` and, from its per-pair DPO margins, the margin and the pair accuracy."""
    from unipo.compare.seeds import PAIRED
    from unipo.eval.stats import pair_accuracy

    items = {k: v for k, v in (record.get("items") or {}).items() if k in PAIRED}
    margins = (record.get("pair_margins") or {}).get("dpo")
    if margins:
        items["dpo_margin"] = list(margins)
        items["dpo_reward_accuracy"] = pair_accuracy(margins)
    return items


def _reference_record(base: TrainConfig, out: Path, first: Path, held_out: str,
                      eval_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The starting model evaluated once on the held-out data (``OUT/reference_eval.json``): the "before" row."""
    ref_file = out / "reference_eval.json"
    if not ref_file.exists():
        from unipo.eval.evaluate import evaluate_models, prompt_verifier, run_config, with_reference_logps
        from unipo.models.loading import load_model, load_tokenizer
        from unipo.objective import Objective
        from unipo.training.train import log, prepare_data

        log("reference: evaluating the starting model (the 'before' row)")
        cfg_dict = run_config(first)
        tok = load_tokenizer(str(first))
        obj = Objective("dpo", beta=base.beta or 0.1)
        unweighted = dataclasses.replace(base, weight_column=None)  # held-out pairs are scored unweighted
        pairs, _ = prepare_data(unweighted, tok, held_out, eval_kwargs.get("limit", 256))
        ref = load_model(cfg_dict["model_path"], dtype=torch.float32, trainable=False)
        with_reference_logps(ref, cfg_dict["model_path"], tok, pairs, share_prompt=base.share_prompt,
                             packing=base.packing, batch_size=eval_kwargs.get("batch_size", 8))
        kw = {k: v for k, v in eval_kwargs.items() if k in ("n_prompts", "n_samples", "max_new_tokens",
                                                             "batch_size", "seed")}
        res = evaluate_models(ref, ref, tok, obj, pairs, share_prompt=base.share_prompt, packing=base.packing,
                              verifier=prompt_verifier(tok, pairs, eval_kwargs.get("task"),
                                                       eval_kwargs.get("verifier")), **kw)
        atomic_write_text(ref_file, json.dumps(res, indent=2, default=str))
    res = json.loads(ref_file.read_text())
    return {"metrics": res["metrics"], "items": record_items(res), "config": {"variant": "(starting model)"}}


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


def read_config(run_dir: Path) -> dict[str, Any]:
    from unipo.eval.evaluate import run_config

    return run_config(run_dir)
