"""What ``unipo train`` does with its output directory before and after training (issue "a run directory is a
unit of work"):

* an existing run is never trained over by accident: without ``resume`` or ``overwrite`` a directory that
  holds a run is refused; ``overwrite`` removes the old run entirely first (never merges);
* ``resume`` continues only the same run: the checkpoint's resolved configuration must equal the current one
  except for :data:`RESUMABLE_KEYS`; a finished run is not trained again;
* every checkpoint carries the resolved configuration (``unipo_run.yaml``) that made it;
* disk needs are estimated before anything loads, and a file-system failure during the run leaves no partial
  checkpoint behind and becomes one line (:func:`unipo.io.rundir.describe_os_error`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from unipo.errors import UnipoError

#: keys that may differ between a checkpoint and the run that resumes it
RESUMABLE_KEYS = frozenset({"output_dir", "max_steps", "num_epochs", "save_steps", "save_total_limit", "logging_steps",
                            "eval_steps", "report_to", "progress", "plots", "resume", "overwrite",
                            "data_num_proc"})
#: what makes a directory hold a run (anything a run writes that a later run would mix with)
RUN_FILES = ("unipo_config.yaml", "metrics.jsonl", "eval.json", "data_summary.json", "model.safetensors",
             "adapter_model.safetensors", "unipo_signal.safetensors", "trainer_state.json")
CHECKPOINT_CONFIG = "unipo_run.yaml"


def _checkpoints(out_dir: Path) -> list[Path]:
    ckpts = [p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name.rpartition("-")[2].isdigit()]
    return sorted(ckpts, key=lambda p: int(p.name.rpartition("-")[2]))


def last_complete_checkpoint(out_dir: Path, log) -> str | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (written last by Trainer) exists: a run
    killed while writing a checkpoint resumes from the one before, not from a half-written one."""
    for ckpt in reversed(_checkpoints(out_dir)):
        if (ckpt / "trainer_state.json").exists():
            return str(ckpt)
        log(f"{ckpt} is incomplete (killed while saving?): skipped")
    return None


def holds_run(out_dir: Path) -> bool:
    return out_dir.is_dir() and (any((out_dir / f).exists() for f in RUN_FILES) or bool(_checkpoints(out_dir)))


def prepare_output_dir(out_dir: Path, *, resume: bool, overwrite: bool, log) -> None:
    """Refuse to mix runs; with ``overwrite``, remove the old run first."""
    if resume and overwrite:
        raise UnipoError("give --resume (continue the run in the directory) or --overwrite (delete it and start "
                         "again), not both")
    if not holds_run(out_dir) or resume:
        return
    if not overwrite:
        raise UnipoError(f"{out_dir} already holds a run; pass --resume to continue it, --overwrite to delete it "
                         f"and start again, or choose another --output-dir")
    log(f"--overwrite: removing the previous run in {out_dir}")
    for child in out_dir.iterdir():
        if child.name == ".unipo.lock":  # held by this process right now
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def resolved_config(plan: Any) -> dict[str, Any]:
    """The configuration that identifies a run: every TrainConfig key and what was resolved from them."""
    return {**plan.cfg.to_dict(), "reference": plan.reference, "token_signal": plan.signal,
            "objective": plan.objective.config.to_dict()}


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted((set(saved) | set(current)) - RESUMABLE_KEYS)
    return [k for k in keys if saved.get(k) != current.get(k)]


def finished_steps(out_dir: Path) -> int | None:
    """The global step a finished run ended at (None: the directory holds no finished run)."""
    state = out_dir / "trainer_state.json"
    if not (out_dir / "unipo_config.yaml").exists() or not state.exists():
        return None
    return int(json.loads(state.read_text()).get("global_step", 0))


def check_resume(out_dir: Path, checkpoint: str | None, plan: Any) -> None:
    """The checkpoint must have been made by this configuration (except :data:`RESUMABLE_KEYS`)."""
    if checkpoint is None:
        return
    saved_file = Path(checkpoint) / CHECKPOINT_CONFIG
    if not saved_file.exists():
        raise UnipoError(f"{checkpoint} records no configuration (made by an older unipo?); it cannot be checked "
                         f"against this run: pass --overwrite to start again")
    saved = yaml.safe_load(saved_file.read_text()) or {}
    differ = _differences(saved, json.loads(json.dumps(resolved_config(plan), default=str)))
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} → {resolved_config(plan).get(k)!r}" for k in differ[:5])
        raise UnipoError(f"{checkpoint} was made with another configuration ({shown}); resume with the same "
                         f"settings, or pass --overwrite to start again")


class CheckpointConfigCallback(TrainerCallback):
    """Writes the resolved configuration into every checkpoint as ``unipo_run.yaml``."""

    def __init__(self, config: dict[str, Any]):
        self.text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                (ckpt / CHECKPOINT_CONFIG).write_text(self.text)


def remove_partial_checkpoints(out_dir: Path, log) -> list[str]:
    """Delete ``checkpoint-N`` directories that a failure left without ``trainer_state.json`` (written last)."""
    removed = []
    for ckpt in _checkpoints(out_dir):
        if not (ckpt / "trainer_state.json").exists():
            shutil.rmtree(ckpt, ignore_errors=True)
            removed.append(ckpt.name)
    if removed:
        log(f"removed the partial {', '.join(removed)}")
    return removed


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
