"""The non-finite guard's decision rule (training/nonfinite.py), the console's NaN, and the objective parameters'
finiteness (issue 23, items 1 and 2) — no model. The same rule under two real processes (gloo all-reduce) is the
slow test after them; the guard as PreferenceTrainer applies it, end to end through ``unipo train`` on the tiny
model, closes the module (integration; was tests/test_faults_train.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import train_args, train_error_line
from unipo.cli import main
from unipo.training.nonfinite import (
    Decision,
    NonFiniteGuard,
    describe,
    local_flags,
    nonfinite_parameters,
    way_out,
)

NAN, INF = float("nan"), float("inf")
OK = [torch.tensor(0.69), torch.tensor(0.71)]


def _ranks(guards, per_rank):
    """Each rank's decision on the flags summed over the ranks (what the trainer's all-reduce gives each)."""
    flags = [local_flags(losses, gn) for losses, gn in per_rank]
    total = torch.stack(flags).sum(0)
    return [g.decide(total.clone(), per_rank[0][1]) for g in guards]


@pytest.mark.unit
@pytest.mark.parametrize("losses,grad_norm,expected", [
    (OK, 1.3, [0, 0, 0]),
    ([torch.tensor(0.5), torch.tensor(NAN)], 1.3, [1, 0, 0]),
    ([torch.tensor(INF)], 1.3, [0, 1, 0]),
    ([torch.tensor(-INF)], 1.3, [0, 1, 0]),
    (OK, NAN, [0, 0, 1]), (OK, INF, [0, 0, 1]), (OK, torch.tensor(NAN), [0, 0, 1]), (OK, None, [0, 0, 0]),
])
def test_local_flags(losses, grad_norm, expected):
    assert local_flags(losses, grad_norm).tolist() == expected


@pytest.mark.unit
def test_stop_policy_stops_at_the_first_bad_step_naming_the_quantity():
    g = NonFiniteGuard("stop")
    assert g.decide(local_flags(OK, 1.0), 1.0) == Decision(apply=True)
    assert g.decide(local_flags([torch.tensor(NAN)], NAN), NAN) == Decision(False, True, "loss", "nan")
    g = NonFiniteGuard("stop")
    assert g.decide(local_flags([torch.tensor(INF)], 2.0), 2.0) == Decision(False, True, "loss", "inf")
    g = NonFiniteGuard("stop")
    assert g.decide(local_flags(OK, INF), INF) == Decision(False, True, "gradient norm", "inf")


@pytest.mark.unit
def test_skip_step_counts_and_stops_after_the_limit_in_a_row():
    g = NonFiniteGuard("skip_step", skip_limit=3)
    bad, good = local_flags([torch.tensor(NAN)], NAN), local_flags(OK, 1.0)
    seq = [g.decide(f, 1.0) for f in (bad, bad, good, bad, bad)]
    assert [d.apply for d in seq] == [False, False, True, False, False]
    assert not any(d.stop for d in seq) and g.skipped == 4 and g.in_a_row == 2
    last = g.decide(bad, 1.0)  # the third in a row
    assert last.stop and not last.apply and g.skipped == 4 and g.in_a_row == 3


@pytest.mark.unit
def test_every_rank_takes_the_same_decision():
    """DDP / FSDP: one rank's NaN loss (the other's finite; gradients not yet mixed) stops every rank; an inf loss
    on one rank with finite gradients everywhere too; every rank applies a step only when all saw it finite."""
    for per_rank in ([(OK, 1.0), ([torch.tensor(NAN)], 1.0)], [([torch.tensor(INF)], 1.0), (OK, 1.0)]):
        decisions = _ranks([NonFiniteGuard("stop"), NonFiniteGuard("stop")], per_rank)
        assert decisions[0] == decisions[1] and decisions[0].stop
    guards = [NonFiniteGuard("skip_step", 2), NonFiniteGuard("skip_step", 2)]
    first = _ranks(guards, [(OK, 1.0), ([torch.tensor(NAN)], 1.0)])
    assert first[0] == first[1] and not first[0].apply and not first[0].stop
    assert _ranks(guards, [(OK, 1.0), (OK, 1.0)]) == [Decision(apply=True)] * 2


@pytest.mark.unit
def test_the_line_names_step_quantity_checkpoint_and_what_to_try():
    line = describe(7, "loss", "nan") + way_out("loss", 7, "runs/x/checkpoint-6", "runs/x", 2, 1e-3, 0.1, "stop")
    assert line.startswith("step 7: the loss is nan; this step's update was not applied and training stopped; ")
    assert "the last finite checkpoint is runs/x/checkpoint-6" in line and "no final model was written" in line
    assert "lower --learning-rate (now 0.001) or --beta (now 0.1)" in line and "--nan-policy skip_step" in line
    none = way_out("gradient norm", 1, None, "runs/x", 100, 1e-3, None, "skip_step")
    assert "no checkpoint was written before step 1 (save_steps 100)" in none
    assert "--beta" not in none and "skip_step" not in none


@pytest.mark.unit
def test_nonfinite_parameters_names_them():
    params = [("a", torch.zeros(3)), ("b", torch.tensor([1.0, INF])), ("c", torch.tensor([NAN])),
              ("d", torch.zeros(0))]
    assert nonfinite_parameters(params) == ["b", "c"]


@pytest.mark.unit
def test_console_prints_nan_never_zero():
    from unipo.training.console import train_line

    line = train_line({"loss": NAN, "grad_norm": NAN, "rewards/margins": NAN, "skipped_steps": 2}, 3, 6, None, None)
    assert line == "step 3/6 · loss nan · margin nan · grad norm nan · 2 non-finite steps skipped"
    assert "grad norm" not in train_line({"loss": 0.5, "grad_norm": 1.0}, 1, 6, None, None)


@pytest.mark.unit
def test_every_objective_parameter_refuses_nan_inf_and_beyond_float32():
    """Issue 23, item 2: NaN fails every range comparison and inf passes "> 0"; each numeric parameter of every
    registered part (and the objective's own) is refused, naming it."""
    from unipo.errors import ConfigError
    from unipo.objective.presets import GLOBAL_PARAM_SPECS
    from unipo.objective.registry import KINDS, parts

    specs = dict(GLOBAL_PARAM_SPECS)
    for kind in KINDS:
        for part in parts(kind).values():
            specs.update(part.param_specs)
    numeric = {k: s for k, s in specs.items() if s.kind not in ("bool", "weights")}
    assert {"beta", "gamma"} <= set(numeric)
    for key, spec in ((k, s) for k, s in specs.items() if s.kind == "weights"):  # a mixture's {name: weight}
        for bad in (NAN, INF, -INF, 1e39, -1e39):
            with pytest.raises(ConfigError, match=f"{key}: the weight of 'sigmoid' must be a positive finite"):
                spec.check(key, {"sigmoid": bad, "bco_pair": 0.2})
    for key, spec in numeric.items():
        for bad in (NAN, INF, -INF, 1e39, -1e39):
            with pytest.raises(ConfigError, match=f"parameter '{key}' must be a finite number"):
                spec.check(key, bad)
        if spec.default is not None:
            spec.check(key, spec.default)  # the default itself is valid


def _gloo_worker(rank: int, world: int, init: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    guard = NonFiniteGuard("stop")
    out = []
    for bad_rank in (None, 1):  # step 1 finite everywhere, step 2 NaN on rank 1 only
        losses = [torch.tensor(NAN if rank == bad_rank else 0.7)]
        flags = local_flags(losses, 1.0)
        dist.all_reduce(flags)  # what accelerator.reduce(..., "sum") does
        d = guard.decide(flags, 1.0)
        out.append([d.apply, d.stop, d.quantity])
    with open(f"{results}.{rank}", "w") as f:
        f.write(repr(out))
    dist.destroy_process_group()


@pytest.mark.slow  # two processes that import torch
def test_two_processes_agree_to_stop(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = str(tmp_path / "decisions")
    mp.spawn(_gloo_worker, args=(2, f"tcp://127.0.0.1:{port}", results), nprocs=2, join=True)
    got = [open(f"{results}.{r}").read() for r in range(2)]
    assert got[0] == got[1] == repr([[True, False, None], [False, True, "loss"]])


# ---- end to end through `unipo train` on the tiny model (issue 23, item 1; was tests/test_faults_train.py): a run
# that goes NaN stops at that step, exit status 2, one line naming the step, the quantity, the last finite
# checkpoint and what to try; `nan_policy: skip_step` skips and counts a bad batch and stops after
# `nan_skip_limit` in a row; weights that are not finite are never saved; NaN is logged as nan, never 0 ----

def _metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _all_finite(path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(path).values())


@pytest.mark.integration
def test_a_run_that_diverges_stops_and_keeps_the_last_finite_checkpoint(tiny_model_dir, data, tmp_path, capsys):
    """lr 1e20 diverges at step 2 on the tiny model (fp32): main trained on to step 6, saved NaN weights over every
    checkpoint, printed ``loss 0.0000`` and exited 0."""
    out = tmp_path / "run"
    common = ("--learning-rate", "1e20", "--lr-scheduler-type", "constant", "--precision", "fp32",
              "--set", "plots=false")
    rc = main(train_args(tiny_model_dir, data, out, "--max-steps", "6", "--save-steps", "1",
                         "--set", "save_total_limit=1", *common))
    line = train_error_line(capsys)
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


@pytest.mark.integration
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


@pytest.mark.integration
def test_skip_step_stops_after_the_limit_in_a_row(tiny_model_dir, data, tmp_path, capsys, monkeypatch):
    _poison(monkeypatch, 2)
    out = tmp_path / "run"
    rc = main(train_args(tiny_model_dir, data, out, "--max-steps", "6", "--save-steps", "1", "--set",
                         "nan_policy=skip_step", "--set", "nan_skip_limit=2", "--set", "plots=false"))
    line = train_error_line(capsys)
    assert rc == 2
    assert "step 3: the loss is nan (2 non-finite steps in a row, the nan_skip_limit)" in line
    assert f"the last finite checkpoint is {out / 'checkpoint-2'}" in line
    assert not (out / "model.safetensors").exists()
    for ckpt in out.glob("checkpoint-*"):
        assert _all_finite(ckpt / "model.safetensors")


@pytest.mark.integration
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
