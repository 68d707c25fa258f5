"""unipo.training.ref_sync. TR-DPO (Gorbatovski et al. 2024, arXiv 2404.09656): the reference follows the policy
every τ steps.

Ground truth is written out here: after the τ-th step the reference's parameters are α·θ + (1−α)·θ_ref_old
(soft) or θ (hard), computed in float64 from the checkpoints' own files; with a hard update after every step
the policy equals the reference at the start of each step, so every step's DPO loss is exactly log 2.

bema (was tests/test_ref_bema.py): the reference follows a bias-corrected EMA of the policy (Block & Zhang 2025,
arXiv 2508.00180), against TRL's own experimental ``BEMACallback(update_ref_model=True)`` (TRL 1.16,
``trl/experimental/bema_for_ref_model/callback.py`` with ``trl/trainer/callbacks.py::BEMACallback``): the same
parameter updates, bit for bit, through every branch of its schedule; its state across a checkpoint; the
configuration keys; and a ``unipo train`` run.
"""

from __future__ import annotations

import inspect
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import ROWS, train_args, write_jsonl
from unipo.cli import main
from unipo.errors import ConfigError
from unipo.training.config import TrainConfig
from unipo.training.plan import plan_training
from unipo.training.ref_sync import BEMAReferenceCallback, BEMASchedule
from unipo.training.rundir import RunDir


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
        ref = _weights(out / f"checkpoint-{step}" / RunDir.REFERENCE_WEIGHTS)
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
    resumed, broken = _stopped_after_checkpoint_2(out, tmp_path)
    assert main(_soft_args(tiny_model_dir, data, resumed, 4, "--resume")) == 0
    a, b = _weights(out / "model.safetensors"), _weights(resumed / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    (broken / "checkpoint-2" / RunDir.REFERENCE_WEIGHTS).unlink()  # without it the run cannot resume exactly
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


# ---- bema: a bias-corrected EMA of the policy (was tests/test_ref_bema.py) ----

@pytest.mark.unit
def test_bema_schedule_from_the_configuration():
    assert _cfg(ref_sync="bema").ref_bema_schedule() == BEMASchedule()
    assert _cfg(ref_sync="bema").ref_sync_schedule() is None  # not a TR-DPO mix
    assert _cfg(ref_sync="soft").ref_bema_schedule() is None
    s = _cfg(ref_sync="bema", ref_sync_steps=8, ref_sync_bema={"update_freq": 2, "lag": 3.5}).ref_bema_schedule()
    assert (s.ref_update_freq, s.update_freq, s.lag, s.ema_power) == (8, 2, 3.5, 0.5)


@pytest.mark.unit
@pytest.mark.parametrize("kw,message", [
    ({"ref_sync": "soft", "ref_sync_bema": {"lag": 1}}, "applies to ref_sync: bema only"),
    ({"ref_sync": "bema", "ref_sync_alpha": 0.5}, "applies to ref_sync: soft only"),
    ({"ref_sync": "bema", "ref_sync_bema": {"decay": 0.5}}, r"unknown ref_sync_bema keys \['decay'\]"),
    ({"ref_sync": "bema", "ref_sync_bema": {"update_freq": 0}}, "update_freq must be a number >= 1"),
    ({"ref_sync": "bema", "ref_sync_bema": {"min_ema_multiplier": 2}}, "<= 1"),
    ({"ref_sync": "bema", "ref_sync_bema": {"lag": 0, "multiplier": 0}}, "lag \\+ multiplier > 0"),
    ({"ref_sync": "bema", "ref_sync_bema": [1, 2]}, "must be a mapping"),
])
def test_bad_bema_keys_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**kw)


def _trl_defaults() -> dict:
    from trl.experimental.bema_for_ref_model import BEMACallback

    return {k: v.default for k, v in inspect.signature(BEMACallback.__init__).parameters.items() if k != "self"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from unipo.testing import make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("bema") / "tiny")
    return lambda: AutoModelForCausalLM.from_pretrained(path)


