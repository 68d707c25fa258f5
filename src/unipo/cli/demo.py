"""``unipo demo``: the built-in default run."""

from __future__ import annotations

import argparse
import time

from unipo.demo.pipeline import DEFAULTS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the built-in default: SmolLM2-135M learns exact-format addition (offline)")
    p.add_argument("--out", default="runs/demo", help="output directory (report.md, runs/, data/)")
    p.add_argument("--model", default=DEFAULTS["model"])
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--variants", nargs="+", default=DEFAULTS["variants"])
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from unipo.demo.pipeline import before_after_table, run_demo

    t = time.time()
    runs = run_demo(args.out, model=args.model, steps=args.steps, variants=args.variants,
                    progress=not args.no_progress)
    print("\nBefore (reference) and after (each variant), on held-out problems:\n")
    print(before_after_table(runs))
    print(f"\nReport: {args.out}/report.md   ({time.time() - t:.0f} s)")
    return 0
