"""``unipo eval`` and ``unipo compare``.

Their options are the fields of :mod:`unipo.eval.config` (and, for compare's base configuration,
:class:`unipo.training.config.ConfigSource`); the flags are generated from them (:mod:`unipo.cli.args`).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import yaml

from unipo.cli.args import add_command, given, parse_assignments, to_dataclass
from unipo.errors import ConfigError
from unipo.eval.config import CompareArguments, EvalArguments, EvalOptions, JudgeOptions
from unipo.training.config import ConfigSource

if TYPE_CHECKING:
    from unipo.compare.config import CompareConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "eval", EvalArguments, EvalOptions, JudgeOptions,
                    help="evaluate a trained run against its reference on held-out data")
    p.set_defaults(func=run_eval)

    c = add_command(sub, "compare", CompareArguments, ConfigSource, EvalOptions, JudgeOptions,
                    help="train and evaluate several variants on the same data; write a report",
                    description="Train each variant on the same data and seed, evaluate each and the starting "
                                "model on held-out pairs, and write OUT/report.md. The base TrainConfig comes "
                                "from --config, then --data/--model/--max-steps/--seed, then --set.")
    c.set_defaults(func=run_compare)


def run_eval(args: argparse.Namespace) -> int:
    from unipo.eval.evaluate import evaluate_run, format_metrics

    a = to_dataclass(args, EvalArguments)
    result = evaluate_run(a.model, a.data, to_dataclass(args, EvalOptions), to_dataclass(args, JudgeOptions))
    print(format_metrics(result["metrics"]))
    return 0


def parse_sweep(items: list[str]) -> dict[str, list[Any]]:
    """``["beta=0.05,0.1", ...]`` → ``{"beta": [0.05, 0.1]}`` (values read as YAML)."""
    sweep: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--sweep expects KEY=V1,V2,..., got {item!r}")
        try:
            sweep[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
        except yaml.YAMLError as exc:
            raise ConfigError(f"--sweep {item!r}: a value is not valid YAML: {exc}") from None
    return sweep


def parse_seeds(items: list[str]) -> list[int] | None:
    """``--seeds 3`` → ``[0, 1, 2]``; ``--seeds 1 7 42`` → ``[1, 7, 42]``; nothing → None (one run per variant)."""
    if not items:
        return None
    try:
        values = [int(x) for x in items]
    except ValueError:
        raise ConfigError(f"--seeds expects a count or a list of integers, got {' '.join(items)!r}") from None
    if len(values) == 1:
        if values[0] < 1:
            raise ConfigError(f"--seeds {values[0]}: a count must be at least 1")
        return list(range(values[0]))
    if len(set(values)) != len(values) or min(values) < 0:
        raise ConfigError(f"--seeds {' '.join(items)}: seeds must be distinct and non-negative")
    return values


def compare_config(args: argparse.Namespace) -> CompareConfig:
    """The :class:`~unipo.compare.config.CompareConfig` of ``unipo compare``'s flags: the base TrainConfig
    (``--config``, then ``--data/--model/--max-steps/--seed`` and ``--on-invalid``, then ``--set``), the
    variants, the sweeps and seeds, how each run is evaluated."""
    from unipo.compare.config import CompareConfig
    from unipo.training.config import TrainConfig

    a = to_dataclass(args, CompareArguments)
    src = to_dataclass(args, ConfigSource)
    evaluation = to_dataclass(args, EvalOptions)
    base_keys = ("data", "model", "max_steps", "seed")
    over = {k: v for k, v in given(args, CompareArguments).items() if k in base_keys}
    if evaluation.on_invalid is not None:  # --on-invalid covers the training rows too
        over["on_invalid"] = evaluation.on_invalid
    base = TrainConfig.load(src.config, {**over, **parse_assignments(src.set)})
    variants = [yaml.safe_load(v) if v.strip().startswith("{") else v for v in a.variants]
    return CompareConfig(base=base, variants=variants, out=a.out, eval_data=a.eval_data,
                         sweep=parse_sweep(a.sweep), evaluation=evaluation, judge=to_dataclass(args, JudgeOptions),
                         seeds=parse_seeds(a.seeds), baseline=a.baseline, keep_models=a.keep_models)


def run_compare(args: argparse.Namespace) -> int:
    from unipo.compare.pipeline import compare

    runs = compare(compare_config(args))
    print(json.dumps({name: {k: round(v, 4) for k, v in r["metrics"].items() if isinstance(v, float)}
                      for name, r in runs.items()}, indent=1))
    return 0
