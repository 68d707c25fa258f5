"""What a run leaves behind besides the model, as Trainer callbacks and text: ``metrics.jsonl`` appended live,
the resolved configuration in every checkpoint, and the model card (the files: ``RunDir``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from unipo.io.atomic import atomic_write_text
from unipo.training.rundir import RunDir


class JsonlMetricsCallback(TrainerCallback):
    """Appends every log entry to ``metrics.jsonl`` as it happens (live monitoring). On resume, entries
    past the checkpoint's step are dropped first, so the file never holds a step twice."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.process_index == 0 or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= state.global_step]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in keep))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if args.process_index != 0 or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class CheckpointConfigCallback(TrainerCallback):
    """Writes the resolved configuration into every checkpoint (:attr:`RunDir.checkpoint_config_file`)."""

    def __init__(self, config: dict[str, Any]):
        self.text = yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)

    def on_save(self, args, state, control, **kwargs):
        """Written after Trainer's ``trainer_state.json``: a checkpoint whose configuration could not be written
        is removed (a resume could not check it), and the error goes on to the run's handler."""
        from unipo.io.atomic import remove_quietly

        if state.is_world_process_zero:
            ckpt = RunDir(args.output_dir).checkpoint(state.global_step)
            if ckpt.path.is_dir():
                try:
                    ckpt.write_checkpoint_config(self.text)
                except BaseException:
                    remove_quietly(ckpt.path)
                    raise


def model_card(cfg: dict[str, Any], objective: dict[str, Any], summary: dict[str, Any],
               final: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in objective.items() if k != "preset")
    lines = [
        "---", "library_name: transformers", "tags: [unipo, preference-optimization, "
        f"{objective.get('preset', 'dpo')}]", "---", "",
        f"# {Path(cfg['output_dir']).name}", "",
        f"Trained with [unipo](https://pypi.org/project/unipo/) from `{cfg['model']}` on `{cfg['data']}`.", "",
        f"- variant: **{objective.get('preset')}** ({params})",
        f"- pairs: {summary.get('pairs_kept', '?')} kept of {summary.get('rows_read', '?')} rows read",
        f"- learning rate {cfg['learning_rate']}, batch {cfg['per_device_batch_size']} × "
        f"{cfg['gradient_accumulation_steps']} accumulation, max_length {cfg['max_length']}, seed {cfg['seed']}",
        f"- reference: {cfg['reference']}, precision: {cfg['precision']}"
        + (f", LoRA {cfg['lora']}" if cfg.get("lora") else ""),
        "", "## Final training metrics", "",
        "| metric | value |", "|---|---|",
    ]
    for k, v in final.items():
        if isinstance(v, int | float):
            lines.append(f"| {k} | {v:.4g} |")
    lines += ["", f"The full configuration is in `{RunDir.CONFIG}`, the curves in `{RunDir.CURVES}`, "
              f"every logged step in `{RunDir.METRICS}`."]
    return "\n".join(lines) + "\n"
