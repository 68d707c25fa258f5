"""unipo.objective.presets: each preset equals its formula from docs/variants.md, written out independently here.

Inputs are random with ragged masks (and garbage in the padding); values and gradients are compared,
plus a finite-difference check of the gradient in float64. Every preset has an independent formula test:
in :data:`FORMULAS` here, or named in :data:`FORMULA_TESTS` (checked to exist).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import unipo
from tests.objective.helpers import (
    B,
    S,
    T,
    make_batch,
    quantities,
    run,
)

pytestmark = pytest.mark.unit


def ls(x):  # log sigmoid, written independently of the library
    return -torch.log1p(torch.exp(-x)) if x.abs().max() < 30 else F.logsigmoid(x)


def f_dpo(d, beta=0.1):
    rw, rl, _, _ = quantities(d)
    return -ls(beta * (rw - rl))


FORMULAS = {
    "dpo": f_dpo,
    "fdpo_reverse_kl": f_dpo,
    "reference_free": lambda d: -ls(0.1 * (S(d["a_w"], d["m_w"]) - S(d["a_l"], d["m_l"]))),
    "cdpo": lambda d: (lambda z: -(0.9) * ls(z) - 0.1 * ls(-z))(0.1 * (quantities(d)[0] - quantities(d)[1])),
    "robust": lambda d: (lambda z: (-(0.9) * ls(z) + 0.1 * ls(-z)) / 0.8)(
        0.1 * (quantities(d)[0] - quantities(d)[1])),
    "hinge": lambda d: torch.clamp(1 - 0.1 * (quantities(d)[0] - quantities(d)[1]), min=0),
    "ipo": lambda d: (lambda rw, rl, nw, nl: (rw / nw - rl / nl - 1 / (2 * 0.1)) ** 2)(*quantities(d)),
    "ln_dpo": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * (rw / nw - rl / nl)))(*quantities(d)),
    "simpo": lambda d: -ls(2.0 * (S(d["a_w"], d["m_w"]) / d["m_w"].sum(-1)
                                  - S(d["a_l"], d["m_l"]) / d["m_l"].sum(-1)) - 0.5),
    "rdpo": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * (rw - rl) - 0.05 * (nw - nl)))(*quantities(d)),
    "dpop": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * (rw - rl - 50 * torch.clamp(-rw, min=0))))(
        *quantities(d)),
    "minordpo": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * (rw - torch.clamp(rl, min=0))))(*quantities(d)),
    "rpo": lambda d: f_dpo(d) + (-S(d["a_w"], d["m_w"]) / d["m_w"].sum(-1)),
    "fdpo_forward_kl": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * (-1 / torch.exp(rw) + 1 / torch.exp(rl))))(
        *quantities(d)),
    "fdpo_js": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * (
        torch.log(2 * torch.exp(rw) / (1 + torch.exp(rw))) - torch.log(2 * torch.exp(rl) / (1 + torch.exp(rl))))))(
        *quantities(d)),
    "fdpo_alpha": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * (
        (1 - torch.exp(rw) ** -0.5) / 0.5 - (1 - torch.exp(rl) ** -0.5) / 0.5)))(*quantities(d)),
    "tdpo1": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * (rw - rl - (S(d["k_l"], d["m_l"]) - S(d["k_w"], d["m_w"])))))(
        *quantities(d)),
    "tdpo2": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * (rw - rl - 0.5 * (S(d["k_l"], d["m_l"])
                                                                          - S(d["k_w"], d["m_w"])))))(*quantities(d)),
    "sparsepo": lambda d: -ls(0.1 * (
        S(d["w_w"] * (d["a_w"] - d["r_w"]), d["m_w"]) - S(d["w_l"] * (d["a_l"] - d["r_l"]), d["m_l"])
        - (S(d["w_l"] * d["k_l"], d["m_l"]) - S(d["w_w"] * d["k_w"], d["m_w"])))),
    "tisdpo": lambda d: -ls(0.1 * (
        S(d["w_w"] * (d["a_w"] - d["r_w"]), d["m_w"]) - S(d["w_l"] * (d["a_l"] - d["r_l"]), d["m_l"]))
        - 1.0 * 0.1 * (S(d["w_w"] * d["k_w"], d["m_w"]) - S(d["w_l"] * d["k_l"], d["m_l"]))),
    "tisdpo_nokl": lambda d: -ls(0.1 * (
        S(d["w_w"] * (d["a_w"] - d["r_w"]), d["m_w"]) - S(d["w_l"] * (d["a_l"] - d["r_l"]), d["m_l"]))),
    "bmc": lambda d: -ls(0.05 * (
        S((1 + d["diff_w"] * torch.clamp(1 / torch.exp(d["a_w"].detach()), max=2.0)) * (d["a_w"] - d["r_w"]), d["m_w"])
        - S((1 + d["diff_l"] * torch.clamp(1 / torch.exp(d["a_l"].detach()), max=2.0)) * (d["a_l"] - d["r_l"]),
            d["m_l"]))),
    "nca_pair": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * rw) - 0.5 * ls(-0.1 * rw) - 0.5 * ls(-0.1 * rl))(
        *quantities(d)),
    "bco_pair": lambda d: (lambda rw, rl, nw, nl: -ls(0.1 * rw) - ls(-0.1 * rl))(*quantities(d)),
    "sppo_hard": lambda d: (lambda rw, rl, nw, nl: (rw - 5) ** 2 + (rl + 5) ** 2)(*quantities(d)),
    "apo_zero": lambda d: (lambda rw, rl, nw, nl: 1 - torch.sigmoid(0.1 * rw) + torch.sigmoid(0.1 * rl))(
        *quantities(d)),
    "apo_down": lambda d: (lambda rw, rl, nw, nl: torch.sigmoid(0.1 * rw) + 1 - torch.sigmoid(0.1 * (rw - rl)))(
        *quantities(d)),
    "exo_pair": lambda d: (lambda z: torch.sigmoid(z) * (ls(z) - math.log(1 - 1e-3))
                           + torch.sigmoid(-z) * (ls(-z) - math.log(1e-3)))(
        0.1 * (quantities(d)[0] - quantities(d)[1])),
    "discopop": lambda d: (lambda z: -ls(z) * (1 - torch.sigmoid(z / 0.05)) + torch.exp(-z) * torch.sigmoid(z / 0.05))(
        0.1 * (quantities(d)[0] - quantities(d)[1])),
}


def aot_formula(d):
    pol = torch.sort(S(d["a_w"], d["m_w"]) - S(d["a_l"], d["m_l"]))[0]
    ref = torch.sort(S(d["r_w"], d["m_w"]) - S(d["r_l"], d["m_l"]))[0]
    return -ls(0.1 * (pol - ref))


def aot_pair_formula(d):
    rw, rl, _, _ = quantities(d)
    return -ls(0.1 * (torch.sort(rw)[0] - torch.sort(rl)[0]))


FORMULAS["aot"] = aot_formula
FORMULAS["aot_pair"] = aot_pair_formula
# Cal-DPO as released (tengxiao1/Cal-DPO, scripts/dpo_trainer.py, loss_type "Cal-DPO"): the BT term has no β,
# and 0.5·(mse(ρ_w, 1/(2β)) + mse(ρ_l, −1/(2β))), whose batch mean equals the mean of the per-pair terms
FORMULAS["cal_dpo"] = lambda d: (lambda rw, rl, nw, nl: -ls(rw - rl) + 0.5 * (
    (rw - 1 / (2 * 0.1)) ** 2 + (rl + 1 / (2 * 0.1)) ** 2))(*quantities(d))
# WPO, LD-DPO, AlphaPO, CPO, ORPO (float64 to 1e-10 and TRL parity: tests/test_family_trl.py)
FORMULAS["wpo"] = lambda d: f_dpo(d) * torch.exp(S(d["a_w"].detach() - d["q_w"], d["m_w"]) / d["m_w"].sum(-1)
                                                 + S(d["a_l"].detach() - d["q_l"], d["m_l"]) / d["m_l"].sum(-1))
FORMULAS["ld_dpo"] = lambda d: (lambda lp: -ls(0.1 * (
    S((d["a_w"] - d["r_w"]) * torch.where(torch.arange(T) < lp[:, None], 1.0, 0.5), d["m_w"])
    - S((d["a_l"] - d["r_l"]) * torch.where(torch.arange(T) < lp[:, None], 1.0, 0.5), d["m_l"]))))(
    torch.minimum(d["m_w"].sum(-1), d["m_l"].sum(-1)))
FORMULAS["alphapo"] = lambda d: (lambda r: -ls(2.0 * (r(d["a_w"], d["m_w"]) - r(d["a_l"], d["m_l"])) - 0.5))(
    lambda a, m: (1 - torch.exp(-0.25 * S(a, m) / m.sum(-1))) / 0.25)
FORMULAS["cpo"] = lambda d: -ls(0.1 * (S(d["a_w"], d["m_w"]) - S(d["a_l"], d["m_l"]))) - S(d["a_w"], d["m_w"]) / d[
    "m_w"].sum(-1)
FORMULAS["orpo"] = lambda d: (lambda pw, pl: -0.1 * ls(torch.log(pw / (1 - pw)) - torch.log(pl / (1 - pl)))
                              - torch.log(pw))(torch.exp(S(d["a_w"], d["m_w"]) / d["m_w"].sum(-1)),
                                               torch.exp(S(d["a_l"], d["m_l"]) / d["m_l"].sum(-1)))

# listwise DPO on ordinary pairs (one rejected each) is DPO; its K > 1 formula: tests/test_listwise.py
FORMULAS["listwise_dpo"] = f_dpo



def _bmc_formula(beta: float, delta: float):
    """BMC's loss (Jiang et al., ICLR 2025) with Table 8's (β, δ), written out again."""
    def f(d):
        lam_w = 1 + d["diff_w"] * torch.clamp(torch.exp(-d["a_w"].detach()), max=delta)
        lam_l = 1 + d["diff_l"] * torch.clamp(torch.exp(-d["a_l"].detach()), max=delta)
        return -ls(beta * (S(lam_w * (d["a_w"] - d["r_w"]), d["m_w"]) - S(lam_l * (d["a_l"] - d["r_l"]), d["m_l"])))
    return f


# the paper's per-task settings, Table 8: QA β 0.05 δ 3.0; math 0.05 / 2.5; instruction following 0.01 / 2.0
FORMULAS["bmc_qa"] = _bmc_formula(0.05, 3.0)
FORMULAS["bmc_math"] = _bmc_formula(0.05, 2.5)
FORMULAS["bmc_if"] = _bmc_formula(0.01, 2.0)


#: the presets whose independent formula test is not in FORMULAS: the test that writes it out (checked to exist)
FORMULA_TESTS = {
    "hdpo": "test_token_weights.py::test_hdpo_equals_the_paper_formula",
    "sampo": "test_token_weights.py::test_sampo_sums_min_length_tokens_shared_by_policy_and_reference",
    "beta_dpo": "test_pair_losses.py::test_beta_dpo_without_filtering_equals_the_released_code_over_three_steps",
    "simper": "test_pair_losses.py::test_simper_equals_the_released_formula_and_ignores_beta_and_the_reference",
    "repo": "test_pair_losses.py::test_repo_equals_the_released_formula",
    "epsilon_dpo": "test_pair_losses.py::test_epsilon_dpo_equals_the_released_formula",
    "alpha_dpo": "test_kl_terms.py::test_alpha_dpo_equals_the_released_code_over_three_steps",
    "dpo_shift": "test_transforms.py::test_dpo_shift_equals_the_released_formula",
    "mpo": "../test_mixtures.py::test_mpo_is_the_weighted_sum_of_dpo_bco_pair_and_the_nll",
    "uni_dpo": "test_pair_weighting.py::test_uni_dpo_is_the_released_loss_values_and_gradients",
    "bpo_sba": "test_pair_losses.py::test_bpo_sba_preset_by_hand_one_pair",
    "ti_dpo_w": "test_presets.py::test_ti_dpo_w_preset_is_eq_12_in_float64",
    "tpo": "test_core.py::test_tpo_equals_trls_formula_in_float64",
    "tpo_l": "test_core.py::test_tpo_equals_trls_formula_in_float64",
}


def test_every_preset_has_a_formula_test():
    """Every preset is in FORMULAS or names its formula test in FORMULA_TESTS, and each named test exists (read with
    ast: test modules never import one another)."""
    import ast
    from pathlib import Path

    untested = set(unipo.variants()) - set(FORMULAS) - {"learned_prior"} - set(FORMULA_TESTS)
    assert not untested, f"presets without an independent formula test: {untested}"
    for preset, where in FORMULA_TESTS.items():
        file, test = where.split("::")
        tree = ast.parse((Path(__file__).parent / file).read_text(encoding="utf-8"))
        assert test in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"{preset}: {where} not found"


@pytest.mark.parametrize("variant", sorted(FORMULAS))
def test_value_and_gradient_match_formula(variant):
    d = make_batch()
    out = run(variant, d)
    expected = FORMULAS[variant](d)
    assert out.losses.shape == (B,)
    torch.testing.assert_close(out.losses.double(), expected, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(out.losses.sum(), [d["a_w"], d["a_l"]])
    d2 = make_batch()
    g2 = torch.autograd.grad(FORMULAS[variant](d2).sum(), [d2["a_w"], d2["a_l"]])
    for x, y, m in zip(g1, g2, (d["m_w"], d["m_l"]), strict=True):
        torch.testing.assert_close(x.double() * m, y * m, rtol=1e-4, atol=1e-6)
        assert torch.all(x[~m.bool()] == 0), "padding must get no gradient"


@pytest.mark.parametrize("variant", ["dpo", "simpo", "ipo", "fdpo_js", "fdpo_alpha", "tdpo2", "minordpo",
                                     "discopop", "tisdpo"])
def test_finite_difference_gradient(variant):
    """Central differences in float64 agree with autograd (float64 inputs are computed in float64).
    BMC is checked analytically instead (its weights are stop-gradient, so finite differences of the
    loss differ from its gradient by design)."""
    d = make_batch(seed=3)
    out = run(variant, d)
    (grad,) = torch.autograd.grad(out.losses.sum(), [d["a_w"]])
    eps = 1e-3
    for i, t in [(0, 0), (0, 6), (1, 2), (3, 4)]:
        vals = []
        for sign in (1, -1):
            dd = make_batch(seed=3)
            with torch.no_grad():
                dd["a_w"][i, t] += sign * eps
            vals.append(run(variant, dd).losses.sum().item())
        fd = (vals[0] - vals[1]) / (2 * eps)
        assert abs(fd - grad[i, t].item()) < 1e-5 * max(1.0, abs(fd)), (variant, i, t, fd, grad[i, t].item())


def test_simpo_gamma_conventions_agree():
    d = make_batch()
    a = run("simpo", d, beta=2.5, gamma=1.0).losses
    b = run("simpo", d, beta=2.5, gamma_beta_ratio=0.4).losses
    torch.testing.assert_close(a, b)


def test_composition_simpo_with_bmc_weights_and_js_link():
    d = make_batch()
    out = run({"preset": "simpo", "weights": "bmc", "link": "js", "bmc_delta": 3.0}, d)
    lam_w = 1 + d["diff_w"] * torch.clamp(torch.exp(-d["a_w"].detach()), max=3.0)
    lam_l = 1 + d["diff_l"] * torch.clamp(torch.exp(-d["a_l"].detach()), max=3.0)
    s_w = S(lam_w * d["a_w"], d["m_w"]) / d["m_w"].sum(-1)
    s_l = S(lam_l * d["a_l"], d["m_l"]) / d["m_l"].sum(-1)

    def js(s):
        return torch.log(2 * torch.exp(s) / (1 + torch.exp(s)))

    expected = -ls(2.0 * (js(s_w) - js(s_l)) - 0.5)
    torch.testing.assert_close(out.losses.double(), expected, rtol=1e-5, atol=1e-6)


def test_nll_addon_on_any_preset():
    d = make_batch()
    base = run("ipo", d).losses
    with_nll = run("ipo", d, nll_weight=0.3).losses
    nll = -S(d["a_w"], d["m_w"]) / d["m_w"].sum(-1)
    torch.testing.assert_close(with_nll.double(), base.double() + 0.3 * nll, rtol=1e-5, atol=1e-5)


def test_bmc_reference_weighting_option():
    d = make_batch()
    out = run("bmc", d, bmc_reference_weighting=True)
    lam = lambda a, diff: 1 + diff * torch.clamp(torch.exp(-a.detach()), max=2.0)  # noqa: E731
    s_w = S(lam(d["a_w"], d["diff_w"]) * d["a_w"] - lam(d["r_w"], d["diff_w"]) * d["r_w"], d["m_w"])
    s_l = S(lam(d["a_l"], d["diff_l"]) * d["a_l"] - lam(d["r_l"], d["diff_l"]) * d["r_l"], d["m_l"])
    torch.testing.assert_close(out.losses.double(), -ls(0.05 * (s_w - s_l)), rtol=1e-5, atol=1e-6)


# TI-DPO (Yang et al., ICLR 2026, arXiv 2505.19653), Eq. 11–12 with β (Algorithm 1 line 10, Table B13):
# −log σ(β(Σ w^w_t ρ_t(y_w) − Σ w^l_t ρ_t(y_l))), β = 0.1, per pair by hand in float64
def _by_hand_ti_dpo_w(a_w, r_w, m_w, w_w, a_l, r_l, m_l, w_l, beta):
    out = []
    for i in range(a_w.shape[0]):
        s_w = sum(w_w[i, t] * (a_w[i, t] - r_w[i, t]) for t in range(a_w.shape[1]) if m_w[i, t])
        s_l = sum(w_l[i, t] * (a_l[i, t] - r_l[i, t]) for t in range(a_l.shape[1]) if m_l[i, t])
        z = beta * (s_w - s_l)
        out.append(math.log1p(math.exp(-z)) if z > -30 else -z)  # −log σ(z)
    return out


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_ti_dpo_w_preset_is_eq_12_in_float64(scale):
    g = torch.Generator().manual_seed(3)
    B, T = 4, 6
    a_w, r_w, a_l, r_l = (-torch.rand(B, T, generator=g, dtype=torch.float64) * scale for _ in range(4))
    m_w = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5, [1] * 5 + [0]], dtype=torch.bool)
    m_l = torch.tensor([[1] * 2 + [0] * 4, [1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5], dtype=torch.bool)
    w_w, w_l = (torch.rand(B, T, generator=g, dtype=torch.float64) for _ in range(2))
    a_w.requires_grad_(True)
    out = unipo.compute_loss("ti_dpo_w", policy_chosen_logps=a_w, policy_rejected_logps=a_l, chosen_mask=m_w,
                             rejected_mask=m_l, ref_chosen_logps=r_w, ref_rejected_logps=r_l, chosen_weights=w_w,
                             rejected_weights=w_l)
    want = _by_hand_ti_dpo_w(a_w.detach(), r_w, m_w, w_w, a_l, r_l, m_l, w_l, beta=0.1)
    assert out.losses.dtype == torch.float64
    assert out.losses.tolist() == pytest.approx(want, rel=1e-12, abs=1e-15)
    # ∂/∂a_w[i, t] = −β·w_t·σ(−z_i) on chosen tokens, 0 on padding
    (grad,) = torch.autograd.grad(out.losses.sum(), a_w)
    for i in range(B):
        z = -math.log(math.expm1(want[i])) if want[i] > 0 else math.inf  # σ(z) = e^{−loss}
        for t in range(T):
            expect = -0.1 * w_w[i, t].item() / (1 + math.exp(z)) if m_w[i, t] else 0.0
            assert grad[i, t].item() == pytest.approx(expect, rel=1e-9, abs=1e-15)