def _run(callback, policy, steps: int, *, trl: bool, ref=None, start: int = 0, seed: int = 0) -> list[dict]:
    """Drive ``callback`` over optimizer steps start+1..steps: each step moves the policy's parameters by a
    seeded random amount (as an optimizer would), then calls on_step_end; returns the reference after each."""
    args, control = SimpleNamespace(), SimpleNamespace()
    g = torch.Generator().manual_seed(seed)
    if start == 0:
        callback.on_train_begin(args, SimpleNamespace(global_step=0), control, model=policy)
    history = []
    for step in range(1, steps + 1):
        deltas = [torch.randn(p.shape, generator=g) * 0.01 for p in policy.parameters()]
        if step <= start:
            continue
        with torch.no_grad():
            for p, d in zip(policy.parameters(), deltas, strict=True):
                p.add_(d)
        state = SimpleNamespace(global_step=step)
        if trl:
            callback.on_step_end(args, state, control, model=policy, ref_model=ref)
        else:
            callback.on_step_end(args, state, control, model=policy)
        target = ref if ref is not None else callback.reference
        history.append({k: v.clone() for k, v in target.state_dict().items()})
    return history


SCHEDULE = {"update_freq": 2, "ema_power": 0.5, "bias_power": 0.2, "lag": 10, "update_after": 3, "multiplier": 1.0,
            "min_ema_multiplier": 0.05}


@pytest.mark.integration
@pytest.mark.parametrize("update_after,ref_after", [(3, 1), (0, 0)])
def test_reference_updates_equal_trls_bema_callback(tiny, update_after, ref_after):
    """Ten steps with BEMA every 2 steps after τ, the reference updated every 3 steps after ref_after (τ = 0: θ₀
    from the start of training; τ = 3: snapshot at step 3): unipo's reference equals TRL's at every step."""
    from trl.experimental.bema_for_ref_model import BEMACallback

    defaults = _trl_defaults()
    assert BEMASchedule() == BEMASchedule(
        update_freq=defaults["update_freq"], ema_power=defaults["ema_power"], bias_power=defaults["bias_power"],
        lag=defaults["lag"], update_after=defaults["update_after"], multiplier=defaults["multiplier"],
        min_ema_multiplier=defaults["min_ema_multiplier"], ref_update_freq=defaults["ref_model_update_freq"],
        ref_update_after=defaults["ref_model_update_after"])
    schedule = {**SCHEDULE, "update_after": update_after}
    trl_ref, ours_ref = tiny(), tiny()
    trl_cb = BEMACallback(**schedule, update_ref_model=True, ref_model_update_freq=3,
                          ref_model_update_after=ref_after)
    ours_cb = BEMAReferenceCallback(ours_ref, BEMASchedule(**schedule, ref_update_freq=3, ref_update_after=ref_after))
    expected = _run(trl_cb, tiny(), 10, trl=True, ref=trl_ref)
    got = _run(ours_cb, tiny(), 10, trl=False)
    start = tiny().state_dict()
    moved = 0
    for step, (a, b) in enumerate(zip(expected, got, strict=True), start=1):
        for k in a:
            assert torch.equal(a[k], b[k]), (step, k)
        moved += not torch.equal(b["model.norm.weight"], start["model.norm.weight"])
    assert moved >= 4  # the reference did move (τ = 3: from step 7 on; τ = 0: from step 3)


