"""The contrastive pair of models (π+, π−) of TIS-DPO (Liu et al., ICLR 2025, §6.1).

- ``prompt`` (P): the base model itself, under a positive and a negative system prompt
  (:mod:`unipo.tisdpo.prompts`); nothing is trained.
- ``sft`` (S): π+ fine-tuned on the chosen responses, π− on the rejected responses (paper: lr 5e-5,
  3 epochs). Trained with unipo's own trainer: the objective's NLL term alone is SFT, so the run uses
  ``{preset: reference_free, beta: 1e-6, nll_weight: 1}``: the pair term's gradient is scaled by
  β = 1e-6 (negligible) and needs no reference model; the NLL term, mean over the chosen tokens, is the
  SFT loss. π− is the same run on the swapped data (its "chosen" are the rejected responses).
- ``dpo`` (D): π+ trained with DPO on the data, π− with DPO on the swapped data (paper: lr 1e-5, 1 epoch;
  the paper's best construction).

LoRA by default (``{r: 16, alpha: 32}``), with a learning rate 10× the paper's (which were for full
fine-tuning; LoRA needs larger steps); full fine-tuning at the paper's rates with ``lora=None``. Any
:class:`~unipo.training.config.TrainConfig` key can be overridden.

Trained pairs are cached under ``MODELS_DIR/{method}-{key}/{positive,negative}``, the key hashing the
method, the base model (path, config, weight-file sizes and times), the training rows and the resolved
training settings, so a second estimate (other clamp bounds, another transform) reuses them. Each model is
trained into ``ROLE.partial`` and renamed to ``ROLE`` when its training finished, so a run killed while
training π− keeps the finished π+ (its directory is checked, :func:`unipo.models.checks.check_model_dir`) and
the rerun trains π− alone (issue 23, item 6).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unipo.data.formats import PreferencePair
from unipo.errors import ConfigError
from unipo.io.atomic import atomic_write_text
from unipo.io.console import logger
from unipo.training.rundir import RunDir

METHODS = ("prompt", "sft", "dpo")
DEFAULT_LORA = {"r": 16, "alpha": 32}
#: the paper's settings (full fine-tuning): S lr 5e-5 × 3 epochs, D lr 1e-5 × 1 epoch (§7.1)
PAPER_TRAINING = {
    "sft": {"variant": {"preset": "reference_free", "beta": 1e-6, "nll_weight": 1.0},
            "learning_rate": 5e-5, "num_epochs": 3.0},
    "dpo": {"variant": "dpo", "beta": 0.1, "learning_rate": 1e-5, "num_epochs": 1.0},
}
LORA_LR_FACTOR = 10.0
#: TrainConfig keys that do not change the trained model (left out of the cache key)
_NOT_IN_KEY = {"output_dir", "progress", "plots", "logging_steps", "save_steps", "save_total_limit",
               "report_to", "resume", "data", "eval_data", "model"}
MANIFEST = "contrastive.json"

#: number of contrastive models trained by this process (tests use it to check reuse)
TRAINING_RUNS = 0


log = logger("unipo weights")


@dataclass
class ContrastivePair:
    """Where π+ and π− live: ``positive`` / ``negative`` directories (None for (P): the base model)."""

    method: str
    base: str
    positive: Path | None = None
    negative: Path | None = None
    directory: Path | None = None
    trained: bool = False  # trained by this call (False: reused from the cache, or nothing to train)


def training_settings(method: str, lora: dict | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """TrainConfig keys for training one contrastive model of ``method`` (sft / dpo)."""
    if method not in PAPER_TRAINING:
        raise ConfigError(f"method {method!r} trains no models")
    settings: dict[str, Any] = json.loads(json.dumps(PAPER_TRAINING[method]))
    if lora:
        settings["lora"] = dict(lora)
        settings["learning_rate"] *= LORA_LR_FACTOR
    settings.update({"plots": False, "save_steps": 10**9, "save_total_limit": None})
    for key, value in (overrides or {}).items():
        settings[key] = value
    return settings


def model_fingerprint(path: str) -> dict[str, Any]:
    """What identifies the base model: its path, config and the sizes / times of its weight files."""
    p = Path(path)
    fp: dict[str, Any] = {"path": str(p.resolve()) if p.exists() else path}
    if p.is_dir():
        cfg = p / "config.json"
        fp["config"] = hashlib.sha256(cfg.read_bytes()).hexdigest() if cfg.exists() else None
        fp["files"] = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in p.iterdir()
                             if f.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    return fp


def rows_fingerprint(rows: list[dict]) -> str:
    """sha256 of the training rows (prompt / chosen / rejected, in order)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def cache_key(method: str, base: str, rows: list[dict], settings: dict[str, Any]) -> str:
    blob = {"method": method, "base": model_fingerprint(base), "data": rows_fingerprint(rows),
            "train": {k: v for k, v in sorted(settings.items()) if k not in _NOT_IN_KEY}, "version": 1}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def core_row(pair: PreferencePair, swap: bool = False) -> dict:
    """The pair as an explicit ``prompt / chosen / rejected`` row (chosen and rejected swapped on request)."""
    c, r = (pair.rejected, pair.chosen) if swap else (pair.chosen, pair.rejected)
    return {"prompt": pair.prompt, "chosen": c, "rejected": r}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def ensure_pair(method: str, base: str, pairs: list[PreferencePair], *, models_dir: str | Path,
                lora: dict | None = DEFAULT_LORA, overrides: dict[str, Any] | None = None,
                retrain: bool = False, progress: bool = True) -> ContrastivePair:
    """Return the contrastive pair for ``method``, training (and caching) it unless already there."""
    global TRAINING_RUNS
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if method == "prompt":
        return ContrastivePair(method, base)
    from unipo.training.config import TrainConfig
    from unipo.training.train import train

    settings = training_settings(method, lora, overrides)
    rows = [core_row(p) for p in pairs]
    key = cache_key(method, base, rows, settings)
    directory = Path(models_dir) / f"{method}-{key}"
    manifest = directory / MANIFEST
    pos, neg = directory / "positive", directory / "negative"
    if manifest.exists() and pos.is_dir() and neg.is_dir() and not retrain:
        log(f"reusing the contrastive models in {directory} (trained earlier; --retrain to train again)")
        return ContrastivePair(method, base, pos, neg, directory, trained=False)
    directory.mkdir(parents=True, exist_ok=True)
    if manifest.exists():
        manifest.unlink()
    _write_jsonl(directory / "train_positive.jsonl", rows)
    _write_jsonl(directory / "train_negative.jsonl", [core_row(p, swap=True) for p in pairs])
    for role, target in (("positive", pos), ("negative", neg)):
        partial = directory / f"{role}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        if not retrain and _finished(target):
            log(f"keeping π{'+' if role == 'positive' else '−'} in {target} (trained before the last run stopped)")
            continue
        cfg = TrainConfig.from_dict({**settings, "model": base, "data": str(directory / f"train_{role}.jsonl"),
                                     "output_dir": str(partial), "progress": progress},
                                    source=f"contrastive {method} model ({role})")
        what = "on the swapped data" if role == "negative" else "on the data"
        log(f"training π{'+' if role == 'positive' else '−'} ({method} {what}) into {target}")
        train(cfg)
        TRAINING_RUNS += 1
        for stale in RunDir(partial).checkpoints():
            shutil.rmtree(stale)
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    atomic_write_text(manifest, json.dumps({"method": method, "base": model_fingerprint(base), "key": key,
                                    "train": settings, "pairs": len(rows)}, indent=1, default=str))
    return ContrastivePair(method, base, pos, neg, directory, trained=True)


def _finished(target: Path) -> bool:
    """``target`` holds a model whose training finished (renamed from ``.partial``) and loads."""
    from unipo.errors import UnipoError
    from unipo.models.checks import check_model_dir

    if not target.is_dir():
        return False
    try:
        check_model_dir(target)
    except UnipoError as exc:
        log(f"training {target.name} again: {exc}")
        return False
    return True


def load_scorer(path: Path | None, base: str, dtype):
    """A frozen causal LM: ``base`` itself (path None), a LoRA adapter on ``base`` (merged), or a full model."""
    from unipo.models.loading import load_model

    if path is None:
        return load_model(base, dtype=dtype, trainable=False)
    if RunDir(path).is_adapter:
        from peft import PeftModel

        model = load_model(base, dtype=dtype, trainable=False)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    else:
        model = load_model(str(path), dtype=dtype, trainable=False)
    model.eval()
    model.requires_grad_(False)
    return model
