"""What a run will do, decided before anything loads, and the data preparation every pipeline shares.

* :func:`plan_training` — pure validation, no model and no data read: the objective, what it needs from the
  data (:func:`data_needs`: token-weight columns, BMC diff masks, the responses' score columns), the token
  signal, the reference mode; a bad combination fails here, in a second, before anything is loaded (``unipo
  train``, ``iterate``'s check);
* :class:`DataSettings` — the keys of a configuration that data preparation reads, from a
  :class:`~unipo.training.config.TrainConfig` (:meth:`DataSettings.of`) or from the configuration a run saved
  (:meth:`DataSettings.saved`: ``unipo eval`` prepares its held-out pairs as the run's training data was);
* :func:`prepare_data` — tokenized pairs of a file through the prepared-data cache, and their summary;
* :func:`check_listwise_rows` — refuse listwise rows that the objective cannot train on.

``unipo train`` (:mod:`unipo.training.train`), ``eval``, ``compare`` and ``iterate`` import these from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipo.errors import ConfigError, UnipoError
from unipo.io.console import log
from unipo.objective import Objective
from unipo.training.config import TrainConfig
from unipo.training.rundir import RunDir


@dataclass(frozen=True)
class DataNeeds:
    """What an objective needs prepared with the pairs: ``weights_columns`` (the data columns holding per-token
    weights; None: the data supplies none), ``diff_masks`` (BMC's difference masks while tokenising) and
    ``score_columns`` (the data columns holding each chosen and rejected response's score; None: no part reads
    scores) and ``gold_column`` (the column holding a third, gold response per pair, TPO; None: the objective has
    no gold NLL term and the column is never read)."""

    weights_columns: tuple[str, str] | None
    diff_masks: bool
    score_columns: tuple[str, str] | None = None
    gold_column: str | None = None


#: the score columns read when a part needs scores and none are configured (UltraFeedback's names)
DEFAULT_SCORE_COLUMNS = ("score_chosen", "score_rejected")
#: the gold-response column read when the objective has a gold NLL term and none is configured (TRL's TPO name)
DEFAULT_GOLD_COLUMN = "reference"


def data_needs(objective: Objective, weights_columns: Any, signal: dict[str, Any] | None,
               score_columns: Any = None, gold_column: str | None = None) -> DataNeeds:
    """The columns an objective reads from the data (its parts' declared needs; no part names): per-token
    weights from ``weights_columns`` (or ``chosen_weights`` / ``rejected_weights`` when a part needs weights and
    the resolved token ``signal`` does not provide them), BMC's diff masks when a part reads them, the responses'
    scores from ``score_columns`` (or :data:`DEFAULT_SCORE_COLUMNS`) when a part reads them, the gold response from
    ``gold_column`` (or :data:`DEFAULT_GOLD_COLUMN`) when the objective has a gold NLL term (TPO)."""
    from unipo.models.signals import SIGNAL_TYPES

    req = objective.requirements
    signal_gives_weights = signal is not None and "weights" in SIGNAL_TYPES[signal["type"]].provides
    columns = tuple(weights_columns) if weights_columns else None
    if "weights" in req.inputs and columns is None and not signal_gives_weights:
        columns = ("chosen_weights", "rejected_weights")
    scores = (tuple(score_columns) if score_columns else DEFAULT_SCORE_COLUMNS) if "score" in req.inputs else None
    gold = (gold_column or DEFAULT_GOLD_COLUMN) if req.gold else None
    return DataNeeds(columns, "diff_mask" in req.inputs, scores, gold)


@dataclass(frozen=True)
class TrainingPlan:
    """What a run will do, decided from the configuration alone.

    ``needs``: the columns the objective reads from the data (:class:`DataNeeds`: per-token weights, BMC's
    difference masks, the responses' scores, a gold response); ``signal``: the resolved token-signal spec
    (:func:`unipo.models.signals.resolve_signal_spec`) or None; ``reference``: copy | adapter | precomputed |
    none."""

    cfg: TrainConfig
    objective: Objective
    needs: DataNeeds
    signal: dict[str, Any] | None
    reference: str

    @property
    def weights_columns(self) -> tuple[str, str] | None:
        return self.needs.weights_columns

    @property
    def diff_masks(self) -> bool:
        return self.needs.diff_masks

    @property
    def score_columns(self) -> tuple[str, str] | None:
        return self.needs.score_columns

    @property
    def gold_column(self) -> str | None:
        return self.needs.gold_column

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @property
    def run(self) -> RunDir:
        return RunDir(self.cfg.output_dir)

    def resolved(self) -> dict[str, Any]:
        """The configuration that identifies a run: every TrainConfig key and what was resolved from them (what
        each checkpoint records, and what ``--resume`` compares)."""
        return {**self.cfg.to_dict(), "reference": self.reference, "token_signal": self.signal,
                "objective": self.objective.config.to_dict()}


def plan_training(cfg: TrainConfig) -> TrainingPlan:
    """Validate ``cfg`` against what its objective needs (the parts' declared needs; no part names)."""
    from unipo.models.signals import resolve_signal_spec

    if not cfg.data:
        raise ConfigError("no training data: give --data FILE (or `data:` in the config)")
    try:
        objective = Objective(cfg.variant_spec())
    except ConfigError as exc:  # name the key the objective came from
        raise ConfigError(str(exc) if str(exc).startswith("variant") else f"variant: {exc}") from None
    signal = resolve_signal_spec(cfg.token_signal, objective.requirements, data_weights=bool(cfg.weights_columns),
                                 name=f"variant {objective.config.name}")
    needs = data_needs(objective, cfg.weights_columns, signal, cfg.score_columns, cfg.gold_column)
    reference = _reference_mode(cfg, objective, signal)
    return TrainingPlan(cfg, objective, needs, signal, reference)


def _reference_mode(cfg: TrainConfig, objective: Objective, signal: dict[str, Any] | None) -> str:
    from unipo.training.reference import check_reference_mode

    reference = cfg.reference
    if reference == "auto":
        reference = "none" if not objective.requirements.reference else ("adapter" if cfg.lora else "copy")
    check_reference_mode(objective, reference)
    if cfg.ref_model and reference not in ("copy", "precomputed"):
        raise ConfigError(f"ref_model {cfg.ref_model!r} needs reference: copy or precomputed (got {reference}); "
                          f"reference: adapter is the starting model with its LoRA adapters off")
    if reference == "adapter" and not cfg.lora:
        raise ConfigError("reference: adapter needs LoRA (set lora: {r: 16})")
    if signal is not None and reference in ("precomputed", "none"):
        raise ConfigError(f"token_signal {signal['type']} reads the reference model's hidden states during "
                          f"training; reference: {reference} cannot serve it (use reference: copy, or adapter "
                          f"with LoRA)")
    _check_ref_sync(cfg, reference)
    return reference


def _check_ref_sync(cfg: TrainConfig, reference: str) -> None:
    """TR-DPO's reference updates need a live reference copy of the policy (training/ref_sync.py)."""
    if cfg.ref_sync == "none":
        return
    if reference in ("precomputed", "none"):
        what = ("precomputed reference log-probs are computed once, before training, from the starting model"
                if reference == "precomputed" else "reference: none means the objective reads no reference")
        raise ConfigError(f"ref_sync: {cfg.ref_sync} updates a reference model during training, but {what}: "
                          f"there is no model to update (use reference: copy, or ref_sync: none)")
    if cfg.lora:
        raise ConfigError(
            f"ref_sync: {cfg.ref_sync} is not available with LoRA: the reference is then the policy with its "
            f"adapters switched off (reference: adapter), i.e. the frozen base weights, so there is no separate "
            f"reference to move; following the policy would mean merging the adapters into the base weights, "
            f"which changes the model the saved adapters belong to (and a soft update has no adapter form at "
            f"all). Train without lora (full fine-tuning, reference: copy) to use ref_sync")


@dataclass(frozen=True)
class DataSettings:
    """The keys of a training configuration that data preparation reads (their meaning: TrainConfig's fields)."""

    max_length: int
    max_prompt_length: int | None
    truncation_mode: str
    bmc_alignment: str
    bmc_exempt: str
    on_invalid: str
    weight_column: str | None
    data_num_proc: int | None

    @classmethod
    def of(cls, cfg: TrainConfig) -> DataSettings:
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def saved(cls, training: Mapping[str, Any]) -> DataSettings:
        """From a saved configuration (:attr:`unipo.training.rundir.RunConfig.training`); a key an older run did
        not save takes TrainConfig's default."""
        defaults = cls.of(TrainConfig())
        return dataclasses.replace(defaults, **{f.name: training[f.name] for f in dataclasses.fields(cls)
                                                if f.name in training})

    def options(self, limit: int | None, needs: DataNeeds | None = None, counted_in: str = RunDir.DATA_SUMMARY):
        """The :class:`~unipo.data.tokenize.PrepOptions` of these settings and the columns ``needs`` names (None:
        none of them) (for the cache and for streaming)."""
        from unipo.data.tokenize import PrepOptions

        needs = needs or DataNeeds(None, False)
        return PrepOptions(max_length=self.max_length, max_prompt_length=self.max_prompt_length,
                           truncation_mode=self.truncation_mode, bmc_masks=needs.diff_masks,
                           bmc_alignment=self.bmc_alignment, bmc_exempt=self.bmc_exempt,
                           weights_columns=needs.weights_columns, limit=limit, on_invalid=self.on_invalid,
                           pair_weight_column=self.weight_column, score_columns=needs.score_columns,
                           invalid_counted_in=counted_in, num_proc=self.data_num_proc,
                           gold_column=needs.gold_column)

    def check(self, source: str = "config") -> None:
        """TrainConfig's rule on the lengths (for settings changed after the run: ``unipo eval --max-length``)."""
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ConfigError(f"{source}: max_prompt_length ({self.max_prompt_length}) must be smaller than "
                              f"max_length ({self.max_length})")


def prepare_data(settings: DataSettings, tokenizer, source: str, limit: int | None, *,
                 needs: DataNeeds | None = None, counted_in: str = RunDir.DATA_SUMMARY, materialize: bool = True):
    """Tokenize ``source`` with ``settings``' lengths and truncation (token-weight columns, BMC diff masks, the
    responses' score columns and a gold response as ``needs`` says; None: none of them); return rows for the
    dataset and the preparation summary. ``counted_in``: the file where the calling command records skipped rows
    (named by an invalid-row error's way out).

    The pairs come from the prepared-data cache (:func:`unipo.data.cache.prepared_table`: prepared once per
    data file, tokenizer and options, then memory-mapped). ``materialize``: the rows as a list of dicts (for
    the callers that add columns to them); else the memory-mapped :class:`~unipo.data.table.PairsTable`."""
    from unipo.data.cache import prepared_table

    options = settings.options(limit, needs, counted_in)
    table, summary = prepared_table(source, tokenizer, options, log=log)
    log(summary.format())
    if not len(table):
        raise UnipoError(f"{source}: no usable preference pairs (see the summary above)")
    return (table.to_rows() if materialize else table), summary


def check_listwise_rows(objective: Objective, rows, source: str) -> None:
    """Refuse rows with several rejected responses (listwise, ``more_rejected_ids``) when the objective cannot
    train on them (:meth:`Objective.listwise_refusal`: a pair loss that compares one rejected response, or
    per-token parts)."""
    from unipo.data.table import first_listwise

    row = first_listwise(rows)
    if row is None:
        return
    refusal = objective.listwise_refusal()
    if refusal:
        n = 1 + len(row["more_rejected_ids"])
        raise ConfigError(f"{source}: row {row['row']} (and maybe others) has {n} rejected responses, but {refusal}")
