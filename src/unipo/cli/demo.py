"""``unipo demo``: the built-in default run (options: :class:`unipo.demo.config.DemoArguments`)."""

from __future__ import annotations

import argparse
import time

from unipo.cli.args import add_command, to_dataclass
from unipo.demo.config import DemoArguments


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "demo", DemoArguments,
                    help="the built-in default: SmolLM2-135M learns exact-format addition (offline)")
    p.set_defaults(func=run)


def run(args) -> int:
    from unipo.demo.pipeline import before_after_table, run_demo
    from unipo.models.loading import choose_precision

    a = to_dataclass(args, DemoArguments)
    t = time.time()
    precision = choose_precision(a.precision)
    runs = run_demo(a.out, model=a.model, steps=a.steps, variants=a.variants, progress=a.progress,
                    seeds=a.seeds or None, precision=precision)
    seeds = f", seeds {' '.join(map(str, a.seeds))} (mean ± standard error)" if a.seeds else ", seed 0"
    print(f"\nBefore (reference) and after (each variant), on held-out problems; training precision {precision}"
          f"{' (auto)' if a.precision == 'auto' else ''}{seeds}:\n")
    print(before_after_table(runs))
    print(f"\nReport: {a.out}/report.md   ({time.time() - t:.0f} s)")
    return 0
