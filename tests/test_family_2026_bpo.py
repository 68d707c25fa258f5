"""BPO (Kim et al., NeurIPS 2025, arXiv 2505.19601): the pair loss ``bpo`` and the preset ``bpo_sba``.

Ground truth written here from the paper (camera-ready text): the model ratio R_θ = exp(−βΔ) (Algorithm 1 line 4),
the general loss h′(R)R − h(R) − h′(1/R) (Eq. 10, Algorithm 1 line 5) with the h of Table 2 — the logistic
regression h(R) = [R log R − (1 + R) log(1 + R)]/2 and SBA's h(R) = (R^{1+λ} − R)/(sλ(λ + 1)) — each with its
derivative worked out by hand below, and the authors' ``BPO_loss`` (Appendix C, Code 1) transcribed. §3.3: BPO
with the logistic h is DPO; s = 4 makes SBA's gradient at R_θ = 1 equal to DPO's.
"""

from __future__ import annotations

import math

import pytest
import torch

import unipo
from unipo.errors import ConfigError

pytestmark = pytest.mark.unit

#: presets whose formula test is here (read by tests/test_objective_formulas.py)
FORMULA_TESTED = ("bpo_sba",)

BETA = 0.1


def _h_lr(r):
    return (r * torch.log(r) - (1 + r) * torch.log1p(r)) / 2


def _h_lr_prime(r):  # d/dR: [log R + 1 − log(1 + R) − 1]/2
    return (torch.log(r) - torch.log1p(r)) / 2


def _h_sba(lam, s):
    return lambda r: (r ** (1 + lam) - r) / (s * lam * (lam + 1))


def _h_sba_prime(lam, s):  # d/dR: ((1 + λ)R^λ − 1)/(sλ(λ + 1))
    return lambda r: ((1 + lam) * r ** lam - 1) / (s * lam * (lam + 1))


def _general(r, h, hp):
    """Algorithm 1 line 5: h′(R)R − h(R) − h′(1/R)."""
    return hp(r) * r - h(r) - hp(1 / r)


def _code_1(pi_yw, pi_yl, ref_yw, ref_yl, beta, mode, lamda):
    """The paper's Code 1 (Appendix C.1), transcribed."""
    logits = pi_yw - pi_yl - ref_yw + ref_yl
    reward_margin = beta * logits
    r = torch.exp(-reward_margin)
    if mode == "DPO":
        losses = torch.log(r + 1)
    else:
        if lamda == 0:
            losses = r + torch.log(r)
        else:
            losses = r ** (lamda + 1) - ((lamda + 1) / lamda) * (r ** (-lamda))
        losses /= 4 * (1 + lamda)
    return losses


def _batch(scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 5
    a_w, a_l, r_w, r_l = (-torch.rand(B, T, generator=g, dtype=torch.float64) * scale for _ in range(4))
    m_w = torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [1] + [0] * 4, [1] * 4 + [0], [1] * 5, [1] * 3 + [0] * 2],
                       dtype=torch.bool)
    m_l = torch.tensor([[1] * 3 + [0] * 2, [1] * 5, [1] * 5, [1] + [0] * 4, [1] * 2 + [0] * 3, [1] * 5],
                       dtype=torch.bool)
    return a_w.requires_grad_(True), a_l, r_w, r_l, m_w, m_l


def _loss(config, batch):
    a_w, a_l, r_w, r_l, m_w, m_l = batch
    return unipo.compute_loss(config, policy_chosen_logps=a_w, policy_rejected_logps=a_l, chosen_mask=m_w,
                              rejected_mask=m_l, ref_chosen_logps=r_w, ref_rejected_logps=r_l).losses


