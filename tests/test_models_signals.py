"""Token signals (SparsePO masks, activation masks, learned prior) and their training path.

The losses of the training path are checked against the objective's formula written out here from full
logits of the two models, each run separately on one unpadded sequence at a time.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from unipo.data.batching import collate_pairs
from unipo.errors import ConfigError
from unipo.models.signals import (
    ActivationMasks,
    LearnedPrior,
    SparsePOMasks,
    activation_mask,
    build_signal,
    resolve_signal_spec,
)
from unipo.objective import Objective

BETA = 0.1


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """(policy, reference): the policy is the reference with perturbed weights, so that ρ_t ≠ 0."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    policy = copy.deepcopy(ref)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return policy, ref


def examples():
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()

    return [
        {"prompt_ids": ids(5), "chosen_ids": ids(3), "rejected_ids": ids(6)},
        {"prompt_ids": ids(4), "chosen_ids": ids(1), "rejected_ids": ids(2)},
        {"prompt_ids": ids(2), "chosen_ids": ids(7), "rejected_ids": ids(4)},
    ]


def make_trainer(tmp_path, policy, ref, objective, signal, **args):
    from transformers import TrainingArguments

    from unipo.training.trainer import PreferenceTrainer

    targs = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], learning_rate=1e-3,
                              per_device_train_batch_size=2, **args)
    return PreferenceTrainer(model=policy, args=targs, objective=objective, ref_model=ref, reference_mode="copy",
                             chunk_size=4, token_signal=signal)


def naive(model, prompt, response):
    """Full-vocabulary log-probs [T, V], token log-probs [T] and every layer's hidden states at the
    positions predicting the response tokens (one unpadded sequence, plain forward)."""
    out = model(input_ids=torch.tensor([prompt + response]), output_hidden_states=True)
    pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(response))
    logp = F.log_softmax(out.logits[0].float(), -1)[pos]
    return logp, logp[torch.arange(len(response)), torch.tensor(response)], [h[0, pos] for h in out.hidden_states]


def expected_loss(policy, ref, signal, exs, kind):
    """The objective written out: SparsePO (Christopoulou et al. 2024, Eq. 6) or the learned prior."""
    losses = []
    with torch.no_grad():
        for ex in exs:
            terms = {}
            for side in ("chosen", "rejected"):
                pol_full, a, _ = naive(policy, ex["prompt_ids"], ex[f"{side}_ids"])
                ref_full, r, hs = naive(ref, ex["prompt_ids"], ex[f"{side}_ids"])
                kl = (ref_full.exp() * (ref_full - pol_full)).sum(-1)  # KL(π_ref ‖ π_θ) per position
                if kind == "learned_prior":
                    g = signal.net(hs[-1]).squeeze(-1)
                    terms[side] = ((a - r - g).sum(), g.pow(2).mean())
                else:
                    mu = signal.token_mask(hs)
                    md = mu if signal.kl_mask is None else signal.kl_mask(hs)
                    terms[side] = ((mu * (a - r)).sum(), (md * kl).sum())
            (s_w, x_w), (s_l, x_l) = terms["chosen"], terms["rejected"]
            if kind == "learned_prior":
                losses.append(F.softplus(-BETA * (s_w - s_l)) + 0.1 * (x_w + x_l))
            else:
                losses.append(F.softplus(-BETA * (s_w - s_l - (x_l - x_w))))
    return torch.stack(losses).mean()


# -- the modules ---------------------------------------------------------------------------------------
@pytest.mark.integration
def test_sparsepo_masks_shapes_nonnegative_and_detached(models):
    _, ref = models
    batch = collate_pairs(examples(), pad_token_id=0)
    from unipo.training.reference import reference_pass

    out_ref = reference_pass(None, ref, batch, chunk_size=4, need_hidden=True, need_layers=True)
    for common in (True, False):
        net = SparsePOMasks(ref.config.num_hidden_layers + 1, ref.config.hidden_size, common=common).eval()
        result = net(out_ref, batch)
        keys = {"weights"} | (set() if common else {"kl_weights"})
        assert set(result.inputs) == {"chosen", "rejected"}
        for side, fields in result.inputs.items():
            assert set(fields) == keys
            for m in fields.values():
                assert m.shape == batch[f"{side}_mask"].shape
                assert bool((m >= 0).all())
                assert bool((m[~batch[f"{side}_mask"]] == 0).all())
                assert m.requires_grad  # the network learns
        assert {"mask/zero_frac", "mask/mean"} <= set(result.metrics)
        assert all(h.grad_fn is None and not h.requires_grad for h in out_ref.layers)
    with pytest.raises(Exception, match="built for"):
        SparsePOMasks(7, ref.config.hidden_size)(out_ref, batch)


