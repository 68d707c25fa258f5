"""WPO, LD-DPO, AlphaPO, CPO and ORPO: each preset against its formula written out here in float64 (to 1e-10),
and against TRL's own code (TRL 1.16: ``DPOTrainer._compute_loss`` with ``use_weighting`` / ``ld_alpha``,
``CPOTrainer.get_batch_loss_metrics`` with ``loss_type`` sigmoid / alphapo, ``ORPOTrainer.get_batch_loss_metrics``),
driven with stub trainers and stub models that return the tensors we choose.

Conventions checked here (docs/family_trl.md):
- WPO's weight is detached, multiplies the pair loss and uses Σ_v π_θ(v)² from the LM head (unipo's chunked head
  computes it: tested against TRL's own chunked kernel and against full-vocabulary logits).
- LD-DPO scales the excess tokens of the policy AND the reference.
- CPO / ORPO: TRL's NLL is one token mean over the batch (ORPO's also covers the prompt): matched exactly with
  ``nll_token_mean: true`` (and one-token prompts for ORPO, whose first token is never predicted).
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import unipo
from tests.helpers import CPUAccelerator
from unipo.errors import ConfigError, UnipoError
from unipo.models.logprobs import token_logps

trl = pytest.importorskip("trl")
DPOTrainer = pytest.importorskip("trl.trainer.dpo_trainer").DPOTrainer
CPOTrainer = pytest.importorskip("trl.experimental.cpo").CPOTrainer
ORPOTrainer = pytest.importorskip("trl.experimental.orpo").ORPOTrainer
ChunkedLogProbFunction = pytest.importorskip("trl.kernels").ChunkedLogProbFunction
TPOTrainer = pytest.importorskip("trl.experimental.tpo").TPOTrainer

pytestmark = pytest.mark.unit

B, T = 5, 7
RTOL, ATOL = 2e-5, 2e-6


# ----------------------------------------------------------------------------- float64 inputs, NaN in the padding
def inputs64(seed: int = 0) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per side (policy log-probs with grad, reference log-probs, log Σp², mask); lengths differ per side and row
    (one single-token response); padding holds NaN."""
    g = torch.Generator().manual_seed(seed)
    lengths = {"chosen": [7, 3, 1, 5, 6], "rejected": [2, 7, 4, 1, 6]}
    out = {}
    for side, ns in lengths.items():
        mask = torch.arange(T)[None] < torch.tensor(ns)[:, None]
        pol = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        sq = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2  # log Σp² ∈ (−2, 0]
        out[side] = tuple(x.masked_fill(~mask, float("nan")) for x in (pol, ref, sq)) + (mask,)
        out[side][0].requires_grad_(True)
    return out


def run64(variant, x, **params) -> unipo.LossOutput:
    return unipo.compute_loss(
        variant, policy_chosen_logps=x["chosen"][0], policy_rejected_logps=x["rejected"][0],
        chosen_mask=x["chosen"][3], rejected_mask=x["rejected"][3], ref_chosen_logps=x["chosen"][1],
        ref_rejected_logps=x["rejected"][1], chosen_log_sum_sq_probs=x["chosen"][2],
        rejected_log_sum_sq_probs=x["rejected"][2], **params)


def tokens(x, side, i, which=0) -> list[float]:
    """The real tokens of row i as Python floats."""
    t, mask = x[side][which], x[side][3]
    return [float(t[i, j].detach()) for j in range(T) if mask[i, j]]


def softplus(v: float) -> float:  # −log σ(−v), in plain floats
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


