"""Training configuration: one dataclass, loaded from YAML and overridden from the command line.

Unknown keys are an error that names the key and suggests the closest allowed one. The full resolved
configuration (including the resolved objective) is saved with every run as ``unipo_config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unipo.errors import ConfigError

REFERENCE_MODES = ("auto", "copy", "adapter", "precomputed", "none")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """Everything ``unipo train`` needs. Defaults follow TRL's DPOTrainer where one exists."""

    model: str = "smollm2-135m-instruct"  # a local path, a hub name, or a built-in source
    data: str | None = None  # a file, a datasets directory or a hub dataset name
    eval_data: str | None = None
    variant: Any = "dpo"  # a preset name or a mapping {preset: ..., part: ..., param: ...}
    beta: float | None = None  # shortcut for the objective's beta
    output_dir: str = "runs/unipo"
    # optimisation
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0  # share of total steps (a value >= 1 is a number of steps)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    num_epochs: float = 1.0
    max_steps: int = -1
    seed: int = 42
    # data
    max_length: int = 512
    max_prompt_length: int = 256
    truncation_mode: str = "keep_end"
    limit: int | None = None  # use only the first N rows of data
    eval_limit: int | None = None
    eval_fraction: float = 0.0  # hold out this share of `data` when no eval_data is given
    on_invalid: str = "error"  # or "skip" (counted and reported)
    weights_columns: list[str] | None = None  # TIS-DPO token weights, e.g. [chosen_weights, rejected_weights]
    # token signal trained (or computed) with the policy from the reference's hidden states:
    # {type: sparsepo_masks, common: true} | {type: activation_masks} | {type: learned_prior} | none;
    # default (null): sparsepo → sparsepo_masks, learned_prior → learned_prior (unipo.models.signals)
    token_signal: Any = None
    # model
    precision: str = "auto"  # bf16 autocast where supported, else fp32
    reference: str = "auto"  # copy | adapter (LoRA) | precomputed | none (reference-free variants)
    ref_dtype: str = "auto"  # auto: bfloat16 under bf16 precision, else float32
    lora: dict | None = None  # e.g. {r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}
    gradient_checkpointing: bool = False
    # null: segment attention where exact (models/segment_attention.py), else the model's default;
    # "sdpa" / "eager": transformers' attention with the dense 4-D mask
    attn_implementation: str | None = None
    # fast path
    share_prompt: bool = True
    # no compute on padding (batching.py): one padding-free row per batch under segment attention, else
    # several pairs per row where they fit
    packing: bool = True
    chunk_size: int = 1024
    # logging / checkpoints
    logging_steps: int = 1
    eval_steps: int | None = None
    save_steps: int = 100
    save_total_limit: int | None = 2
    report_to: list[str] = field(default_factory=lambda: ["none"])
    resume: bool = False
    overwrite: bool = False  # remove a previous run in output_dir first (never merged)
    progress: bool = True
    plots: bool = True

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
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data, source=str(path) if path else "command line")

    def validate(self, source: str = "config") -> None:
        if self.reference not in REFERENCE_MODES:
            raise ConfigError(f"{source}: reference must be one of {REFERENCE_MODES}, got {self.reference!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{source}: precision must be one of {PRECISIONS}, got {self.precision!r}")
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

    def objective_spec(self) -> dict[str, Any]:
        spec = dict(self.variant) if isinstance(self.variant, dict) else {"preset": self.variant}
        if self.beta is not None:
            spec["beta"] = self.beta
        return spec

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
