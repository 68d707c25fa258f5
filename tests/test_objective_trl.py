"""Agreement of the unified objective with a second implementation: TRL's own loss code.

TRL (1.16) implements many of the pair losses that unipo offers as presets. These tests drive TRL's real
loss code, ``DPOTrainer._compute_loss`` and ``CPOTrainer.cpo_loss``, without building a trainer or a
model: a stub trainer carries the attributes the loss reads, and a stub model returns the per-token
log-probabilities we choose (zero at positions whose label is -100, as TRL's fused LM head does). The
same random tensors, with ragged masks (a prompt prefix and padding of varying length in every row), go
through ``unipo.compute_loss``; we compare losses per example (TRL averages over the batch, so each
example is also run as a batch of one), batch means, and gradients w.r.t. the policy log-probabilities
(w.r.t. the logits for CPO, whose ``get_batch_logps`` we use as well).

Name mapping and TRL's documented conventions (none of them is a disagreement):

- DPOTrainer ``loss_type`` → unipo preset: sigmoid → dpo, sigmoid_norm → ln_dpo, aot_unpaired → aot_pair;
  the other names are the same (hinge, ipo, robust, exo_pair, nca_pair, bco_pair, sppo_hard, aot, apo_zero,
  apo_down, discopop). ``f_divergence_type`` reverse_kl / forward_kl / js_divergence / alpha_divergence →
  ``link`` reverse_kl / forward_kl / js / alpha (presets fdpo_*).
- IPO is length-normalised in both (TRL: "confirmed with the IPO authors"); unipo's ``ipo`` preset uses
  mean aggregation for that.
- α-divergence: TRL's ``f_alpha_divergence_coef`` = 1 − the paper's α (unipo's ``f_alpha``); they agree
  only at 0.5. TRL's forward-KL link is 1 − exp(−s), unipo's −exp(−s): the constant cancels.
- SimPO: TRL's CPO trainer (loss_type="simpo", cpo_alpha=0) takes an ABSOLUTE margin ``simpo_gamma``
  (it subtracts simpo_gamma/β inside β(·)), which is unipo's ``gamma``; the SimPO authors' γ/β is unipo's
  ``gamma_beta_ratio``.
- bco_pair is TRL's pairwise form without BCO's running reward mean (unipo does the same).
- rpo (DPO + NLL): TRL's "sft" term is a token mean over the whole batch, unipo's NLL a per-example token
  mean, averaged over examples: they agree for a batch of one (tested), not for ragged batches.
- discopop: unipo caps exp(−z) at exp(80); TRL does not cap (identical for |z| < 80).
- f-divergence links with ``ipo`` / ``sigmoid_norm``: TRL applies f′ to the SUMMED log-ratio then divides
  by the length, unipo applies f′ to the length-normalised log-ratio; they agree only for reverse KL, so
  only that combination is compared.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import unipo
from tests.helpers import CPUAccelerator

trl = pytest.importorskip("trl")
DPOTrainer = pytest.importorskip("trl.trainer.dpo_trainer").DPOTrainer
CPOTrainer = pytest.importorskip("trl.experimental.cpo").CPOTrainer

pytestmark = pytest.mark.unit

B, T = 6, 11  # batch, response-token positions (after the shift)
RTOL, ATOL = 2e-5, 2e-6


# --------------------------------------------------------------------------------------------- data


def make_batch(seed: int = 0, scale: float = 0.4) -> dict[str, torch.Tensor]:
    """Per-token tensors [B, T] with ragged masks: a prompt prefix (0..3 positions) then 1..T−3
    response tokens then padding, different on the two sides. Padding positions hold junk (they must
    be ignored). Log-ratios per token ~ N(0, scale²)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for side in ("chosen", "rejected"):
        mask = torch.zeros(B, T, dtype=torch.bool)
        for i in range(B):
            start = int(torch.randint(0, 4, (1,), generator=g))
            length = int(torch.randint(1, T - start + 1, (1,), generator=g))
            mask[i, start:start + length] = True
        mask[0, :] = False
        mask[0, 2] = True  # a single-token response
        ref = -torch.nn.functional.softplus(torch.randn(B, T, generator=g)) - 0.05
        pol = ref + scale * torch.randn(B, T, generator=g)
        junk = torch.full((B, T), 7.0)
        out[f"{side}_mask"] = mask
        out[f"ref_{side}"] = torch.where(mask, ref, -junk)
        out[f"policy_{side}"] = torch.where(mask, pol, junk)
    return out


