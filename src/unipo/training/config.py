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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unipo.data.bmc_align import ALIGNMENTS as BMC_ALIGNMENTS
from unipo.data.bmc_align import EXEMPTIONS as BMC_EXEMPTIONS
from unipo.data.tokenize import ON_INVALID, TRUNCATION_MODES
from unipo.errors import ConfigError
from unipo.objective.config import with_beta
from unipo.training.rundir import RunDir
from unipo.training.values import (
    AT_LEAST_1,
    FLOAT32_MAX,
    FRACTION,
    INT_MAX,
    NON_NEGATIVE,
    POSITIVE,
    Range,
    check_fields,
    checked,
)

REFERENCE_MODES = ("auto", "copy", "adapter", "precomputed", "none")
PRECISIONS = ("auto", "bf16", "fp32")
#: TR-DPO reference updates and BEMA (training/ref_sync.py)
REF_SYNC = ("none", "soft", "hard", "bema")
#: the keys of ref_sync_bema (TRL's BEMACallback arguments; ref_sync_steps is its ref_model_update_freq)
BEMA_KEYS = ("update_freq", "ema_power", "bias_power", "lag", "update_after", "multiplier", "min_ema_multiplier",
             "ref_update_after")
#: TR-DPO defaults: TRL's (``ref_model_mixup_alpha=0.6``, ``ref_model_sync_steps=512``)
REF_SYNC_ALPHA, REF_SYNC_STEPS = 0.6, 512
#: accepted by unipo.models.loading.resolve_dtype
REF_DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
#: transformers' SchedulerType values
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
#: transformers' attention implementations (besides a hub kernel, ``org/name``)
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
#: what a training step whose loss or gradient norm is not finite does (training/nonfinite.py)
NAN_POLICIES = ("stop", "skip_step")
#: the valid numbers of each numeric key (unipo.training.values; the type comes from the field's annotation)
RANGES: dict[str, Range] = {
    "learning_rate": NON_NEGATIVE, "warmup_ratio": Range(0, None, whole_from=1), "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE, "per_device_batch_size": AT_LEAST_1, "gradient_accumulation_steps": AT_LEAST_1,
    "num_epochs": POSITIVE, "max_steps": Range(1, INT_MAX, also=(-1,)), "seed": Range(0, 2**32 - 1),
    "max_length": Range(2, INT_MAX), "max_prompt_length": AT_LEAST_1, "limit": AT_LEAST_1, "eval_limit": AT_LEAST_1,
    "eval_fraction": FRACTION, "ref_sync_alpha": Range(0, 1, lo_open=True), "ref_sync_steps": AT_LEAST_1,
    "chunk_size": AT_LEAST_1, "logging_steps": AT_LEAST_1, "eval_steps": AT_LEAST_1, "save_steps": AT_LEAST_1,
    "save_total_limit": AT_LEAST_1, "nan_skip_limit": AT_LEAST_1, "data_num_proc": AT_LEAST_1,
    "stream_buffer": Range(0, INT_MAX),
}
#: the keys of ``lora`` (unipo.models.loading.apply_lora): type and range of each
LORA_KEYS: dict[str, tuple[Any, Range | None]] = {
    "r": (int, AT_LEAST_1), "alpha": (float, POSITIVE), "dropout": (float, FRACTION),
    "target_modules": (list[str], None)}
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
        "help": "shortcut for the variant's beta (null: the variant's, else the preset's); a different beta inside "
                "the variant is refused"})
    output_dir: str = field(default="runs/unipo", metadata={
        "help": f"run directory: model, {RunDir.CONFIG}, metrics, plots and checkpoints"})
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
    max_prompt_length: int | None = field(default=256, metadata={
        "help": "tokens of prompt at most (cut as truncation_mode says); smaller than max_length; null: no limit "
                "of its own (a row whose prompt alone fills max_length is dropped and reported)"})
    truncation_mode: str = field(default="keep_end", metadata={
        "help": "which part of a too-long prompt is kept", "choices": TRUNCATION_MODES})
    limit: int | None = field(default=None, metadata={"help": "use only the first N rows of data"})
    eval_limit: int | None = field(default=None, metadata={"help": "use only the first N rows of eval_data"})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "hold out this share of data for evaluation when no eval_data is given"})
    on_invalid: str = field(default="error", metadata={
        "help": "a row that fails validation: error (stop, naming file, row and field) or skip (counted and "
                f"reported in {RunDir.DATA_SUMMARY})", "choices": ON_INVALID})
    weights_columns: list[str] | None = field(default=None, metadata={
        "help": "columns holding TIS-DPO per-token weights of the chosen and rejected responses, e.g. "
                "chosen_weights rejected_weights (null: those two for variants that need given weights)"})
    weight_column: str | None = field(default=None, metadata={
        "help": "a numeric column whose value (finite, >= 0) multiplies each pair's loss: the batch loss is then "
                "the weighted mean; a row without a valid value is invalid (on_invalid applies)"})
    score_columns: list[str] | None = field(default=None, metadata={
        "help": "two numeric columns holding each chosen and rejected response's score (a reward model's or a "
                "judge's), read by variants that weight pairs by their scores (uni_dpo); null: score_chosen "
                "score_rejected (UltraFeedback's names) for those variants; a row without them is invalid"})
    gold_column: str = field(default="reference", metadata={
        "help": "the column holding a third, gold response per pair (text, or messages for conversational rows), "
                "read only by variants with a gold NLL term (tpo, tpo_l: gold_nll_weight > 0); TRL's TPO name; a "
                "row without it is invalid"})
    data_num_proc: int | None = field(default=None, metadata={
        "help": "worker processes that tokenise the data (null: the cores available; 1: none); the prepared "
                "pairs are the same for every value, and cached (docs/data.md)"})
    data_streaming: bool = field(default=False, metadata={
        "help": "read and tokenise the training data as it is consumed, with no disk cache (data larger than the "
                "cache should hold; a local file or a Hub dataset): needs max_steps, shuffles only within "
                "stream_buffer pairs, no eval_fraction (docs/data.md, Streaming)"})
    stream_buffer: int = field(default=10_000, metadata={
        "help": "data_streaming: pairs in the shuffle buffer (0: the file's order)"})
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
                "reference copy (reference: copy, full fine-tuning); bema (arXiv 2508.00180): ref <- a bias-corrected "
                "EMA of the policy, as TRL's experimental BEMACallback(update_ref_model=True)", "choices": REF_SYNC})
    ref_sync_alpha: float | None = field(default=None, metadata={
        "help": f"soft ref_sync only: the policy's share alpha in (0, 1] (null: {REF_SYNC_ALPHA}, TRL's default)"})
    ref_sync_steps: int | None = field(default=None, metadata={
        "help": f"ref_sync: update the reference after every N-th optimizer step (tau; null: {REF_SYNC_STEPS}, "
                f"TRL's default; bema: TRL's ref_model_update_freq, null: 400)"})
    ref_sync_bema: dict | None = field(default=None, metadata={
        "help": "ref_sync: bema only: BEMA's hyper-parameters with TRL's names, any of update_freq (400), ema_power "
                "(0.5), bias_power (0.2), lag (10), update_after (0), multiplier (1.0), min_ema_multiplier (0.0), "
                "ref_update_after (0); null: TRL's defaults"})
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
    nan_policy: str = field(default="stop", metadata={
        "help": "a step whose loss or gradient norm is NaN or infinite: stop (its update is not applied; the run "
                "ends with one line naming the step and the last finite checkpoint, exit status 2) or skip_step "
                "(the batch is skipped and counted in skipped_steps; the run stops after nan_skip_limit such steps "
                "in a row); weights that are not finite are never saved (docs/faults.md)", "choices": NAN_POLICIES})
    nan_skip_limit: int = field(default=5, metadata={
        "help": "nan_policy skip_step: stop at this many non-finite steps in a row"})
    # logging / checkpoints
    logging_steps: int = field(default=1, metadata={"help": "log metrics every N optimizer steps"})
    eval_steps: int | None = field(default=None, metadata={
        "help": "evaluate on eval_data (or the eval_fraction split) every N steps; null: never"})
    save_steps: int = field(default=100, metadata={"help": "write a checkpoint every N optimizer steps"})
    save_total_limit: int | None = field(default=2, metadata={
        "help": "checkpoints kept at most (the oldest are deleted); null: all"})
    report_to: list[str] = field(default_factory=lambda: ["none"], metadata={
        "help": "experiment trackers for the metrics (transformers' report_to: tensorboard, wandb, ...); none: "
                f"only {RunDir.METRICS}"})
    resume: bool = field(default=False, metadata={
        "help": "resume from the last checkpoint in output_dir (model, optimizer, scheduler and RNG state); the "
                "checkpoint must come from the same configuration (except max_steps, num_epochs, save/logging "
                "steps, report_to); a finished run is not trained again"})
    overwrite: bool = field(default=False, metadata={
        "help": "delete the run already in output_dir (all of it, never merged) and start again; without it "
                "(or resume) a directory holding a run is refused"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    plots: bool = field(default=True, metadata={"help": f"write {RunDir.CURVES} at the end of the run"})

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
            if not p.is_file():
                raise ConfigError(f"config file {p} not found" + (" (it is a directory)" if p.is_dir() else ""))
            try:
                data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{p}: not valid YAML: {exc}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{p}: cannot be read as a UTF-8 YAML file ({exc})") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
        data.update(overrides or {})
        return cls.from_dict(data, source=str(path) if path else "command line")

    def validate(self, source: str = "config") -> None:
        """Every key's type, finiteness and range (:mod:`unipo.training.values`: booleans only booleans, numbers
        finite in float32), the closed choices, and the keys that constrain one another; one line naming the key."""
        for key in MAPPING_KEYS:  # a mapping given as YAML text, as on the command line
            value = getattr(self, key)
            if isinstance(value, str) and value.lstrip().startswith("{"):
                try:
                    setattr(self, key, yaml.safe_load(value))
                except yaml.YAMLError as exc:
                    raise ConfigError(f"{source}: {key} is not a valid YAML mapping: {exc}") from None
        check_fields(self, source, RANGES)
        if not isinstance(self.variant, str | dict) or not self.variant:
            raise ConfigError(f"{source}: variant must be a preset name or a mapping {{preset: ..., ...}}, "
                              f"got {self.variant!r}")
        with_beta(self.variant, self.beta, source=f"{source}: beta")
        self._validate_lora(source)
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ConfigError(f"{source}: max_prompt_length ({self.max_prompt_length}) must be smaller than "
                              f"max_length ({self.max_length})")
        if self.token_signal is not None and not isinstance(self.token_signal, str | dict):
            raise ConfigError(f"{source}: token_signal must be a type name (sparsepo_masks, activation_masks, "
                              f"learned_prior, none) or a mapping {{type: ..., option: value}}, "
                              f"got {self.token_signal!r}")
        if self.weights_columns is not None and len(self.weights_columns) != 2:
            raise ConfigError(f"{source}: weights_columns must be two column names (chosen, rejected), "
                              f"got {self.weights_columns!r}")
        if self.score_columns is not None and (isinstance(self.score_columns, str) or len(self.score_columns) != 2):
            raise ConfigError(f"{source}: score_columns must be two column names (chosen, rejected), "
                              f"got {self.score_columns!r}")
        attn = self.attn_implementation
        if attn is not None and attn not in ATTN_IMPLEMENTATIONS and "/" not in attn:
            raise ConfigError(f"{source}: attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)}, a "
                              f"hub kernel (org/name) or null, got {attn!r}")
        self._validate_report_to(source)
        self._validate_ref_sync(source)
        self._validate_streaming(source)

    def _validate_streaming(self, source: str) -> None:
        """``data_streaming`` has no length to count epochs or hold out pairs by, nor a table to precompute into."""
        if not self.data_streaming:
            return
        for bad, why in ((self.max_steps < 1, "max_steps (a stream has no length to count epochs by)"),
                         (self.eval_fraction > 0, "eval_data instead of eval_fraction (a stream cannot hold out "
                                                  "a share of pairs)"),
                         (self.reference == "precomputed", "a reference other than precomputed (it writes the "
                                                           "reference's log-probs into every prepared pair)")):
            if bad:
                raise ConfigError(f"{source}: data_streaming needs {why}")

    def _validate_lora(self, source: str) -> None:
        """``lora``: null or a mapping of the keys apply_lora takes, each of its type and range."""
        if self.lora is None:
            return
        if not isinstance(self.lora, dict) or not self.lora:
            raise ConfigError(f"{source}: lora must be a mapping such as {{r: 16, alpha: 32}} or null, "
                              f"got {self.lora!r}")
        self.lora = dict(self.lora)  # normalised below: the caller's mapping is left as it was
        unknown = sorted(set(map(str, self.lora)) - set(LORA_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown lora key {unknown[0]!r}; allowed: {', '.join(LORA_KEYS)}")
        for key, (hint, rng) in LORA_KEYS.items():
            if key in self.lora:
                self.lora[key] = checked(f"lora.{key}", self.lora[key], hint, rng, source)

    def _validate_report_to(self, source: str) -> None:
        """Trackers transformers knows (an unknown one would fail only after the model loaded)."""
        try:
            from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
        except ImportError:  # pragma: no cover - transformers moved it: Trainer checks then
            return
        known = ("none", "all", *INTEGRATION_TO_CALLBACK)
        bad = [r for r in self.report_to if r not in known]
        if bad:
            raise ConfigError(f"{source}: report_to {bad[0]!r} is not a tracker transformers knows; one of: "
                              f"{', '.join(known)}")

    def _validate_ref_sync(self, source: str) -> None:
        """TR-DPO keys: each only where it applies, in range (the reference mode is checked in the plan)."""
        if self.ref_sync != "bema" and self.ref_sync_bema is not None:
            raise ConfigError(f"{source}: ref_sync_bema applies to ref_sync: bema only (ref_sync is {self.ref_sync})")
        if self.ref_sync == "none":
            given = [k for k in ("ref_sync_alpha", "ref_sync_steps") if getattr(self, k) is not None]
            if given:
                raise ConfigError(f"{source}: {', '.join(given)} given but ref_sync is none (set ref_sync: soft "
                                  f"or hard, or drop {given[0]})")
            return
        if self.ref_sync in ("hard", "bema") and self.ref_sync_alpha is not None:
            raise ConfigError(f"{source}: ref_sync_alpha applies to ref_sync: soft only (a hard sync copies the "
                              f"policy: alpha 1; bema sets its own factors, ref_sync_bema)")
        if self.ref_sync == "bema":
            self._validate_bema(source)

    def _validate_bema(self, source: str) -> None:
        """ref_sync_bema: a mapping of BEMA_KEYS, each a number in its range."""
        given = {} if self.ref_sync_bema is None else self.ref_sync_bema
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: ref_sync_bema must be a mapping of {', '.join(BEMA_KEYS)}, got {given!r}")
        unknown = sorted(set(given) - set(BEMA_KEYS))
        if unknown:
            raise ConfigError(f"{source}: unknown ref_sync_bema keys {unknown}; allowed: {', '.join(BEMA_KEYS)}")
        ranges = {"update_freq": (1, None), "ema_power": (0, None), "bias_power": (0, None), "lag": (0, None),
                  "update_after": (0, None), "multiplier": (0, None), "min_ema_multiplier": (0, 1),
                  "ref_update_after": (0, None)}
        for key, value in given.items():
            lo, hi = ranges[key]
            if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
                    or abs(value) > FLOAT32_MAX or value < lo or (hi is not None and value > hi)):
                raise ConfigError(f"{source}: ref_sync_bema.{key} must be a number >= {lo}"
                                  f"{'' if hi is None else f' and <= {hi}'}, got {value!r}")
        if given.get("lag", 10) + given.get("multiplier", 1.0) <= 0:
            raise ConfigError(f"{source}: ref_sync_bema needs lag + multiplier > 0 (BEMA's factors are "
                              f"(lag + multiplier·t)^(−power))")

    def ref_bema_schedule(self):
        """The :class:`~unipo.training.ref_sync.BEMASchedule` of ``ref_sync: bema``, else None."""
        if self.ref_sync != "bema":
            return None
        from unipo.training.ref_sync import BEMASchedule

        extra = {} if self.ref_sync_steps is None else {"ref_update_freq": int(self.ref_sync_steps)}
        return BEMASchedule(**(self.ref_sync_bema or {}), **extra)

    def ref_sync_schedule(self) -> tuple[float, int] | None:
        """(alpha, tau) of the TR-DPO reference update, or None without one (hard: alpha 1; bema:
        :meth:`ref_bema_schedule`)."""
        if self.ref_sync in ("none", "bema"):
            return None
        alpha = 1.0 if self.ref_sync == "hard" else float(self.ref_sync_alpha or REF_SYNC_ALPHA)
        return alpha, int(self.ref_sync_steps or REF_SYNC_STEPS)

    def variant_spec(self) -> dict[str, Any]:
        """The variant as a mapping with ``beta`` merged in (one rule, :func:`unipo.objective.config.with_beta`:
        ``beta`` and a β inside the variant that differ are refused)."""
        return with_beta(self.variant, self.beta, source="beta")

    #: the former name of :meth:`variant_spec`
    objective_spec = variant_spec

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
