"""``unipo weights estimate``: score every response token with (π+, π−) and write TIS-DPO weights, or
(``--method ti_dpo``) with TI-DPO's gradient attribution and Gaussian prior (:mod:`unipo.tisdpo.importance`).

Liu et al., ICLR 2025 (TIS-DPO), §6.1 and Eq. 19: for each token y_t of each response,
d_t = log π+(y_t | x, y_<t) − log π−(y_t | x, y_<t), and w_t = k·exp(μ·clamp(d_t, L, U)) with μ = +1 on
the chosen and −1 on the rejected response (:mod:`unipo.tisdpo.transform`).

Tokenisation is the training one: :func:`unipo.data.tokenize.prepare_pairs` with the base model's
tokenizer and no truncation, so the weights cover the full responses (end-of-turn token included) and
``unipo train`` truncates them alongside the tokens. Scoring uses the training batch layout
(:func:`unipo.data.batching.collate_pairs`) and :func:`unipo.models.forward.response_logps`.

Output files, for ``--out OUT.jsonl``:

- ``OUT.jsonl``: one row per scored pair, in input order: ``prompt``, ``chosen``, ``rejected`` (the pair in
  explicit-prompt form), the input's other columns, ``chosen_weights``, ``rejected_weights``, ``tokenizer``
  (:func:`~unipo.data.tokenize.tokenizer_fingerprint`) and ``source_row`` (the input row number);
- ``OUT.meta.json``: what the weights were computed from (method, base model, data checksum, transform,
  system prompts, contrastive model directory); a resume with other settings is refused;
- ``OUT.summary.json``: weight statistics per side;
- ``OUT.lock``: held while a run writes.

Rows are appended (and flushed) as they are scored; rerunning the same command resumes: rows already in
``OUT.jsonl`` are skipped, and a last line cut short by a kill is trimmed.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unipo.errors import ConfigError, UnipoError
from unipo.io.atomic import atomic_write_text
from unipo.io.files import read_jsonl_repairing, sidecar_paths
from unipo.io.resumable import Progress, ResumablePipeline, RunFiles
from unipo.tisdpo.contrastive import DEFAULT_LORA, METHODS, ensure_pair, load_scorer, log
from unipo.tisdpo.importance import PRIOR_NORMS, TI_DPO, TI_LAMBDA, token_importance
from unipo.tisdpo.prompts import system_prompts, with_system
from unipo.tisdpo.transform import PAPER_DEFAULTS, RANK_RANGE, check_transform, paper_weights, rank_weights

#: columns this command writes (an input's own copies are replaced)
OUTPUT_COLUMNS = ("chosen_weights", "rejected_weights", "tokenizer", "source_row")
NO_TRUNCATION = 10**9
#: every ``--method``: the TIS-DPO contrastive constructions and TI-DPO's token importance
ESTIMATE_METHODS = (*METHODS, TI_DPO)


@dataclass
class EstimateOptions:
    """Settings of one ``unipo weights estimate`` run (see docs/tisdpo.md)."""

    method: str = "dpo"
    transform: str = "paper"  # paper (Eq. 19) | rank (the released code)
    lower: float = PAPER_DEFAULTS["lower"]
    upper: float = PAPER_DEFAULTS["upper"]
    k: float = PAPER_DEFAULTS["k"]
    rank_range: tuple[float, float] = RANK_RANGE
    rank_ties: str = "mean"  # mean (equal scores, equal weights) | released (d rounded to 2 decimals, token order)
    eos: str = "auto"  # auto (paper: weighted, rank: 0) | zero (the released code) | weight
    prompt_pair: str = "harmless"
    positive_system: str | None = None
    negative_system: str | None = None
    limit: int | None = None
    batch_size: int = 8
    device: str | None = None
    dtype: str = "float32"
    models_dir: str | None = None  # default: $UNIPO_CACHE/tisdpo
    lora: dict | None = field(default_factory=lambda: dict(DEFAULT_LORA))
    train_overrides: dict[str, Any] = field(default_factory=dict)
    retrain: bool = False
    overwrite: bool = False
    progress: bool = True
    on_invalid: str = "error"
    ti_lambda: float = TI_LAMBDA  # λ of TI-DPO's Eq. 8 (method ti_dpo)
    ti_prior_norm: str = "sum"  # sum | none: TI-DPO's Gaussian prior divided by its sum, or Eq. 7 as printed


@dataclass(frozen=True)
class WeightPaths:
    out: Path
    meta: Path
    summary: Path
    lock: Path

    @classmethod
    def for_output(cls, out: str | Path) -> WeightPaths:
        return cls(**sidecar_paths(out, appended="rows are appended as they are scored",
                                   meta=".meta.json", summary=".summary.json", lock=".lock"))

    def all(self) -> tuple[Path, ...]:
        return (self.out, self.meta, self.summary)


# ----------------------------------------------------------------------------------------------- scoring


def score_batch(pos_model, neg_model, pos_examples: Sequence[dict], neg_examples: Sequence[dict], *,
                pad_token_id: int, device) -> list[tuple[list[float], list[float]]]:
    """Per-token ``d_t = log π+ − log π−`` of the chosen and rejected responses of a batch of pairs.

    ``pos_examples`` / ``neg_examples`` are collator inputs (``prompt_ids``, ``chosen_ids``,
    ``rejected_ids``) for π+ and π−: the same for (S) and (D); for (P) they differ in the prompt only.
    """
    import torch

    from unipo.data.batching import collate_pairs
    from unipo.layout import PackedBatch
    from unipo.models.forward import response_logps

    out: list[dict[str, Any]] = []
    for model, examples in ((pos_model, pos_examples), (neg_model, neg_examples)):
        batch = PackedBatch.from_dict(collate_pairs(examples, pad_token_id, share_prompt=True)).to(device)
        with torch.no_grad():
            res = response_logps(model, batch)
        out.append({side: (res.logps[side].double().cpu(), batch.side(side).mask.cpu())
                    for side in ("chosen", "rejected")})
    diffs = []
    for i in range(len(pos_examples)):
        sides = []
        for side in ("chosen", "rejected"):
            (lp_pos, mask), (lp_neg, _) = out[0][side], out[1][side]
            m = mask[i]
            sides.append((lp_pos[i][m] - lp_neg[i][m]).tolist())
        diffs.append((sides[0], sides[1]))
    return diffs


def to_weights(diffs: Sequence[float], side: str, ids: Sequence[int], eos_ids: set[int],
               opts: EstimateOptions) -> list[float]:
    """Weights of one response from its log-ratios (the transform chosen in ``opts``; its end-of-sequence
    token as ``opts.eos`` says, see :mod:`unipo.tisdpo.transform`)."""
    ends_with_eos = bool(ids) and ids[-1] in eos_ids
    zero_eos = ends_with_eos and (opts.eos == "zero" or (opts.eos == "auto" and opts.transform == "rank"))
    if opts.transform == "rank":
        return rank_weights(diffs, side, ends_with_eos=zero_eos, low=opts.rank_range[0], high=opts.rank_range[1],
                            ties=opts.rank_ties)
    weights = paper_weights(diffs, side, lower=opts.lower, upper=opts.upper, k=opts.k)
    return weights[:-1] + [0.0] if zero_eos else weights


# ----------------------------------------------------------------------------------------------- files


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of the append-only output; a last line cut short by a kill is trimmed off the file (even a
    complete one: its row is scored again)."""
    return read_jsonl_repairing(path, invalid_hint="delete the file or use --overwrite", log=log,
                                keep_complete_tail=False)


