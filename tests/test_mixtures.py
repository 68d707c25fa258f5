"""Weighted mixtures of pair losses (issue 25): ``pair_loss: {sigmoid: 0.8, bco_pair: 0.2}`` and the ``mpo`` preset.

Ground truth: TRL 1.16's own ``DPOTrainer._compute_loss`` with ``loss_type=[...]`` and ``loss_weights=[...]`` (driven
with a stub trainer and a stub model that return the per-token log-probs we choose, ragged completion masks after a
prompt prefix, a live reference), compared in float64 for the loss and its gradient w.r.t. the policy's per-token
log-probs; and, independently of TRL, each mixture equals the weighted sum of the single-loss presets.

TRL's loss types map to unipo's pair losses: ``aot_unpaired`` is ``aot_pair``; ``sigmoid_norm`` is ``sigmoid`` with
``aggregation: mean`` (as ``ipo``, which both length-normalise); ``sft`` is the NLL term with ``nll_token_mean: true``.
A mixture shares one aggregation, so TRL mixtures of a length-normalised type (ipo, sigmoid_norm) with a summed one
are not expressible (docs/objective.md says so); every other mixture of TRL's types is.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import unipo
from tests.helpers import CPUAccelerator
from unipo.errors import ConfigError
from unipo.objective import Objective

DPOTrainer = pytest.importorskip("trl.trainer.dpo_trainer").DPOTrainer

pytestmark = pytest.mark.unit

B, T = 6, 8

#: (TRL loss types, TRL loss weights (None: TRL's default of 1 each), TRL β, label_smoothing, unipo objective)
MIXTURES = [
    (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0], 0.1, 0.0, "mpo"),
    (["sigmoid", "bco_pair"], None, 0.3, 0.0, {"pair_loss": {"sigmoid": 1, "bco_pair": 1}, "beta": 0.3}),
    (["hinge", "nca_pair", "sppo_hard", "apo_zero", "apo_down"], [0.5, 1.0, 0.01, 2.0, 0.3], 0.2, 0.0,
     {"pair_loss": {"hinge": 0.5, "nca_pair": 1.0, "sppo_hard": 0.01, "apo_zero": 2.0, "apo_down": 0.3},
      "beta": 0.2}),
    (["robust", "exo_pair", "sigmoid"], [1.0, 0.5, 0.25], 0.1, 0.2,
     {"pair_loss": {"robust": 1.0, "exo_pair": 0.5, "sigmoid": 0.25}, "label_smoothing": 0.2}),
    (["aot", "aot_unpaired", "discopop", "sft"], [0.3, 0.7, 1.0, 0.5], 0.1, 0.0,
     {"pair_loss": {"aot": 0.3, "aot_pair": 0.7, "discopop": 1.0}, "nll_weight": 0.5, "nll_token_mean": True}),
    (["ipo", "sigmoid_norm", "sft"], [1.0, 0.5, 0.2], 0.5, 0.0,
     {"pair_loss": {"ipo": 1.0, "sigmoid": 0.5}, "aggregation": "mean", "beta": 0.5, "nll_weight": 0.2,
      "nll_token_mean": True}),
]


def _trainer(loss_types, loss_weights, beta, label_smoothing, ref) -> DPOTrainer:
    """A DPOTrainer carrying only what ``_compute_loss`` reads, as DPOTrainer.__init__ sets it (no model)."""
    trainer = object.__new__(DPOTrainer)
    trainer.__dict__.update(
        beta=beta, loss_types=list(loss_types), loss_weights=loss_weights or [1.0] * len(loss_types),
        label_smoothing=label_smoothing, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, ld_alpha=None,
        precompute_ref_logps=False, aux_loss_enabled=False, use_weighting=False,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None, max_length=None, discopop_tau=0.05),
        accelerator=CPUAccelerator(), _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1, model=SimpleNamespace(training=True, is_gradient_checkpointing=False,
                                                                  _modules={}))
    zero = torch.zeros((), dtype=torch.float64)

    def outputs(lp, mask):
        z = torch.zeros_like(lp).detach()
        return SimpleNamespace(log_probs=torch.where(mask, lp, zero), entropy=z, mean_logits=z,
                               is_top1=torch.zeros_like(mask))

    trainer.ref_model = lambda **kw: outputs(ref, kw["labels"][:, 1:] != -100)
    trainer._outputs = outputs
    return trainer


def _batch(seed: int):
    """[2B, T] policy (with grad) and reference per-token log-probs over the shifted positions, and the completion
    mask: a prompt prefix of 0–2 positions, then 1.. response tokens, then padding (chosen rows, then rejected)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2 * B, T, dtype=torch.bool)
    for i in range(2 * B):
        start = int(torch.randint(0, 3, (1,), generator=g))
        mask[i, start:start + int(torch.randint(1, T - start + 1, (1,), generator=g))] = True
    ref = -torch.nn.functional.softplus(torch.randn(2 * B, T, generator=g, dtype=torch.float64)) - 0.05
    pol = ref + 0.8 * torch.randn(2 * B, T, generator=g, dtype=torch.float64)
    return pol, ref, mask


