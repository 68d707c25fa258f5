"""``unipo iterate``: on-policy rounds (iterative DPO labelled by a verifier, a reward model or a judge; DICE).

Examples::

    # the built-in arithmetic task, verifier labels, two rounds of DPO
    unipo iterate --model smollm2-135m-instruct --task arithmetic --label verifier --rounds 2 --out runs/it

    # DICE: implicit rewards of a DPO model against its reference, offline pairs replayed at γ = 0.5
    unipo iterate --model runs/dpo --label-reference smollm2-135m-instruct --label implicit \\
        --prompts prompts.jsonl --data pairs.jsonl --replay-ratio 0.5 --out runs/dice

Rerunning the same command resumes; see docs/iterate.md. The options are the fields of
:mod:`unipo.iterate.config`; the flags are generated from them (:mod:`unipo.cli.args`).
"""

from __future__ import annotations

import argparse

from unipo.cli.args import add_command, to_dataclass
from unipo.iterate.config import ITERATE_OPTIONS, IterateConfig


def register(subparsers) -> None:
    p = add_command(
        subparsers, "iterate", *ITERATE_OPTIONS,
        help="on-policy rounds: sample K responses, label them, pair best vs worst, train; repeat",
        description=(
            "Each round samples K responses per prompt from the current policy, labels them (a verifier, "
            "DICE's implicit reward, a reward model or an LLM judge), pairs the best against the worst, mixes "
            "in offline pairs at ratio γ and trains the round with any variant. Writes OUT/round-N/ and "
            "OUT/report.md; rerunning the same command resumes."
        ),
    )
    p.set_defaults(func=run_iterate_command)


def run_iterate_command(args: argparse.Namespace) -> int:
    """Entry point of ``unipo iterate``."""
    from unipo.iterate.pipeline import run_iterate

    cfg = IterateConfig.from_parts(*(to_dataclass(args, d) for d in ITERATE_OPTIONS))
    run_iterate(cfg)
    return 0
