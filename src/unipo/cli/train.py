"""``unipo train``: train any model on any preference data with any variant.

Every :class:`~unipo.training.config.TrainConfig` key is a flag (``--max-steps`` or ``--max_steps``),
generated with its help from the dataclass field (:mod:`unipo.cli.args`). Precedence: the field default <
``--config`` YAML < flags < ``--set KEY=VALUE``.
"""

from __future__ import annotations

import argparse
import json

from unipo.cli.args import add_command, given, parse_assignments
from unipo.training.config import ConfigSource, TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "train", TrainConfig, ConfigSource, help="train a model on preference data",
                    description="Train with any variant. Every TrainConfig key is a flag; values come from the "
                                "defaults, then --config YAML, then the flags given, then --set KEY=VALUE "
                                "(YAML value syntax), each overriding the one before.")
    p.set_defaults(func=run_train)


def parse_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig keys given on the command line: the flags, then ``--set`` on top."""
    return {**given(args, TrainConfig), **parse_assignments(getattr(args, "set", []))}


def run_train(args: argparse.Namespace) -> int:
    from unipo.eval.callbacks import TrainingCurvesCallback
    from unipo.training.train import train

    cfg = TrainConfig.load(getattr(args, "config", None), parse_overrides(args))
    label = str(cfg.variant_spec().get("preset", "dpo"))
    result = train(cfg, callbacks=[TrainingCurvesCallback(label)] if cfg.plots else [])
    # 4 significant digits: a learning rate of 5e-7 must not print as 0.0
    final = {k: float(f"{v:.4g}") for k, v in result.final_metrics.items() if isinstance(v, float)}
    print(json.dumps({"output_dir": str(result.run), **final}, indent=1))
    return 0