@pytest.mark.unit
def test_activation_mask_formula_and_single_token_guard():
    values = torch.tensor([[1.0, 3.0, 2.0, 9.0], [5.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    m = activation_mask(values, mask)
    assert not m.requires_grad
    x = values.detach()[0, :3]
    z = (x - x.mean()) / x.std(unbiased=False)
    torch.testing.assert_close(m[0, :3], (z - z.min()) / (z.max() - z.min()))
    assert m[0, 3] == 0
    torch.testing.assert_close(m[1], torch.tensor([1.0, 0, 0, 0]))  # one token: std = 0 → mask 1
    torch.testing.assert_close(m[2], torch.tensor([1.0, 1, 0, 0]))  # constant sequence
    assert torch.isfinite(m).all()


@pytest.mark.integration
def test_activation_masks_module(models):
    _, ref = models
    batch = collate_pairs(examples(), pad_token_id=0)
    from unipo.training.reference import reference_pass

    out_ref = reference_pass(None, ref, batch, chunk_size=4, need_hidden=True, need_layers=True)
    result = ActivationMasks()(out_ref, batch)
    out = {f"{side}_{k}": v for side, fields in result.inputs.items() for k, v in fields.items()}
    assert list(ActivationMasks().parameters()) == []
    ex = examples()[0]
    _, _, hs = naive(ref, ex["prompt_ids"], ex["chosen_ids"])
    act = torch.stack([h.mean(-1) for h in hs[1:]]).mean(0)
    z = (act - act.mean()) / act.std(unbiased=False)
    torch.testing.assert_close(out["chosen_weights"][0, :3], (z - z.min()) / (z.max() - z.min()),
                               rtol=1e-4, atol=1e-4)
    for m in out.values():
        assert not m.requires_grad and bool(((m >= 0) & (m <= 1)).all())
    assert out["chosen_weights"][1, 0] == 1.0  # the one-token chosen response


# -- the training path -------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sparsepo_common", "sparsepo_independent", "learned_prior"])
def test_training_path_loss_equals_formula(models, tmp_path, kind):
    policy, ref = models
    torch.manual_seed(0)
    if kind == "learned_prior":
        signal, objective = LearnedPrior(ref.config.hidden_size, init_zero=False), Objective("learned_prior")
    else:
        signal = SparsePOMasks(ref.config.num_hidden_layers + 1, ref.config.hidden_size,
                               common=kind == "sparsepo_common")
        objective = Objective("sparsepo")
    trainer = make_trainer(tmp_path, policy, ref, objective, signal)
    exs = examples()
    policy.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(policy, collate_pairs(exs, pad_token_id=0))
    assert not signal.training  # dropout follows the policy's mode
    expected = expected_loss(policy, ref, signal, exs, "learned_prior" if kind == "learned_prior" else "sparsepo")
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.integration
def test_gradient_reaches_mask_network_not_reference(models, tmp_path):
    policy, ref = models
    policy, ref = copy.deepcopy(policy), copy.deepcopy(ref)
    for p in ref.parameters():
        p.requires_grad_(True)  # even a reference that could take gradient gets none
    signal = SparsePOMasks(ref.config.num_hidden_layers + 1, ref.config.hidden_size, common=False)
    trainer = make_trainer(tmp_path, policy, ref, Objective("sparsepo"), signal, max_grad_norm=1.0)
    policy.train()
    loss = trainer.compute_loss(policy, collate_pairs(examples(), pad_token_id=0))
    loss.backward()
    assert all(p.grad is None for p in ref.parameters())
    for net in (signal.token_mask, signal.kl_mask):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    assert {"mask/zero_frac", "mask/mean", "mask_kl/zero_frac"} <= set(trainer._metrics["train"].pairs)

    # a submodule of the policy (what the engine wraps: DDP all-reduces its gradients, FSDP shards it,
    # Trainer's clipping and zero_grad include it), in its own optimiser group with its weight decay
    assert policy.unipo_token_signal is signal
    assert {id(p) for p in signal.parameters()} <= {id(p) for p in policy.parameters()}
    opt = trainer.create_optimizer()
    group = opt.param_groups[-1]
    assert group["weight_decay"] == pytest.approx(0.01)
    assert {id(p) for p in group["params"]} == {id(p) for p in signal.parameters()}
    assert all(id(p) not in {id(q) for q in group["params"]} for g in opt.param_groups[:-1] for p in g["params"])
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(policy.parameters()))
    before = [p.detach().clone() for p in signal.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, signal.parameters(), strict=True))
    policy.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in signal.parameters())


