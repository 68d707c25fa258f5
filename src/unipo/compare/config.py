"""The configuration of :func:`unipo.compare.pipeline.compare`: one frozen record, built by ``unipo compare``
(:func:`unipo.cli.eval.compare_config`) from its flags, or from Python by the demo, claims/ and bench/.

Its command-line flags are the fields of :class:`unipo.eval.config.CompareArguments`,
:class:`unipo.training.config.ConfigSource` (the base TrainConfig), :class:`~unipo.eval.config.EvalOptions` and
:class:`~unipo.eval.config.JudgeOptions`; ``include_reference``, ``title`` and ``train_overrides`` are set from
Python only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unipo.errors import ConfigError
from unipo.eval.config import EvalOptions, JudgeOptions
from unipo.training.config import TrainConfig


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: train every variant from ``base`` (crossed with ``sweep``, under each of ``seeds``),
    evaluate each run on ``eval_data`` as ``evaluation`` and ``judge`` say, write the report into ``out``.

    - ``variants``: preset names or mappings (``{preset: simpo, beta: 2}``; training keys allowed);
    - ``eval_data``: held-out pairs (None: ``base.eval_data``, else ``base.data``);
    - ``sweep``: ``{key: [values]}``, an objective parameter or a training key, crossed with every variant;
    - ``evaluation``: how each run is scored (its ``seed`` is replaced by the run's seed under ``seeds``);
    - ``include_reference``: also evaluate the starting model once, the report's ``reference`` row;
    - ``train_overrides``: per run name, training settings that differ from ``base``
      (``{"dpo": {"learning_rate": 5e-5}}``);
    - ``seeds``: every variant under each seed; None: one run per variant with ``base.seed``;
    - ``baseline``: the run every other is compared with over seeds (None: the first variant);
    - ``keep_models`` False: an evaluated run's checkpoints and weights are deleted.
    """

    base: TrainConfig
    variants: list[Any]
    out: str | Path
    eval_data: str | None = None
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    judge: JudgeOptions | None = None
    include_reference: bool = True
    title: str = "unipo comparison"
    train_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] | None = None
    baseline: str | None = None
    keep_models: bool = True

    def check(self) -> None:
        """Refuse what no run can start with, in one line, before anything is trained."""
        unknown = {k for o in self.train_overrides.values() for k in o} - set(TrainConfig.keys())
        if unknown:
            raise ConfigError(f"train_overrides: unknown training settings {sorted(unknown)}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"compare: seeds must be distinct and at least one, got {self.seeds}")
        self.evaluation.check()
        if self.judge is not None:
            self.judge.endpoint()