@pytest.mark.integration
def test_bema_state_survives_a_checkpoint(tiny, tmp_path):
    """Six steps, the callback's state saved after step 3 and restored into a new callback: steps 4–6 give the
    uninterrupted run's references exactly (TRL's callback would restart θ₀ and the EMA from the resumed model)."""
    from safetensors.torch import load_file, save_file

    schedule = BEMASchedule(**SCHEDULE, ref_update_freq=1, ref_update_after=0)
    policy = tiny()
    full_cb = BEMAReferenceCallback(tiny(), schedule)
    full = _run(full_cb, policy, 6, trl=False)

    policy = tiny()
    first = BEMAReferenceCallback(tiny(), schedule)
    _run(first, policy, 3, trl=False)
    save_file(first.state_dict(), tmp_path / RunDir.BEMA_STATE)
    resumed = BEMAReferenceCallback(first.reference, schedule)
    resumed.load_state_dict(load_file(tmp_path / RunDir.BEMA_STATE))
    resumed.on_train_begin(None, SimpleNamespace(global_step=3), None, model=policy)  # must not re-snapshot
    rest = _run(resumed, policy, 6, trl=False, start=3)
    for a, b in zip(full[3:], rest, strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.integration
def test_unipo_train_with_bema_moves_and_checkpoints_the_reference(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert main(train_args(tiny_model_dir, data, out, "--max-steps", "2", "--save-steps", "1",
                           "--per-device-batch-size", "2", "--ref-sync", "bema", "--ref-sync-steps", "1",
                           "--set", "ref_sync_bema={update_freq: 1}", "--set", "plots=false",
                           "--set", "save_total_limit=null")) == 0
    start = load_file(tiny_model_dir / "model.safetensors")
    for step in (1, 2):
        ckpt = out / f"checkpoint-{step}"
        ref, state = load_file(ckpt / RunDir.REFERENCE_WEIGHTS), load_file(ckpt / RunDir.BEMA_STATE)
        assert torch.equal(ref["model.norm.weight"], state["bema/model.norm.weight"])
        assert torch.equal(state["theta0/model.norm.weight"], start["model.norm.weight"])
        assert not torch.equal(ref["model.norm.weight"], start["model.norm.weight"])


@pytest.mark.slow
def test_unipo_train_with_bema_resumes_with_its_state(tiny_model_dir, tmp_path, capsys):
    """A run stopped after checkpoint-2 resumes with the reference and BEMA's θ₀ / EMA / weights from the checkpoint
    and ends where the uninterrupted run ends; a checkpoint without the BEMA file is refused."""

    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", ROWS)

    def args(out, *extra):
        return train_args(tiny_model_dir, data, out, "--max-steps", "4", "--save-steps", "1",
                          "--per-device-batch-size", "2", "--ref-sync", "bema", "--ref-sync-steps", "1",
                          "--set", "ref_sync_bema={update_freq: 1}", "--set", "plots=false",
                          "--set", "save_total_limit=null", *extra)

    full = tmp_path / "full"
    assert main(args(full)) == 0
    resumed, broken = _stopped_after_checkpoint_2(full, tmp_path)
    assert main(args(resumed, "--resume")) == 0
    for name in ("model.safetensors", f"checkpoint-4/{RunDir.REFERENCE_WEIGHTS}", f"checkpoint-4/{RunDir.BEMA_STATE}"):
        a, b = load_file(full / name), load_file(resumed / name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
    (broken / "checkpoint-2" / RunDir.BEMA_STATE).unlink()
    assert main(args(broken, "--resume")) != 0
    assert "BEMA" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize("name", ["bema", "BEMA"])
def test_bema_is_not_a_preset_and_says_where_it_is(name):
    from unipo.objective.config import resolve

    with pytest.raises(ConfigError, match="not a preset: .*ref_sync: bema"):
        resolve(name)


def _stopped_after_checkpoint_2(run, tmp_path):
    """Copies of a finished 4-step run as if stopped after checkpoint-2 (its final files and later checkpoints
    removed, metrics.jsonl kept): ``(resumed, broken)``, the one to resume and a spare to break."""
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    for f in resumed.iterdir():
        if f.is_file() and f.name != "metrics.jsonl":
            f.unlink()
    shutil.rmtree(resumed / "checkpoint-3")
    shutil.rmtree(resumed / "checkpoint-4")
    broken = tmp_path / "broken"
    shutil.copytree(resumed, broken)
    return resumed, broken