def by_hand(variant: str, x, beta: float, **p) -> list[float]:
    """Each preset's loss per pair, in plain Python floats, from its formula."""
    losses = []
    for i in range(B):
        a = {s: tokens(x, s, i) for s in x}
        r = {s: tokens(x, s, i, 1) for s in x}
        if variant == "wpo":
            q = {s: tokens(x, s, i, 2) for s in x}
            w = {s: math.exp(sum(ai - qi for ai, qi in zip(a[s], q[s], strict=True)) / len(a[s])) for s in x}
            delta = sum(a["chosen"]) - sum(r["chosen"]) - sum(a["rejected"]) + sum(r["rejected"])
            losses.append(w["chosen"] * w["rejected"] * softplus(-beta * delta))
        elif variant == "ld_dpo":
            lp = min(len(a["chosen"]), len(a["rejected"]))
            rho = {s: sum(ai - ri for ai, ri in zip(a[s][:lp], r[s][:lp], strict=True))
                   + p["ld_alpha"] * sum(ai - ri for ai, ri in zip(a[s][lp:], r[s][lp:], strict=True)) for s in x}
            losses.append(softplus(-beta * (rho["chosen"] - rho["rejected"])))
        elif variant == "alphapo":
            al = p["f_alpha"]
            rew = {s: (1 - math.exp(-al * sum(a[s]) / len(a[s]))) / al for s in x}
            losses.append(softplus(-(beta * (rew["chosen"] - rew["rejected"]) - p["gamma"])))
        elif variant == "cpo":
            losses.append(softplus(-beta * (sum(a["chosen"]) - sum(a["rejected"])))
                          - sum(a["chosen"]) / len(a["chosen"]))
        elif variant == "orpo":
            mean = {s: sum(a[s]) / len(a[s]) for s in x}
            odds = {s: math.exp(mean[s]) / (1 - math.exp(mean[s])) for s in x}
            losses.append(beta * softplus(-math.log(odds["chosen"] / odds["rejected"])) - mean["chosen"])
    return losses


FORMULA_CASES = [
    ("wpo", {}, 0.1), ("wpo", dict(beta=0.7), 0.7),
    ("ld_dpo", dict(ld_alpha=0.5), 0.1), ("ld_dpo", dict(ld_alpha=0.2, beta=0.5), 0.5),
    ("ld_dpo", dict(ld_alpha=1.0), 0.1), ("ld_dpo", dict(ld_alpha=0.0), 0.1),
    ("alphapo", dict(f_alpha=0.25, gamma=0.5), 2.0), ("alphapo", dict(f_alpha=0.7, gamma=1.2, beta=2.5), 2.5),
    ("cpo", {}, 0.1), ("cpo", dict(beta=0.4), 0.4),
    ("orpo", {}, 0.1), ("orpo", dict(beta=0.25), 0.25),
]


@pytest.mark.parametrize("variant,params,beta", FORMULA_CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}{v}' for k, v in c[1].items())}" for c in FORMULA_CASES])
def test_preset_equals_its_formula_in_float64(variant, params, beta):
    x = inputs64()
    defaults = {"ld_dpo": dict(ld_alpha=0.5), "alphapo": dict(f_alpha=0.25, gamma=0.5)}.get(variant, {})
    out = run64(variant, x, **params)
    given = {k: v for k, v in params.items() if k != "beta"}
    expected = torch.tensor(by_hand(variant, x, beta, **{**defaults, **given}), dtype=torch.float64)
    assert out.losses.dtype == torch.float64
    torch.testing.assert_close(out.losses.detach(), expected, rtol=0, atol=1e-10)
    out.loss.backward()
    for side in ("chosen", "rejected"):
        grad, mask = x[side][0].grad, x[side][3]
        assert torch.isfinite(grad).all() and bool((grad[~mask] == 0).all())
        assert grad[mask].abs().sum() > 0


@pytest.mark.parametrize("variant", ["ld_dpo", "alphapo", "cpo", "orpo"])
def test_gradient_matches_finite_differences(variant):
    x = inputs64(1)
    clean = {s: x[s][0].detach().nan_to_num(0.0) for s in x}

    def loss_of(pol_chosen):
        return unipo.compute_loss(variant, policy_chosen_logps=pol_chosen, policy_rejected_logps=clean["rejected"],
                                  chosen_mask=x["chosen"][3], rejected_mask=x["rejected"][3],
                                  ref_chosen_logps=x["chosen"][1], ref_rejected_logps=x["rejected"][1]).loss

    pol = clean["chosen"].clone().requires_grad_()
    loss_of(pol).backward()
    eps = 1e-6
    for i, j in [(0, 0), (0, 6), (1, 2), (4, 5)]:  # (0, 6) lies past the shared length of pair 0 (LD-DPO's α)
        plus, minus = clean["chosen"].clone(), clean["chosen"].clone()
        plus[i, j] += eps
        minus[i, j] -= eps
        fd = (float(loss_of(plus)) - float(loss_of(minus))) / (2 * eps)
        assert abs(float(pol.grad[i, j]) - fd) < 1e-7 * max(1.0, abs(fd)), (variant, i, j)


