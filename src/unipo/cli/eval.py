"""``unipo eval`` and ``unipo compare``."""

from __future__ import annotations

import argparse
import json

import yaml


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=256, help="held-out pairs to score (default 256)")
    p.add_argument("--n-prompts", type=int, default=32, help="held-out prompts to sample from")
    p.add_argument("--n-samples", type=int, default=4, help="samples per prompt (0: no generation metrics)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--task", choices=["arithmetic", "none"], default=None,
                   help="a built-in task whose verifier scores the samples")
    p.add_argument("--judge", help="local reward model (sequence-classification checkpoint): win rate vs reference")
    p.add_argument("--judge-url", help="OpenAI-compatible base URL of a judge model (win rate vs reference)")
    p.add_argument("--judge-model", help="model name at --judge-url")
    p.add_argument("--api-key-env", help="environment variable holding the judge endpoint's API key")


def _eval_kwargs(args) -> dict:
    kw = {"limit": args.limit, "n_prompts": args.n_prompts, "n_samples": args.n_samples,
          "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "task": args.task}
    if args.judge or args.judge_url:
        if args.judge_url and not args.judge_model:
            from unipo.errors import ConfigError

            raise ConfigError("--judge-url needs --judge-model")
        kw["judge"] = {"judge": args.judge, "judge_url": args.judge_url, "judge_model": args.judge_model,
                       "api_key_env": args.api_key_env}
    return kw


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run against its reference on held-out data")
    p.add_argument("--model", required=True, help="a run directory written by unipo train")
    p.add_argument("--data", required=True, help="held-out preference data")
    p.add_argument("--reference", help="reference model (default: the run's starting model)")
    p.add_argument("--out", help="where to write the JSON (default RUN/eval.json)")
    _eval_args(p)
    p.set_defaults(func=run_eval)

    c = sub.add_parser("compare", help="train and evaluate several variants on the same data; write a report")
    c.add_argument("--config", help="base TrainConfig YAML (model, data, steps, ...)")
    c.add_argument("--variants", nargs="+", required=True,
                   help="preset names, or YAML mappings such as '{preset: simpo, weights: bmc}'")
    c.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="cross every variant with these parameter values, e.g. beta=0.05,0.1")
    c.add_argument("--out", required=True, help="report directory")
    c.add_argument("--data")
    c.add_argument("--eval-data")
    c.add_argument("--model")
    c.add_argument("--max-steps", type=int)
    c.add_argument("--seed", type=int)
    _eval_args(c)
    c.set_defaults(func=run_compare)


def run_eval(args) -> int:
    from unipo.eval.evaluate import evaluate_run, format_metrics

    result = evaluate_run(args.model, args.data, reference=args.reference, out=args.out, **_eval_kwargs(args))
    print(format_metrics(result["metrics"]))
    return 0


def run_compare(args) -> int:
    from unipo.compare.pipeline import compare
    from unipo.training.config import TrainConfig

    over = {k: getattr(args, k) for k in ("data", "model", "max_steps", "seed") if getattr(args, k) is not None}
    base = TrainConfig.load(args.config, over)
    variants = [yaml.safe_load(v) if v.strip().startswith("{") else v for v in args.variants]
    sweep = {}
    for item in args.sweep:
        key, _, values = item.partition("=")
        sweep[key] = [yaml.safe_load(v) for v in values.split(",")]
    runs = compare(base, variants, args.out, eval_data=args.eval_data, sweep=sweep, eval_kwargs=_eval_kwargs(args))
    print(json.dumps({name: {k: round(v, 4) for k, v in r["metrics"].items() if isinstance(v, float)}
                      for name, r in runs.items()}, indent=1))
    return 0
