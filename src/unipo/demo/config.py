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
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
