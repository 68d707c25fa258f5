"""What a run leaves behind besides the model: metrics JSONL, the resolved config, curves and a model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from unipo.io.atomic import atomic_write_text


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


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def write_config(path: Path, config: dict[str, Any]) -> None:
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


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
    lines += ["", "The full configuration is in `unipo_config.yaml`, the curves in `training_curves.png`, "
              "every logged step in `metrics.jsonl`."]
    return "\n".join(lines) + "\n"
