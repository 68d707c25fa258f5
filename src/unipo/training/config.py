"""Training configuration: one dataclass, loaded from YAML and overridden from the command line.

Each key is a dataclass field with ``metadata={"help": ..., "choices": ...}``: the ``unipo train`` flags
and their help are generated from the fields (:mod:`unipo.cli.args`, transformers' HfArgumentParser), and
:meth:`TrainConfig.validate` checks the closed choices for YAML files and ``--set`` alike.
Precedence: field default < ``--config`` YAML < flags < ``--set KEY=VALUE``.

Unknown keys are an error that names the key and suggests the closest allowed one. The full resolved
configuration (including the resolved objective) is saved with every run as ``unipo_config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unipo.data.bmc_align import ALIGNMENTS as BMC_ALIGNMENTS
from unipo.data.bmc_align import EXEMPTIONS as BMC_EXEMPTIONS
from unipo.errors import ConfigError

REFERENCE_MODES = ("auto", "copy", "adapter", "precomputed", "none")
PRECISIONS = ("auto", "bf16", "fp32")
TRUNCATION_MODES = ("keep_end", "keep_start")
ON_INVALID = ("error", "skip")
#: TR-DPO reference updates (training/ref_sync.py)
REF_SYNC = ("none", "soft", "hard")
#: TR-DPO defaults: TRL's (``ref_model_mixup_alpha=0.6``, ``ref_model_sync_steps=512``)
REF_SYNC_ALPHA, REF_SYNC_STEPS = 0.6, 512
#: accepted by unipo.models.loading.resolve_dtype
REF_DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
#: transformers' SchedulerType values
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
#: keys whose value may be a mapping (on the command line: YAML text)
MAPPING_KEYS = ("variant", "token_signal", "lora")


@dataclass
class TrainConfig:
    """Everything ``unipo train`` needs. Defaults follow TRL's DPOTrainer where one exists.

    Each field is a key of the ``--config`` YAML and a flag of ``unipo train`` (``--max-steps`` or
    ``--max_steps``), generated from the field and its ``help`` by :mod:`unipo.cli.args`.
    """

    model: str = field(default="smollm2-135m-instruct", metadata={
        "help": "model to train: a local checkpoint directory, a hub name (when a network is there) or a built-in "
                "source (smollm2-135m-instruct)"})
    data: str | None = field(default=None, metadata={
        "help": "training preference pairs: a file (JSONL, optionally gzipped, JSON, Parquet, CSV), a "
                "datasets.save_to_disk directory or a hub dataset name"})
    eval_data: str | None = field(default=None, metadata={
        "help": "held-out preference pairs evaluated during training (every eval_steps), same formats as data"})
    variant: dict | str | None = field(default="dpo", metadata={
        "help": "the objective: a preset name (see `unipo variants`) or a mapping {preset: ..., PART: ..., "
                "PARAM: ...}, on the command line as YAML, e.g. '{preset: simpo, link: js}'"})
    beta: float | None = field(default=None, metadata={
        "help": "shortcut for the objective's beta (null: the preset's)"})
    output_dir: str = field(default="runs/unipo", metadata={
        "help": "run directory: model, unipo_config.yaml, metrics, plots and checkpoints"})
    # optimisation
    learning_rate: float = field(default=1e-6, metadata={"help": "peak learning rate"})
    lr_scheduler_type: str = field(default="linear", metadata={
        "help": "learning-rate schedule (transformers' SchedulerType)", "choices": LR_SCHEDULERS,
        "metavar": "SCHEDULE"})
    warmup_ratio: float = field(default=0.0, metadata={
        "help": "learning-rate warm-up as a share of total steps (a value >= 1 is a number of steps)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping: largest gradient norm"})
    per_device_batch_size: int = field(default=4, metadata={
        "help": "preference pairs per device (per process) in one forward/backward pass"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "help": "forward/backward passes accumulated into one optimizer step"})
    num_epochs: float = field(default=1.0, metadata={
        "help": "passes over the training data (when max_steps is -1)"})
    max_steps: int = field(default=-1, metadata={
        "help": "optimizer steps in all; -1: as many as num_epochs takes"})
    seed: int = field(default=42, metadata={"help": "random seed (initialisation, data order, eval_fraction split)"})
    # data
    max_length: int = field(default=512, metadata={
        "help": "tokens of prompt + response at most; responses are cut to fit (rows whose prompt alone is "
                "that long are dropped and reported)"})
    max_prompt_length: int = field(default=256, metadata={
        "help": "tokens of prompt at most (cut as truncation_mode says); smaller than max_length"})
    truncation_mode: str = field(default="keep_end", metadata={
        "help": "which part of a too-long prompt is kept", "choices": TRUNCATION_MODES})
    limit: int | None = field(default=None, metadata={"help": "use only the first N rows of data"})
    eval_limit: int | None = field(default=None, metadata={"help": "use only the first N rows of eval_data"})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "hold out this share of data for evaluation when no eval_data is given"})
    on_invalid: str = field(default="error", metadata={
        "help": "a row that fails validation: error (stop, naming file, row and field) or skip (counted and "
                "reported in data_summary.json)", "choices": ON_INVALID})
    weights_columns: list[str] | None = field(default=None, metadata={
        "help": "columns holding TIS-DPO per-token weights of the chosen and rejected responses, e.g. "
                "chosen_weights rejected_weights (null: those two for variants that need given weights)"})
    weight_column: str | None = field(default=None, metadata={
        "help": "a numeric column whose value (finite, >= 0) multiplies each pair's loss: the batch loss is then "
                "the weighted mean; a row without a valid value is invalid (on_invalid applies)"})
    data_num_proc: int | None = field(default=None, metadata={
        "help": "worker processes that tokenise the data (null: the cores available; 1: none); the prepared "
                "pairs are the same for every value, and cached (docs/data.md)"})
    bmc_alignment: str = field(default="levenshtein", metadata={
        "help": "BMC diff masks: how the two responses are aligned: levenshtein (the paper's minimal edit "
                "distance) or difflib (the released code's SequenceMatcher over the padded prompt + response rows)",
        "choices": BMC_ALIGNMENTS})
    bmc_exempt: str = field(default="stopwords", metadata={
        "help": "BMC diff masks: differing tokens left unmarked: stopwords (English stop-words, as the released "
                "code), stopwords_punctuation (also punctuation/whitespace-only tokens) or none",
        "choices": BMC_EXEMPTIONS})
    token_signal: dict | str | None = field(default=None, metadata={
        "help": "token signal trained (or computed) with the policy from the reference's hidden states: "
                "{type: sparsepo_masks, common: true} | {type: activation_masks} | {type: learned_prior} | none; "
                "null: sparsepo -> sparsepo_masks, learned_prior -> learned_prior (unipo.models.signals)"})
    # model
    precision: str = field(default="auto", metadata={
        "help": "auto: bf16 autocast where this machine runs it fast, else fp32", "choices": PRECISIONS})
    reference: str = field(default="auto", metadata={
        "help": "where the reference log-probs come from: copy (a frozen copy), adapter (the policy with its "
                "LoRA adapters off), precomputed (one pass before training, cached), none (reference-free "
                "variants); auto: none for reference-free variants, else adapter with LoRA, else copy",
        "choices": REFERENCE_MODES})
    ref_model: str | None = field(default=None, metadata={
        "help": "the reference model when it is not the starting model (a checkpoint directory or built-in name), "
                "for reference: copy or precomputed; null: the starting model `model` (as DPO does). `unipo "
                "iterate --reference fixed` sets it to the original model while each round starts from the last"})
    ref_sync: str = field(default="none", metadata={
        "help": "TR-DPO (arXiv 2404.09656): the reference follows the policy every ref_sync_steps optimizer steps; "
                "soft: ref <- alpha*policy + (1-alpha)*ref (parameter-wise), hard: ref <- policy; needs a live "
                "reference copy (reference: copy, full fine-tuning)", "choices": REF_SYNC})
    ref_sync_alpha: float | None = field(default=None, metadata={
        "help": f"soft ref_sync only: the policy's share alpha in (0, 1] (null: {REF_SYNC_ALPHA}, TRL's default)"})
    ref_sync_steps: int | None = field(default=None, metadata={
        "help": f"ref_sync: update the reference after every N-th optimizer step (tau; null: {REF_SYNC_STEPS}, "
                f"TRL's default)"})
    ref_dtype: str = field(default="auto", metadata={
        "help": "dtype of the reference model; auto: bfloat16 under bf16 precision, else float32",
        "choices": REF_DTYPES, "metavar": "DTYPE"})
    lora: dict | str | None = field(default=None, metadata={
        "help": "train LoRA adapters: a mapping such as {r: 16, alpha: 32, dropout: 0.05, target_modules: "
                "all-linear}; the flag alone means {r: 16, alpha: 32}; null: full fine-tuning",
        "nargs": "?", "const": {"r": 16, "alpha": 32}, "metavar": "MAPPING"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (less memory, more time)"})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "null: segment attention where exact (models/segment_attention.py), else the model's default; "
                "sdpa / eager: transformers' attention with the dense 4-D mask"})
    # fast path
    share_prompt: bool = field(default=True, metadata={
        "help": "one sequence [prompt | chosen | rejected] per pair, so the prompt is computed once"})
    packing: bool = field(default=True, metadata={
        "help": "no compute on padding (data/batching.py): one padding-free row per batch under segment "
                "attention, else several pairs per row where they fit"})
    chunk_size: int = field(default=1024, metadata={
        "help": "response tokens per chunk of the LM head and log-softmax (peak memory ~ chunk_size x vocabulary)"})
    # logging / checkpoints
    logging_steps: int = field(default=1, metadata={"help": "log metrics every N optimizer steps"})
    eval_steps: int | None = field(default=None, metadata={
        "help": "evaluate on eval_data (or the eval_fraction split) every N steps; null: never"})
    save_steps: int = field(default=100, metadata={"help": "write a checkpoint every N optimizer steps"})
    save_total_limit: int | None = field(default=2, metadata={
        "help": "checkpoints kept at most (the oldest are deleted); null: all"})
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={
        "help": "experiment trackers for the metrics (transformers' report_to: tensorboard, wandb, ...); none: "
                "only metrics.jsonl"})
    resume: bool = field(default=False, metadata={
        "help": "resume from the last checkpoint in output_dir (model, optimizer, scheduler and RNG state); the "
                "checkpoint must come from the same configuration (except max_steps, num_epochs, save/logging "
                "steps, report_to); a finished run is not trained again"})
    overwrite: bool = field(default=False, metadata={
        "help": "delete the run already in output_dir (all of it, never merged) and start again; without it "
                "(or resume) a directory holding a run is refused"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    plots: bool = field(default=True, metadata={"help": "write training_curves.png at the end of the run"})

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = cls.keys()
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: unknown key {key!r}{hint}; allowed keys: {', '.join(known)}")
        cfg = cls(**data)
        cfg.validate(source)
        return cfg

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The YAML file at ``path`` (if any) with ``overrides`` applied on top (a None value sets the key to
        null); the dataclass defaults fill the rest."""
        data: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.exists():
                raise ConfigError(f"config file {p} not found")
            try:
                data = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{p}: not valid YAML: {exc}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
        data.update(overrides or {})
        return cls.from_dict(data, source=str(path) if path else "command line")

    def validate(self, source: str = "config") -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            number = next((t for t in (int, float) if hints[f.name] in (t, t | None)), None)
            if number is not None and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
                try:
                    setattr(self, f.name, number(value))
                except ValueError:
                    raise ConfigError(f"{source}: {f.name} must be {'an integer' if number is int else 'a number'}"
                                      f", got {value!r}") from None
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{source}: {f.name} must be one of {', '.join(map(str, choices))}, "
                                  f"got {value!r}")
        for key in MAPPING_KEYS:  # a mapping given as YAML text, as on the command line
            value = getattr(self, key)
            if isinstance(value, str) and value.lstrip().startswith("{"):
                try:
                    setattr(self, key, yaml.safe_load(value))
                except yaml.YAMLError as exc:
                    raise ConfigError(f"{source}: {key} is not a valid YAML mapping: {exc}") from None
        if not isinstance(self.variant, str | dict):
            raise ConfigError(f"{source}: variant must be a preset name or a mapping {{preset: ..., ...}}, "
                              f"got {self.variant!r}")
        if self.lora is not None and not isinstance(self.lora, dict):
            raise ConfigError(f"{source}: lora must be a mapping such as {{r: 16, alpha: 32}} or null, "
                              f"got {self.lora!r}")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError(f"{source}: max_prompt_length ({self.max_prompt_length}) must be smaller than "
                              f"max_length ({self.max_length})")
        for key in ("per_device_batch_size", "gradient_accumulation_steps", "chunk_size", "logging_steps"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"{source}: {key} must be at least 1")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"{source}: eval_fraction must be in [0, 1)")
        if self.token_signal is not None and not isinstance(self.token_signal, str | dict):
            raise ConfigError(f"{source}: token_signal must be a type name (sparsepo_masks, activation_masks, "
                              f"learned_prior, none) or a mapping {{type: ..., option: value}}, "
                              f"got {self.token_signal!r}")
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        self._validate_ref_sync(source)

    def _validate_ref_sync(self, source: str) -> None:
        """TR-DPO keys: each only where it applies, in range (the reference mode is checked in the plan)."""
        if self.ref_sync == "none":
            given = [k for k in ("ref_sync_alpha", "ref_sync_steps") if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"{source}: {', '.join(given)} given but ref_sync is none (set ref_sync: soft "
                                  f"or hard, or drop {given[0]})")
            return
        if self.ref_sync == "hard" and self.ref_sync_alpha is not None:
            raise ConfigError(f"{source}: ref_sync_alpha applies to ref_sync: soft only (a hard sync copies the "
                              f"policy: alpha 1)")
        if self.ref_sync_alpha is not None and not 0 < self.ref_sync_alpha <= 1:
            raise ConfigError(f"{source}: ref_sync_alpha must be in (0, 1], got {self.ref_sync_alpha}")
        if self.ref_sync_steps is not None and int(self.ref_sync_steps) < 1:
            raise ConfigError(f"{source}: ref_sync_steps must be at least 1, got {self.ref_sync_steps}")

    def ref_sync_schedule(self) -> tuple[float, int] | None:
        """(alpha, tau) of the TR-DPO reference update, or None without one (hard: alpha 1)."""
        if self.ref_sync == "none":
            return None
        alpha = 1.0 if self.ref_sync == "hard" else float(self.ref_sync_alpha or REF_SYNC_ALPHA)
        return alpha, int(self.ref_sync_steps or REF_SYNC_STEPS)

    def objective_spec(self) -> dict[str, Any]:
        spec = dict(self.variant) if isinstance(self.variant, dict) else {"preset": self.variant}
        if self.beta is not None:
            spec["beta"] = self.beta
        return spec

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ConfigSource:
    """The ``--config`` file and ``--set`` overrides of ``unipo train`` (and of ``unipo compare``'s base)."""

    _argument_group_name = "configuration file and overrides"

    config: str | None = field(default=None, metadata={
        "help": "YAML file of TrainConfig keys; flags override its values", "metavar": "FILE"})
    set: list[str] = field(default_factory=list, metadata={
        "help": "override any TrainConfig key, after --config and the flags; VALUE is YAML, e.g. "
                "--set variant='{preset: simpo, weights: bmc}' (repeatable)",
        "action": "extend", "metavar": "KEY=VALUE"})