def _data_rows(data: str, limit: int | None) -> dict[int, dict]:
    from unipo.data.formats import iter_rows

    rows: dict[int, dict] = {}
    for rec in iter_rows(data):
        if limit is not None and len(rows) >= limit:
            break
        rows[rec.row] = rec.data
    return rows


def _fingerprint_rows(rows: dict[int, dict]) -> str:
    h = hashlib.sha256()
    for n, r in rows.items():
        h.update(json.dumps([n, r], sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
    return h.hexdigest()


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Weight statistics per side over all scored rows."""
    out: dict[str, Any] = {"pairs": len(rows)}
    for side in ("chosen", "rejected"):
        ws = [w for r in rows for w in r[f"{side}_weights"]]
        n = len(ws)
        mean = sum(ws) / n if n else float("nan")
        var = sum((w - mean) ** 2 for w in ws) / n if n else float("nan")
        out[side] = {"tokens": n, "mean": mean, "std": math.sqrt(var) if n else float("nan"),
                     "min": min(ws) if n else None, "max": max(ws) if n else None,
                     "share_above_1": sum(w > 1 for w in ws) / n if n else None}
    return out


# ----------------------------------------------------------------------------------------------- the run


def estimate_weights(data: str, out: str | Path, model: str, opts: EstimateOptions | None = None, *,
                     stop_after: int | None = None,
                     on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Compute TIS-DPO weights for ``data`` with the (π+, π−) of ``opts.method`` built from ``model``.

    Returns the summary (also written to ``OUT.summary.json``). ``stop_after`` scores at most that many
    new rows and returns (used to test resuming); ``on_row`` is called with each row written.
    """
    opts = opts or EstimateOptions()
    if opts.method not in ESTIMATE_METHODS:
        raise ConfigError(f"--method must be one of {', '.join(ESTIMATE_METHODS)}, not {opts.method!r}")
    if not 0.0 <= opts.ti_lambda <= 1.0:
        raise ConfigError(f"--ti-lambda must be in [0, 1], not {opts.ti_lambda}")
    if opts.ti_prior_norm not in PRIOR_NORMS:
        raise ConfigError(f"--ti-prior-norm must be one of {', '.join(PRIOR_NORMS)}, not {opts.ti_prior_norm!r}")
    check_transform(opts.transform, opts.lower, opts.upper, opts.k, tuple(opts.rank_range))
    if opts.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    return _EstimateRun(str(data), WeightPaths.for_output(out), model, opts, stop_after, on_row).run()


class _EstimateRun(ResumablePipeline):
    """The steps of ``unipo weights estimate`` in the resumable-pipeline skeleton (:mod:`unipo.io.resumable`)."""

    command = "unipo weights estimate"

    def __init__(self, data: str, paths: WeightPaths, model: str, opts: EstimateOptions, stop_after: int | None,
                 on_row: Callable[[dict[str, Any]], None] | None) -> None:
        files = RunFiles(lock=paths.lock, meta=paths.meta, appended={"out": paths.out}, outputs=paths.all())
        super().__init__(files, overwrite=opts.overwrite, log=log)
        self.data, self.paths, self.model, self.opts = data, paths, model, opts
        self.stop_after, self.on_row = stop_after, on_row

    def load(self) -> list:
        """The pairs tokenised as for training (no truncation), their normalised rows, the system prompts."""
        from unipo.data.formats import normalize_row
        from unipo.data.tokenize import TokenizerFacts, prepare_pairs, tokenizer_fingerprint
        from unipo.models.checks import check_model_dir
        from unipo.models.loading import load_tokenizer, resolve_model_path

        opts = self.opts
        self.base = resolve_model_path(self.model)
        check_model_dir(self.base, tokenizer=True)  # a damaged directory: one line before any work
        self.tokenizer = load_tokenizer(self.base)
        self.facts = TokenizerFacts(self.tokenizer)
        self.eos_ids = {i for i in (self.facts.eos, *self.facts.specials) if i is not None}
        self.fingerprint = tokenizer_fingerprint(self.tokenizer)
        self.raw = _data_rows(self.data, opts.limit)
        pairs, prep = prepare_pairs(self.data, self.tokenizer, max_length=NO_TRUNCATION, max_prompt_length=None,
                                    limit=opts.limit, on_invalid=opts.on_invalid,
                                    invalid_counted_in=f"{self.paths.summary} ('data')")
        self.prep = prep
        if not pairs:
            raise UnipoError(f"{self.data}: no usable preference pairs\n{prep.format()}")
        listwise = next((p for p in pairs if p.more_rejected_ids), None)
        if listwise is not None:
            raise UnipoError(f"{self.data}, row {listwise.row}: TIS-DPO token weights are for one rejected response "
                             f"per pair; this row has {1 + len(listwise.more_rejected_ids)}")
        self.normalized = {p.row: normalize_row(self.raw[p.row], file=self.data, row_number=p.row) for p in pairs}
        self.systems = system_prompts(opts.prompt_pair, opts.positive_system, opts.negative_system) \
            if opts.method == "prompt" else None
        return pairs

    def settings(self, items: list) -> dict[str, Any]:
        opts = self.opts
        common = {"method": opts.method, "model": self.model, "model_path": self.base, "data": self.data,
                  "data_sha256": _fingerprint_rows(self.raw), "limit": opts.limit, "tokenizer": self.fingerprint}
        if opts.method == TI_DPO:
            return {**common, "ti_lambda": opts.ti_lambda, "ti_prior_norm": opts.ti_prior_norm,
                    "paper": "Yang et al., ICLR 2026 (TI-DPO, arXiv 2505.19653), Eq. 5-8"}
        trained = opts.method != "prompt"
        return {
            **common, "transform": opts.transform,
            **({"lower": opts.lower, "upper": opts.upper, "k": opts.k} if opts.transform == "paper"
               else {"rank_range": list(opts.rank_range)}),
            "system_prompts": list(self.systems) if self.systems else None,
            "lora": opts.lora if trained else None,
            "train_overrides": opts.train_overrides if trained else None,
            "paper": "Liu et al., ICLR 2025 (TIS-DPO), Eq. 19",
        }

    def check_resume(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        changed = sorted(k for k in new if old.get(k) != new[k])
        if changed:
            raise UnipoError(f"{self.paths.out} holds weights computed with other settings ({', '.join(changed)} "
                             "differ): use another --out, or --overwrite to start again")

    def done_rows(self) -> set[int]:
        return {int(r["source_row"]) for r in _read_rows(self.paths.out) if "source_row" in r}

    def start_message(self, total: int, pending: int) -> str:
        how = "gradient attribution" if self.opts.method == TI_DPO else f"transform {self.opts.transform}"
        return (f"{total} pairs, {total - pending} already scored in {self.paths.out}, {pending} to score "
                f"({self.opts.method}, {how})")

    def prepare(self, pending: list, meta: dict[str, Any]) -> None:
        """Train (or find in the cache) the contrastive pair (π+, π−) and load it for scoring."""
        import torch

        from unipo.models.builtin import cache_dir
        from unipo.models.loading import resolve_dtype

        opts = self.opts
        self.device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = resolve_dtype(opts.dtype, "fp32")
        if opts.method == TI_DPO:  # one model, nothing trained: the starting policy (= the reference)
            meta["contrastive_models"] = None
            self.pos_model = self.neg_model = load_scorer(None, self.base, dtype).to(self.device)
            return
        models_dir = Path(opts.models_dir) if opts.models_dir else cache_dir() / "tisdpo"
        pair_models = ensure_pair(opts.method, self.base, list(self.normalized.values()), models_dir=models_dir,
                                  lora=opts.lora, overrides=opts.train_overrides, retrain=opts.retrain,
                                  progress=opts.progress)
        meta["contrastive_models"] = str(pair_models.directory) if pair_models.directory else None
        self.pos_model = load_scorer(pair_models.positive, self.base, dtype).to(self.device)
        self.neg_model = self.pos_model if pair_models.negative is None else \
            load_scorer(pair_models.negative, self.base, dtype).to(self.device)

    def results(self, pending: list) -> Iterator[tuple[str, dict[str, Any]]]:
        from tqdm.auto import tqdm

        todo = pending[:self.stop_after] if self.stop_after is not None else pending
        total, size = len(self.normalized), self.opts.batch_size
        bar = tqdm(total=total, initial=total - len(pending), desc="scoring", unit="pair",
                   disable=not self.opts.progress, file=sys.stderr)
        try:
            for start in range(0, len(todo), size):
                chunk = todo[start:start + size]
                for p, (wc, wr) in zip(chunk, self._score(chunk), strict=True):
                    yield "out", self._row(p, wc, wr)
                bar.update(len(chunk))
        finally:
            bar.close()

    def _score(self, chunk: list) -> list[tuple[list[float], list[float]]]:
        """(chosen weights, rejected weights) of each pair of the chunk."""
        opts = self.opts
        if opts.method == TI_DPO:
            return [tuple(token_importance(self.pos_model, p.prompt_ids, ids, self.device, lam=opts.ti_lambda,
                                           prior_norm=opts.ti_prior_norm)
                          for ids in (p.chosen_ids, p.rejected_ids)) for p in chunk]
        positive, negative = self.systems or (None, None)
        diffs = score_batch(self.pos_model, self.neg_model, [self._examples(p, positive) for p in chunk],
                            [self._examples(p, negative) for p in chunk],
                            pad_token_id=self.tokenizer.pad_token_id, device=self.device)
        return [(to_weights(dc, "chosen", p.chosen_ids, self.eos_ids, opts),
                 to_weights(dr, "rejected", p.rejected_ids, self.eos_ids, opts))
                for p, (dc, dr) in zip(chunk, diffs, strict=True)]

    def _examples(self, p, system: str | None) -> dict:
        from unipo.data.tokenize import tokenize_pair

        prompt_ids = p.prompt_ids
        if system is not None:  # (P): only the prompt changes; the responses are the training tokens
            prompt_ids = tokenize_pair(with_system(self.normalized[p.row], system), self.facts, file=self.data,
                                       row=p.row)[0]
        return {"prompt_ids": prompt_ids, "chosen_ids": p.chosen_ids, "rejected_ids": p.rejected_ids}

    def _row(self, p, chosen: list[float], rejected: list[float]) -> dict[str, Any]:
        pair = self.normalized[p.row]
        keep = (lambda w: float(f"{w:.7g}")) if self.opts.method == TI_DPO else (lambda w: round(w, 6))
        weights = {"chosen": [keep(w) for w in chosen], "rejected": [keep(w) for w in rejected]}
        return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected,
                **{k: v for k, v in pair.extras.items() if k not in OUTPUT_COLUMNS},
                "chosen_weights": weights["chosen"], "rejected_weights": weights["rejected"],
                "tokenizer": self.fingerprint, "source_row": p.row}

    def written(self, name: str, record: dict[str, Any], progress: Progress) -> None:
        if self.on_row is not None:
            self.on_row(record)

    def summarize(self, items: list, meta: dict[str, Any], elapsed: float) -> dict[str, Any]:
        rows = _read_rows(self.paths.out)
        options = {k: v for k, v in asdict(self.opts).items() if k not in ("overwrite", "progress")}
        summary = {**summarize(rows), "complete": len(rows) >= len(items), "pairs_total": len(items),
                   "options": options, "data": self.prep.to_dict()}
        atomic_write_text(self.paths.summary, json.dumps(summary, indent=1, default=str))
        return summary

    def format_summary(self, summary: dict[str, Any]) -> str:
        return format_summary(summary, self.paths)


def format_summary(s: dict[str, Any], paths: WeightPaths) -> str:
    lines = [f"{s['pairs']}/{s['pairs_total']} pairs scored in {paths.out}"
             + ("" if s["complete"] else " (incomplete: rerun the same command to resume)")]
    for side in ("chosen", "rejected"):
        d = s[side]
        if d["tokens"]:
            lines.append(f"  {side:8s} weights: mean {d['mean']:.4f}, std {d['std']:.4f}, "
                         f"min {d['min']:.4f}, max {d['max']:.4f} over {d['tokens']} tokens")
    return "\n".join(lines)


def remove_outputs(out: str | Path) -> None:
    """Delete OUT and its sidecars (used by ``--overwrite`` callers and tests)."""
    for p in WeightPaths.for_output(out).all():
        if p.exists():
            p.unlink() if p.is_file() else shutil.rmtree(p)