def _leaf(batch):
    return {s: batch[f"policy_{s}"].clone().requires_grad_(True) for s in ("chosen", "rejected")}


# ---------------------------------------------------------------------------------------- TRL DPO


def dpo_trainer(loss_type: str | list[str], *, beta: float = 0.1, label_smoothing: float = 0.0,
                f_divergence_type: str = "reverse_kl", f_alpha_divergence_coef: float = 0.5,
                discopop_tau: float = 0.05, loss_weights: list[float] | None = None) -> DPOTrainer:
    """A DPOTrainer carrying only what ``_compute_loss`` reads (no model, no dataset, no accelerate)."""
    trainer = object.__new__(DPOTrainer)
    loss_types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    trainer.__dict__.update(
        beta=beta, loss_types=loss_types, loss_weights=loss_weights or [1.0] * len(loss_types),
        label_smoothing=label_smoothing, f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef, ld_alpha=None, precompute_ref_logps=True,
        aux_loss_enabled=False, use_weighting=False,
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None, max_length=None),
        accelerator=CPUAccelerator(), _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1, model=SimpleNamespace(training=True),
    )
    return trainer


def trl_dpo_loss(trainer: DPOTrainer, pol: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                 rows: slice | list[int] = slice(None)) -> torch.Tensor:
    """Run TRL's ``_compute_loss`` on rows of the batch. The layout is TRL's: [chosen; rejected] stacked
    on the batch axis, ``completion_mask`` over the unshifted sequence (L = T + 1; position 0 is the
    prompt's first token), per-token log-probs over the shifted positions and 0 where the label is -100."""
    mc, mr = batch["chosen_mask"][rows], batch["rejected_mask"][rows]
    shift_mask = torch.cat([mc, mr])
    n = shift_mask.size(0)
    completion_mask = torch.cat([torch.zeros(n, 1, dtype=torch.long), shift_mask.long()], dim=1)
    per_token = torch.cat([pol["chosen"][rows], pol["rejected"][rows]])
    log_probs = torch.where(shift_mask, per_token, torch.zeros(()))
    ref = {s: torch.where(batch[f"{s}_mask"][rows], batch[f"ref_{s}"][rows], torch.zeros(())).sum(-1)
           for s in ("chosen", "rejected")}
    seen = {}

    def model(**kwargs):
        seen.update(kwargs)
        assert kwargs["fused_lm_head"] is True
        # TRL masks labels outside the completion: the model scores exactly the shifted completion positions
        assert torch.equal(kwargs["labels"][:, 1:] != -100, shift_mask)
        zeros = torch.zeros_like(log_probs)
        return SimpleNamespace(log_probs=log_probs, entropy=zeros.detach(), mean_logits=zeros.detach(),
                               is_top1=torch.zeros_like(shift_mask))

    input_ids = torch.randint(5, 100, completion_mask.shape)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref["chosen"],
              "ref_rejected_logps": ref["rejected"]}
    loss = trainer._compute_loss(model, inputs, return_outputs=False)
    assert "labels" in seen
    return loss


def unipo_loss(variant, pol, batch, rows=slice(None), **params) -> unipo.LossOutput:
    return unipo.compute_loss(
        variant, policy_chosen_logps=pol["chosen"][rows], policy_rejected_logps=pol["rejected"][rows],
        chosen_mask=batch["chosen_mask"][rows], rejected_mask=batch["rejected_mask"][rows],
        ref_chosen_logps=batch["ref_chosen"][rows], ref_rejected_logps=batch["ref_rejected"][rows], **params)


