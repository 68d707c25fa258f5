"""TR-DPO (Gorbatovski et al. 2024, arXiv 2404.09656): the reference follows the policy every τ steps.

Ground truth is written out here: after the τ-th step the reference's parameters are α·θ + (1−α)·θ_ref_old
(soft) or θ (hard), computed in float64 from the checkpoints' own files; with a hard update after every step
the policy equals the reference at the start of each step, so every step's DPO loss is exactly log 2."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from tests.helpers import ROWS, train_args, write_jsonl
from unipo.cli import main
from unipo.errors import ConfigError
from unipo.training.config import TrainConfig
from unipo.training.plan import plan_training
from unipo.training.ref_sync import REFERENCE_FILE


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({"data": "pairs.jsonl", **kw})


@pytest.mark.unit
def test_schedule_defaults_are_trls_and_hard_is_alpha_one():
    assert _cfg().ref_sync_schedule() is None
    assert _cfg(ref_sync="soft").ref_sync_schedule() == (0.6, 512)  # TRL: ref_model_mixup_alpha, _sync_steps
    assert _cfg(ref_sync="soft", ref_sync_alpha=0.25, ref_sync_steps=8).ref_sync_schedule() == (0.25, 8)
    assert _cfg(ref_sync="hard", ref_sync_steps="64").ref_sync_schedule() == (1.0, 64)


@pytest.mark.unit
@pytest.mark.parametrize("kw,message", [
    ({"ref_sync": "sometimes"}, "ref_sync must be one of none, soft, hard"),
    ({"ref_sync_alpha": 0.5}, "ref_sync_alpha given but ref_sync is none"),
    ({"ref_sync_steps": 4}, "ref_sync_steps given but ref_sync is none"),
    ({"ref_sync": "hard", "ref_sync_alpha": 0.5}, "applies to ref_sync: soft only"),
    ({"ref_sync": "soft", "ref_sync_alpha": 0.0}, r"must be in \(0, 1\]"),
    ({"ref_sync": "soft", "ref_sync_alpha": 1.5}, r"must be in \(0, 1\]"),
    ({"ref_sync": "soft", "ref_sync_steps": 0}, "at least 1"),
])
def test_bad_ref_sync_keys_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**kw)


@pytest.mark.unit
@pytest.mark.parametrize("kw,message", [
    ({"reference": "precomputed"}, "computed once, before training"),
    ({"variant": "simpo"}, "reads no reference"),  # reference-free: auto resolves to none
    ({"reference": "none", "variant": "simpo"}, "reads no reference"),
    ({"lora": {"r": 4}}, "adapters switched off"),
    ({"lora": {"r": 4}, "reference": "copy"}, "not available with LoRA"),
])
def test_ref_sync_needs_a_live_reference_copy(kw, message):
    with pytest.raises(ConfigError, match=message):
        plan_training(_cfg(ref_sync="soft", **kw))
    assert plan_training(_cfg(ref_sync="hard")).reference == "copy"


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = {k: v.double() for k, v in load_file(path).items()}
    if "lm_head.weight" in weights and "model.embed_tokens.weight" not in weights:  # tied: stored once
        weights["model.embed_tokens.weight"] = weights.pop("lm_head.weight")
    return weights


ALPHA, TAU = 0.3, 2


def _soft_args(model, data, out, steps, *extra) -> list[str]:
    return train_args(model, data, out, "--max-steps", str(steps), "--save-steps", "1",
                      "--per-device-batch-size", "2", "--ref-sync", "soft", "--ref-sync-alpha", str(ALPHA),
                      "--ref-sync-steps", str(TAU), "--set", "plots=false", "--set", "save_total_limit=null",
                      *extra)


def _check_soft_updates(model_dir, out, steps: int) -> None:
    """Each checkpoint's reference against the hand computation from the checkpoints' policies (float64)."""
    start = _weights(model_dir / "model.safetensors")
    previous = start
    for step in range(1, steps + 1):
        ref = _weights(out / f"checkpoint-{step}" / REFERENCE_FILE)
        policy = _weights(out / f"checkpoint-{step}" / "model.safetensors")
        expected = ({k: ALPHA * policy[k] + (1 - ALPHA) * previous[k] for k in previous}
                    if step % TAU == 0 else previous)
        for k in start:
            torch.testing.assert_close(ref[k], expected[k], rtol=0, atol=1e-6, msg=f"step {step}, {k}")
        previous = expected
    assert not torch.equal(previous["model.norm.weight"], start["model.norm.weight"])


@pytest.mark.integration
def test_soft_sync_mixes_the_policy_into_the_reference_after_tau_steps(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(_soft_args(tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", ROWS), out, TAU)) == 0
    _check_soft_updates(tiny_model_dir, out, TAU)


@pytest.mark.slow
def test_soft_sync_twice_and_resume_with_the_reference_reached(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "full"
    assert main(_soft_args(tiny_model_dir, data, out, 4)) == 0
    _check_soft_updates(tiny_model_dir, out, 4)

    # a run stopped after checkpoint-2 resumes with the reference reached at step 2 (from the checkpoint)
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for f in resumed.iterdir():
        if f.is_file() and f.name != "metrics.jsonl":
            f.unlink()
    shutil.rmtree(resumed / "checkpoint-3")
    shutil.rmtree(resumed / "checkpoint-4")
    broken = tmp_path / "broken"
    shutil.copytree(resumed, broken)
    assert main(_soft_args(tiny_model_dir, data, resumed, 4, "--resume")) == 0
    a, b = _weights(out / "model.safetensors"), _weights(resumed / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    (broken / "checkpoint-2" / REFERENCE_FILE).unlink()  # without it the run cannot resume exactly
    assert main(_soft_args(tiny_model_dir, data, broken, 4, "--resume")) != 0
    assert "does not hold the synced reference" in capsys.readouterr().err


@pytest.mark.integration
def test_hard_sync_makes_the_reference_the_policy(tiny_model_dir, tmp_path):
    """τ = 2: steps 1 and 3 start with policy == reference (step 3 because step 2 copied the policy), so their
    DPO loss is log 2 exactly; step 2 starts one update away from the reference."""
    out = tmp_path / "run"
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert main(train_args(tiny_model_dir, data, out, "--max-steps", "3", "--per-device-batch-size", "2",
                           "--ref-sync", "hard", "--ref-sync-steps", "2", "--set", "plots=false")) == 0
    losses = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(losses[1] - math.log(2)) > 1e-4
    assert losses[2] == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["tr_dpo", "TR-DPO", "trdpo"])
def test_tr_dpo_is_not_a_preset_and_says_where_it_is(name):
    from unipo.objective.config import resolve

    with pytest.raises(ConfigError, match="not a preset: .*ref_sync: soft"):
        resolve(name)


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_soft_sync_mixes_in_the_parameters_own_dtype(dtype):
    """θ_ref ← α·θ + (1−α)·θ_ref computed in the reference's own dtype, at least float32: a float64 reference is
    mixed in float64 (to float64 rounding; float32 mixing is off by ~1e-8), a float32 one in float32, a bfloat16 one
    in float32 and rounded once to bfloat16."""
    from unipo.training.ref_sync import sync_reference

    g = torch.Generator().manual_seed(3)
    policy, reference = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    with torch.no_grad():
        for m in (policy, reference):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * (1 + 1e-3 * torch.rand(
                    p.shape, generator=g, dtype=torch.float64)))
    policy, reference = policy.to(dtype), reference.to(dtype)
    before = {k: v.detach().clone() for k, v in reference.named_parameters()}
    alpha = 0.37
    sync_reference(policy, reference, alpha)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    for name, p in reference.named_parameters():
        theta = dict(policy.named_parameters())[name].detach()
        expected = (before[name].to(work) * (1 - alpha) + theta.to(work) * alpha).to(dtype)
        assert p.dtype == dtype
        tol = {torch.float64: 1e-15, torch.float32: 1e-6, torch.bfloat16: 0.0}[dtype]
        torch.testing.assert_close(p.detach(), expected, rtol=tol, atol=tol)
    if dtype == torch.float64:  # what the float32 mix gave: not the float64 formula
        name = "weight"
        theta = dict(policy.named_parameters())[name].detach()
        f32 = (before[name].float() * (1 - alpha) + theta.float() * alpha).double()
        assert float((f32 - dict(reference.named_parameters())[name].detach()).abs().max()) > 1e-9
