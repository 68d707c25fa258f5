"""unipo.objective.core: what every objective guarantees: no gradient into the reference, TRL's metric names,
finite values at extreme log-ratios, padding never read, clear errors for missing inputs and empty responses,
and no transformers import.
"""

from __future__ import annotations

import pytest
import torch

import unipo
from tests.objective.helpers import (
    S,
    make_batch,
    quantities,
    run,
)
from unipo.errors import UnipoError

pytestmark = pytest.mark.unit


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
              chosen_score=torch.tensor([9.0, 1.0]), rejected_score=torch.tensor([1.0, 9.0]),
              policy_gold_logps=a_w, gold_mask=mask)
    out = unipo.compute_loss(variant, **kw)
    assert torch.isfinite(out.losses).all(), out.losses
    ga, gb = torch.autograd.grad(out.losses.sum(), [a_w, a_l])
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()


def test_zero_token_response_is_a_clear_error():
    d = make_batch()
    d["m_l"][2] = 0
    with pytest.raises(UnipoError, match="zero tokens at batch index \\[2\\]"):
        run("dpo", d)


def test_missing_input_is_named():
    d = make_batch()
    with pytest.raises(UnipoError, match="weights=bmc needs the input 'chosen_diff_mask'"):
        unipo.compute_loss("bmc", policy_chosen_logps=d["a_w"], policy_rejected_logps=d["a_l"],
                           chosen_mask=d["m_w"], rejected_mask=d["m_l"], ref_chosen_logps=d["r_w"],
                           ref_rejected_logps=d["r_l"])


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


# ------------------------------------------------------------------ TPO: the gold response's NLL (gold_nll_weight)


def _gold(seed: int = 5, dtype=torch.float64):
    """A gold response per pair: ragged lengths (1 token included), garbage in the padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([4, 1, 6, 2, 3])
    mask = (torch.arange(6)[None] < lengths[:, None]).to(dtype)
    logps = torch.where(mask.bool(), -torch.rand(5, 6, generator=g, dtype=dtype) * 4,
                        torch.full((5, 6), -1e9, dtype=dtype))
    return logps.requires_grad_(True), mask


def _tpo_by_hand(d, gold, gold_mask, loss_type: str, beta: float = 0.01, alpha: float = 1.0, gamma: float = 0.5):
    """TRL's TPOTrainer._compute_loss written out again (trl/experimental/tpo/tpo_trainer.py, lines 637–712), with
    no label smoothing: a(y) the summed response log-prob, ā(y) its mean for tpo-l; the NLL one mean over every gold
    token of the batch (F.cross_entropy over the gold completion tokens)."""
    def total(x, m):
        return torch.where(m.bool(), x, torch.zeros_like(x)).sum(-1)

    if loss_type == "tpo-l":
        delta = total(d["a_w"], d["m_w"]) / d["m_w"].sum(-1) - total(d["a_l"], d["m_l"]) / d["m_l"].sum(-1)
        pair = torch.log1p(torch.exp(-beta * (delta - gamma / beta)))
    else:
        pair = torch.log1p(torch.exp(-beta * (total(d["a_w"], d["m_w"]) - total(d["a_l"], d["m_l"]))))
    nll = -total(gold, gold_mask).sum() / gold_mask.sum()
    return pair.mean() + alpha * nll


@pytest.mark.parametrize(("preset", "loss_type"), [("tpo", "sigmoid"), ("tpo_l", "tpo-l")])
def test_tpo_equals_trls_formula_in_float64(preset, loss_type):
    """tpo / tpo_l = TRL's TPO loss (pair term on the policy alone + tpo_alpha · NLL(y_gold)), values and gradients
    into the chosen, rejected and gold log-probs, in float64; the per-pair losses spread the batch NLL evenly."""
    d, (gold, gm) = make_batch(), _gold()
    out = run(preset, d, policy_gold_logps=gold, gold_mask=gm)
    d2, (gold2, gm2) = make_batch(), _gold()
    expected = _tpo_by_hand(d2, gold2, gm2, loss_type)
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    nll = float(-S(gold2, gm2).sum().detach() / gm2.sum())
    assert float(out.metrics["gold_nll"]) == pytest.approx(nll, rel=1e-12)
    for x, y in zip(torch.autograd.grad(out.loss, [d["a_w"], d["a_l"], gold]),
                    torch.autograd.grad(expected, [d2["a_w"], d2["a_l"], gold2]), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    g_gold = torch.autograd.grad(run(preset, make_batch(), policy_gold_logps=gold, gold_mask=gm).loss, gold)[0]
    assert torch.all(g_gold[~gm.bool()] == 0) and torch.allclose(g_gold[gm.bool()], -1 / gm.sum())


def test_gold_nll_weight_scales_and_per_pair_reduction():
    """gold_nll_weight λ adds λ·NLL(y_gold); nll_token_mean false makes it each pair's token mean; weight 0 never
    reads the gold response (none needed), and a weight > 0 without one is refused naming the input."""
    d, (gold, gm) = make_batch(), _gold()
    base = run("reference_free", d).losses.detach()
    per_pair = run("reference_free", d, gold_nll_weight=0.3, policy_gold_logps=gold, gold_mask=gm).losses.detach()
    torch.testing.assert_close(per_pair - base, 0.3 * (-S(gold, gm) / gm.sum(-1)).detach(), rtol=1e-12, atol=1e-12)
    assert not unipo.Objective("tpo", gold_nll_weight=0.0).requirements.gold
    assert unipo.Objective("tpo").requirements.gold and not unipo.Objective("cpo").requirements.gold
    with pytest.raises(UnipoError, match="gold_nll_weight > 0 needs .*gold_column"):
        run("tpo", d)
    with pytest.raises(UnipoError, match="gold response has zero tokens at batch index \\[1\\]"):
        run("tpo", d, policy_gold_logps=gold, gold_mask=gm * (torch.arange(5) != 1)[:, None])
