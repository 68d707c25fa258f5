"""The run directory, typed: :class:`RunDir` names every file a run writes and reads them back as typed records.

A run directory is a unit of work (issues 13 and 24):

* every file has one attribute (:attr:`RunDir.config_file`, :attr:`RunDir.metrics_file`, :attr:`RunDir.eval_file`,
  ...), every record one reader (:meth:`RunDir.config` → :class:`RunConfig`, :meth:`RunDir.objective`,
  :meth:`RunDir.metrics`, :meth:`RunDir.eval_record` → :class:`EvalRecord`, :meth:`RunDir.checkpoints`) and one
  writer; no file name of a run directory is written anywhere else (``tests/test_architecture.py``);
* one writer at a time: :meth:`RunDir.lock` (:class:`~unipo.io.files.RunLock` on ``DIR/.unipo.lock``), held
  while a command writes into DIR (``unipo train``, ``compare``, ``eval``); a second writer is refused at once
  with the holder's pid, host, command and start time; the lock of a killed run is taken over by the next one;
* an existing run is never trained over by accident: without ``resume`` or ``overwrite`` a directory that
  holds a run is refused; ``overwrite`` removes the old run entirely first (never merges);
* ``resume`` continues only the same run: the checkpoint's resolved configuration must equal the current one
  except for :data:`RESUMABLE_KEYS`; a finished run is not trained again;
* every checkpoint carries the resolved configuration (``unipo_run.yaml``) that made it;
* disk needs are estimated before anything loads (:func:`disk_need`, :func:`unipo.io.disk.preflight`), and a
  file-system failure during the run (of any exception type: :func:`unipo.io.atomic.is_file_system_error`)
  leaves no partial checkpoint and no half-written final model behind and becomes one line
  (:func:`unipo.io.disk.describe_os_error`); ``resume`` skips a torn checkpoint (no ``trainer_state.json``, or
  a weights file shorter than its header says).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unipo.errors import UnipoError
from unipo.io.atomic import atomic_write_text
from unipo.io.disk import PROBE_PREFIX
from unipo.io.files import RunLock

Log = Callable[[str], None]

#: keys that may differ between a checkpoint and the run that resumes it
RESUMABLE_KEYS = frozenset({"output_dir", "max_steps", "num_epochs", "save_steps", "save_total_limit", "logging_steps",
                            "eval_steps", "report_to", "progress", "plots", "resume", "overwrite", "nan_policy",
                            "nan_skip_limit", "data_num_proc"})
#: keys of the saved configuration that train() resolved (beside every TrainConfig key)
RESOLVED_KEYS = ("model_path", "ref_model_path", "precision", "objective")


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration a run saved (``unipo_config.yaml``): every TrainConfig key as resolved
    (``training``, with ``reference`` and ``token_signal`` resolved by the plan), the model it started from, the
    reference model, the precision and the objective's full configuration."""

    model_path: str
    ref_model_path: str
    precision: str | None
    objective: dict[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        model_path = values.get("model_path") or values["model"]  # as resolved (the name given, in an older run)
        return cls(model_path=model_path, ref_model_path=values.get("ref_model_path", model_path),
                   precision=values.get("precision"), objective=dict(values["objective"]),
                   training={k: v for k, v in values.items() if k not in RESOLVED_KEYS})

    @property
    def reference(self) -> str | None:
        return self.training.get("reference")

    @property
    def token_signal(self) -> dict[str, Any] | None:
        return self.training.get("token_signal")

    def setting(self, key: str) -> Any:
        """A TrainConfig key as the run saved it (TrainConfig's default where an older run did not save it)."""
        if key in self.training:
            return self.training[key]
        from unipo.training.config import TrainConfig

        return getattr(TrainConfig(), key)

    @property
    def share_prompt(self) -> bool:
        return self.setting("share_prompt")

    @property
    def packing(self) -> bool:
        return self.setting("packing")

    @property
    def chunk_size(self) -> int:
        return self.setting("chunk_size")

    def to_dict(self) -> dict[str, Any]:
        return {**self.training, "model_path": self.model_path, "ref_model_path": self.ref_model_path,
                "precision": self.precision, "objective": self.objective}


@dataclass(frozen=True)
class EvalRecord:
    """What ``unipo eval`` writes (``eval.json``), and the reference's record of ``unipo compare``: the metrics,
    the calibration bins, per held-out pair the margins (``variant``, ``dpo``), per held-out item the values of
    the paired comparisons (``items``), and for a run what was evaluated (``run``, ``data``, ``truncation``,
    ``data_summary``)."""

    metrics: dict[str, Any]
    calibration_bins: Any = None
    pair_margins: dict[str, Any] = field(default_factory=dict)
    items: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EvalRecord:
        known = ("metrics", "calibration_bins", "pair_margins", "items")
        return cls(metrics=dict(values["metrics"]), calibration_bins=values.get("calibration_bins"),
                   pair_margins=dict(values.get("pair_margins") or {}), items=dict(values.get("items") or {}),
                   extra={k: v for k, v in values.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "calibration_bins": self.calibration_bins,
                "pair_margins": self.pair_margins, "items": self.items, **self.extra}


def _json_default(x: Any) -> Any:
    """A value json cannot write: a NaN as null, anything else as its string."""
    return None if isinstance(x, float) and x != x else str(x)


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    """A record as indented JSON, written atomically (the eval records of ``unipo eval`` and ``compare``)."""
    atomic_write_text(Path(path), json.dumps(record, indent=2, default=_json_default))


@dataclass(frozen=True)
class RunDir:
    """A run directory: one attribute per file, typed readers and writers. ``RunDir(path)``."""

    path: Path

    # -- the files (the only place their names are written) ------------------------------------------------
    CONFIG = "unipo_config.yaml"  # the resolved configuration, written last by train(): the run is trained
    METRICS = "metrics.jsonl"  # every logged step, appended live
    EVAL = "eval.json"  # unipo eval's record
    DATA_SUMMARY = "data_summary.json"  # what data preparation kept, truncated and dropped
    TRAINER_STATE = "trainer_state.json"  # transformers' state: in a checkpoint, written last (complete)
    CHECKPOINT_CONFIG = "unipo_run.yaml"  # in every checkpoint: the resolved configuration that made it
    SIGNAL_SPEC = "unipo_signal.json"  # the token signal's resolved spec and sizes
    SIGNAL_WEIGHTS = "unipo_signal.safetensors"  # the token signal's weights (final model and checkpoints)
    OBJECTIVE_STATE = "unipo_objective_state.json"  # a stateful objective's statistics (β-DPO, α-DPO)
    REFERENCE_WEIGHTS = "unipo_reference.safetensors"  # in a checkpoint: the synced reference (TR-DPO, BEMA)
    BEMA_STATE = "unipo_bema.safetensors"  # in a checkpoint: BEMA's running state
    CURVES = "training_curves.png"  # the training curves (unipo train; compare's report draws its own)
    CARD = "README.md"  # the model card
    LOCK = ".unipo.lock"  # held by the command writing into the directory
    ADAPTER_CONFIG = "adapter_config.json"  # present when the model is LoRA adapters on a base model
    CHECKPOINT_PREFIX = "checkpoint-"  # checkpoint-N, N the global step

    #: what makes a directory hold a run (anything a run writes that a later run would mix with)
    RUN_FILES = (CONFIG, METRICS, EVAL, DATA_SUMMARY, "model.safetensors", "adapter_model.safetensors",
                 SIGNAL_WEIGHTS, TRAINER_STATE)
    #: what the final save writes at the top of the run directory (removed when that save fails part-way)
    FINAL_OUTPUTS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin*", "adapter_model.*",
                     "adapter_config.json", "config.json", "generation_config.json", "tokenizer*.json",
                     "tokenizer.model", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                     "chat_template.jinja", "unipo_signal.*", OBJECTIVE_STATE, TRAINER_STATE, "training_args.bin",
                     CONFIG, DATA_SUMMARY, CARD)
    #: what :meth:`prune` deletes from an evaluated run: the checkpoints and the weights
    PRUNED = (CHECKPOINT_PREFIX + "*", "*.safetensors", "*.bin", "*.pt")
    #: what a refused run may have left in a directory it created (the lock, a write probe)
    LEFTOVERS = (LOCK, PROBE_PREFIX)

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS

    @property
    def eval_file(self) -> Path:
        return self.path / self.EVAL

    @property
    def data_summary_file(self) -> Path:
        return self.path / self.DATA_SUMMARY

    @property
    def trainer_state_file(self) -> Path:
        return self.path / self.TRAINER_STATE

    @property
    def signal_spec_file(self) -> Path:
        return self.path / self.SIGNAL_SPEC

    @property
    def signal_weights_file(self) -> Path:
        return self.path / self.SIGNAL_WEIGHTS

    @property
    def objective_state_file(self) -> Path:
        return self.path / self.OBJECTIVE_STATE

    @property
    def reference_weights_file(self) -> Path:
        return self.path / self.REFERENCE_WEIGHTS

    @property
    def bema_state_file(self) -> Path:
        return self.path / self.BEMA_STATE

    @property
    def checkpoint_config_file(self) -> Path:
        return self.path / self.CHECKPOINT_CONFIG

    @property
    def curves_file(self) -> Path:
        return self.path / self.CURVES

    @property
    def card_file(self) -> Path:
        return self.path / self.CARD

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    # -- state --------------------------------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        """The configuration is written by train() after the final model is saved."""
        return self.config_file.exists()

    @property
    def evaluated(self) -> bool:
        return self.trained and self.eval_file.exists()

    @property
    def is_adapter(self) -> bool:
        """The model here is LoRA adapters on a base model (not a full model)."""
        return (self.path / self.ADAPTER_CONFIG).exists()

    def holds_run(self) -> bool:
        return self.path.is_dir() and (any((self.path / f).exists() for f in self.RUN_FILES)
                                       or bool(self.checkpoints()))

    def finished_steps(self) -> int | None:
        """The global step a finished run ended at (None: the directory holds no finished run)."""
        if not self.config_file.exists() or not self.trainer_state_file.exists():
            return None
        return int(json.loads(self.trainer_state_file.read_text()).get("global_step", 0))

    def lock(self, command: str) -> RunLock:
        """One writer per run directory: :class:`~unipo.io.files.RunLock` on ``DIR/.unipo.lock``."""
        return RunLock(self.lock_file, command, subject=str(self.path))

    # -- readers ------------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """The saved configuration as written (a refused line when the directory holds no run)."""
        if not self.config_file.exists():
            raise UnipoError(f"{self.path}: not a unipo run directory (no {self.CONFIG})")
        return yaml.safe_load(self.config_file.read_text())

    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.config_dict())

    def objective(self) -> dict[str, Any]:
        """The objective's full configuration (as :meth:`unipo.objective.ObjectiveConfig.to_dict` wrote it)."""
        return self.config().objective

    def metrics(self) -> list[dict[str, Any]]:
        """Every logged step (empty when none was logged yet)."""
        if not self.metrics_file.exists():
            return []
        return [json.loads(ln) for ln in self.metrics_file.read_text().splitlines() if ln.strip()]

    def final_metrics(self) -> dict[str, Any]:
        """The last value of every logged key (a finished run that is not trained again)."""
        final: dict[str, Any] = {}
        for entry in self.metrics():
            final.update(entry)
        return final

    def eval_record(self) -> EvalRecord:
        return EvalRecord.from_dict(json.loads(self.eval_file.read_text()))

    def checkpoints(self) -> list[Path]:
        """``checkpoint-N`` directories, by step."""
        ckpts = [p for p in self.path.glob(self.CHECKPOINT_PREFIX + "*")
                 if p.is_dir() and p.name.rpartition("-")[2].isdigit()]
        return sorted(ckpts, key=lambda p: int(p.name.rpartition("-")[2]))

    def checkpoint(self, step: int) -> RunDir:
        return RunDir(self.path / f"{self.CHECKPOINT_PREFIX}{step}")

    def last_complete_checkpoint(self, log: Log) -> str | None:
        """The newest ``checkpoint-N`` that is complete (:func:`_torn`): a run killed or failed while writing a
        checkpoint resumes from the one before, not from a half-written one."""
        for ckpt in reversed(self.checkpoints()):
            problem = _torn(ckpt)
            if problem is None:
                return str(ckpt)
            log(f"{ckpt} is {problem}: skipped")
        return None

    # -- writers ------------------------------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_text(self.config_file, yaml.safe_dump(dict(config), sort_keys=False))

    def write_checkpoint_config(self, text: str) -> None:
        atomic_write_text(self.checkpoint_config_file, text)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_file, "".join(json.dumps(h) + "\n" for h in history))

    def write_data_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_text(self.data_summary_file, json.dumps(summary, indent=2))

    def write_signal_spec(self, spec: Mapping[str, Any]) -> None:
        atomic_write_text(self.signal_spec_file, json.dumps(dict(spec), indent=2))

    def write_card(self, text: str) -> None:
        atomic_write_text(self.card_file, text)

    def write_eval(self, record: Mapping[str, Any] | EvalRecord) -> None:
        write_json(self.eval_file, record.to_dict() if isinstance(record, EvalRecord) else record)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def prepare(self, *, resume: bool, overwrite: bool, log: Log) -> None:
        """Refuse to mix runs; with ``overwrite``, remove the old run first."""
        if resume and overwrite:
            raise UnipoError("give --resume (continue the run in the directory) or --overwrite (delete it and "
                             "start again), not both")
        if not self.holds_run() or resume:
            return
        if not overwrite:
            raise UnipoError(f"{self.path} already holds a run; pass --resume to continue it, --overwrite to delete "
                             f"it and start again, or choose another --output-dir")
        log(f"--overwrite: removing the previous run in {self.path}")
        for child in self.path.iterdir():
            if child.name == self.LOCK:  # held by this process right now
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

    def check_resume(self, checkpoint: str | None, resolved: Mapping[str, Any]) -> None:
        """The checkpoint must have been made by this configuration (except :data:`RESUMABLE_KEYS`)."""
        if checkpoint is None:
            return
        saved_file = RunDir(checkpoint).checkpoint_config_file
        if not saved_file.exists():
            raise UnipoError(f"{checkpoint} records no configuration (made by an older unipo?); it cannot be "
                             f"checked against this run: pass --overwrite to start again")
        saved = yaml.safe_load(saved_file.read_text()) or {}
        current = json.loads(json.dumps(dict(resolved), default=str))
        keys = sorted((set(saved) | set(current)) - RESUMABLE_KEYS)
        differ = [k for k in keys if saved.get(k) != current.get(k)]
        if differ:
            shown = ", ".join(f"{k}: {saved.get(k)!r} → {resolved.get(k)!r}" for k in differ[:5])
            raise UnipoError(f"{checkpoint} was made with another configuration ({shown}); resume with the same "
                             f"settings, or pass --overwrite to start again")

    def remove_partial_checkpoints(self, log: Log) -> list[str]:
        """Delete ``checkpoint-N`` directories that a failure left without ``trainer_state.json`` (written last)."""
        removed = []
        for ckpt in self.checkpoints():
            if not (ckpt / self.TRAINER_STATE).exists():
                shutil.rmtree(ckpt, ignore_errors=True)
                removed.append(ckpt.name)
        if removed:
            log(f"removed the partial {', '.join(removed)}")
        return removed

    def remove_final_outputs(self, log: Log) -> list[str]:
        """Delete what a failed final save wrote at the top of the directory (:data:`FINAL_OUTPUTS`); the
        checkpoints, ``metrics.jsonl`` and the curves stay, so ``--resume`` finishes from the last checkpoint."""
        removed = sorted({p.name for pattern in self.FINAL_OUTPUTS for p in self.path.glob(pattern) if p.is_file()})
        for name in removed:
            (self.path / name).unlink(missing_ok=True)
        if removed:
            log(f"removed the half-written final model ({', '.join(removed)})")
        return removed

    def prune(self) -> None:
        """Delete an evaluated run's checkpoints and weights, keeping what its record needs (the configuration,
        the metrics, the eval record, the tokenizer and the model's config). Only once it is evaluated."""
        if not self.evaluated:
            raise UnipoError(f"{self.path}: not evaluated yet; its model is kept")
        for pattern in self.PRUNED:
            for path in self.path.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def remove_if_unused(self) -> bool:
        """Remove this directory (one this run made) when it holds nothing but the lock or a write probe: a
        refused run leaves no directory behind, while anything a run wrote (metrics, checkpoints) is kept."""
        if not self.path.is_dir():
            return False
        for path in self.path.rglob("*"):
            if path.is_file() or path.is_symlink():
                if not path.name.startswith(self.LEFTOVERS):
                    return False
        shutil.rmtree(self.path, ignore_errors=True)
        return True