@pytest.mark.integration
def test_learned_prior_group_has_no_decay_by_default(models, tmp_path):
    policy, ref = models
    trainer = make_trainer(tmp_path, policy, ref, Objective("learned_prior"), LearnedPrior(ref.config.hidden_size))
    assert trainer.create_optimizer().param_groups[-1]["weight_decay"] == 0.0


@pytest.mark.integration
def test_learned_prior_has_its_own_learning_rate_on_the_policys_schedule(models, tmp_path):
    """token_signal {learning_rate: 0.05}: its param group peaks at 0.05 while the policy's peaks at 1e-3, and
    the linear schedule scales both alike: lr_t = lr_0·(1 − t/T) (transformers' linear schedule, no warm-up)."""
    policy, ref = models
    trainer = make_trainer(tmp_path, policy, ref, Objective("learned_prior"),
                           LearnedPrior(ref.config.hidden_size, learning_rate=0.05), lr_scheduler_type="linear")
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    opt, sched = trainer.optimizer, trainer.lr_scheduler
    assert [g["lr"] for g in opt.param_groups][-1] == pytest.approx(0.05)
    assert all(g["lr"] == pytest.approx(1e-3) for g in opt.param_groups[:-1])
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.05 * (1 - 3 / 10))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - 3 / 10))
    without = make_trainer(tmp_path, policy, ref, Objective("learned_prior"), LearnedPrior(ref.config.hidden_size))
    assert without.create_optimizer().param_groups[-1]["lr"] == pytest.approx(1e-3)  # default: the policy's


@pytest.mark.unit
def test_learned_prior_initialisations():
    torch.manual_seed(0)
    zero = LearnedPrior(16)
    assert not zero.net[-1].weight.any() and not zero.net[-1].bias.any()  # starts exactly at DPO
    normal = LearnedPrior(16, head_size=20000, init="normal", init_std=0.05)
    w = normal.net[-1].weight.double()
    assert w.std().item() == pytest.approx(0.05, rel=0.03) and abs(w.mean().item()) < 0.002
    assert not normal.net[-1].bias.any()
    default_std = LearnedPrior(16, head_size=20000, init="normal").net[-1].weight.double().std().item()
    assert default_std == pytest.approx(0.01, rel=0.03)
    torch_init = LearnedPrior(16, head_size=400, init="torch").net[-1].weight  # PyTorch: U(±1/sqrt(fan_in))
    assert torch_init.abs().max().item() <= 1 / 400 ** 0.5 and torch_init.abs().max().item() > 0.5 / 400 ** 0.5
    assert LearnedPrior(16, init_zero=False).init == "torch" and LearnedPrior(16, init_zero=True).init == "zero"
    for kw, message in (({"init": "xavier"}, "init must be one of"), ({"init_std": 0.1}, "goes with init: normal"),
                        ({"init": "normal", "init_std": 0}, "goes with init: normal"),
                        ({"init": "zero", "init_zero": True}, "not both"),
                        ({"learning_rate": 0}, "learning_rate must be > 0")):
        with pytest.raises(ConfigError, match=message):
            LearnedPrior(16, **kw)
    with pytest.raises(ConfigError, match="init must be one of"):  # refused in the plan, before any model loads
        resolve_signal_spec({"type": "learned_prior", "init": "xavier"}, Objective("learned_prior").config)


