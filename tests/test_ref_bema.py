"""ref_sync: bema — the reference follows a bias-corrected EMA of the policy (Block & Zhang 2025, arXiv 2508.00180),
against TRL's own experimental ``BEMACallback(update_ref_model=True)`` (TRL 1.16,
``trl/experimental/bema_for_ref_model/callback.py`` with ``trl/trainer/callbacks.py::BEMACallback``): the same
parameter updates, bit for bit, through every branch of its schedule; its state across a checkpoint; the
configuration keys; and a ``unipo train`` run."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import ROWS, train_args, write_jsonl
from unipo.cli import main
from unipo.errors import ConfigError
from unipo.training.config import TrainConfig
from unipo.training.ref_sync import BEMA_FILE, REFERENCE_FILE, BEMAReferenceCallback, BEMASchedule


def _cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({"data": "pairs.jsonl", **kw})


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
    save_file(first.state_dict(), tmp_path / BEMA_FILE)
    resumed = BEMAReferenceCallback(first.reference, schedule)
    resumed.load_state_dict(load_file(tmp_path / BEMA_FILE))
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
        ref, state = load_file(ckpt / REFERENCE_FILE), load_file(ckpt / BEMA_FILE)
        assert torch.equal(ref["model.norm.weight"], state["bema/model.norm.weight"])
        assert torch.equal(state["theta0/model.norm.weight"], start["model.norm.weight"])
        assert not torch.equal(ref["model.norm.weight"], start["model.norm.weight"])


@pytest.mark.slow
def test_unipo_train_with_bema_resumes_with_its_state(tiny_model_dir, tmp_path, capsys):
    """A run stopped after checkpoint-2 resumes with the reference and BEMA's θ₀ / EMA / weights from the checkpoint
    and ends where the uninterrupted run ends; a checkpoint without the BEMA file is refused."""
    import shutil

    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "d.jsonl", ROWS)

    def args(out, *extra):
        return train_args(tiny_model_dir, data, out, "--max-steps", "4", "--save-steps", "1",
                          "--per-device-batch-size", "2", "--ref-sync", "bema", "--ref-sync-steps", "1",
                          "--set", "ref_sync_bema={update_freq: 1}", "--set", "plots=false",
                          "--set", "save_total_limit=null", *extra)

    full = tmp_path / "full"
    assert main(args(full)) == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for f in resumed.iterdir():
        if f.is_file() and f.name != "metrics.jsonl":
            f.unlink()
    shutil.rmtree(resumed / "checkpoint-3")
    shutil.rmtree(resumed / "checkpoint-4")
    broken = tmp_path / "broken"
    shutil.copytree(resumed, broken)
    assert main(args(resumed, "--resume")) == 0
    for name in ("model.safetensors", f"checkpoint-4/{REFERENCE_FILE}", f"checkpoint-4/{BEMA_FILE}"):
        a, b = load_file(full / name), load_file(resumed / name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{name} {k}")
    (broken / "checkpoint-2" / BEMA_FILE).unlink()
    assert main(args(broken, "--resume")) != 0
    assert "BEMA" in capsys.readouterr().err


@pytest.mark.unit
@pytest.mark.parametrize("name", ["bema", "BEMA"])
def test_bema_is_not_a_preset_and_says_where_it_is(name):
    from unipo.objective.config import resolve

    with pytest.raises(ConfigError, match="not a preset: .*ref_sync: bema"):
        resolve(name)
