"""Options of ``unipo demo``, as a dataclass (the flags are generated from the fields); the defaults are
:data:`unipo.demo.pipeline.DEFAULTS`, the keywords of :func:`unipo.demo.pipeline.run_demo`."""

from __future__ import annotations

from dataclasses import dataclass, field

from unipo.demo.pipeline import DEFAULTS


@dataclass
class DemoArguments:
    """``unipo demo``: the built-in default run."""

    out: str = field(default="runs/demo", metadata={"help": "output directory (report.md, runs/, data/)"})
    model: str = field(default=DEFAULTS["model"], metadata={
        "help": "starting model: a built-in name, a checkpoint directory or a hub name"})
    steps: int = field(default=DEFAULTS["steps"], metadata={"help": "optimizer steps per variant"})
    variants: list[str] = field(default_factory=lambda: list(DEFAULTS["variants"]), metadata={
        "help": "variants to train and compare (preset names)"})
    seeds: list[int] = field(default_factory=list, metadata={
        "help": "train every variant under each of these seeds (same pairs): mean ± standard error over seeds, "
                "and 'improved?' asks it of every seed; none: one run with seed 0"})
    precision: str = field(default="auto", metadata={
        "help": "training precision; auto: bf16 where this machine runs it fast (native bf16), else fp32; the "
                "demo's figures move with it (README)", "choices": ("auto", "bf16", "fp32")})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