def _close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


# (id, TRL DPOTrainer settings, unipo variant, unipo params, per-example comparable)
DPO_CASES = [
    ("sigmoid", dict(loss_type="sigmoid"), "dpo", {}, True),
    ("sigmoid-beta0.5", dict(loss_type="sigmoid", beta=0.5), "dpo", dict(beta=0.5), True),
    ("hinge", dict(loss_type="hinge", beta=0.3), "hinge", dict(beta=0.3), True),
    ("ipo", dict(loss_type="ipo"), "ipo", {}, True),
    ("ipo-beta1", dict(loss_type="ipo", beta=1.0), "ipo", dict(beta=1.0), True),
    ("robust", dict(loss_type="robust", label_smoothing=0.1), "robust", dict(label_smoothing=0.1), True),
    ("robust-0.3", dict(loss_type="robust", label_smoothing=0.3, beta=0.5), "robust",
     dict(label_smoothing=0.3, beta=0.5), True),
    ("exo_pair", dict(loss_type="exo_pair", label_smoothing=1e-3), "exo_pair",
     dict(label_smoothing=1e-3), True),
    ("exo_pair-0.2", dict(loss_type="exo_pair", label_smoothing=0.2, beta=0.5), "exo_pair",
     dict(label_smoothing=0.2, beta=0.5), True),
    ("nca_pair", dict(loss_type="nca_pair", beta=0.5), "nca_pair", dict(beta=0.5), True),
    ("bco_pair", dict(loss_type="bco_pair", beta=0.5), "bco_pair", dict(beta=0.5), True),
    ("sppo_hard", dict(loss_type="sppo_hard", beta=0.5), "sppo_hard", dict(beta=0.5), True),
    ("aot", dict(loss_type="aot", beta=0.5), "aot", dict(beta=0.5), False),
    ("aot-smoothed", dict(loss_type="aot", beta=0.5, label_smoothing=0.2), "aot",
     dict(beta=0.5, label_smoothing=0.2), False),
    ("aot_unpaired", dict(loss_type="aot_unpaired", beta=0.5), "aot_pair", dict(beta=0.5), False),
    ("aot_unpaired-smoothed", dict(loss_type="aot_unpaired", beta=0.5, label_smoothing=0.2), "aot_pair",
     dict(beta=0.5, label_smoothing=0.2), False),
    ("apo_zero", dict(loss_type="apo_zero", beta=0.5), "apo_zero", dict(beta=0.5), True),
    ("apo_down", dict(loss_type="apo_down", beta=0.5), "apo_down", dict(beta=0.5), True),
    ("discopop", dict(loss_type="discopop", beta=0.5), "discopop", dict(beta=0.5), True),
    ("discopop-tau0.3", dict(loss_type="discopop", beta=0.5, discopop_tau=0.3), "discopop",
     dict(beta=0.5, discopop_tau=0.3), True),
    ("sigmoid_norm", dict(loss_type="sigmoid_norm", beta=1.0), "ln_dpo", dict(beta=1.0), True),
    # f-DPO: the four divergences (TRL's α coefficient = 1 − paper α)
    ("f-reverse_kl", dict(loss_type="sigmoid", f_divergence_type="reverse_kl"), "fdpo_reverse_kl", {}, True),
    ("f-forward_kl", dict(loss_type="sigmoid", f_divergence_type="forward_kl", beta=0.5), "fdpo_forward_kl",
     dict(beta=0.5), True),
    ("f-js", dict(loss_type="sigmoid", f_divergence_type="js_divergence", beta=0.5), "fdpo_js",
     dict(beta=0.5), True),
    ("f-alpha-0.5", dict(loss_type="sigmoid", f_divergence_type="alpha_divergence", beta=0.5), "fdpo_alpha",
     dict(beta=0.5), True),
    *[(f"f-alpha-paper{a}", dict(loss_type="sigmoid", f_divergence_type="alpha_divergence",
                                 f_alpha_divergence_coef=1 - a, beta=0.5), "fdpo_alpha",
       dict(beta=0.5, f_alpha=a), True) for a in (0.1, 0.3, 0.7, 0.9)],
    # compositions: a link with another pair loss on the combined logit
    ("hinge+js", dict(loss_type="hinge", f_divergence_type="js_divergence", beta=0.5),
     {"preset": "hinge", "link": "js"}, dict(beta=0.5), True),
    ("robust+alpha", dict(loss_type="robust", f_divergence_type="alpha_divergence",
                          f_alpha_divergence_coef=0.8, label_smoothing=0.2, beta=0.5),
     {"preset": "robust", "link": "alpha"}, dict(f_alpha=0.2, label_smoothing=0.2, beta=0.5), True),
    ("exo_pair+forward_kl", dict(loss_type="exo_pair", f_divergence_type="forward_kl", label_smoothing=0.01),
     {"preset": "exo_pair", "link": "forward_kl"}, dict(label_smoothing=0.01), True),
    ("discopop+js", dict(loss_type="discopop", f_divergence_type="js_divergence", beta=0.5),
     {"preset": "discopop", "link": "js"}, dict(beta=0.5), True),
]