def _trl_loss(trainer, pol, mask) -> torch.Tensor:
    completion_mask = torch.cat([torch.zeros(2 * B, 1, dtype=torch.long), mask.long()], dim=1)
    inputs = {"input_ids": torch.randint(5, 100, completion_mask.shape), "completion_mask": completion_mask,
              "attention_mask": torch.ones_like(completion_mask)}
    return trainer._compute_loss(lambda **kw: trainer._outputs(pol, mask), inputs, return_outputs=False)


def _unipo(variant, pol, ref, mask) -> unipo.LossOutput:
    (p_w, p_l), (r_w, r_l), (m_w, m_l) = pol.chunk(2), ref.chunk(2), mask.chunk(2)
    return unipo.compute_loss(variant, policy_chosen_logps=p_w, policy_rejected_logps=p_l, chosen_mask=m_w,
                              rejected_mask=m_l, ref_chosen_logps=r_w, ref_rejected_logps=r_l)


@pytest.mark.parametrize("types,weights,beta,eps,variant", MIXTURES, ids=lambda v: "+".join(v) if isinstance(
    v, list) and isinstance(v[0], str) else None)
def test_mixture_equals_trls_loss_types_with_loss_weights(types, weights, beta, eps, variant):
    pol, ref, mask = _batch(len(types) + int(10 * beta))
    pol_t, pol_u = pol.clone().requires_grad_(), pol.clone().requires_grad_()
    loss_t = _trl_loss(_trainer(types, weights, beta, eps, ref), pol_t, mask)
    out = _unipo(variant, pol_u, ref, mask)
    # TRL's exo_pair takes log(ε), log(1 − ε) of a float32 tensor (torch.tensor(label_smoothing)): 1e-8 relative
    tol = 1e-7 if "exo_pair" in types else 1e-12
    torch.testing.assert_close(out.loss, loss_t, rtol=tol, atol=tol)
    loss_t.backward()
    out.loss.backward()
    torch.testing.assert_close(pol_u.grad, torch.where(mask, pol_t.grad, 0.0), rtol=max(tol, 1e-10), atol=tol)
    assert float(pol_u.grad.abs().sum()) > 0
    names = [n for n in Objective(variant).params["pair_loss_weights"]]
    assert {f"mixture/{n}" for n in names} <= set(out.metrics)


