"""Issue 23, training side, end to end on the tiny model through ``unipo train`` (each case failed on main):

1. a run that goes NaN stops at that step, exit status 2, one line naming the step, the quantity, the last finite
   checkpoint and what to try; no final model, the checkpoint kept and equal to a run that stopped there; the
   opt-in ``nan_policy: skip_step`` skips and counts a bad batch (its update not applied) and stops after
   ``nan_skip_limit`` in a row; weights that are not finite are never saved; NaN is logged as nan, never 0;
2. NaN / inf in any number a user sets is refused before any model loads, naming the key;
7. a boolean key takes only a boolean;
8. a pair weight that is finite in float64 but not in float32 is refused naming file and row;
10. a refused run leaves no directory it created; ``max_length`` above the model's positions is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import ROWS, train_args, write_jsonl
from unipo.cli import main

pytestmark = pytest.mark.integration


def _metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _all_finite(path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(path).values())


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith("unipo train: error:")][-1]


# ---- 1. a run that goes NaN ----

def test_a_run_that_diverges_stops_and_keeps_the_last_finite_checkpoint(tiny_model_dir, data, tmp_path, capsys):
    """lr 1e20 diverges at step 2 on the tiny model (fp32): main trained on to step 6, saved NaN weights over every
    checkpoint, printed ``loss 0.0000`` and exited 0."""
    out = tmp_path / "run"
    common = ("--learning-rate", "1e20", "--lr-scheduler-type", "constant", "--precision", "fp32",
              "--set", "plots=false")
    rc = main(train_args(tiny_model_dir, data, out, "--max-steps", "6", "--save-steps", "1",
                         "--set", "save_total_limit=1", *common))
    line = _error_line(capsys)
    assert rc == 2
    step = int(line.split("step ")[1].split(":")[0])
    assert step >= 2
    assert (f"step {step}: the loss is nan" in line or f"step {step}: the loss is inf" in line
            or f"step {step}: the gradient norm is" in line)
    kept = out / f"checkpoint-{step - 1}"
    assert f"the last finite checkpoint is {kept}" in line and "lower --learning-rate (now 1e+20)" in line
    assert "--beta (now 0.1)" in line and "update was not applied" in line
    assert not (out / "model.safetensors").exists()  # no final model: the checkpoint is the run's output
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [kept.name]  # rotation kept the finite one
    assert _all_finite(kept / "model.safetensors")
    # the failing step is logged as it was (NaN, never 0), under its own step number
    last = _metrics(out)[-1]
    assert last["step"] == step and not (math.isfinite(last["loss"]) and math.isfinite(last["grad_norm"]))
    # the kept checkpoint is exactly the model of a run that stopped at that step
    ref = tmp_path / "ref"
    assert main(train_args(tiny_model_dir, data, ref, "--max-steps", str(step - 1), *common)) == 0
    expected, got = load_file(ref / "model.safetensors"), load_file(kept / "model.safetensors")
    assert expected.keys() == got.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0)


def _poison(monkeypatch, from_call: int, until_call: int | None = None) -> None:
    """Make the training loss NaN (with NaN gradients) for training calls from_call..until_call (1-based)."""
    import unipo.training.trainer as trainer_module

    real = trainer_module.preference_step
    calls = {"n": 0}

    def poisoned(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        if model.training:
            calls["n"] += 1
            if calls["n"] >= from_call and (until_call is None or calls["n"] <= until_call):
                return dataclasses.replace(out, losses=out.losses * float("nan"))
        return out

    monkeypatch.setattr(trainer_module, "preference_step", poisoned)


def test_skip_step_skips_the_batch_counts_it_and_applies_no_update(tiny_model_dir, data, tmp_path, capsys,
                                                                   monkeypatch):
    _poison(monkeypatch, 2, 2)
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--max-steps", "3", "--save-steps", "1", "--set",
                           "save_total_limit=null", "--set", "nan_policy=skip_step", "--set", "plots=false")) == 0
    err = capsys.readouterr().err
    line2 = next(ln for ln in err.splitlines() if ln.startswith("step 2/3"))
    assert "loss nan" in line2 and "1 non-finite step skipped" in line2
    steps = {h["step"]: h for h in _metrics(out) if "loss" in h}
    assert math.isfinite(steps[1]["loss"]) and math.isnan(steps[2]["loss"]) and math.isfinite(steps[3]["loss"])
    assert [steps[s]["skipped_steps"] for s in (1, 2, 3)] == [0, 1, 1]
    one, two, three = (load_file(out / f"checkpoint-{s}" / "model.safetensors") for s in (1, 2, 3))
    for k in one:  # step 2 changed nothing (not even through Adam's moments), step 3 trained
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=0)
    assert any(not torch.equal(three[k], two[k]) for k in one)
    opt1 = torch.load(out / "checkpoint-1" / "optimizer.pt", weights_only=False)["state"]
    opt2 = torch.load(out / "checkpoint-2" / "optimizer.pt", weights_only=False)["state"]
    for i in opt1:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(opt2[i][name], opt1[i][name], rtol=0, atol=0)
    assert _all_finite(out / "model.safetensors")
    # the count continues across a resume (one more step, finite)
    assert main(train_args(tiny_model_dir, data, out, "--max-steps", "4", "--save-steps", "1", "--set",
                           "save_total_limit=null", "--set", "nan_policy=skip_step", "--set", "plots=false",
                           "--resume")) == 0
    step4 = [h for h in _metrics(out) if h.get("step") == 4 and "loss" in h]
    assert len(step4) == 1 and math.isfinite(step4[0]["loss"]) and step4[0]["skipped_steps"] == 1


def test_skip_step_stops_after_the_limit_in_a_row(tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    _poison(monkeypatch, 2)
    out = tmp_path / "run"
    rc = main(train_args(tiny_model_dir, data, out, "--max-steps", "6", "--save-steps", "1", "--set",
                         "nan_policy=skip_step", "--set", "nan_skip_limit=2", "--set", "plots=false"))
    line = _error_line(capsys)
    assert rc == 2
    assert "step 3: the loss is nan (2 non-finite steps in a row, the nan_skip_limit)" in line
    assert f"the last finite checkpoint is {out / 'checkpoint-2'}" in line
    assert not (out / "model.safetensors").exists()
    for ckpt in out.glob("checkpoint-*"):
        assert _all_finite(ckpt / "model.safetensors")


def test_weights_that_are_not_finite_are_never_saved(tiny_model_dir, data, tmp_path, capsys):
    """A finite step can still overflow the weights (a huge learning rate): the save is refused, the newest
    checkpoint on disk stays the last finite one, rotation included."""
    from transformers import TrainerCallback

    from unipo.errors import UnipoError
    from unipo.training.config import TrainConfig
    from unipo.training.train import train

    class Overflow(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("inf")

    out = tmp_path / "run"
    cfg = TrainConfig.from_dict({"model": str(tiny_model_dir), "data": str(data), "output_dir": str(out),
                                 "max_steps": 3, "save_steps": 1, "save_total_limit": 1, "progress": False,
                                 "learning_rate": 1e-3, "plots": False})
    with pytest.raises(UnipoError, match="step 2: the weights are not finite .* after this step's update; nothing "
                                         "of this step was saved and training stopped; the last finite checkpoint "
                                         "is .*checkpoint-1"):
        train(cfg, callbacks=[Overflow()])
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"]
    assert _all_finite(out / "checkpoint-1" / "model.safetensors")
    assert not (out / "model.safetensors").exists()


# ---- 2, 7. every number finite and in range, booleans only booleans, before any model loads ----

@pytest.mark.parametrize("how,key", [
    (["--beta=nan"], "beta"), (["--beta=inf"], "beta"), (["--set", "beta=.nan"], "beta"),
    ("beta: .nan", "beta"), ("learning_rate: .nan", "learning_rate"), ("warmup_ratio: .nan", "warmup_ratio"),
    ("variant: {preset: simpo, gamma: .inf}", "gamma"), (["--set", "variant={preset: dpo, beta: -.inf}"], "beta"),
    ('packing: "no"', "packing"), (["--set", 'share_prompt="false"'], "share_prompt"),
    (["--learning-rate", "1e39"], "learning_rate"),
])
def test_bad_numbers_and_booleans_are_refused_naming_the_key(tiny_model_dir, data, tmp_path, capsys, how, key):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out)
    if isinstance(how, str):  # a YAML file (without the flag of the same key, which would override it)
        (tmp_path / "run.yaml").write_text(how + "\n")
        flag = "--" + key.replace("_", "-")
        if flag in args:
            i = args.index(flag)
            del args[i:i + 2]
        how = ["--config", str(tmp_path / "run.yaml")]
    assert main([*args, *how]) == 2
    line = _error_line(capsys)
    assert f"{key} " in line or f"'{key}'" in line
    assert any(w in line for w in ("finite", "true or false", "out of range")), line
    assert not out.exists()


# ---- 8. a pair weight beyond float32 ----

def test_a_pair_weight_beyond_float32_is_refused_naming_file_and_row(tiny_model_dir, tmp_path, capsys):
    rows = [{**r, "w": 1.0} for r in ROWS]
    rows[2]["w"] = 1e308  # finite in Python (float64), inf in the float32 loss
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--weight-column", "w")) == 2
    line = _error_line(capsys)
    assert f"{data}, row 3, field 'w': the pair weight must be a finite number >= 0, got 1e+308" in line
    assert not out.exists()


# ---- 10. a refused run leaves nothing; max_length within the model's positions ----

def test_a_refused_run_leaves_no_directory_it_created(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", [ROWS[0], {**ROWS[1], "chosen": ""}])
    out = tmp_path / "new" / "run"
    assert main(train_args(tiny_model_dir, data, out)) == 2
    assert "row 2, field 'chosen'" in _error_line(capsys)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "mine"  # a directory the user made is left where it was
    existing.mkdir()
    assert main(train_args(tiny_model_dir, data, existing)) == 2
    assert existing.is_dir()


def test_max_length_above_the_models_positions_is_refused(tiny_model_dir, data, tmp_path, capsys):
    limit = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    out = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data, out, "--max-length", str(limit + 1))) == 2
    line = _error_line(capsys)
    assert f"max_length {limit + 1} is above the position limit" in line and f"at most {limit}" in line
    assert not out.exists()