def test_wpo_weights_carry_no_gradient():
    """d loss / d a_t = w_w·w_l × DPO's token gradient: nothing flows through the weights."""
    x = inputs64(2)
    out = run64("wpo", x, beta=0.3)
    out.losses.sum().backward()
    for side, sign in (("chosen", -1.0), ("rejected", 1.0)):
        rows = []
        for i in range(B):
            a = {s: tokens(x, s, i) for s in x}
            q = {s: tokens(x, s, i, 2) for s in x}
            r = {s: tokens(x, s, i, 1) for s in x}
            w = math.prod(math.exp(sum(ai - qi for ai, qi in zip(a[s], q[s], strict=True)) / len(a[s])) for s in x)
            delta = sum(a["chosen"]) - sum(r["chosen"]) - sum(a["rejected"]) + sum(r["rejected"])
            rows.append(sign * w * 0.3 / (1 + math.exp(0.3 * delta)))  # d softplus(−βΔ)/dΔ = −β σ(−βΔ)
        expected = torch.tensor(rows, dtype=torch.float64)[:, None].expand(B, T)
        mask = x[side][3]
        torch.testing.assert_close(x[side][0].grad[mask], expected[mask], rtol=0, atol=1e-12)


def test_cpo_nll_token_mean_is_the_batch_token_mean():
    """nll_token_mean: the mean of the per-pair losses is the pair term's mean plus −Σ a(y_w) / Σ|y_w| over the
    batch (TRL's CrossEntropyLoss over the chosen tokens); the default is a per-pair mean, which differs."""
    x = inputs64(3)
    pair = run64({"preset": "cpo", "nll_weight": 0.0}, x).losses.detach()
    token_mean = run64("cpo", x, nll_token_mean=True).loss.detach()
    a_w, m_w = x["chosen"][0].detach(), x["chosen"][3]
    expected = pair.mean() - a_w[m_w].sum() / m_w.sum()
    assert abs(float(token_mean) - float(expected)) < 1e-12
    assert abs(float(run64("cpo", x).loss.detach()) - float(expected)) > 1e-3


def test_orpo_refuses_a_prior_it_would_ignore():
    """ORPO reads the policy's log-probs only: a reference (computed for nothing) or a learned prior (never
    trained) is a configuration error, as are the margins and links it would ignore."""
    for extra, msg in (({"prior": "reference"}, "would ignore prior=reference"),
                       ({"prior": "learned"}, "would ignore prior=learned"),
                       ({"gamma": 0.5}, "would ignore gamma"), ({"link": "js"}, "would ignore link=js")):
        with pytest.raises(ConfigError, match=msg):
            unipo.resolve({"preset": "orpo", **extra})


def test_wpo_composes_and_ld_rejects_nothing_it_should_not():
    x = inputs64(4)
    ipo = run64({"preset": "ipo"}, x).losses.detach()
    wpo_ipo = run64({"preset": "wpo", "pair_loss": "ipo", "aggregation": "mean"}, x)
    w = torch.tensor([math.prod(math.exp(sum(a - q for a, q in zip(tokens(x, s, i), tokens(x, s, i, 2), strict=True))
                                         / len(tokens(x, s, i))) for s in x) for i in range(B)], dtype=torch.float64)
    torch.testing.assert_close(wpo_ipo.losses.detach(), w * ipo, rtol=0, atol=1e-10)
    assert "pair_weighting/mean" in wpo_ipo.metrics
    with pytest.raises(UnipoError, match="pair_weighting=wpo needs the input 'chosen_log_sum_sq_probs'"):
        unipo.compute_loss("wpo", policy_chosen_logps=x["chosen"][0], policy_rejected_logps=x["rejected"][0],
                           chosen_mask=x["chosen"][3], rejected_mask=x["rejected"][3],
                           ref_chosen_logps=x["chosen"][1], ref_rejected_logps=x["rejected"][1])


# ------------------------------------------------------------------------------------------- TRL: DPOTrainer