def test_mpo_is_the_weighted_sum_of_dpo_bco_pair_and_the_nll():
    """Independent of TRL: each pair's loss is 0.8·dpo + 0.2·bco_pair (the single-loss presets) plus the NLL's
    share; the logged components are those presets' means."""
    pol, ref, mask = _batch(3)
    mpo = _unipo("mpo", pol, ref, mask)
    dpo, bco = _unipo("dpo", pol, ref, mask), _unipo("bco_pair", pol, ref, mask)
    nll = _unipo({"preset": "dpo", "nll_weight": 1.0, "nll_token_mean": True}, pol, ref, mask).losses - dpo.losses
    torch.testing.assert_close(mpo.losses, 0.8 * dpo.losses + 0.2 * bco.losses + nll, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(mpo.metrics["mixture/sigmoid"], dpo.losses.mean())
    torch.testing.assert_close(mpo.metrics["mixture/bco_pair"], bco.losses.mean())
    # the chosen tokens' mean NLL over the whole batch (TRL's sft): Σ −a / Σ|y_w|
    chosen, chosen_mask = pol.chunk(2)[0], mask.chunk(2)[0]
    torch.testing.assert_close(nll.mean(), -chosen[chosen_mask].mean())
    assert Objective("mpo").config.to_dict()["pair_loss_weights"] == {"sigmoid": 0.8, "bco_pair": 0.2}
    # the configuration round-trips: the resolved form gives the same objective
    again = Objective(Objective("mpo").config.to_dict())
    assert again.config.params == Objective("mpo").config.params


def test_mpo_equals_its_formula_by_hand():
    """0.8·(−log σ(βΔ)) + 0.2·(−log σ(βρ_w) − log σ(−βρ_l)) + Σ_batch NLL / Σ_batch |y_w|, in plain floats."""
    import math

    def softplus(v: float) -> float:  # −log σ(−v)
        return max(v, 0.0) + math.log1p(math.exp(-abs(v)))

    pol, ref, mask = _batch(8)
    out = _unipo("mpo", pol, ref, mask)
    rho = [sum(float(pol[i, j] - ref[i, j]) for j in range(T) if mask[i, j]) for i in range(2 * B)]
    chosen_tokens = [float(pol[i, j]) for i in range(B) for j in range(T) if mask[i, j]]
    nll = -sum(chosen_tokens) / len(chosen_tokens)
    expected = [0.8 * softplus(-0.1 * (rho[i] - rho[B + i]))
                + 0.2 * (softplus(-0.1 * rho[i]) + softplus(0.1 * rho[B + i])) for i in range(B)]
    assert float(out.loss) == pytest.approx(sum(expected) / B + nll, rel=1e-12)


def test_a_one_loss_mixture_is_that_loss():
    pol, ref, mask = _batch(5)
    torch.testing.assert_close(_unipo({"pair_loss": {"ipo": 1.0}, "aggregation": "mean"}, pol, ref, mask).losses,
                               _unipo("ipo", pol, ref, mask).losses, rtol=0, atol=0)


@pytest.mark.parametrize("spec,message", [
    ({"pair_loss": {"sigmoid": 0.5, "beta_dpo": 0.5}}, r"pair_loss=beta_dpo keeps state across batches .* cannot be "
                                                        r"one term of a mixture"),
    ({"pair_loss": {"sigmoid": 1, "plackett_luce": 1}}, r"pair_loss=plackett_luce compares one chosen response with "
                                                         r"several rejected"),
    ({"pair_loss": {"sigmod": 1}}, r"unknown pair_loss 'sigmod' in the mixture \(did you mean 'sigmoid'\?\)"),
    ({"pair_loss": {"sigmoid": 1, "mixture": 1}}, r"cannot contain another mixture"),
    ({"pair_loss": {"robust": 1, "exo_pair": 1}}, r"share the parameter 'label_smoothing' with different defaults "
                                                   r"\(robust: 0.1, exo_pair: 0.001\): give label_smoothing"),
    ({"pair_loss": {"sigmoid": -0.2}}, r"the weight of 'sigmoid' must be a positive finite number"),
    ({"pair_loss": {}}, r"must be a mapping of names to weights"),
    ({"pair_loss": "mixture"}, r"pair_loss=mixture needs pair_loss_weights"),
    ({"weights": {"bmc": 1}}, r"weights takes one part name, got a mapping .* only pair_loss can mix"),
    ({"pair_loss": {"bco_pair": 1, "nca_pair": 1}, "gamma": 0.5},
     r"pair_loss=\{bco_pair, nca_pair\} scores each side separately and would ignore gamma"),
    ({"pair_loss": {"robust": 1, "exo_pair": 1}, "label_smoothing": 0.0}, r"'label_smoothing' = 0.0 is out of range"),
])
def test_mixtures_that_cannot_work_are_refused_with_the_reason(spec, message):
    with pytest.raises(ConfigError, match=message):
        Objective(spec)


def test_a_mixture_with_a_logit_loss_keeps_the_margins():
    """gamma acts on the logit: the sigmoid term sees it, the bco_pair term (sides scored separately) does not."""
    pol, ref, mask = _batch(6)
    spec = {"pair_loss": {"sigmoid": 0.5, "bco_pair": 0.5}, "gamma": 0.3}
    expected = 0.5 * _unipo({"preset": "dpo", "gamma": 0.3}, pol, ref, mask).losses \
        + 0.5 * _unipo("bco_pair", pol, ref, mask).losses
    torch.testing.assert_close(_unipo(spec, pol, ref, mask).losses, expected, rtol=1e-13, atol=1e-13)
