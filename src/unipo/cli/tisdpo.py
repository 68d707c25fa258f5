"""``unipo weights``: TIS-DPO token weights (Liu et al., ICLR 2025, §6.1, Eq. 19).

Examples::

    # (D): DPO on the data vs DPO on the swapped data (LoRA r=16), then score every token
    unipo weights estimate --method dpo --model smollm2-135m-instruct --data pairs.jsonl --out weighted.jsonl

    # (P): the same model under a harmless and a harmful system prompt; nothing is trained
    unipo weights estimate --method prompt --model smollm2-135m-instruct --data pairs.jsonl --out w.jsonl

    unipo weights show weighted.jsonl --n 8 --out weights_view/
    unipo train --variant tisdpo --data weighted.jsonl --model smollm2-135m-instruct

Rerunning the same estimate command resumes; see docs/tisdpo.md. The options are the fields of
:mod:`unipo.tisdpo.config`; the flags are generated from them (:mod:`unipo.cli.args`).
"""

from __future__ import annotations

import argparse
import json

from unipo.cli.args import add_command, parse_assignments, to_dataclass
from unipo.errors import ConfigError
from unipo.tisdpo.config import (
    ESTIMATE_OPTIONS,
    ContrastiveTrainingArguments,
    EstimateArguments,
    PromptPairArguments,
    ScoringArguments,
    ShowArguments,
    TokenImportanceArguments,
    TransformArguments,
)


def register(subparsers) -> None:
    p = subparsers.add_parser("weights", help="TIS-DPO: estimate per-token importance weights, and show them",
                              description="TIS-DPO token weights (Liu et al., ICLR 2025). See docs/tisdpo.md.")
    sub = p.add_subparsers(dest="weights_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    e = add_command(
        sub, "estimate", *ESTIMATE_OPTIONS,
        help="build (π+, π−), score every response token, write weights",
        description="Build a contrastive pair of models (π+, π−) with method P (prompts), S (SFT on chosen / "
                    "rejected) or D (DPO on the data / swapped data), score every response token with both "
                    "and write w_t = k·exp(μ·clamp(log π+ − log π−, L, U)) (μ = +1 chosen, −1 rejected; TIS-DPO "
                    "Eq. 19) or the released code's rank mapping. Rows are appended as they are scored; "
                    "rerunning the same command resumes. Trained models are cached and reused.")
    e.set_defaults(func=run_estimate)

    s = add_command(sub, "show", ShowArguments,
                    help="render weights: HTML + PNG of coloured tokens, histogram per side",
                    description="Render a weights file: weights.html and weights_tokens.png (each token's "
                                "background coloured by its weight, centred at 1, chosen and rejected side "
                                "by side) and weights_hist.png (the weights per side).")
    s.add_argument("weighted", nargs="?", default=argparse.SUPPRESS, metavar="WEIGHTED",
                   help="a file written by `unipo weights estimate` (or --weighted)")
    s.set_defaults(func=run_show)


def parse_train_set(items: list[str]) -> dict:
    from unipo.training.config import TrainConfig

    over = parse_assignments(items, "--train-set")
    for key in over:
        if key not in TrainConfig.keys():
            raise ConfigError(f"--train-set: unknown training key {key!r}; allowed: {', '.join(TrainConfig.keys())}")
        if key in ("model", "data", "output_dir"):
            raise ConfigError(f"--train-set: {key} is set by `unipo weights estimate`")
    return over


def run_estimate(args: argparse.Namespace) -> int:
    from unipo.tisdpo.estimate import EstimateOptions, estimate_weights

    a, tf = to_dataclass(args, EstimateArguments), to_dataclass(args, TransformArguments)
    pp, tr = to_dataclass(args, PromptPairArguments), to_dataclass(args, ContrastiveTrainingArguments)
    sc, ti = to_dataclass(args, ScoringArguments), to_dataclass(args, TokenImportanceArguments)
    if a.limit is not None and a.limit < 1:
        raise ConfigError("--limit must be at least 1")
    opts = EstimateOptions(
        method=a.method, transform=tf.transform, lower=tf.lower, upper=tf.upper, k=tf.k,
        rank_range=tuple(tf.rank_range), rank_ties=tf.rank_ties, eos=tf.eos, prompt_pair=pp.prompt_pair,
        positive_system=pp.positive_system,
        negative_system=pp.negative_system, limit=a.limit, batch_size=sc.batch_size, device=sc.device,
        dtype=sc.dtype, models_dir=tr.models_dir,
        lora=None if tr.full_finetune else {"r": tr.lora_r, "alpha": 2 * tr.lora_r},
        train_overrides=parse_train_set(tr.train_set), retrain=tr.retrain, overwrite=sc.overwrite,
        progress=sc.progress, on_invalid=sc.on_invalid, ti_lambda=ti.ti_lambda, ti_prior_norm=ti.ti_prior_norm)
    summary = estimate_weights(a.data, a.out, a.model, opts)
    print(json.dumps({k: summary[k] for k in ("pairs", "pairs_total", "complete", "chosen", "rejected")},
                     indent=1))
    return 0 if summary["complete"] else 1


def run_show(args: argparse.Namespace) -> int:
    from unipo.tisdpo.show import show_weights

    a = to_dataclass(args, ShowArguments)
    if a.weighted is None:
        raise ConfigError("give the weights file: unipo weights show WEIGHTED --out DIR")
    files = show_weights(a.weighted, a.out, n=a.n, tokenizer=a.tokenizer, max_tokens=a.max_tokens)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=1))
    return 0
