"""``unipo weights``: TIS-DPO token weights (Liu et al., ICLR 2025, §4.2, Eq. 13).

Examples::

    # (D): DPO on the data vs DPO on the swapped data (LoRA r=16), then score every token
    unipo weights estimate --method dpo --model smollm2-135m-instruct --data pairs.jsonl --out weighted.jsonl

    # (P): the same model under a harmless and a harmful system prompt; nothing is trained
    unipo weights estimate --method prompt --model smollm2-135m-instruct --data pairs.jsonl --out w.jsonl

    unipo weights show weighted.jsonl --n 8 --out weights_view/
    unipo train --variant tisdpo --data weighted.jsonl --model smollm2-135m-instruct

Rerunning the same estimate command resumes; see docs/tisdpo.md.
"""

from __future__ import annotations

import argparse
import json

import yaml

from unipo.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("weights", help="TIS-DPO: estimate per-token importance weights, and show them",
                              description="TIS-DPO token weights (Liu et al., ICLR 2025). See docs/tisdpo.md.")
    sub = p.add_subparsers(dest="weights_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    e = sub.add_parser(
        "estimate", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="build (π+, π−), score every response token, write weights",
        description="Build a contrastive pair of models (π+, π−) with method P (prompts), S (SFT on chosen / "
                    "rejected) or D (DPO on the data / swapped data), score every response token with both "
                    "and write w_t = k·exp(μ·clamp(log π+ − log π−, L, U)) (μ = +1 chosen, −1 rejected; TIS-DPO "
                    "Eq. 13) or the released code's rank mapping. Rows are appended as they are scored; "
                    "rerunning the same command resumes. Trained models are cached and reused.")
    e.add_argument("--method", choices=["prompt", "sft", "dpo"], default="dpo",
                   help="how to build (π+, π−): prompt (P), sft (S) or dpo (D, the paper's best)")
    e.add_argument("--model", required=True, help="base model: a built-in name, a checkpoint directory or a "
                   "hub name; its tokenizer is the one training must use")
    e.add_argument("--data", required=True, help="preference pairs (any format `unipo train` reads)")
    e.add_argument("--out", required=True, help="output JSONL; sidecars OUT.meta.json, OUT.summary.json")
    e.add_argument("--limit", type=int, default=None, help="only the first N rows (training and scoring)")
    t = e.add_argument_group("transform")
    t.add_argument("--transform", choices=["paper", "rank"], default="paper",
                   help="paper: k·exp(μ·clamp(d, L, U)); rank: the released code's rank mapping to "
                        "[0.7, 1.3] within each response, end-of-sequence token 0")
    t.add_argument("--lower", type=float, default=-0.5, help="L, the clamp's lower bound")
    t.add_argument("--upper", type=float, default=1.5, help="U, the clamp's upper bound")
    t.add_argument("--k", type=float, default=1.0, help="k, the weight scale")
    t.add_argument("--rank-range", type=float, nargs=2, default=[0.7, 1.3], metavar=("LOW", "HIGH"),
                   help="range of the rank transform")
    pr = e.add_argument_group("method prompt (P)")
    pr.add_argument("--prompt-pair", default="harmless", choices=["harmless", "helpful"],
                    help="built-in contrastive system prompts (paraphrases of the paper's)")
    pr.add_argument("--positive-system", default=None, help="system prompt of π+ (overrides the pair's)")
    pr.add_argument("--negative-system", default=None, help="system prompt of π− (overrides the pair's)")
    tr = e.add_argument_group("methods sft (S) and dpo (D): training the contrastive models")
    tr.add_argument("--models-dir", default=None,
                    help="where trained pairs are cached (default: $UNIPO_CACHE/tisdpo or ~/.cache/unipo/tisdpo)")
    tr.add_argument("--full-finetune", action="store_true", help="train full models instead of LoRA adapters")
    tr.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2r)")
    tr.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a training key (TrainConfig; YAML value), e.g. --train-set max_steps=50")
    tr.add_argument("--retrain", action="store_true", help="train the pair again even if cached")
    sc = e.add_argument_group("scoring")
    sc.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass")
    sc.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")
    sc.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="scoring dtype (float32 keeps the log-prob differences exact)")
    sc.add_argument("--on-invalid", default="error", choices=["error", "skip"], help="rows that fail validation")
    sc.add_argument("--overwrite", action="store_true", help="delete OUT and its sidecars and start again")
    sc.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=run_estimate)

    s = sub.add_parser("show", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="render weights: HTML + PNG of coloured tokens, histogram per side",
                       description="Render a weights file: weights.html and weights_tokens.png (each token's "
                                   "background coloured by its weight, centred at 1, chosen and rejected side "
                                   "by side) and weights_hist.png (the weights per side).")
    s.add_argument("weighted", help="a file written by `unipo weights estimate`")
    s.add_argument("--n", type=int, default=8, help="number of pairs to draw")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--tokenizer", default=None, help="tokenizer (default: the model in WEIGHTED's meta.json)")
    s.add_argument("--max-tokens", type=int, default=160, help="tokens per response in the PNG")
    s.set_defaults(func=run_show)


def parse_train_set(items: list[str]) -> dict:
    from unipo.training.config import TrainConfig

    over = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--train-set expects KEY=VALUE, got {item!r}")
        if key not in TrainConfig.keys():
            raise ConfigError(f"--train-set: unknown training key {key!r}; allowed: {', '.join(TrainConfig.keys())}")
        if key in ("model", "data", "output_dir"):
            raise ConfigError(f"--train-set: {key} is set by `unipo weights estimate`")
        over[key] = yaml.safe_load(value)
    return over


def run_estimate(args: argparse.Namespace) -> int:
    from unipo.tisdpo.estimate import EstimateOptions, estimate_weights

    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    opts = EstimateOptions(
        method=args.method, transform=args.transform, lower=args.lower, upper=args.upper, k=args.k,
        rank_range=tuple(args.rank_range), prompt_pair=args.prompt_pair, positive_system=args.positive_system,
        negative_system=args.negative_system, limit=args.limit, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, models_dir=args.models_dir,
        lora=None if args.full_finetune else {"r": args.lora_r, "alpha": 2 * args.lora_r},
        train_overrides=parse_train_set(args.train_set), retrain=args.retrain, overwrite=args.overwrite,
        progress=not args.no_progress, on_invalid=args.on_invalid)
    summary = estimate_weights(args.data, args.out, args.model, opts)
    print(json.dumps({k: summary[k] for k in ("pairs", "pairs_total", "complete", "chosen", "rejected")},
                     indent=1))
    return 0 if summary["complete"] else 1


def run_show(args: argparse.Namespace) -> int:
    from unipo.tisdpo.show import show_weights

    files = show_weights(args.weighted, args.out, n=args.n, tokenizer=args.tokenizer, max_tokens=args.max_tokens)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=1))
    return 0
