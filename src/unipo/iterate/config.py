"""Options of ``unipo iterate``, as dataclasses; the flags and their help are generated from the fields
(:mod:`unipo.cli.args`). One dataclass per group of the help; :class:`IterateConfig` holds them all for
:func:`unipo.iterate.pipeline.run_iterate`.

Training keys not listed here (``max_length``, ``precision``, ...) come from ``--config`` YAML and ``--set``
(``TrainConfig`` keys); the flags below override the YAML, and :data:`TRAIN_DEFAULTS` fills what neither gives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from unipo.io.urls import redact_url
from unipo.iterate.labels import LABELS
from unipo.iterate.prompts import TASKS
from unipo.training.rundir import RunDir
from unipo.training.values import AT_LEAST_1, FRACTION, INT_MAX, NON_NEGATIVE, POSITIVE, Range, check_fields

REFERENCES = ("reset", "fixed")
#: the valid numbers of each numeric option (unipo.training.values; the type comes from the field's annotation)
RANGES: dict[str, Range] = {
    "prompt_limit": AT_LEAST_1, "heldout": AT_LEAST_1, "prompts_per_round": AT_LEAST_1, "rounds": AT_LEAST_1,
    "seed": Range(0, 2**32 - 1), "samples": Range(2, INT_MAX), "temperature": POSITIVE,
    "top_p": Range(0, 1, lo_open=True), "max_new_tokens": AT_LEAST_1, "generation_batch_size": AT_LEAST_1,
    "judge_concurrency": AT_LEAST_1, "implicit_beta": POSITIVE, "min_margin": NON_NEGATIVE, "beta": POSITIVE,
    "steps": AT_LEAST_1, "learning_rate": POSITIVE, "batch_size": AT_LEAST_1, "replay_ratio": FRACTION,
    "eval_samples": AT_LEAST_1,
}

#: training settings of one round when neither ``--config`` nor a flag gives them. The loss is RPO, DPO plus
#: the chosen answer's length-normalised NLL (Pang et al., "Iterative Reasoning Preference Optimization",
#: NeurIPS 2024, arXiv:2404.19733, Eq. 2: the loss of iterative training on verifier-labelled samples): on the
#: arithmetic task from SmolLM2-135M-Instruct, plain DPO (β 0.05, same steps and learning rate) reached a greedy
#: pass rate of only 0.125 / 0.167 after rounds 1 / 2 (24 held-out prompts; its greedy answers became bare but
#: wrong numbers), RPO 0.521 / 0.604 / 0.708 after rounds 1 / 2 / 3 (48 held-out prompts; docs/iterate.md).
#: Ten steps of 8 pairs cover a round's pairs (≤ 48 generated + as many replayed) about once; the default
#: 3-round run finishes in about 13 minutes on 2 CPU cores.
TRAIN_DEFAULTS: dict[str, Any] = {
    "variant": "rpo", "max_steps": 10, "learning_rate": 5e-5, "per_device_batch_size": 8, "warmup_ratio": 0.1,
    "max_length": 512, "max_prompt_length": 384, "save_steps": 8, "save_total_limit": 1,
}


@dataclass
class SourceArguments:
    """The starting model, the prompts and the output directory."""

    _argument_group_name = "model, prompts and output"

    out: str = field(default="runs/iterate", metadata={
        "help": f"output directory: round-N/{{samples.jsonl, pairs.jsonl, model, {RunDir.EVAL}}}, report.md"})
    model: str = field(default="smollm2-135m-instruct", metadata={
        "help": "starting policy: a built-in name, a checkpoint directory or a hub name"})
    task: str | None = field(default=None, metadata={
        "help": "a built-in task supplies the prompts and the verifier", "choices": TASKS})
    prompts: str | None = field(default=None, metadata={
        "help": "prompts file (JSONL, JSON, Parquet, CSV): a `prompt` field (text or chat messages) per row, or "
                "preference rows (their prompts)", "metavar": "FILE"})
    prompt_limit: int | None = field(default=None, metadata={"help": "read only the first N usable prompts"})
    heldout: int = field(default=48, metadata={
        "help": "prompts held out for each round's evaluation (the first N of the prompts file)"})
    prompts_per_round: int = field(default=48, metadata={
        "help": "training prompts sampled per round (the pool is cycled when rounds need more)"})
    rounds: int = field(default=3, metadata={"help": "rounds of sample → label → pair → train"})
    seed: int = field(default=0, metadata={"help": "seed of the prompts, sampling, replay and training"})


@dataclass
class SamplingArguments:
    """Sampling K responses per prompt from the current policy."""

    _argument_group_name = "sampling"

    samples: int = field(default=8, metadata={"help": "K: responses sampled per prompt (at least 2)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling: keep the most likely tokens up to "
                                                        "this probability mass (1: off)"})
    max_new_tokens: int = field(default=16, metadata={"help": "new tokens per response at most"})
    generation_batch_size: int = field(default=64, metadata={"help": "sequences generated at once"})


@dataclass
class LabelArguments:
    """How each sample is scored and paired."""

    _argument_group_name = "labels and pairs"

    label: str = field(default="verifier", metadata={"help": "who scores the samples", "choices": LABELS})
    verifier: str | None = field(default=None, metadata={
        "help": "--label verifier: your function module:function, called with (prompt text, response text), "
                "returning a bool or a number (default: the --task's checker)", "metavar": "MODULE:FUNCTION"})
    reward_model: str | None = field(default=None, metadata={
        "help": "--label reward-model: a local sequence-classification checkpoint", "metavar": "DIR"})
    judge_url: str | None = field(default=None, metadata={
        "help": "--label judge: base URL of an OpenAI-compatible API, e.g. http://host:8000/v1"})
    judge_model: str | None = field(default=None, metadata={"help": "--label judge: the model name to send"})
    api_key_env: str | None = field(default=None, metadata={
        "help": "environment variable holding the judge's API key (never logged or written)", "metavar": "VAR"})
    judge_concurrency: int = field(default=4, metadata={"help": "judge requests in flight at most"})
    implicit_beta: float = field(default=0.1, metadata={
        "help": "--label implicit: β of DICE's implicit reward β·log(π/π_ref)(y) (DICE uses the DPO β, 0.1)"})
    label_reference: str | None = field(default=None, metadata={
        "help": "--label implicit: the reference of the starting model (the model it was DPO-trained from); "
                "rounds after the first use their own", "metavar": "MODEL"})
    min_margin: float = field(default=0.0, metadata={
        "help": "skip a prompt whose best − worst score is below this (0: any difference makes a pair)"})


@dataclass
class RoundTrainArguments:
    """Training of each round (any variant; TrainConfig keys via --config/--set)."""

    _argument_group_name = "training per round"

    variant: dict | str | None = field(default=None, metadata={
        "help": f"per-round objective: a preset name or a mapping (null: --config's, else "
                f"{TRAIN_DEFAULTS['variant']})"})
    beta: float | None = field(default=None, metadata={"help": "the objective's β (null: the variant's)"})
    steps: int | None = field(default=None, metadata={
        "help": f"optimizer steps per round (null: --config's max_steps, else {TRAIN_DEFAULTS['max_steps']})"})
    learning_rate: float | None = field(default=None, metadata={
        "help": f"peak learning rate (null: --config's, else {TRAIN_DEFAULTS['learning_rate']})"})
    batch_size: int | None = field(default=None, metadata={
        "help": f"pairs per step (null: --config's per_device_batch_size, else "
                f"{TRAIN_DEFAULTS['per_device_batch_size']})"})
    lora: dict | str | None = field(default=None, metadata={
        "help": "train LoRA adapters, merged into the round's model at its end (null: --config's, else full)",
        "nargs": "?", "const": {"r": 16, "alpha": 32}, "metavar": "MAPPING"})
    reference: str = field(default="reset", metadata={
        "help": "reset: each round's reference is its starting policy (DICE); fixed: the original model",
        "choices": REFERENCES})
    data: str | None = field(default=None, metadata={
        "help": "offline preference pairs replayed into each round (and trained alone as the baseline)"})
    task_pairs: bool = field(default=True, metadata={
        "help": "with --task and no --data: replay the task's own offline pairs (arithmetic: the demo's, the bare "
                "sum chosen over a habit or a wrong sum, for the training prompts only) and train the baseline on "
                "them; --no-task-pairs: the model's own pairs alone"})
    on_invalid: str = field(default="error", metadata={
        "help": "an offline row that fails validation (e.g. a blank response, as real HH-RLHF has): error (stop, "
                "naming file, row and field) or skip (counted in OUT/iterate.json: offline_invalid)",
        "choices": ("error", "skip")})
    replay_ratio: float = field(default=0.5, metadata={
        "help": "γ: share of offline pairs in a round's data when --data is given (DICE: 0.5)"})
    baseline: bool = field(default=True, metadata={
        "help": "with --data: also train the starting model on the offline pairs alone (rounds × steps) and "
                "report it beside the rounds"})
    config: str | None = field(default=None, metadata={"help": "YAML of TrainConfig keys", "metavar": "FILE"})
    set: list[str] = field(default_factory=list, metadata={
        "help": "override any TrainConfig key (VALUE is YAML; repeatable)", "action": "extend",
        "metavar": "KEY=VALUE"})


@dataclass
class RunArguments:
    """Evaluation and the run itself."""

    _argument_group_name = "evaluation and run"

    eval_samples: int = field(default=4, metadata={
        "help": "samples per held-out prompt at temperature 1 (sampled reward, KL, length); greedy is one more"})
    overwrite: bool = field(default=False, metadata={"help": "delete OUT and start again"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


#: every option of ``unipo iterate``, in the order of the help
ITERATE_OPTIONS = (SourceArguments, SamplingArguments, LabelArguments, RoundTrainArguments, RunArguments)


@dataclass
class IterateConfig(SourceArguments, SamplingArguments, LabelArguments, RoundTrainArguments, RunArguments):
    """All options of ``unipo iterate`` in one object (the fields of :data:`ITERATE_OPTIONS`)."""

    @classmethod
    def from_parts(cls, *parts: Any) -> IterateConfig:
        values: dict[str, Any] = {}
        for part in parts:
            values.update({f.name: getattr(part, f.name) for f in dataclasses.fields(part)})
        return cls(**values)

    def validate(self, source: str = "option") -> None:
        """Every option's type, finiteness and range (booleans only booleans), before anything is read or
        loaded: one line naming the option (:mod:`unipo.training.values`)."""
        check_fields(self, source, RANGES)

    @property
    def replays_offline(self) -> bool:
        """Offline pairs are replayed (and a baseline trained on them): ``--data``, or a task's own pairs."""
        return bool(self.data or (self.task and self.task_pairs))

    def to_dict(self) -> dict[str, Any]:
        """The settings as stored in ``iterate.json``: ``judge_url`` without its credentials (issue 23, item 9)."""
        return {**dataclasses.asdict(self), "judge_url": redact_url(self.judge_url)}
