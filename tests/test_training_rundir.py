"""A run directory is a unit of work (issue 13): one writer, no clobbering, no double training, preflight and
clear file-system errors, and a reference that starts exactly at the policy under mixed precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unipo.cli import main

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1} maybe"} for i in range(8)]


@pytest.fixture()
def data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def run(model, data, out, *extra) -> int:
    return main(["train", "--model", str(model), "--data", str(data), "--output-dir", str(out), "--max-steps", "1",
                 "--per-device-batch-size", "4", "--learning-rate", "1e-3", "--no-progress", "--set", "plots=false",
                 *extra])


def first_step(out: Path) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.integration
@pytest.mark.parametrize("variant,reference", [("dpo", "copy"), ("dpo", "precomputed"), ("tdpo2", "copy")])
def test_bf16_rewards_start_at_exactly_zero(tiny_model_dir, data, tmp_path, variant, reference, monkeypatch):
    monkeypatch.setenv("UNIPO_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert run(tiny_model_dir, data, out, "--variant", variant, "--precision", "bf16",
               "--reference", reference) == 0
    step = first_step(out)
    assert step["rewards/chosen"] == 0.0 and step["rewards/rejected"] == 0.0, step
    if variant == "tdpo2":  # the KL's own rounding (Σq·log q − Σq·log p), not an offset of the reference
        assert abs(step["kl/chosen"]) < 1e-6 and abs(step["kl/rejected"]) < 1e-6


@pytest.mark.integration
def test_a_bfloat16_reference_copy_stays_available_and_is_offset(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    assert run(tiny_model_dir, data, out, "--precision", "bf16", "--set", "ref_dtype=bfloat16") == 0
    step = first_step(out)
    assert step["rewards/chosen"] != 0.0 or step["rewards/rejected"] != 0.0  # the documented bias


# -- one writer, no mixed runs ---------------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from unipo.training.rundir import RunDir
with RunDir(sys.argv[1]).lock("unipo train"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(directory: Path):
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.integration
def test_a_second_writer_is_refused_with_the_holder_named(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    proc = _holder(out)
    try:
        assert run(tiny_model_dir, data, out) == 2
        err = capsys.readouterr().err
        assert f"another `unipo train` (pid {proc.pid}" in err and "Traceback" not in err
        assert not (out / "metrics.jsonl").exists()
    finally:
        proc.kill()
        proc.wait()
    # the holder died (SIGKILL): its lock is taken over, and the run goes through
    assert run(tiny_model_dir, data, out) == 0
    assert "taking over the lock" in capsys.readouterr().err


@pytest.mark.integration
def test_a_finished_run_is_neither_overwritten_nor_retrained(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(tiny_model_dir, data, out, "--max-steps", "2", "--set", "save_steps=1") == 0
    (out / "eval.json").write_text("{}")  # a leftover of the old run
    metrics = (out / "metrics.jsonl").read_text()
    assert run(tiny_model_dir, data, out, "--seed", "1") == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    # --resume of the finished run trains nothing and says so
    assert run(tiny_model_dir, data, out, "--max-steps", "2", "--set", "save_steps=1", "--resume") == 0
    assert "nothing to train" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == metrics and not (out / "checkpoint-3").exists()
    # --resume with another configuration is refused, naming the keys
    assert run(tiny_model_dir, data, out, "--max-steps", "3", "--seed", "1", "--resume") == 2
    assert "seed: 42 → 1" in capsys.readouterr().err
    # --overwrite removes the old run entirely: no stale eval.json, no old checkpoint
    assert run(tiny_model_dir, data, out, "--seed", "1", "--overwrite") == 0
    assert not (out / "eval.json").exists() and not (out / "checkpoint-2").exists()
    assert yaml_load(out / "unipo_config.yaml")["seed"] == 1


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.integration
def test_resume_continues_and_train_loss_covers_every_step(tiny_model_dir, data, tmp_path, capsys):
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    full, part = tmp_path / "full", tmp_path / "part"
    common = ("--set", "save_steps=2", "--set", "lr_scheduler_type=constant")
    assert run(tiny_model_dir, data, full, "--max-steps", "4", *common) == 0
    assert run(tiny_model_dir, data, part, "--max-steps", "2", *common) == 0
    capsys.readouterr()
    assert run(tiny_model_dir, data, part, "--max-steps", "4", "--resume", *common) == 0
    captured = capsys.readouterr()
    logging.getLogger("transformers").removeHandler(handler)
    assert "resuming from" in captured.err
    assert not [r for r in records if "missing keys" in r], records  # tied lm_head is not "missing"
    losses = [json.loads(ln)["loss"] for ln in (part / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(ln)]
    assert len(losses) == 4
    out = "\n" + captured.out  # the command's own summary, printed last (the console lines go to stderr)
    summary = json.loads(out[out.rindex("\n{") + 1:])
    assert abs(summary["train_loss"] - sum(losses) / 4) < 1e-3
    full_losses = [json.loads(ln)["loss"] for ln in (full / "metrics.jsonl").read_text().splitlines()
                   if "loss" in json.loads(ln)]
    assert losses == pytest.approx(full_losses, abs=1e-5)


# -- preflight and file-system failures ------------------------------------------------------------------
def _no_model_load(monkeypatch):
    from unipo.models import loading

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the preflight")

    monkeypatch.setattr(loading, "load_model", refuse)


@pytest.mark.integration
@pytest.mark.parametrize("out,message", [("/proc/unipo-test/run", "cannot create the output directory"),
                                         ("/proc/self", "is not writable")])
def test_unwritable_output_is_refused_before_any_model_loads(tiny_model_dir, data, out, message, monkeypatch,
                                                             capsys):
    _no_model_load(monkeypatch)
    assert run(tiny_model_dir, data, out) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_too_little_disk_is_refused_before_any_model_loads(tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    _no_model_load(monkeypatch)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    assert run(tiny_model_dir, data, tmp_path / "run") == 2
    assert "not enough disk space" in capsys.readouterr().err


@pytest.mark.integration
def test_a_full_disk_while_saving_is_one_line_and_leaves_no_partial_checkpoint(tiny_model_dir, data, tmp_path,
                                                                               monkeypatch, capsys):
    import errno

    from transformers import Trainer

    def full_disk(self, model, trial=None):
        ckpt = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(ckpt / "optimizer.pt"))

    monkeypatch.setattr(Trainer, "_save_checkpoint", full_disk)
    out = tmp_path / "run"
    assert run(tiny_model_dir, data, out, "--set", "save_steps=1") == 2
    err = capsys.readouterr().err
    assert "no space left on the device while writing" in err and "Traceback" not in err
    assert "removed the partial checkpoint-1" in err and not (out / "checkpoint-1").exists()


# ---- a torn checkpoint is not resumed from (issue 23, item 3; was tests/test_faults_save.py) ----

@pytest.mark.unit
def test_resume_skips_a_checkpoint_whose_weights_are_torn(tmp_path):
    """A checkpoint with its trainer_state.json but a weights file shorter than its header says is skipped."""
    import torch
    from safetensors.torch import save_file

    from unipo.training.rundir import last_complete_checkpoint

    for step in (1, 2):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        save_file({"w": torch.ones(64)}, ckpt / "model.safetensors")
        (ckpt / "trainer_state.json").write_text("{}")
    torn = tmp_path / "checkpoint-2" / "model.safetensors"
    torn.write_bytes(torn.read_bytes()[:-16])
    logged: list[str] = []
    assert last_complete_checkpoint(tmp_path, logged.append) == str(tmp_path / "checkpoint-1")
    assert "checkpoint-2 is torn (model.safetensors is truncated" in logged[0]