@pytest.fixture(scope="module")
def batch():
    return make_batch(0)


@pytest.mark.parametrize("case", DPO_CASES, ids=[c[0] for c in DPO_CASES])
def test_dpo_trainer_loss_agrees(case, batch):
    name, trl_kw, variant, params, per_example = case
    trainer = dpo_trainer(**trl_kw)

    # batch mean and gradient w.r.t. the per-token policy log-probs
    pol_t, pol_u = _leaf(batch), _leaf(batch)
    loss_t = trl_dpo_loss(trainer, pol_t, batch)
    out = unipo_loss(variant, pol_u, batch, **params)
    assert out.losses.shape == (B,)
    _close(out.loss, loss_t, f"{name}: batch mean")
    loss_t.backward()
    out.loss.backward()
    for side in ("chosen", "rejected"):
        g_u = pol_u[side].grad
        _close(g_u, pol_t[side].grad, f"{name}: d loss / d policy_{side}")
        assert not g_u[~batch[f"{side}_mask"]].any(), "padding / prompt positions must get no gradient"
        assert g_u.abs().sum() > 0

    # per example: a batch of one through TRL
    if per_example:
        with torch.no_grad():
            pol = _leaf(batch)
            each = torch.stack([trl_dpo_loss(trainer, pol, batch, [i]) for i in range(B)])
            _close(out.losses.detach(), each, f"{name}: per-example losses")


def test_dpo_reward_metrics_agree(batch):
    """TRL's logged rewards (β·log-ratio) are unipo's rewards for the reverse-KL link."""
    trainer = dpo_trainer("sigmoid", beta=0.2)
    pol = _leaf(batch)
    with torch.no_grad():
        trl_dpo_loss(trainer, pol, batch)
        out = unipo_loss("dpo", pol, batch, beta=0.2)
    logged = trainer._metrics["train"]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert logged[key][-1] == pytest.approx(float(out.metrics[key]), rel=1e-5, abs=1e-6), key
    for side in ("chosen", "rejected"):
        assert logged[f"logps/{side}"][-1] == pytest.approx(float(out.metrics[f"logps/{side}"]), rel=1e-5)


def test_rpo_agrees_with_sigmoid_plus_sft_per_example(batch):
    """RPO = DPO + λ·NLL(y_w). TRL's "sft" term is a token mean over the whole batch, unipo's a per-example
    token mean: they coincide for a batch of one (the documented convention difference for ragged batches)."""
    trainer = dpo_trainer(["sigmoid", "sft"], beta=0.1, loss_weights=[1.0, 0.5])
    for i in range(B):
        pol_t, pol_u = _leaf(batch), _leaf(batch)
        loss_t = trl_dpo_loss(trainer, pol_t, batch, [i])
        out = unipo_loss("rpo", pol_u, batch, [i], nll_weight=0.5)
        _close(out.loss, loss_t, f"rpo example {i}")
        loss_t.backward()
        out.loss.backward()
        for side in ("chosen", "rejected"):
            _close(pol_u[side].grad, pol_t[side].grad, f"rpo example {i}: grad {side}")


