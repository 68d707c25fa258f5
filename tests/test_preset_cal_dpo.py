"""cal_dpo against its formula written out from the authors' released code (tengxiao1/Cal-DPO,
scripts/dpo_trainer.py, loss_type "Cal-DPO"):

    losses = -logsigmoid(ρ_w - ρ_l) + 0.5 * (mse(ρ_w, 1/(2β)) + mse(ρ_l, -1/(2β)))

with ρ = Σ_t (log π_θ - log π_ref) over response tokens, mse the batch mean; per pair, the mean of the
losses below equals theirs. float64, uneven masks, NaN in the padding."""

import math

import pytest
import torch

import unipo
from unipo.errors import ConfigError

pytestmark = pytest.mark.unit


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, t = 5, 7
    out = {}
    for side in ("chosen", "rejected"):
        mask = torch.zeros(b, t, dtype=torch.bool)
        for i, n in enumerate(torch.randint(1, t + 1, (b,), generator=g).tolist()):
            mask[i, :n] = True
        pol = (-torch.rand(b, t, generator=g, dtype=torch.float64) * 3).masked_fill(~mask, float("nan"))
        ref = (-torch.rand(b, t, generator=g, dtype=torch.float64) * 3).masked_fill(~mask, float("nan"))
        out[side] = (pol.requires_grad_(), ref, mask)
    return out


def _by_hand(x, beta, weight=0.5):
    """Per pair, plain Python floats: the released code's formula."""
    losses = []
    for i in range(x["chosen"][0].shape[0]):
        rho = {}
        for side, (pol, ref, mask) in x.items():
            rho[side] = sum(float(pol[i, j]) - float(ref[i, j]) for j in range(mask.shape[1]) if mask[i, j])
        bt = math.log1p(math.exp(-(rho["chosen"] - rho["rejected"])))
        cal = (rho["chosen"] - 1 / (2 * beta)) ** 2 + (rho["rejected"] + 1 / (2 * beta)) ** 2
        losses.append(bt + weight * cal)
    return losses


@pytest.mark.parametrize("beta,weight", [(0.1, 0.5), (2.0, 0.5), (0.5, 1.3)])
def test_cal_dpo_equals_the_released_formula(beta, weight):
    x = _inputs()
    kw = {} if weight == 0.5 else {"cal_weight": weight}
    out = unipo.compute_loss(
        "cal_dpo", policy_chosen_logps=x["chosen"][0], policy_rejected_logps=x["rejected"][0],
        chosen_mask=x["chosen"][2], rejected_mask=x["rejected"][2], ref_chosen_logps=x["chosen"][1],
        ref_rejected_logps=x["rejected"][1], beta=beta, **kw)
    expected = torch.tensor(_by_hand(x, beta, weight), dtype=torch.float64)
    assert out.losses.dtype == torch.float64
    torch.testing.assert_close(out.losses.detach(), expected, rtol=0, atol=1e-10)
    out.loss.backward()
    for side in ("chosen", "rejected"):
        grad = x[side][0].grad
        assert torch.isfinite(grad).all() and bool((grad[~x[side][2]] == 0).all())


def test_cal_dpo_gradient_matches_finite_differences():
    x = _inputs(1)
    beta = 0.3

    def loss_of(pol_chosen):
        return unipo.compute_loss(
            "cal_dpo", policy_chosen_logps=pol_chosen, policy_rejected_logps=x["rejected"][0].detach(),
            chosen_mask=x["chosen"][2], rejected_mask=x["rejected"][2], ref_chosen_logps=x["chosen"][1],
            ref_rejected_logps=x["rejected"][1], beta=beta).loss

    pol = x["chosen"][0].detach().nan_to_num(0.0).requires_grad_()
    loss_of(pol).backward()
    i, j = 0, 0  # a real token (every response has at least one)
    eps = 1e-6
    plus, minus = pol.detach().clone(), pol.detach().clone()
    plus[i, j] += eps
    minus[i, j] -= eps
    fd = (float(loss_of(plus)) - float(loss_of(minus))) / (2 * eps)
    assert abs(float(pol.grad[i, j]) - fd) < 1e-6


def test_cal_dpo_is_a_named_variant_with_its_parameter():
    assert "cal_dpo" in unipo.variants()
    cfg = unipo.resolve("cal_dpo")
    assert cfg.parts["pair_loss"] == "cal_dpo" and cfg.params["cal_weight"] == 0.5
    with pytest.raises(ConfigError, match="cal_weight"):
        unipo.resolve({"preset": "cal_dpo", "cal_weight": -1})
