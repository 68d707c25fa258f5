"""unipo.objective.kl_terms: TDPO's stop-gradient and α-DPO's margin against the released code
(junkangwu/alpha-DPO scripts/dpo_trainer.py, loss_type "alpha-dpo", update_and_sync_ref_mean_std).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from tests.objective.helpers import (
    B,
    T,
    batch,
    close,
    make_batch,
    run,
    softplus,
    tokens,
)
from unipo.objective import Objective

pytestmark = pytest.mark.unit


def test_tdpo2_stop_gradient_on_chosen_kl():
    d = make_batch()
    d["k_w"].requires_grad_(True)
    d["k_l"].requires_grad_(True)
    out = run("tdpo2", d)
    gw, gl = torch.autograd.grad(out.losses.sum(), [d["k_w"], d["k_l"]], allow_unused=True)
    assert gw is None or torch.all(gw == 0)
    assert gl is not None and gl.abs().sum() > 0
    out1 = run("tdpo1", d)
    gw1, _ = torch.autograd.grad(out1.losses.sum(), [d["k_w"], d["k_l"]])
    assert gw1.abs().sum() > 0


# -- alpha_dpo --------------------------------------------------------------------------------------------
def _alpha_dpo_by_hand(batches, beta=2.5, gamma=1.5, alpha=0.2, m=0.9):
    """The released update_and_sync_ref_mean_std + dpo_loss('alpha-dpo') with ln=True, per batch, in floats:
    statistics start at 0 and are updated BEFORE the batch's loss."""
    mu = sd = 0.0
    out = []
    for d in batches:
        margins, pol = [], []
        for i in range(B):
            mean = {k: statistics.fmean(tokens(d, k, i)) for k in
                    ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")}
            pol.append(mean["policy_chosen_logps"] - mean["policy_rejected_logps"])
            margins.append(pol[-1] - (mean["ref_chosen_logps"] - mean["ref_rejected_logps"]))
        mu = m * mu + (1 - m) * statistics.fmean(margins)
        sd = m * sd + (1 - m) * statistics.stdev(margins)  # torch.std: the unbiased estimate
        out.append([softplus(-(beta * (p - (alpha * (mi - mu) / sd + gamma / beta))))
                    for p, mi in zip(pol, margins, strict=True)])
    return out


def test_alpha_dpo_equals_the_released_code_over_three_steps():
    batches = [batch(s) for s in (3, 4, 5)]
    objective = Objective("alpha_dpo")
    expected = _alpha_dpo_by_hand(batches)
    for d, exp in zip(batches, expected, strict=True):
        close(objective(**d).losses, exp)
    state = objective.state_dict()["kl"]
    assert state["steps"] == 3.0
    # a second objective restored from that state continues the same way
    again = Objective("alpha_dpo")
    again.load_state_dict({"kl": state})
    d = batch(6)
    torch.testing.assert_close(again(**d).losses, objective(**d).losses, rtol=0, atol=0)


def test_alpha_dpo_margin_is_stop_gradient_and_frozen_in_evaluation():
    d = batch(7)
    objective = Objective("alpha_dpo")
    out = objective(**d)
    (g,) = torch.autograd.grad(out.losses.sum(), [d["policy_chosen_logps"]])
    z = out.logits.double()
    n = d["chosen_mask"].sum(-1, keepdim=True).double()
    expected = (-torch.sigmoid(-z)[:, None] * 2.5 / n).expand(B, T)  # SimPO's gradient: the margin adds none
    m = d["chosen_mask"]
    torch.testing.assert_close(g[m], expected[m], rtol=0, atol=1e-12)
    before = objective.state_dict()
    objective.train(False)
    first = objective(**batch(8)).losses
    assert objective.state_dict() == before  # evaluation does not move the statistics
    torch.testing.assert_close(objective(**batch(8)).losses, first, rtol=0, atol=0)
