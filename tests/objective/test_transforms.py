"""unipo.objective.transforms: DPO-Shift's shifted rejected side against the released formula, its gradient
and its parameter.
"""

from __future__ import annotations

import math

import pytest
import torch

import unipo
from tests.objective.helpers import (
    B,
    T,
    batch,
    close,
    log_ratio,
    softplus,
    tokens,
)
from unipo.errors import ConfigError

pytestmark = pytest.mark.unit


# -- dpo_shift ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam,beta", [(0.95, 0.1), (0.55, 0.01), (0.75, 0.5), (1.2, 0.1)])
def test_dpo_shift_equals_the_released_formula(lam, beta):
    """The released dpo_loss (strategy 'fixed'): logits = (π_w − λπ_l) − (ref_w − λ ref_l), −log σ(β·logits)."""
    d = batch()
    out = unipo.compute_loss("dpo_shift", shift_lambda=lam, beta=beta, **d)
    expected = []
    for i in range(B):
        pi = sum(tokens(d, "policy_chosen_logps", i)) - lam * sum(tokens(d, "policy_rejected_logps", i))
        ref = sum(tokens(d, "ref_chosen_logps", i)) - lam * sum(tokens(d, "ref_rejected_logps", i))
        expected.append(softplus(-beta * (pi - ref)))
    close(out.losses, expected)


def test_dpo_shift_defaults_and_lambda_one_is_dpo():
    d = batch(1)
    out = unipo.compute_loss("dpo_shift", **d)
    expected = [softplus(-0.1 * (log_ratio(d, "chosen", i) - 0.95 * log_ratio(d, "rejected", i))) for i in range(B)]
    close(out.losses, expected)
    torch.testing.assert_close(unipo.compute_loss("dpo_shift", shift_lambda=1.0, **d).losses,
                               unipo.compute_loss("dpo", **d).losses, rtol=0, atol=1e-12)


def test_dpo_shift_gradient_matches_its_closed_form():
    """d loss / d a_t = −β·σ(−z)·(1 on the chosen tokens, −λ on the rejected ones), z = β(ρ_w − λρ_l): the
    rejected side's push is λ times DPO's."""
    d = batch(2)
    lam, beta = 0.8, 0.2
    out = unipo.compute_loss("dpo_shift", shift_lambda=lam, beta=beta, **d)
    gw, gl = torch.autograd.grad(out.losses.sum(), [d["policy_chosen_logps"], d["policy_rejected_logps"]])
    for i in range(B):
        z = beta * (log_ratio(d, "chosen", i) - lam * log_ratio(d, "rejected", i))
        s = 1.0 / (1.0 + math.exp(z))  # σ(−z)
        for t in range(T):
            want_w = -beta * s if d["chosen_mask"][i, t] else 0.0
            want_l = beta * lam * s if d["rejected_mask"][i, t] else 0.0
            assert float(gw[i, t]) == pytest.approx(want_w, abs=1e-12)
            assert float(gl[i, t]) == pytest.approx(want_l, abs=1e-12)


def test_dpo_shift_lambda_is_validated():
    with pytest.raises(ConfigError, match="shift_lambda"):
        unipo.resolve({"preset": "dpo_shift", "shift_lambda": -0.1})
    with pytest.raises(ConfigError, match="belongs to rejected_transform=shift"):
        unipo.resolve({"preset": "dpo", "shift_lambda": 0.9})