def _torn(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (None: it can): no ``trainer_state.json`` (Trainer writes it last),
    or a safetensors file shorter than its header says."""
    from unipo.models.checks import safetensors_problem

    if not (ckpt / RunDir.TRAINER_STATE).exists():
        return "incomplete (killed or failed while saving?)"
    for f in sorted(ckpt.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            return f"torn ({problem})"
    return None


def last_complete_checkpoint(out_dir: str | Path, log: Log) -> str | None:
    """:meth:`RunDir.last_complete_checkpoint` of ``out_dir``."""
    return RunDir(out_dir).last_complete_checkpoint(log)


def first_missing(out_dir: Path) -> Path | None:
    """The outermost directory of ``out_dir``'s path that does not exist yet (what a run would create), or None."""
    missing = None
    for p in [out_dir.absolute(), *out_dir.absolute().parents]:
        if p.exists() or p.is_symlink():
            break
        missing = p
    return missing


def disk_need(model_path: str, cfg: Any) -> int:
    """Bytes a run may hold on disk at its peak: the final model plus ``save_total_limit + 1`` checkpoints
    (Trainer writes the newest before it deletes the oldest), each float32 weights and Adam's two moments.
    LoRA saves adapters only (counted as 5 %). 0 when the model's size is unknown (a hub name)."""
    p = Path(model_path)
    files = list(p.glob("*.safetensors")) + list(p.glob("*.bin")) if p.is_dir() else []
    if not files:
        return 0
    on_disk = sum(f.stat().st_size for f in files)
    try:
        dtype = json.loads((p / "config.json").read_text()).get("torch_dtype") or "float32"
    except (OSError, ValueError):
        dtype = "float32"
    n_params = on_disk / (2 if dtype in ("bfloat16", "float16") else 4)
    weights, checkpoint = 4 * n_params, 12 * n_params
    if cfg.save_total_limit is not None:
        n_ckpt = cfg.save_total_limit + 1
    elif cfg.max_steps and cfg.max_steps > 0:
        n_ckpt = cfg.max_steps // max(cfg.save_steps, 1) + 1
    else:
        n_ckpt = 3
    total = weights + n_ckpt * checkpoint
    return int(total * (0.05 if cfg.lora else 1.0))