def _sums(batch):
    a_w, a_l, r_w, r_l, m_w, m_l = batch
    return ((a_w * m_w).sum(-1), (a_l * m_l).sum(-1), (r_w * m_w).sum(-1), (r_l * m_l).sum(-1))


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_logistic_h_is_dpo(scale):
    """§3.3 / Appendix A.5: the general loss with the logistic h is DPO's −log σ(βΔ), values and gradients."""
    batch = _batch(scale)
    got = _loss({"pair_loss": "bpo", "bpo_lambda": None}, batch)
    dpo = _loss("dpo", batch)
    torch.testing.assert_close(got, dpo, rtol=1e-13, atol=1e-15)
    pw, pl, rw, rl = _sums(batch)
    z = BETA * (pw - rw - pl + rl)
    r = torch.exp(-z)
    torch.testing.assert_close(got, _general(r, _h_lr, _h_lr_prime), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got, _code_1(pw, pl, rw, rl, BETA, "DPO", None), rtol=1e-12, atol=1e-13)
    (g_got,) = torch.autograd.grad(got.sum(), batch[0], retain_graph=True)
    (g_dpo,) = torch.autograd.grad(dpo.sum(), batch[0])
    torch.testing.assert_close(g_got, g_dpo, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("lam", [-0.5, -0.9, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_sba_is_the_general_loss_of_its_h_and_the_released_function(lam, scale):
    batch = _batch(scale, seed=1)
    got = _loss({"pair_loss": "bpo", "bpo_lambda": lam}, batch)
    pw, pl, rw, rl = _sums(batch)
    r = torch.exp(-BETA * (pw - rw - pl + rl))
    general = _general(r, _h_sba(lam, 4.0), _h_sba_prime(lam, 4.0))
    # Table 2 drops the constant 1/(sλ(λ+1)) of the general form
    torch.testing.assert_close(got, general - 1 / (4 * lam * (lam + 1)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, _code_1(pw, pl, rw, rl, BETA, "SBA", lam), rtol=1e-12, atol=1e-13)
    # gradients: the general form through autograd of the hand-written h′ against unipo's closed form
    (g_got,) = torch.autograd.grad(got.sum(), batch[0])
    batch2 = _batch(scale, seed=1)
    pw2, pl2, rw2, rl2 = _sums(batch2)
    r2 = torch.exp(-BETA * (pw2 - rw2 - pl2 + rl2))
    (g_gen,) = torch.autograd.grad(_general(r2, _h_sba(lam, 4.0), _h_sba_prime(lam, 4.0)).sum(), batch2[0])
    torch.testing.assert_close(g_got, g_gen, rtol=1e-10, atol=1e-13)


def test_sba_lambda_zero_is_the_kliep_limit_of_code_1():
    batch = _batch(1.0, seed=2)
    got = _loss({"pair_loss": "bpo", "bpo_lambda": 0.0}, batch)
    pw, pl, rw, rl = _sums(batch)
    torch.testing.assert_close(got, _code_1(pw, pl, rw, rl, BETA, "SBA", 0), rtol=1e-12, atol=1e-13)
    # the λ → 0 limit of the λ ≠ 0 form, up to its diverging constant −1/(sλ): gradients agree
    (g0,) = torch.autograd.grad(got.sum(), batch[0])
    batch2 = _batch(1.0, seed=2)
    (g_small,) = torch.autograd.grad(_loss({"pair_loss": "bpo", "bpo_lambda": 1e-7}, batch2).sum(), batch2[0])
    torch.testing.assert_close(g0, g_small, rtol=1e-5, atol=1e-9)


def test_bpo_sba_preset_by_hand_one_pair():
    """One pair: Δ = −0.3, β 0.1 → z = −0.03, R = e^{0.03}; λ = −0.5, s = 4: R^{0.5}/(4·0.5) − R^{0.5}/(4·(−0.5))
    = √R = e^{0.015}; d/dz = −½√R; R ≥ 0.01 does not bind."""
    a_w = torch.full((1, 3), -0.1, dtype=torch.float64, requires_grad=True)
    zero, ones = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool)
    out = unipo.compute_loss("bpo_sba", policy_chosen_logps=a_w, policy_rejected_logps=zero, chosen_mask=ones,
                             rejected_mask=ones, ref_chosen_logps=zero, ref_rejected_logps=zero)
    assert out.losses.item() == pytest.approx(math.exp(0.015), rel=1e-14)
    (g,) = torch.autograd.grad(out.losses.sum(), a_w)
    assert g.tolist()[0] == pytest.approx([-0.5 * math.exp(0.015) * BETA] * 3, rel=1e-13)


@pytest.mark.parametrize("lam", [-0.5, 0.0, 1.0, 3.0])
def test_scale_4_matches_dpo_gradient_at_ratio_one(lam):
    """§3.3: at R_θ = 1 (π_θ = π_ref) every SBA instance with s = 4 has DPO's gradient −½ in z."""
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(3, 1, dtype=torch.float64)
    ones = torch.ones(3, 1, dtype=torch.bool)
    out = unipo.compute_loss({"pair_loss": "bpo", "bpo_lambda": lam}, policy_chosen_logps=zeros + z[:, None],
                             policy_rejected_logps=zeros, chosen_mask=ones, rejected_mask=ones,
                             ref_chosen_logps=zeros, ref_rejected_logps=zeros, beta=1.0)
    (g,) = torch.autograd.grad(out.losses.sum(), z)
    assert g.tolist() == pytest.approx([-0.5] * 3, rel=1e-14)


def test_ratio_clip_binds_with_zero_gradient():
    """Appendix C.2: R_θ clipped below at r_min (0.01 on HH): a pair with R_θ < r_min gets loss at r_min and no
    gradient; R_θ ≥ r_min is untouched."""
    zeros, ones = torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.bool)
    a_w = torch.tensor([[60.0], [1.0]], dtype=torch.float64, requires_grad=True)  # z = 6 (R = e^−6) and 0.1
    out = unipo.compute_loss("bpo_sba", policy_chosen_logps=a_w, policy_rejected_logps=zeros, chosen_mask=ones,
                             rejected_mask=ones, ref_chosen_logps=zeros, ref_rejected_logps=zeros)
    assert out.losses.tolist() == pytest.approx([math.sqrt(0.01), math.exp(-0.05)], rel=1e-13)
    (g,) = torch.autograd.grad(out.losses.sum(), a_w)
    assert g[:, 0].tolist() == pytest.approx([0.0, -0.5 * math.exp(-0.05) * BETA], rel=1e-13)


def test_the_papers_mixture_with_the_logistic_loss():
    """C.2: "we interpolate between the SBA loss (0.3) and the logistic regression loss (0.7)"."""
    batch = _batch(1.0, seed=3)
    mixed = _loss({"pair_loss": {"sigmoid": 0.7, "bpo": 0.3}}, batch)
    torch.testing.assert_close(mixed, 0.7 * _loss("dpo", batch) + 0.3 * _loss({"pair_loss": "bpo"}, batch),
                               rtol=1e-13, atol=1e-15)


def test_lambda_range_is_checked():
    with pytest.raises(ConfigError, match="bpo_lambda"):
        unipo.Objective({"pair_loss": "bpo", "bpo_lambda": -1.0})
    with pytest.raises(ConfigError, match="bpo_ratio_min"):
        unipo.Objective({"pair_loss": "bpo", "bpo_ratio_min": 0.0})
    with pytest.raises(ConfigError, match="above bpo_ratio_max"):
        _loss({"pair_loss": "bpo", "bpo_ratio_min": 2.0, "bpo_ratio_max": 1.0}, _batch(1.0))
