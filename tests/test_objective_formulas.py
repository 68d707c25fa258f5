"""Each preset equals its formula from docs/variants.md, written out independently here.

Inputs are random with ragged masks (and garbage in the padding); values and gradients are compared,
plus a finite-difference check of the gradient in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import unipo
from unipo.errors import ConfigError, UnipoError

pytestmark = pytest.mark.unit

B, T = 5, 7


def ls(x):  # log sigmoid, written independently of the library
    return -torch.log1p(torch.exp(-x)) if x.abs().max() < 30 else F.logsigmoid(x)


def make_batch(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lengths_w = torch.tensor([7, 3, 1, 5, 6])
    lengths_l = torch.tensor([2, 7, 4, 1, 5])
    ar = torch.arange(T)
    mw = (ar[None] < lengths_w[:, None]).to(dtype)
    ml = (ar[None] < lengths_l[:, None]).to(dtype)
    d = {
        "a_w": -torch.rand(B, T, generator=g, dtype=dtype) * 3,
        "a_l": -torch.rand(B, T, generator=g, dtype=dtype) * 3,
        "r_w": -torch.rand(B, T, generator=g, dtype=dtype) * 3,
        "r_l": -torch.rand(B, T, generator=g, dtype=dtype) * 3,
        "w_w": torch.rand(B, T, generator=g, dtype=dtype) + 0.5,
        "w_l": torch.rand(B, T, generator=g, dtype=dtype) + 0.5,
        "k_w": torch.rand(B, T, generator=g, dtype=dtype),
        "k_l": torch.rand(B, T, generator=g, dtype=dtype),
        "diff_w": (torch.rand(B, T, generator=g) > 0.5).to(dtype),
        "diff_l": (torch.rand(B, T, generator=g) > 0.5).to(dtype),
        "m_w": mw, "m_l": ml,
    }
    d["q_w"], d["q_l"] = -d["k_w"], -d["k_l"]  # WPO's log Σ_v π(v)²
    # garbage in the padding must not leak into the loss
    for k in ("a_w", "a_l", "r_w", "r_l"):
        m = d["m_w"] if k.endswith("w") else d["m_l"]
        d[k] = torch.where(m.bool(), d[k], torch.full_like(d[k], -1e9))
    d["a_w"].requires_grad_(True)
    d["a_l"].requires_grad_(True)
    return d


def run(variant, d, **params):
    """Every optional input is given; the parts that do not read an input ignore it."""
    return unipo.compute_loss(
        variant, policy_chosen_logps=d["a_w"], policy_rejected_logps=d["a_l"],
        chosen_mask=d["m_w"], rejected_mask=d["m_l"], ref_chosen_logps=d["r_w"], ref_rejected_logps=d["r_l"],
        chosen_weights=d["w_w"], rejected_weights=d["w_l"], chosen_kl=d["k_w"], rejected_kl=d["k_l"],
        chosen_diff_mask=d["diff_w"], rejected_diff_mask=d["diff_l"], chosen_log_sum_sq_probs=d["q_w"],
        rejected_log_sum_sq_probs=d["q_l"], **params,
    )


def S(x, m):  # masked sum
    return (torch.where(m.bool(), x, torch.zeros_like(x))).sum(-1)


def quantities(d):
    rho_w, rho_l = S(d["a_w"] - d["r_w"], d["m_w"]), S(d["a_l"] - d["r_l"], d["m_l"])
    n_w, n_l = d["m_w"].sum(-1), d["m_l"].sum(-1)
    return rho_w, rho_l, n_w, n_l


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

def _formula_tested_elsewhere() -> set[str]:
    """Presets whose formula tests live in another test module, which lists them in a module-level
    ``FORMULA_TESTED = (...)`` (read with ast: test modules never import one another)."""
    import ast
    from pathlib import Path

    names: set[str] = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FORMULA_TESTED" for t in node.targets):
                names |= set(ast.literal_eval(node.value))
    return names


def test_every_preset_has_a_formula_test():
    untested = set(unipo.variants()) - set(FORMULAS) - {"learned_prior"} - _formula_tested_elsewhere()
    assert not untested, f"presets without an independent formula test: {untested}"


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


def test_bmc_weights_are_stop_gradient():
    """The gradient of BMC wrt a_t is λ_t times DPO's token gradient: no term from d λ_t / d a_t."""
    d = make_batch(seed=5)
    out = run("bmc", d)
    (g,) = torch.autograd.grad(out.losses.sum(), [d["a_w"]])
    lam = 1 + d["diff_w"] * torch.clamp(torch.exp(-d["a_w"].detach()), max=2.0)
    z = out.logits.double()
    expected = -torch.sigmoid(-z)[:, None] * 0.05 * lam * d["m_w"]
    torch.testing.assert_close(g.double(), expected, rtol=1e-4, atol=1e-7)


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


