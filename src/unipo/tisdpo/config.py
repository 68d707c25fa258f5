"""Options of ``unipo weights estimate`` and ``unipo weights show``, as dataclasses; the flags and their help
are generated from the fields.

The estimate options are one dataclass per group of the help; the CLI (:mod:`unipo.cli.tisdpo`) maps them
to :class:`~unipo.tisdpo.estimate.EstimateOptions` of :func:`~unipo.tisdpo.estimate.estimate_weights`, whose
defaults they share. The show options map to the keywords of :func:`~unipo.tisdpo.show.show_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unipo.data.tokenize import ON_INVALID
from unipo.tisdpo.contrastive import DEFAULT_LORA, METHODS
from unipo.tisdpo.importance import PRIOR_NORMS, TI_DPO, TI_LAMBDA
from unipo.tisdpo.prompts import PROMPT_PAIRS
from unipo.tisdpo.transform import EOS_CHOICES, PAPER_DEFAULTS, RANK_RANGE, RANK_TIES, TRANSFORMS

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class EstimateArguments:
    """What ``unipo weights estimate`` reads and writes, and how the weights are computed."""

    model: str = field(metadata={
        "help": "base model: a built-in name, a checkpoint directory or a hub name; its tokenizer is the one "
                "training must use"})
    data: str = field(metadata={"help": "preference pairs (any format `unipo train` reads)"})
    out: str = field(metadata={"help": "output JSONL; sidecars OUT.meta.json, OUT.summary.json"})
    method: str = field(default="dpo", metadata={
        "help": "TIS-DPO's (π+, π−): prompt (P), sft (S) or dpo (D, the paper's best); or ti_dpo: TI-DPO's "
                "gradient attribution + Gaussian prior on --model alone (arXiv 2505.19653, Eq. 5-8)",
        "choices": (*METHODS, TI_DPO)})
    limit: int | None = field(default=None, metadata={"help": "only the first N rows (training and scoring)"})


@dataclass
class TransformArguments:
    """From log-probability differences to weights (TIS-DPO Eq. 19, or the released code's ranks)."""

    _argument_group_name = "transform"

    transform: str = field(default="paper", metadata={
        "help": "paper: k·exp(μ·clamp(d, L, U)); rank: the released code's rank mapping to [0.7, 1.3] within "
                "each response, end-of-sequence token 0", "choices": TRANSFORMS})
    lower: float = field(default=PAPER_DEFAULTS["lower"], metadata={"help": "L, the clamp's lower bound"})
    upper: float = field(default=PAPER_DEFAULTS["upper"], metadata={"help": "U, the clamp's upper bound"})
    k: float = field(default=PAPER_DEFAULTS["k"], metadata={"help": "k, the weight scale"})
    rank_range: list[float] = field(default_factory=lambda: list(RANK_RANGE), metadata={
        "help": "range of the rank transform", "nargs": 2, "metavar": ("LOW", "HIGH")})
    rank_ties: str = field(default="mean", metadata={
        "help": "ties of the rank transform: mean (equal scores get equal weights; unipo) or released (d rounded "
                "to 2 decimals, ties broken by token order, as the authors' code)", "choices": RANK_TIES})
    eos: str = field(default="auto", metadata={
        "help": "the end-of-sequence token's weight: auto (paper transform: weighted like any token; rank: 0), "
                "zero (0 under both: the authors' code), weight (weighted under both); the paper is silent",
        "choices": EOS_CHOICES})


@dataclass
class TokenImportanceArguments:
    """Method ti_dpo: TI-DPO's W = λ·I/ΣI + (1 − λ)·P, I_i = ‖∇_{e_i} max final logit‖₁ (Yang et al., ICLR 2026)."""

    _argument_group_name = "method ti_dpo (TI-DPO token importance)"

    ti_lambda: float = field(default=TI_LAMBDA, metadata={
        "help": "λ of Eq. 8, the share of the gradient attribution (the paper's Table B13: 0.7)"})
    ti_prior_norm: str = field(default="sum", metadata={
        "help": "the Gaussian prior (Eq. 7): sum (divided by its sum, a distribution like I/ΣI) or none (its "
                "unnormalised value, peak 1, as Eq. 7 prints it)", "choices": PRIOR_NORMS})


@dataclass
class PromptPairArguments:
    """Method prompt (P): the same model under a positive and a negative system prompt."""

    _argument_group_name = "method prompt (P)"

    prompt_pair: str = field(default="harmless", metadata={
        "help": "built-in contrastive system prompts (paraphrases of the paper's)", "choices": tuple(PROMPT_PAIRS)})
    positive_system: str | None = field(default=None, metadata={
        "help": "system prompt of π+ (overrides the pair's)"})
    negative_system: str | None = field(default=None, metadata={
        "help": "system prompt of π− (overrides the pair's)"})


@dataclass
class ContrastiveTrainingArguments:
    """Methods sft (S) and dpo (D): training π+ and π−."""

    _argument_group_name = "methods sft (S) and dpo (D): training the contrastive models"

    models_dir: str | None = field(default=None, metadata={
        "help": "where trained pairs are cached (null: $UNIPO_CACHE/tisdpo or ~/.cache/unipo/tisdpo)"})
    full_finetune: bool = field(default=False, metadata={"help": "train full models instead of LoRA adapters"})
    lora_r: int = field(default=DEFAULT_LORA["r"], metadata={"help": "LoRA rank (alpha = 2r)"})
    train_set: list[str] = field(default_factory=list, metadata={
        "help": "override a training key (TrainConfig; YAML value), e.g. --train-set max_steps=50 (repeatable)",
        "action": "extend", "metavar": "KEY=VALUE"})
    retrain: bool = field(default=False, metadata={"help": "train the pair again even if cached"})


@dataclass
class ScoringArguments:
    """Scoring every response token with (π+, π−)."""

    _argument_group_name = "scoring"

    batch_size: int = field(default=8, metadata={"help": "pairs per forward pass"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (null: cuda if present)"})
    dtype: str = field(default="float32", metadata={
        "help": "scoring dtype (float32 keeps the log-prob differences exact)", "choices": DTYPES})
    on_invalid: str = field(default="error", metadata={
        "help": "rows that fail validation: error (stop) or skip", "choices": ON_INVALID})
    overwrite: bool = field(default=False, metadata={"help": "delete OUT and its sidecars and start again"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})


#: every option of ``unipo weights estimate``, in the order of the help
ESTIMATE_OPTIONS = (EstimateArguments, TransformArguments, TokenImportanceArguments, PromptPairArguments,
                    ContrastiveTrainingArguments, ScoringArguments)


@dataclass
class ShowArguments:
    """``unipo weights show``: render a weights file."""

    out: str = field(metadata={"help": "output directory"})
    weighted: str | None = field(default=None, metadata={
        "help": "a file written by `unipo weights estimate` (also accepted as the positional WEIGHTED)"})
    n: int = field(default=8, metadata={"help": "number of pairs to draw"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "tokenizer (null: the model in WEIGHTED's meta.json)"})
    max_tokens: int = field(default=160, metadata={"help": "tokens per response in the PNG"})