def test_alpha_divergence_convention_is_flipped(batch):
    """Paper α and TRL's coefficient differ unless α = 0.5: the mapping coef = 1 − α is needed."""
    trainer = dpo_trainer("sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.2,
                          beta=0.5)
    pol = _leaf(batch)
    with torch.no_grad():
        loss_t = float(trl_dpo_loss(trainer, pol, batch))
        same_number = float(unipo_loss("fdpo_alpha", pol, batch, beta=0.5, f_alpha=0.2).loss)
        mapped = float(unipo_loss("fdpo_alpha", pol, batch, beta=0.5, f_alpha=0.8).loss)
    assert mapped == pytest.approx(loss_t, rel=1e-5)
    assert abs(same_number - loss_t) > 1e-4


def test_large_logratios_alpha_clamp_matches_trl():
    """Both clamp the exponent of the α link at 80 in float32: a huge negative log-ratio stays finite
    and equal."""
    batch = make_batch(3, scale=0.4)
    batch["policy_rejected"] = torch.where(batch["rejected_mask"], batch["ref_rejected"] - 60.0,
                                           batch["policy_rejected"])
    trainer = dpo_trainer("sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.1,
                          beta=0.1)
    pol_t, pol_u = _leaf(batch), _leaf(batch)
    loss_t = trl_dpo_loss(trainer, pol_t, batch)
    out = unipo_loss("fdpo_alpha", pol_u, batch, f_alpha=0.9)
    assert torch.isfinite(out.losses).all()
    _close(out.loss, loss_t, "clamped α link")
    loss_t.backward()
    out.loss.backward()
    for side in ("chosen", "rejected"):
        _close(pol_u[side].grad, pol_t[side].grad, f"clamped α link: grad {side}")


@pytest.mark.parametrize("seed", [1, 2])
def test_dpo_other_seeds(seed):
    """A few losses again on other draws, with larger log-ratios."""
    batch = make_batch(seed, scale=1.0)
    for trl_kw, variant, params in [(dict(loss_type="sigmoid"), "dpo", {}),
                                    (dict(loss_type="ipo", beta=0.5), "ipo", dict(beta=0.5)),
                                    (dict(loss_type="sigmoid", f_divergence_type="js_divergence"), "fdpo_js", {}),
                                    (dict(loss_type="apo_down"), "apo_down", {})]:
        pol_t, pol_u = _leaf(batch), _leaf(batch)
        loss_t = trl_dpo_loss(dpo_trainer(**trl_kw), pol_t, batch)
        out = unipo_loss(variant, pol_u, batch, **params)
        _close(out.loss, loss_t, f"{variant} seed {seed}")
        loss_t.backward()
        out.loss.backward()
        for side in ("chosen", "rejected"):
            _close(pol_u[side].grad, pol_t[side].grad, f"{variant} seed {seed}: grad {side}")


# ---------------------------------------------------------------------------------------- TRL CPO


def cpo_trainer(loss_type: str, *, beta: float, simpo_gamma: float = 0.5,
                label_smoothing: float = 0.0) -> CPOTrainer:
    trainer = object.__new__(CPOTrainer)
    trainer.__dict__.update(loss_type=loss_type, beta=beta, simpo_gamma=simpo_gamma, cpo_alpha=0.0,
                            label_smoothing=label_smoothing, alpha=0.0, accelerator=CPUAccelerator())
    return trainer