def test_the_reference_never_gets_gradient_from_the_objective():
    """The objective treats the reference log-probs as constants: even a reference tensor that carries
    gradient (a model layer that forgot ``no_grad``) receives none, while the policy gets gradient on every
    response token. (On a model: test_token_level_training.py::test_no_gradient_into_the_reference.)"""
    d = make_batch()
    for k in ("r_w", "r_l"):
        d[k].requires_grad_(True)
    out = run("dpo", d)
    grads = torch.autograd.grad(out.losses.sum(), [d["a_w"], d["a_l"], d["r_w"], d["r_l"]], allow_unused=True)
    ga_w, ga_l, gr_w, gr_l = grads
    assert gr_w is None and gr_l is None
    for ga, m in ((ga_w, d["m_w"]), (ga_l, d["m_l"])):
        assert ga[m.bool()].abs().min() > 0
        assert torch.all(ga[~m.bool()] == 0)

    for variant in ("simpo", "reference_free"):  # a constant prior: the reference is never read
        d = make_batch()
        d["r_w"].requires_grad_(True)
        d["r_l"].requires_grad_(True)
        out = run(variant, d)
        assert torch.autograd.grad(out.losses.sum(), [d["r_w"], d["r_l"]], allow_unused=True) == (None, None)

    # BMC with reference weighting reads the reference as a weight too: still no gradient into it
    d = make_batch(seed=5)
    d["r_w"].requires_grad_(True)
    out = run("bmc", d, bmc_reference_weighting=True)
    assert torch.autograd.grad(out.losses.sum(), [d["r_w"]], allow_unused=True) == (None,)


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


def test_metrics_are_trl_style():
    d = make_batch()
    out = run("dpo", d)
    rw, rl, _, _ = quantities(d)
    m = out.metrics
    torch.testing.assert_close(m["rewards/chosen"].double(), (0.1 * rw).mean().detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m["rewards/margins"].double(), (0.1 * (rw - rl)).mean().detach(), rtol=1e-5,
                               atol=1e-6)
    assert m["rewards/accuracies"].item() == pytest.approx((rw > rl).double().mean().item())
    torch.testing.assert_close(m["logps/chosen"].double(), S(d["a_w"], d["m_w"]).mean().detach(), rtol=1e-5,
                               atol=1e-5)


# ---- numerical robustness ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", [v for v in unipo.variants()])
@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_extreme_log_ratios_are_finite(variant, dtype, magnitude):
    """Sequence log-ratios of ±10,000 and a one-token response: finite losses and gradients."""
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=dtype)
    a_w = torch.full((2, 3), magnitude / 3, dtype=dtype, requires_grad=True)
    a_l = torch.full((2, 3), -magnitude / 3, dtype=dtype, requires_grad=True)
    zeros = torch.zeros(2, 3, dtype=dtype)
    kw = dict(policy_chosen_logps=a_w, policy_rejected_logps=a_l, chosen_mask=mask, rejected_mask=mask,
              ref_chosen_logps=zeros, ref_rejected_logps=zeros, chosen_weights=torch.ones_like(zeros),
              rejected_weights=torch.ones_like(zeros), chosen_kl=torch.ones_like(zeros),
              rejected_kl=torch.ones_like(zeros), chosen_diff_mask=torch.ones_like(zeros),
              rejected_diff_mask=torch.ones_like(zeros), chosen_prior_offsets=zeros, rejected_prior_offsets=zeros,
              chosen_log_sum_sq_probs=zeros, rejected_log_sum_sq_probs=zeros,
              chosen_eps_plus_logps=a_w.detach() * 1.01, rejected_eps_plus_logps=a_l.detach() * 1.01,
              chosen_eps_minus_logps=a_w.detach() * 0.99, rejected_eps_minus_logps=a_l.detach() * 0.99,
              chosen_score=torch.tensor([9.0, 1.0]), rejected_score=torch.tensor([1.0, 9.0]))
    out = unipo.compute_loss(variant, **kw)
    assert torch.isfinite(out.losses).all(), out.losses
    ga, gb = torch.autograd.grad(out.losses.sum(), [a_w, a_l])
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()


