"""``unipo train``: train any model on any preference data with any variant."""

from __future__ import annotations

import argparse
import json

import yaml

from unipo.training.config import TrainConfig

#: command-line flags that override config keys (name → type)
FLAGS = {
    "model": str, "data": str, "eval_data": str, "variant": str, "beta": float, "output_dir": str,
    "max_steps": int, "num_epochs": float, "learning_rate": float, "per_device_batch_size": int,
    "gradient_accumulation_steps": int, "max_length": int, "max_prompt_length": int, "limit": int,
    "seed": int, "precision": str, "reference": str, "save_steps": int, "logging_steps": int,
    "chunk_size": int, "on_invalid": str, "eval_fraction": float,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on preference data",
                       description="Train with any variant. Config keys come from --config YAML; flags override "
                                   "them; --set KEY=VALUE overrides any other key (YAML value syntax).")
    p.add_argument("--config", help="YAML file with TrainConfig keys")
    for name, typ in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ)
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (r=16, alpha=32)")
    p.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    p.add_argument("--overwrite", action="store_true", help="delete the run in --output-dir and start again")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set variant='{preset: simpo, weights: bmc}'")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)


def parse_overrides(args: argparse.Namespace) -> dict:
    over = {name: getattr(args, name) for name in FLAGS if getattr(args, name, None) is not None}
    if args.lora:
        over["lora"] = {"r": 16, "alpha": 32}
    if args.resume:
        over["resume"] = True
    if args.overwrite:
        over["overwrite"] = True
    if args.no_progress:
        over["progress"] = False
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            from unipo.errors import ConfigError

            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        over[key.strip()] = yaml.safe_load(value)
    return over


def run_train(args: argparse.Namespace) -> int:
    from unipo.eval.callbacks import TrainingCurvesCallback
    from unipo.training.train import train

    cfg = TrainConfig.load(args.config, parse_overrides(args))
    label = str(cfg.objective_spec().get("preset", "dpo"))
    result = train(cfg, callbacks=[TrainingCurvesCallback(label)] if cfg.plots else [])
    final = {k: round(v, 4) for k, v in result["final"].items() if isinstance(v, float)}
    print(json.dumps({"output_dir": result["output_dir"], **final}, indent=1))
    return 0