def dpo_trainer(*, beta: float, use_weighting: bool = False, ld_alpha: float | None = None,
                ref_model=None) -> DPOTrainer:
    """A DPOTrainer carrying only what ``_compute_loss`` reads (no model, no dataset)."""
    trainer = object.__new__(DPOTrainer)
    trainer.__dict__.update(
        beta=beta, loss_types=["sigmoid"], loss_weights=[1.0], label_smoothing=0.0, f_divergence_type="reverse_kl",
        f_alpha_divergence_coef=0.5, ld_alpha=ld_alpha, precompute_ref_logps=ref_model is None,
        ref_model=ref_model, aux_loss_enabled=False, use_weighting=use_weighting,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None, max_length=None), accelerator=CPUAccelerator(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
        model=SimpleNamespace(training=True, is_gradient_checkpointing=False, _modules={}))
    return trainer


def _ragged_masks(g: torch.Generator) -> torch.Tensor:
    """[2B, T] completion masks (chosen rows then rejected rows): a prompt prefix then 1.. tokens then padding."""
    mask = torch.zeros(2 * B, T, dtype=torch.bool)
    for i in range(2 * B):
        start = int(torch.randint(0, 3, (1,), generator=g))
        mask[i, start:start + int(torch.randint(1, T - start + 1, (1,), generator=g))] = True
    return mask


def trl_dpo(trainer, log_probs, mask, *, sq=None, ref=None, ref_sums=None) -> torch.Tensor:
    """TRL's ``_compute_loss``; per-token tensors [2B, T] over the shifted positions (0 where the label is -100)."""
    zero = torch.zeros(())
    completion_mask = torch.cat([torch.zeros(2 * B, 1, dtype=torch.long), mask.long()], dim=1)

    def outputs(lp, lss=None):
        z = torch.zeros_like(lp).detach()
        return SimpleNamespace(log_probs=torch.where(mask, lp, zero), entropy=z, mean_logits=z,
                               is_top1=torch.zeros_like(mask),
                               log_sum_sq_probs=None if lss is None else torch.where(mask, lss, zero))

    def model(**kwargs):
        assert torch.equal(kwargs["labels"][:, 1:] != -100, mask)
        return outputs(log_probs, sq)

    if ref is not None:
        trainer.ref_model = lambda **kwargs: outputs(ref)
    inputs = {"input_ids": torch.randint(5, 100, completion_mask.shape), "completion_mask": completion_mask,
              "attention_mask": torch.ones_like(completion_mask)}
    if ref_sums is not None:
        inputs.update(ref_chosen_logps=ref_sums[0], ref_rejected_logps=ref_sums[1])
    return trainer._compute_loss(model, inputs, return_outputs=False)