def test_zero_token_response_is_a_clear_error():
    d = make_batch()
    d["m_l"][2] = 0
    with pytest.raises(UnipoError, match="zero tokens at batch index \\[2\\]"):
        run("dpo", d)


# ---- configuration ----

def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'simpo'"):
        unipo.resolve("simp")


def test_unknown_key_lists_allowed():
    with pytest.raises(ConfigError, match="unknown key 'betta'.*did you mean 'beta'"):
        unipo.resolve({"preset": "dpo", "betta": 0.1})


def test_param_of_unselected_part_is_rejected():
    with pytest.raises(ConfigError, match="'bmc_delta' belongs to weights=bmc.*weights=none"):
        unipo.resolve("dpo", {"bmc_delta": 2.0})


def test_illegal_combination_rejected():
    with pytest.raises(ConfigError, match="nca_pair scores each side separately"):
        unipo.resolve({"preset": "nca_pair", "gamma": 0.5})
    with pytest.raises(ConfigError, match="either 'gamma'"):
        unipo.resolve("dpo", {"gamma": 0.5, "gamma_beta_ratio": 0.2})
    with pytest.raises(ConfigError, match="f_alpha"):
        unipo.resolve("fdpo_alpha", {"f_alpha": 1.5})
    with pytest.raises(ConfigError, match="unknown link 'jss'.*allowed link values"):
        unipo.resolve({"preset": "dpo", "link": "jss"})


def test_missing_input_is_named():
    d = make_batch()
    with pytest.raises(UnipoError, match="weights=bmc needs the input 'chosen_diff_mask'"):
        unipo.compute_loss("bmc", policy_chosen_logps=d["a_w"], policy_rejected_logps=d["a_l"],
                           chosen_mask=d["m_w"], rejected_mask=d["m_l"], ref_chosen_logps=d["r_w"],
                           ref_rejected_logps=d["r_l"])


def test_hyphenated_names_and_yaml_mapping():
    import yaml

    cfg = yaml.safe_load("preset: fdpo-js\nbeta: 0.3\naggregation: mean\n")
    c = unipo.resolve(cfg)
    assert c.parts["link"] == "js" and c.parts["aggregation"] == "mean" and c.params["beta"] == 0.3


def test_objective_module_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, unipo; unipo.variants(); unipo.resolve('tdpo2'); print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("variant", ["tdpo1", "tdpo2", "sparsepo", "tisdpo", "tisdpo_nokl", "bmc", "dpo", "simpo"])
@pytest.mark.parametrize("junk", [float("nan"), float("-inf")])
def test_junk_in_padding_never_reaches_loss_or_gradient(variant, junk):
    d = make_batch()
    clean = run(variant, d).losses.detach()
    for k in ("w_w", "w_l", "k_w", "k_l", "r_w", "r_l"):
        m = d["m_w"] if k.endswith("w") else d["m_l"]
        d[k] = torch.where(m.bool(), d[k], torch.full_like(d[k], junk))
    with torch.no_grad():
        d["a_w"].copy_(torch.where(d["m_w"].bool(), d["a_w"], torch.full_like(d["a_w"], junk)))
    out = run(variant, d)
    torch.testing.assert_close(out.losses.detach(), clean)
    g = torch.autograd.grad(out.losses.sum(), [d["a_w"], d["a_l"]])
    assert all(torch.isfinite(x).all() for x in g)


# -- cal_dpo: the released formula by hand in plain floats (1e-10), finite differences, its parameter --------
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