# -- configuration -------------------------------------------------------------------------------------
@pytest.mark.unit
def test_signal_spec_resolution():
    cfg = Objective("sparsepo").config
    assert resolve_signal_spec(None, cfg) == {"type": "sparsepo_masks"}
    assert resolve_signal_spec(None, cfg, data_weights=True) is None  # masks from the data columns
    assert resolve_signal_spec({"type": "activation_masks"}, cfg) == {"type": "activation_masks"}
    assert resolve_signal_spec("none", cfg) is None
    assert resolve_signal_spec(None, Objective("learned_prior").config) == {"type": "learned_prior"}
    assert resolve_signal_spec(None, Objective("dpo").config) is None
    assert resolve_signal_spec(None, Objective("tisdpo").config) is None  # weights come from the data
    with pytest.raises(ConfigError, match="did you mean 'sparsepo_masks'"):
        resolve_signal_spec({"type": "sparsepo_mask"}, cfg)
    with pytest.raises(ConfigError, match="needs token_signal"):
        resolve_signal_spec("none", Objective("learned_prior").config)
    with pytest.raises(ConfigError, match="produces weights, but this variant does not read it"):
        resolve_signal_spec("sparsepo_masks", Objective("dpo").config)
    with pytest.raises(ConfigError, match="produces prior_offsets, but this variant does not read it"):
        resolve_signal_spec("learned_prior", cfg)
    with pytest.raises(ConfigError, match="unknown option"):
        resolve_signal_spec({"type": "sparsepo_masks", "commmon": True}, cfg)
    with pytest.raises(ConfigError, match="both supply"):
        resolve_signal_spec("sparsepo_masks", cfg, data_weights=True)
    net = build_signal({"type": "sparsepo_masks", "common": False, "dropout": 0.0}, num_layers=3, hidden_size=8)
    assert isinstance(net, SparsePOMasks) and net.kl_mask is not None


# -- end to end ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rows = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1} maybe"}
            for i in range(16)]
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_train(model, data, out, variant, max_steps, resume=False, **extra):
    from unipo.training.config import TrainConfig
    from unipo.training.train import train

    cfg = TrainConfig(model=str(model), data=str(data), output_dir=str(out), variant=variant, max_steps=max_steps,
                      learning_rate=1e-3, lr_scheduler_type="constant", per_device_batch_size=4, save_steps=1,
                      progress=False, plots=False, resume=resume, **extra)
    return train(cfg)


@pytest.mark.integration
@pytest.mark.parametrize("variant", ["sparsepo", "learned_prior"])
def test_train_save_and_resume(tiny_model_dir, data_file, tmp_path, variant):
    full = run_train(tiny_model_dir, data_file, tmp_path / "full", variant, 4)
    losses = [h["loss"] for h in full.history if "loss" in h]
    assert len(losses) == 4 and all(map(torch.isfinite, torch.tensor(losses)))
    state = load_file(tmp_path / "full" / "unipo_signal.safetensors")
    assert set(state) == set(load_file(tmp_path / "full" / "checkpoint-4" / "unipo_signal.safetensors"))
    saved_model = load_file(tmp_path / "full" / "model.safetensors")  # the signal is kept out of the model
    assert saved_model and not any("unipo_token_signal" in k for k in saved_model)
    spec = json.loads((tmp_path / "full" / "unipo_signal.json").read_text())
    if variant == "sparsepo":
        assert spec["type"] == "sparsepo_masks"
        assert not torch.allclose(state["token_mask.mix.weight"], torch.full_like(state["token_mask.mix.weight"],
                                                                                  1 / spec["num_layers"]))
        assert {"mask/zero_frac", "mask/mean", "weights/chosen_mean"} <= set(full.history[0])
    else:
        assert spec["type"] == "learned_prior"
        assert state["net.2.weight"].abs().sum() > 0  # the zero-initialised output layer has learned
        assert {"prior/offset_chosen_mean", "prior/offset_rms"} <= set(full.history[0])

    part = tmp_path / "resumed"
    run_train(tiny_model_dir, data_file, part, variant, 2)
    assert (part / "checkpoint-2" / "unipo_signal.safetensors").exists()
    mid = load_file(part / "checkpoint-2" / "unipo_signal.safetensors")
    run_train(tiny_model_dir, data_file, part, variant, 4, resume=True)
    resumed = load_file(part / "unipo_signal.safetensors")
    for key in state:
        torch.testing.assert_close(resumed[key], state[key], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(mid[k], resumed[k]) for k in mid)  # it went on training after the resume


@pytest.mark.integration
def test_train_activation_masks(tiny_model_dir, data_file, tmp_path):
    result = run_train(tiny_model_dir, data_file, tmp_path / "act", "sparsepo", 2,
                       token_signal={"type": "activation_masks"})
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))
    entry = result.history[0]
    assert 0 < entry["mask/zero_frac"] < 1 and 0 < entry["mask/mean"] <= 1


@pytest.mark.integration
def test_signal_needs_a_live_reference(tiny_model_dir, data_file, tmp_path):
    with pytest.raises(ConfigError, match="cannot serve it"):
        run_train(tiny_model_dir, data_file, tmp_path / "x", "learned_prior", 1, reference="precomputed")