def _hidden_batch(seed: int, vocab: int = 29, width: int = 8):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2 * B * T, width, generator=g)
    head = torch.nn.Linear(width, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(1.5 * torch.randn(vocab, width, generator=g))
    labels = torch.randint(0, vocab, (2 * B * T,), generator=g)
    ref = -torch.nn.functional.softplus(torch.randn(2 * B, T, generator=g)) - 0.05
    return hidden, head, labels, ref, _ragged_masks(g)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_wpo_agrees_with_trl_use_weighting(beta):
    """From one set of hidden states and head: TRL's fused kernel gives log-probs and log Σp² to TRL's
    ``_compute_loss(use_weighting=True)``; unipo's chunked head gives them to the ``wpo`` preset. Losses, per-token
    log Σp² and the gradient w.r.t. the hidden states agree."""
    hidden, head, labels, ref, mask = _hidden_batch(int(beta * 10))
    h_t, h_u = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    lp_t, _, sq_t, _, _ = ChunkedLogProbFunction.apply(h_t, head.weight, None, labels, 1.0, 16, None, 1.0,
                                                       ("log_sum_sq_probs",))
    lp_u, _, sq_u = token_logps(h_u, head, labels, chunk_size=16, log_sum_sq=True)
    full = torch.log_softmax(hidden @ head.weight.detach().t(), -1)
    torch.testing.assert_close(sq_u, torch.logsumexp(2 * full, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sq_u, sq_t, rtol=RTOL, atol=ATOL)
    ref_sums = torch.where(mask, ref, torch.zeros(())).sum(-1).chunk(2)
    loss_t = trl_dpo(dpo_trainer(beta=beta, use_weighting=True), lp_t.view(2 * B, T), mask, sq=sq_t.view(2 * B, T),
                     ref_sums=ref_sums)
    (lp_w, lp_l), (sq_w, sq_l), (m_w, m_l), (r_w, r_l) = (t.chunk(2) for t in (lp_u.view(2 * B, T),
                                                                                 sq_u.view(2 * B, T), mask, ref))
    out = unipo.compute_loss("wpo", policy_chosen_logps=lp_w, policy_rejected_logps=lp_l, chosen_mask=m_w,
                             rejected_mask=m_l, ref_chosen_logps=r_w, ref_rejected_logps=r_l,
                             chosen_log_sum_sq_probs=sq_w, rejected_log_sum_sq_probs=sq_l, beta=beta)
    torch.testing.assert_close(out.loss, loss_t, rtol=RTOL, atol=ATOL)
    loss_t.backward()
    out.loss.backward()
    torch.testing.assert_close(h_u.grad, h_t.grad, rtol=1e-4, atol=1e-6)
    unweighted = unipo.compute_loss("dpo", policy_chosen_logps=lp_w, policy_rejected_logps=lp_l, chosen_mask=m_w,
                                    rejected_mask=m_l, ref_chosen_logps=r_w, ref_rejected_logps=r_l, beta=beta)
    assert abs(float(unweighted.loss.detach()) - float(loss_t.detach())) > 1e-3  # the weights matter on this batch


@pytest.mark.parametrize("ld_alpha,beta", [(0.5, 0.1), (0.2, 0.5), (0.0, 0.3)])
def test_ld_dpo_agrees_with_trl_ld_alpha(ld_alpha, beta):
    """TRL's ``ld_alpha`` with a live reference (its ``ref_model`` path scales the reference's excess too) and with
    reference log-probs precomputed by TRL's ``compute_ref_log_probs``: both equal unipo's ``ld_dpo``."""
    g = torch.Generator().manual_seed(7)
    mask = _ragged_masks(g)
    ref = -torch.nn.functional.softplus(torch.randn(2 * B, T, generator=g)) - 0.05
    pol = ref + 0.5 * torch.randn(2 * B, T, generator=g)
    pol_t, pol_u = pol.clone().requires_grad_(), pol.clone().requires_grad_()
    loss_live = trl_dpo(dpo_trainer(beta=beta, ld_alpha=ld_alpha, ref_model=True), pol_t, mask, ref=ref)
    trainer = dpo_trainer(beta=beta, ld_alpha=ld_alpha)
    completion_mask = torch.cat([torch.zeros(2 * B, 1, dtype=torch.long), mask.long()], dim=1)
    ref_sums = trainer.compute_ref_log_probs(
        lambda **kw: SimpleNamespace(log_probs=torch.where(mask, ref, torch.zeros(()))),
        {"input_ids": torch.randint(5, 100, completion_mask.shape), "completion_mask": completion_mask})
    with torch.no_grad():
        loss_pre = trl_dpo(trainer, pol, mask, ref_sums=ref_sums)
    (p_w, p_l), (m_w, m_l), (r_w, r_l) = pol_u.chunk(2), mask.chunk(2), ref.chunk(2)
    out = unipo.compute_loss("ld_dpo", policy_chosen_logps=p_w, policy_rejected_logps=p_l, chosen_mask=m_w,
                             rejected_mask=m_l, ref_chosen_logps=r_w, ref_rejected_logps=r_l, beta=beta,
                             ld_alpha=ld_alpha)
    torch.testing.assert_close(out.loss, loss_live, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(out.loss.detach(), loss_pre, rtol=RTOL, atol=ATOL)
    loss_live.backward()
    out.loss.backward()
    torch.testing.assert_close(pol_u.grad, torch.where(mask, pol_t.grad, torch.zeros(())), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------- TRL: CPO and ORPO trainers
def _sequences(seed: int, prompt_max: int, vocab: int = 13, length: int = 10):
    """Random logits [2B, L, V] and a batch in TRL's CPO/ORPO format: input ids, attention mask (prompt +
    response), labels (-100 on prompt and padding); prompts of 1..prompt_max tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(2 * B, length, vocab, generator=g)
    ids = torch.randint(0, vocab, (2 * B, length), generator=g)
    attention = torch.zeros(2 * B, length, dtype=torch.long)
    labels = torch.full((2 * B, length), -100)
    for i in range(2 * B):
        prompt = int(torch.randint(1, prompt_max + 1, (1,), generator=g))
        end = prompt + 1 + int(torch.randint(0, length - prompt, (1,), generator=g))
        attention[i, :end] = 1
        labels[i, prompt:end] = ids[i, prompt:end]
    batch = {}
    for name, rows in (("chosen", slice(0, B)), ("rejected", slice(B, 2 * B))):
        batch.update({f"{name}_input_ids": ids[rows], f"{name}_attention_mask": attention[rows],
                      f"{name}_labels": labels[rows]})
    return logits, batch, labels


def _trl_batch_loss(cls, logits, batch, **attrs) -> torch.Tensor:
    trainer = object.__new__(cls)
    trainer.__dict__.update(is_encoder_decoder=False, pad_token_id=0, padding_value=0, aux_loss_enabled=False,
                            accelerator=CPUAccelerator(), **attrs)
    loss, _ = trainer.get_batch_loss_metrics(lambda *a, **kw: SimpleNamespace(logits=logits), batch)
    return loss


def _unipo_from_logits(logits, labels, variant, **params) -> unipo.LossOutput:
    tgt = labels[:, 1:]
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    (pc, pr), (mc, mr) = logps.chunk(2), (tgt != -100).chunk(2)
    return unipo.compute_loss(variant, policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_mask=mc,
                              rejected_mask=mr, **params)


CPO_CASES = [  # (id, trainer class, TRL attributes, max prompt length, unipo variant, unipo params)
    ("cpo", CPOTrainer, dict(loss_type="sigmoid", beta=0.1, cpo_alpha=1.0, label_smoothing=0.0, alpha=0.0), 3,
     "cpo", dict(nll_token_mean=True)),
    ("cpo-beta0.5-nll0.3", CPOTrainer, dict(loss_type="sigmoid", beta=0.5, cpo_alpha=0.3, label_smoothing=0.0,
                                             alpha=0.0), 3, "cpo", dict(beta=0.5, nll_weight=0.3,
                                                                        nll_token_mean=True)),
    # TRL's config turns loss_type="alphapo" into simpo with cpo_alpha = 0
    ("alphapo", CPOTrainer, dict(loss_type="simpo", beta=2.0, simpo_gamma=0.5, cpo_alpha=0.0, label_smoothing=0.0,
                                 alpha=0.25), 3, "alphapo", {}),
    ("alphapo-0.6", CPOTrainer, dict(loss_type="simpo", beta=2.5, simpo_gamma=1.0, cpo_alpha=0.0,
                                     label_smoothing=0.0, alpha=0.6), 3, "alphapo",
     dict(beta=2.5, gamma=1.0, f_alpha=0.6)),
    # ORPO's NLL covers prompt + response: one-token prompts (never predicted) make it the response's
    ("orpo", ORPOTrainer, dict(beta=0.1), 1, "orpo", dict(nll_token_mean=True)),
    ("orpo-lambda0.5", ORPOTrainer, dict(beta=0.5), 1, "orpo", dict(beta=0.5, nll_token_mean=True)),
]


@pytest.mark.parametrize("case", CPO_CASES, ids=[c[0] for c in CPO_CASES])
def test_cpo_and_orpo_trainers_agree(case):
    """TRL's whole ``get_batch_loss_metrics`` (its forward, log-probs, NLL and loss) on a stub model's logits."""
    name, cls, attrs, prompt_max, variant, params = case
    logits, batch, labels = _sequences(11, prompt_max)
    l_t, l_u = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss_t = _trl_batch_loss(cls, l_t, batch, **attrs)
    out = _unipo_from_logits(l_u, labels, variant, **params)
    torch.testing.assert_close(out.loss, loss_t, rtol=RTOL, atol=ATOL)
    loss_t.backward()
    out.loss.backward()
    torch.testing.assert_close(l_u.grad, l_t.grad, rtol=1e-4, atol=1e-6)


def test_orpo_default_nll_differs_from_trl_only_by_its_reduction_and_the_prompt():
    """unipo's default NLL (per-pair response mean) is not TRL's (batch token mean over prompt + response): with
    longer prompts they differ, and the odds-ratio term alone still agrees."""
    logits, batch, labels = _sequences(12, 3)
    with torch.no_grad():
        loss_t = float(_trl_batch_loss(ORPOTrainer, logits, batch, beta=0.1))
        no_nll = float(_unipo_from_logits(logits, labels, "orpo", nll_weight=0.0).loss)
        full = float(_unipo_from_logits(logits, labels, "orpo").loss)
        seq = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
        trainer = object.__new__(ORPOTrainer)
        trainer.__dict__.update(beta=0.1, accelerator=CPUAccelerator())
        odds_term = float(-trainer.odds_ratio_loss(*seq.chunk(2))[0].mean())
    assert abs(no_nll - odds_term) < 1e-6
    assert abs(full - loss_t) > 1e-3


def test_wpo_clamp_is_the_authors_released_weight():
    """``wpo_clamp: true`` is the weight of the authors' released code (wzhouad/WPO, scripts/run_wpo.py,
    ``WPOTrainer.get_batch_logps``), written out here from logits: log-probs minus log Σ_v p_v², averaged over the
    response tokens, the pair's weight exp(chosen + rejected) clamped at 1. Rows whose labels are the argmax
    tokens have weight ≥ 1, so the clamp acts."""
    g = torch.Generator().manual_seed(5)
    logits = 3.0 * torch.randn(2 * B, T + 1, 11, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 11, (2 * B, T + 1), generator=g)
    labels[[0, B], 1:] = logits[[0, B], :-1].argmax(-1)  # pair 0: both responses are the policy's greedy tokens
    labels[:, 0] = -100
    for i in range(2 * B):
        labels[i, 2 + i % (T - 1):] = -100
    # the released code's lines
    tgt, lg = labels[:, 1:].clone(), logits[:, :-1, :]
    loss_mask = tgt != -100
    tgt[tgt == -100] = 0
    per_token_logps = torch.gather(torch.log_softmax(lg, -1), 2, tgt.unsqueeze(2)).squeeze(2)
    per_token_logps = per_token_logps - torch.log((torch.softmax(lg, -1) ** 2).sum(-1))
    avg = (per_token_logps * loss_mask).sum(-1) / loss_mask.sum(-1)
    released = torch.clamp(torch.exp(avg[:B] + avg[B:]), max=1)
    assert float(released[0]) == 1.0 and float(released[1:].max()) < 1.0
    # unipo: the factor is the ratio of wpo's losses to dpo's
    logps = torch.log_softmax(lg, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    sq = torch.logsumexp(2 * torch.log_softmax(lg, -1), -1)
    kw = dict(policy_chosen_logps=logps[:B], policy_rejected_logps=logps[B:], chosen_mask=loss_mask[:B],
              rejected_mask=loss_mask[B:], ref_chosen_logps=logps[:B] * 0.9, ref_rejected_logps=logps[B:] * 1.1,
              chosen_log_sum_sq_probs=sq[:B], rejected_log_sum_sq_probs=sq[B:])
    dpo = unipo.compute_loss("dpo", **kw).losses
    clamped = unipo.compute_loss("wpo", wpo_clamp=True, **kw).losses
    torch.testing.assert_close(clamped / dpo, released, rtol=1e-12, atol=0)
    unclamped = unipo.compute_loss("wpo", **kw).losses / dpo
    assert float(unclamped[0]) > 1.0  # TRL's form (the default) does not clamp


# ------------------------------------------------------------------------------------------- TRL: TPOTrainer


def _tpo_batch(seed: int, vocab: int = 13, length: int = 9):
    """TRL's TPO batch on a stub model: [chosen; rejected; gold] rows (B each) of input ids with a completion mask
    (a prompt of 1..3 tokens, then 1.. completion tokens, then padding), and random logits [3B, L, V]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3 * B, length), generator=g)
    completion = torch.zeros(3 * B, length, dtype=torch.long)
    attention = torch.zeros(3 * B, length, dtype=torch.long)
    for i in range(3 * B):
        prompt = int(torch.randint(1, 4, (1,), generator=g))
        end = prompt + 1 + int(torch.randint(0, length - prompt, (1,), generator=g))
        completion[i, prompt:end] = 1
        attention[i, :end] = 1
    return 3.0 * torch.randn(3 * B, length, vocab, generator=g), ids, completion, attention


def _trl_tpo(logits, ids, completion, attention, **attrs) -> torch.Tensor:
    """TRL's own ``TPOTrainer._compute_loss`` (tpo_alpha 0 drops the gold rows, as TRL's collator does)."""
    trainer = object.__new__(TPOTrainer)
    trainer.__dict__.update(accelerator=CPUAccelerator(), _metrics={"train": defaultdict(list)},
                            _total_train_tokens=0, _tp_size=1, model=SimpleNamespace(training=True), **attrs)
    rows = slice(None) if attrs["tpo_alpha"] else slice(0, 2 * B)
    inputs = {"input_ids": ids[rows], "attention_mask": attention[rows], "completion_mask": completion[rows]}
    return trainer._compute_loss(lambda **kw: SimpleNamespace(logits=logits[rows]), inputs, return_outputs=False)


def _unipo_tpo(logits, ids, completion, variant) -> unipo.LossOutput:
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    (pc, pr, pg), (mc, mr, mg) = logps.chunk(3), completion[:, 1:].bool().chunk(3)
    return unipo.compute_loss(variant, policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_mask=mc,
                              rejected_mask=mr, policy_gold_logps=pg, gold_mask=mg)


TPO_DEFAULTS = dict(beta=0.01, loss_type="sigmoid", label_smoothing=0.0, tpo_alpha=1.0, tpo_l_gamma=0.5)
TPO_CASES = [  # (id, TRL's attributes over TPOConfig's defaults, unipo variant)
    ("tpo", {}, "tpo"),
    ("tpo_l", dict(loss_type="tpo-l"), "tpo_l"),
    ("tpo_l-beta2-gamma1", dict(loss_type="tpo-l", beta=2.0, tpo_l_gamma=1.0),
     {"preset": "tpo_l", "beta": 2.0, "gamma": 1.0}),
    ("beta0.5-alpha0.3", dict(beta=0.5, tpo_alpha=0.3), {"preset": "tpo", "beta": 0.5, "gold_nll_weight": 0.3}),
    ("label_smoothing", dict(beta=0.5, label_smoothing=0.2),
     {"preset": "tpo", "beta": 0.5, "pair_loss": "cdpo", "label_smoothing": 0.2}),
    ("hinge", dict(beta=0.3, loss_type="hinge"), {"preset": "tpo", "beta": 0.3, "pair_loss": "hinge"}),
    ("ipo", dict(beta=0.3, loss_type="ipo"), {"preset": "tpo", "beta": 0.3, "pair_loss": "ipo", "aggregation": "mean"}),
    ("alpha0", dict(beta=0.5, tpo_alpha=0.0), {"preset": "tpo", "beta": 0.5, "gold_nll_weight": 0.0}),
]


@pytest.mark.unit
@pytest.mark.parametrize("case", TPO_CASES, ids=[c[0] for c in TPO_CASES])
def test_tpo_agrees_with_trls_tpo_trainer(case):
    """TRL's whole ``TPOTrainer._compute_loss`` (its log-softmax, the four loss types, label smoothing, the gold
    response's cross-entropy) on a stub model's logits: the same loss and the same gradient into every logit of
    the chosen, rejected and gold rows."""
    _, attrs, variant = case
    logits, ids, completion, attention = _tpo_batch(21)
    l_t, l_u = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss_t = _trl_tpo(l_t, ids, completion, attention, **{**TPO_DEFAULTS, **attrs})
    out = _unipo_tpo(l_u, ids, completion, variant)
    torch.testing.assert_close(out.loss, loss_t, rtol=RTOL, atol=ATOL)
    loss_t.backward()
    out.loss.backward()
    if attrs.get("tpo_alpha", 1.0):
        assert l_u.grad[2 * B:].abs().sum() > 0  # the gold rows get gradient
    torch.testing.assert_close(l_u.grad, l_t.grad, rtol=1e-4, atol=1e-6)
