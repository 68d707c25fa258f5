"""Options of ``unipo eval`` and ``unipo compare``, as dataclasses (their flags are generated from the fields).

- :class:`EvalArguments`: what ``unipo eval`` evaluates (the run, the data, the reference, the output);
- :class:`CompareArguments`: what ``unipo compare`` trains and where it writes the report (the base
  TrainConfig comes from ``--config`` / ``--set``, :class:`unipo.training.config.ConfigSource`);
- :class:`EvalOptions` and :class:`JudgeOptions`: how both score a model, the configuration of
  :func:`unipo.eval.evaluate.evaluate_run` (``evaluate_run(run, data, EvalOptions, JudgeOptions | None)``) and
  part of :class:`unipo.compare.config.CompareConfig`; the CLI builds them from the flags.

A field whose metadata has ``commands`` is a flag of those commands only (``()``: of none, a Python-only
setting such as the sampling ``seed`` that ``compare`` sets per run); :mod:`unipo.cli.args` reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from unipo.data.tokenize import ON_INVALID
from unipo.errors import ConfigError
from unipo.training.rundir import RunDir

TASKS = ("arithmetic", "none")


@dataclass
class EvalArguments:
    """``unipo eval``: which run to evaluate and on what (how: :class:`EvalOptions`)."""

    model: str = field(metadata={"help": "a run directory written by unipo train"})
    data: str = field(metadata={"help": "held-out preference data (any format unipo train reads)"})


@dataclass
class CompareArguments:
    """``unipo compare``: the variants, the data and model overrides of the base config, the report directory."""

    variants: list[str] = field(metadata={
        "help": "preset names, or YAML mappings such as '{preset: simpo, weights: bmc}'"})
    out: str = field(metadata={"help": "report directory (report.md, metrics.csv/json, plots, runs/)"})
    sweep: list[str] = field(default_factory=list, metadata={
        "help": "cross every variant with these values of an objective parameter (beta=0.05,0.1) or a training "
                "key (learning_rate=5e-7,1e-6,5e-6; any TrainConfig key but output_dir/resume/overwrite); "
                "repeatable: the sweeps are crossed",
        "action": "extend", "metavar": "KEY=V1,V2"})
    eval_data: str | None = field(default=None, metadata={
        "help": "held-out pairs every variant is evaluated on (null: the base config's eval_data, else its data)"})
    data: str | None = field(default=None, metadata={"help": "training data (overrides the base config's)"})
    model: str | None = field(default=None, metadata={"help": "starting model (overrides the base config's)"})
    max_steps: int | None = field(default=None, metadata={
        "help": "optimizer steps per variant (overrides the base config's)"})
    seed: int | None = field(default=None, metadata={"help": "random seed (overrides the base config's)"})
    seeds: list[str] = field(default_factory=list, metadata={
        "help": "train and evaluate every variant under each seed: a count N (seeds 0..N-1) or a list (1 7 42); "
                "the report gives mean ± standard error over seeds and paired differences from --baseline with "
                "95%% bootstrap intervals (over seeds and held-out items)", "nargs": "+", "metavar": "N|SEED"})
    keep_models: bool = field(default=True, metadata={
        "help": "keep every run's checkpoints and weights; --no-keep-models deletes them once the run is evaluated "
                f"(configuration, metrics and {RunDir.EVAL} stay): a sweep of many runs then needs the disk of one"})
    baseline: str | None = field(default=None, metadata={
        "help": "the run every other run is compared with (a run name such as dpo, or reference: the starting "
                "model); null: the first variant"})


@dataclass(frozen=True)
class EvalOptions:
    """How a model is scored (``unipo eval``, ``unipo compare``): the configuration of
    :func:`unipo.eval.evaluate.evaluate_run`. The first four fields are flags of ``unipo eval`` only
    (``compare`` evaluates each run against its own reference, into its own directory, with its training
    truncation); ``seed`` and ``reference_cache`` are set from Python (``compare --seeds``, tests)."""

    _argument_group_name = "evaluation"

    reference: str | None = field(default=None, metadata={
        "help": "reference model (null: the run's starting model)", "commands": ("eval",)})
    out: str | None = field(default=None, metadata={
        "help": f"where to write the JSON (null: RUN/{RunDir.EVAL})", "commands": ("eval",)})
    max_length: int | None = field(default=None, metadata={
        "help": "truncate held-out prompt + response to this many tokens (null: the run's training max_length; "
                f"what was truncated is printed and recorded in {RunDir.EVAL})", "commands": ("eval",)})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "truncate held-out prompts to this many tokens (null: the run's training max_prompt_length)",
        "commands": ("eval",)})

    limit: int | None = field(default=256, metadata={"help": "held-out pairs to score"})
    n_prompts: int = field(default=32, metadata={"help": "held-out prompts to sample responses for"})
    n_samples: int = field(default=4, metadata={"help": "samples per prompt (0: no generation metrics)"})
    max_new_tokens: int = field(default=64, metadata={"help": "new tokens per sampled response at most"})
    batch_size: int = field(default=8, metadata={"help": "pairs per forward pass"})
    task: str | None = field(default=None, metadata={
        "help": "a built-in task whose verifier scores the samples (null: none)", "choices": TASKS})
    verifier: str | None = field(default=None, metadata={
        "help": "your scorer module:function, called as function(prompt_text, response_text) -> bool or a score in "
                f"[0, 1] on every greedy and sampled answer (pass rates; each answer and verdict kept in "
                f"{RunDir.EVAL}); "
                "instead of --task"})
    on_invalid: str | None = field(default=None, metadata={
        "help": "a held-out row that fails validation: error (stop, naming file, row and field) or skip (counted "
                f"in {RunDir.EVAL}'s data_summary; compare: also the training rows, counted in each run's "
                f"{RunDir.DATA_SUMMARY}); null: the run's (compare: the base config's) on_invalid",
        "choices": ON_INVALID})
    seed: int = field(default=0, metadata={
        "help": "seed of the sampled responses (compare --seeds: each run's seed)", "commands": ()})
    reference_cache: bool = field(default=True, metadata={
        "help": "the reference's log-probs of the held-out pairs from (or into) the reference cache, for "
                "objectives without a live reference", "commands": ()})

    def check(self) -> None:
        """Refuse options that contradict each other, in one line naming the flags."""
        if self.verifier and self.task not in (None, "none"):
            raise ConfigError("--verifier and --task both score the answers: give one")


@dataclass(frozen=True)
class JudgeOptions:
    """A judge for the win rate of the policy's greedy answers against the reference model's."""

    _argument_group_name = "judge (win rate against the reference; --judge or --judge-url)"

    judge: str | None = field(default=None, metadata={
        "help": "local reward model (a sequence-classification checkpoint)"})
    judge_url: str | None = field(default=None, metadata={
        "help": "base URL of an OpenAI-compatible judge endpoint, e.g. http://host:8000/v1 (default: "
                "OPENAI_BASE_URL, when --judge-model is given)"})
    judge_model: str | None = field(default=None, metadata={"help": "model name at --judge-url"})
    api_key_env: str | None = field(default=None, metadata={
        "help": "environment variable holding the judge endpoint's API key (default OPENAI_API_KEY if set)",
        "metavar": "VAR"})

    def endpoint(self) -> dict[str, Any] | None:
        """The judge's keywords (:func:`unipo.eval.judge.judge_win_rate`), or None when no judge is asked for:
        neither ``judge`` nor ``judge_url``, and ``judge_model`` without ``OPENAI_BASE_URL`` in the environment."""
        if not (self.judge or self.judge_url or (self.judge_model and os.environ.get("OPENAI_BASE_URL"))):
            return None
        if not self.judge and not self.judge_model:
            raise ConfigError("--judge-url needs --judge-model")
        return {"judge": self.judge, "judge_url": self.judge_url, "judge_model": self.judge_model,
                "api_key_env": self.api_key_env}
