"""The training console (one readable line per logging step, no raw dicts) and the report_to trackers."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from types import SimpleNamespace

import pytest

from tests.helpers import train_args
from unipo.cli import main
from unipo.training import console
from unipo.training.console import ConsoleCallback, clock, train_line


@pytest.mark.unit
def test_the_line_of_a_training_step():
    logs = {"loss": 0.62854, "grad_norm": 1.1, "learning_rate": 1e-3, "rewards/accuracies": 0.75,
            "rewards/margins": 0.13421, "kl/chosen": 0.0035, "kl/rejected": 0.01249, "num_input_tokens_seen": 99}
    assert train_line(logs, 20, 200, 1234.4, 192.0) == (
        "step 20/200 · loss 0.6285 · reward acc 0.75 · margin 0.1342 · KL c/r 0.0035/0.0125 · 1,234 tok/s · ETA 3:12")
    # no KL term in the objective, no token count, unknown pace: those fields are left out, not shown as 0
    assert train_line({"loss": 0.5, "rewards/accuracies": 1.0, "rewards/margins": 2.0}, 1, 4, None, None) == (
        "step 1/4 · loss 0.5000 · reward acc 1.00 · margin 2")
    assert [clock(s) for s in (0, 59.6, 192, 3723)] == ["0:00", "1:00", "3:12", "1:02:03"]


@pytest.mark.unit
def test_rates_leave_out_evaluation_time(monkeypatch):
    """Tokens per second over each logging interval and the ETA at this session's pace, both without the time
    spent evaluating (hand-computed from a scripted clock)."""
    times = iter([100.0, 102.0, 107.0, 110.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(times))
    lines: list[str] = []
    cb = ConsoleCallback()
    cb.write = lines.append
    args = SimpleNamespace(disable_tqdm=True)
    state = SimpleNamespace(global_step=0, max_steps=10, num_input_tokens_seen=0, is_world_process_zero=True)
    cb.on_train_begin(args, state, None)  # t=100
    state.global_step = 2
    cb.on_log(args, state, None, logs={"loss": 0.7, "num_input_tokens_seen": 500})  # t=102: 500 tokens in 2 s
    cb.on_log(args, state, None, logs={"eval_loss": 0.6, "eval_runtime": 3.0})  # 3 s of evaluation
    state.global_step = 4
    cb.on_log(args, state, None, logs={"loss": 0.6, "num_input_tokens_seen": 1000})  # t=107, i.e. 104 training
    cb.on_log(args, state, None, logs={"train_runtime": 10.0, "train_loss": 0.65})
    assert lines == ["step 2/10 · loss 0.7000 · 250 tok/s · ETA 0:08",  # 1 s/step × 8 steps left
                     "eval at step 2 · loss 0.6000",
                     "step 4/10 · loss 0.6000 · 250 tok/s · ETA 0:06",  # 500 tokens / 2 s; 1 s/step × 6
                     "trained 4 steps in 0:10 · mean loss 0.6500"]


@pytest.mark.integration
def test_one_readable_line_per_step_and_raw_metrics_only_in_the_file(tiny_model_dir, data, tmp_path, capsys):
    """With the progress bar on, the console holds one line per logging step (its loss equal to
    metrics.jsonl's) and no raw dict; the token count is exactly the real tokens of the pairs trained on."""
    from unipo.data.tokenize import prepare_pairs
    from unipo.models.loading import load_tokenizer

    out = tmp_path / "run"
    args = [a for a in train_args(tiny_model_dir, data, out, "--max-steps", "3", "--set", "plots=false")
            if a != "--no-progress"]
    assert main(args) == 0
    captured = capsys.readouterr()
    console_text = (captured.err + captured.out).replace("\r", "\n")
    assert "{'loss'" not in console_text and "'grad_norm'" not in console_text
    lines = re.findall(r"^step (\d+)/3 · loss ([0-9.]+) · reward acc .* tok/s · ETA \d+:\d\d$", console_text, re.M)
    history = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [h for h in history if "loss" in h]
    assert [int(s) for s, _ in lines] == [1, 2, 3]
    assert [float(v) for _, v in lines] == [round(h["loss"], 4) for h in steps]
    assert "grad_norm" in steps[0] and "trained 3 steps in" in console_text
    # 3 steps × 4 pairs = the 12 pairs once: prompt + chosen + rejected tokens of each (the prompt computed once)
    pairs, _ = prepare_pairs(str(data), load_tokenizer(str(tiny_model_dir)), max_length=512)
    real = sum(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert steps[-1]["num_input_tokens_seen"] == real


def _tensorboard_scalars(log_root) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list(log_root.rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (pip install -e '.[test]' installs it)")
def test_report_to_tensorboard_writes_the_logged_metrics(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--report-to", "tensorboard", "--set", "plots=false")) == 0
    scalars = _tensorboard_scalars(out / "runs")
    steps = [h for h in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in h]
    for key in ("loss", "rewards/accuracies", "rewards/margins"):
        assert scalars[f"train/{key}"] == pytest.approx([h[key] for h in steps], rel=1e-6), key


@pytest.mark.slow  # wandb starts its own service process (wandb-core), ~4 s on the 2-core machine
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="wandb is not installed (pip install -e '.[test]' installs it)")
def test_report_to_wandb_offline_writes_a_run_file(tiny_model_dir, data, tmp_path, monkeypatch):
    """WANDB_MODE=offline: the run is written under WANDB_DIR (``wandb sync`` uploads it later) with every
    logged loss in its history records (protobuf keeps the key and the JSON value as plain bytes)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--report-to", "wandb", "--set", "plots=false")) == 0
    (run_file,) = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    raw = run_file.read_bytes()
    steps = [h for h in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in h]
    assert len(steps) == 2 and b"train/loss" in raw and b"rewards/accuracies" in raw
    for h in steps:
        assert math.isfinite(h["loss"]) and json.dumps(h["loss"]).encode() in raw