def _logits_batch(seed: int = 0, vocab: int = 13, length: int = 10):
    """Random logits [2B, L, V] and labels with a prompt prefix, a ragged completion and padding (-100)."""
    g = torch.Generator().manual_seed(seed)
    logits = (2.0 * torch.randn(2 * B, length, vocab, generator=g)).requires_grad_(True)
    labels = torch.randint(0, vocab, (2 * B, length), generator=g)
    for i in range(2 * B):
        prompt = int(torch.randint(1, 4, (1,), generator=g))
        end = prompt + 1 + int(torch.randint(0, length - prompt, (1,), generator=g))
        labels[i, :prompt] = -100
        labels[i, end:] = -100
    return logits, labels


def _unipo_from_logits(logits, labels, variant, **params) -> unipo.LossOutput:
    """Per-token log-probs of the shifted labels, then the unified objective (no reference)."""
    tgt = labels[:, 1:]
    mask = tgt != -100
    logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    (pc, pr), (mc, mr) = logps.chunk(2), mask.chunk(2)
    return unipo.compute_loss(variant, policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_mask=mc,
                              rejected_mask=mr, **params)


# (id, CPO settings, average_log_prob, unipo variant, unipo params)
CPO_CASES = [
    ("simpo", dict(loss_type="simpo", beta=2.0, simpo_gamma=0.5), True, "simpo", {}),
    ("simpo-beta2.5-gamma1.4", dict(loss_type="simpo", beta=2.5, simpo_gamma=1.4), True, "simpo",
     dict(beta=2.5, gamma=1.4)),
    ("simpo-gamma_beta_ratio", dict(loss_type="simpo", beta=2.5, simpo_gamma=0.3 * 2.5), True, "simpo",
     dict(beta=2.5, gamma_beta_ratio=0.3)),
    ("simpo-label_smoothing", dict(loss_type="simpo", beta=2.0, simpo_gamma=0.5, label_smoothing=0.1), True,
     {"preset": "simpo", "pair_loss": "cdpo"}, dict(label_smoothing=0.1)),
    ("cpo-sigmoid-smoothed", dict(loss_type="sigmoid", beta=0.1, label_smoothing=0.2), False,
     {"preset": "cdpo", "prior": "none"}, dict(label_smoothing=0.2)),
    ("cpo-hinge", dict(loss_type="hinge", beta=0.1), False, {"preset": "hinge", "prior": "none"}, {}),
    ("cpo-ipo", dict(loss_type="ipo", beta=0.5), True, {"preset": "ipo", "prior": "none"}, dict(beta=0.5)),
]


@pytest.mark.parametrize("case", CPO_CASES, ids=[c[0] for c in CPO_CASES])
def test_cpo_trainer_loss_agrees(case):
    name, trl_kw, average, variant, params = case
    trainer = cpo_trainer(**trl_kw)
    logits, labels = _logits_batch()
    seq = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=average)
    losses_t, _, _ = trainer.cpo_loss(*seq.chunk(2))
    (grad_t,) = torch.autograd.grad(losses_t.mean(), logits)
    out = _unipo_from_logits(logits, labels, variant, **params)
    _close(out.losses, losses_t, f"{name}: per-example losses")
    (grad_u,) = torch.autograd.grad(out.loss, logits)
    _close(grad_u, grad_t, f"{name}: d loss / d logits")


def test_simpo_gamma_is_absolute():
    """TRL's simpo_gamma is the absolute γ: reading it as γ/β would change the loss."""
    logits, labels = _logits_batch(seed=4)
    with torch.no_grad():
        seq = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
        trl_loss = cpo_trainer("simpo", beta=2.0, simpo_gamma=1.0).cpo_loss(*seq.chunk(2))[0]
        absolute = _unipo_from_logits(logits, labels, "simpo", beta=2.0, gamma=1.0).losses
        as_ratio = _unipo_from_logits(logits, labels, "simpo", beta=2.0, gamma_beta_ratio=1.0).losses
    _close(absolute, trl_loss, "absolute γ")
    assert (as_ratio - trl_loss).abs().max() > 1e-3
    assert math.isfinite(float(absolute.sum()))
