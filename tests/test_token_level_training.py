"""The training path's loss for the token-level variants equals the formula computed independently here
from the two models' full logits (per sequence, unpadded, no unipo code on this side), and gradients flow
only where the papers say."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unipo.data.batching import collate_pairs
from unipo.objective import Objective

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ref.requires_grad_(False)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy, ref


def examples():
    g = torch.Generator().manual_seed(3)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=g).tolist()

    exs = [{"prompt_ids": ids(3), "chosen_ids": ids(5), "rejected_ids": ids(3)},
           {"prompt_ids": ids(6), "chosen_ids": ids(2), "rejected_ids": ids(6)},
           {"prompt_ids": ids(1), "chosen_ids": ids(1), "rejected_ids": ids(1)}]  # packs beside the first
    for ex in exs:
        for side in ("chosen", "rejected"):
            n = len(ex[f"{side}_ids"])
            ex[f"{side}_diff_mask"] = [float(i % 2) for i in range(n)]
            ex[f"{side}_weights"] = (0.5 + torch.rand(n, generator=g)).tolist()
    return exs


def full_logits_terms(model, ref, prompt, response):
    """Per-token a_t, r_t, KL(ref‖pol)_t, KL(pol‖ref)_t from full logits of one unpadded sequence."""
    ids = torch.tensor([prompt + response])
    sl = slice(len(prompt) - 1, len(prompt) + len(response) - 1)
    logp = F.log_softmax(model(input_ids=ids).logits[0, sl].double(), -1)
    logq = F.log_softmax(ref(input_ids=ids).logits[0, sl].double(), -1)
    tgt = torch.tensor(response)
    a = logp.gather(-1, tgt[:, None])[:, 0]
    r = logq.gather(-1, tgt[:, None])[:, 0]
    kl_rp = (logq.exp() * (logq - logp)).sum(-1)
    kl_pr = (logp.exp() * (logp - logq)).sum(-1)
    return a, r, kl_rp, kl_pr


def expected_losses(variant, policy, ref, exs):
    beta = Objective(variant).params["beta"]
    out = []
    for ex in exs:
        side = {}
        for name in ("chosen", "rejected"):
            a, r, kl_rp, kl_pr = full_logits_terms(policy, ref, ex["prompt_ids"], ex[f"{name}_ids"])
            w = torch.tensor(ex[f"{name}_weights"], dtype=torch.float64)
            diff = torch.tensor(ex[f"{name}_diff_mask"], dtype=torch.float64)
            side[name] = (a, r, kl_rp, kl_pr, w, diff)
        (aw, rw, kw, pw, ww, dw), (al, rl, kl, pl, wl, dl) = side["chosen"], side["rejected"]
        if variant == "tdpo1":
            z = beta * ((aw - rw).sum() - (al - rl).sum() - (kl.sum() - kw.sum()))
        elif variant == "tdpo2":
            z = beta * ((aw - rw).sum() - (al - rl).sum() - 0.5 * (kl.sum() - kw.sum()))
        elif variant == "tisdpo":
            z = beta * ((ww * (aw - rw)).sum() - (wl * (al - rl)).sum()) - beta * ((ww * pw).sum() - (wl * pl).sum())
        elif variant == "bmc":
            lw = 1 + dw * torch.exp(-aw).clamp(max=2.0)
            ll = 1 + dl * torch.exp(-al).clamp(max=2.0)
            z = beta * ((lw * (aw - rw)).sum() - (ll * (al - rl)).sum())
        out.append(-F.logsigmoid(z))
    return torch.stack(out)


def trainer_for(variant, policy, ref, tmp_path):
    from transformers import TrainingArguments

    from unipo.training.trainer import PreferenceTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=2)
    return PreferenceTrainer(model=policy, args=args, objective=Objective(variant), ref_model=ref,
                             reference_mode="copy", chunk_size=3)


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("variant", ["tdpo1", "tdpo2", "tisdpo", "bmc"])
def test_training_path_equals_formula_from_full_logits(models, tmp_path, variant, packing):
    policy, ref = models
    exs = examples()
    trainer = trainer_for(variant, policy, ref, tmp_path)
    batch = collate_pairs(exs, pad_token_id=0, packing=packing)
    assert batch["input_ids"].shape[0] == (2 if packing else 3)
    policy.train()
    loss, out = trainer.compute_loss(policy, batch, return_outputs=True)
    expected = expected_losses(variant, policy.eval(), ref, exs)
    torch.testing.assert_close(out.losses.double(), expected, rtol=1e-4, atol=1e-5)
    if variant.startswith("tdpo") or variant == "tisdpo":
        assert out.metrics["kl/chosen"] > 0 and out.metrics["kl/rejected"] > 0


@pytest.mark.parametrize("variant", ["tdpo2", "tisdpo", "bmc"])
def test_no_gradient_into_the_reference(models, tmp_path, variant):
    policy, ref = models
    ref.requires_grad_(True)  # even if someone forgot to freeze it
    try:
        trainer = trainer_for(variant, policy, ref, tmp_path)
        policy.zero_grad()
        ref.zero_grad()
        loss = trainer.compute_loss(policy.train(), collate_pairs(examples(), pad_token_id=0))
        loss.backward()
        assert all(p.grad is None for p in ref.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    finally:
        ref.requires_grad_(False)
        policy.zero_grad()
