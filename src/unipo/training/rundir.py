"""What ``unipo train`` does with its output directory before and after training (issue "a run directory is a
unit of work"):

* an existing run is never trained over by accident: without ``resume`` or ``overwrite`` a directory that
  holds a run is refused; ``overwrite`` removes the old run entirely first (never merges);
* ``resume`` continues only the same run: the checkpoint's resolved configuration must equal the current one
  except for :data:`RESUMABLE_KEYS`; a finished run is not trained again;
* every checkpoint carries the resolved configuration (``unipo_run.yaml``) that made it;
* disk needs are estimated before anything loads, and a file-system failure during the run (of any exception
  type: :func:`unipo.io.atomic.is_file_system_error`) leaves no partial checkpoint and no half-written final
  model behind and becomes one line (:func:`unipo.io.rundir.describe_os_error`); ``resume`` skips a torn
  checkpoint (no ``trainer_state.json``, or a weights file shorter than its header says).
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
                            "eval_steps", "report_to", "progress", "plots", "resume", "overwrite", "nan_policy",
                            "nan_skip_limit", "data_num_proc"})
#: what makes a directory hold a run (anything a run writes that a later run would mix with)
RUN_FILES = ("unipo_config.yaml", "metrics.jsonl", "eval.json", "data_summary.json", "model.safetensors",
             "adapter_model.safetensors", "unipo_signal.safetensors", "trainer_state.json")
CHECKPOINT_CONFIG = "unipo_run.yaml"
#: what the final save writes at the top of the output directory (removed when that save fails part-way)
FINAL_OUTPUTS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin*", "adapter_model.*",
                 "adapter_config.json", "config.json", "generation_config.json", "tokenizer*.json", "tokenizer.model",
                 "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
                 "unipo_signal.*", "unipo_objective_state.json", "trainer_state.json", "training_args.bin",
                 "unipo_config.yaml", "data_summary.json", "README.md")


def _checkpoints(out_dir: Path) -> list[Path]:
    ckpts = [p for p in out_dir.glob("checkpoint-*") if p.is_dir() and p.name.rpartition("-")[2].isdigit()]
    return sorted(ckpts, key=lambda p: int(p.name.rpartition("-")[2]))


def _torn(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed from (None: it can): no ``trainer_state.json`` (Trainer writes it last),
    or a safetensors file shorter than its header says."""
    from unipo.models.checks import safetensors_problem

    if not (ckpt / "trainer_state.json").exists():
        return "incomplete (killed or failed while saving?)"
    for f in sorted(ckpt.glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            return f"torn ({problem})"
    return None


def last_complete_checkpoint(out_dir: Path, log) -> str | None:
    """The newest ``checkpoint-N`` that is complete (:func:`_torn`): a run killed or failed while writing a
    checkpoint resumes from the one before, not from a half-written one."""
    for ckpt in reversed(_checkpoints(out_dir)):
        problem = _torn(ckpt)
        if problem is None:
            return str(ckpt)
        log(f"{ckpt} is {problem}: skipped")
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
        """Written after Trainer's ``trainer_state.json``: a checkpoint whose configuration could not be written
        is removed (a resume could not check it), and the error goes on to the run's handler."""
        from unipo.io.atomic import atomic_write_text, remove_quietly

        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                try:
                    atomic_write_text(ckpt / CHECKPOINT_CONFIG, self.text)
                except BaseException:
                    remove_quietly(ckpt)
                    raise


def first_missing(out_dir: Path) -> Path | None:
    """The outermost directory of ``out_dir``'s path that does not exist yet (what a run would create), or None."""
    missing = None
    for p in [out_dir.absolute(), *out_dir.absolute().parents]:
        if p.exists() or p.is_symlink():
            break
        missing = p
    return missing


#: what a refused run may have left in a directory it created (the lock, a write probe)
LEFTOVERS = (".unipo.lock", ".unipo-write-test-")


def remove_if_unused(created: Path) -> bool:
    """Remove ``created`` (a directory this run made) when it holds nothing but the lock or a write probe: a
    refused run leaves no directory behind, while anything a run wrote (metrics, checkpoints) is kept."""
    if not created.is_dir():
        return False
    for path in created.rglob("*"):
        if path.is_file() or path.is_symlink():
            if not path.name.startswith(LEFTOVERS):
                return False
    shutil.rmtree(created, ignore_errors=True)
    return True


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


def remove_final_outputs(out_dir: Path, log) -> list[str]:
    """Delete what a failed final save wrote at the top of ``out_dir`` (:data:`FINAL_OUTPUTS`); the checkpoints,
    ``metrics.jsonl`` and the curves stay, so ``--resume`` finishes from the last checkpoint."""
    removed = sorted({p.name for pattern in FINAL_OUTPUTS for p in out_dir.glob(pattern) if p.is_file()})
    for name in removed:
        (out_dir / name).unlink(missing_ok=True)
    if removed:
        log(f"removed the half-written final model ({', '.join(removed)})")
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
