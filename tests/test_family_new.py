"""Variants adopted in 2025–2026 (issue 25): each against its formula written out here in plain float64 Python
(per pair, by hand), to 1e-10, plus the properties the papers state.

Where each formula was read (docs/variants.md, "Variants adopted in 2025–2026"):
- dpo_shift: Meaquadddd/DPO-Shift scripts/dposhift_trainer.py::dpo_loss, lines 1118–1143 (fixed λ):
  logits = (π_w − λ π_l) − (ref_w − λ ref_l), loss −log σ(β·logits);
- repo: junkangwu/RePO scripts/simpo_trainer.py::get_batch_loss_metrics, lines 702–706 (loss_type "repo"):
  relu(−(ā_w − ā_l − gamma_beta_ratio)) on average log-probs;
"""

from __future__ import annotations

import math

import pytest
import torch

import unipo
from unipo.errors import ConfigError

pytestmark = pytest.mark.unit

#: the presets whose formula tests are here (tests/test_objective_formulas.py reads this with ast)
FORMULA_TESTED = ("dpo_shift", "repo")

B, T = 5, 7


def batch(seed: int = 0, scale: float = 3.0) -> dict[str, torch.Tensor]:
    """Policy and reference log-probs with ragged masks (a 1-token response included) and NaN in the padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = {"chosen": [7, 3, 1, 5, 6], "rejected": [2, 7, 4, 1, 5]}
    d = {}
    for side in ("chosen", "rejected"):
        mask = torch.arange(T)[None] < torch.tensor(lengths[side])[:, None]
        pol = -torch.rand(B, T, generator=g, dtype=torch.float64) * scale
        ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * scale
        d[f"policy_{side}_logps"] = pol.masked_fill(~mask, float("nan")).requires_grad_(True)
        d[f"ref_{side}_logps"] = ref.masked_fill(~mask, float("nan"))
        d[f"{side}_mask"] = mask
    return d


def spread(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pairs 0 and 1 made clearly separated (their rejected responses 2 nats per token less likely), so that a
    margin of up to 1.5 leaves some pairs beyond it and some within."""
    with torch.no_grad():
        d["policy_rejected_logps"][:2] -= 2.0
    return d


def tokens(d, key: str, i: int) -> list[float]:
    """The real tokens' values of row i, as Python floats."""
    side = "chosen" if "chosen" in key else "rejected"
    return [float(d[key].detach()[i, t]) for t in range(T) if d[f"{side}_mask"][i, t]]


def softplus(x: float) -> float:  # −log σ(−x), by hand
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


def close(out: torch.Tensor, expected: list[float]) -> None:
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)


def log_ratio(d, side: str, i: int) -> float:
    return sum(tokens(d, f"policy_{side}_logps", i)) - sum(tokens(d, f"ref_{side}_logps", i))


def mean_logp(d, side: str, i: int) -> float:
    values = tokens(d, f"policy_{side}_logps", i)
    return sum(values) / len(values)


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


# -- repo ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma,beta", [(0.6, 2.5), (0.4, 10.0), (0.0, 1.0), (1.5, 0.3)])
def test_repo_equals_the_released_formula(gamma, beta):
    """relu(−(ā_w − ā_l − γ)) on mean token log-probs, whatever β (β only scales the logged rewards)."""
    d = spread(batch(scale=1.0))
    out = unipo.compute_loss("repo", gamma_beta_ratio=gamma, beta=beta, **d)
    expected = [max(0.0, -(mean_logp(d, "chosen", i) - mean_logp(d, "rejected", i) - gamma)) for i in range(B)]
    assert gamma == 0 or 0 < sum(e > 0 for e in expected) < B, "the batch must have pairs on both sides of the margin"
    close(out.losses, expected)
    torch.testing.assert_close(out.metrics["rewards/chosen"],
                               torch.tensor(sum(beta * mean_logp(d, "chosen", i) for i in range(B)) / B,
                                            dtype=torch.float64), rtol=0, atol=1e-10)


def test_repo_defaults():
    d = batch(3, scale=1.0)
    out = unipo.compute_loss("repo", **d)
    expected = [max(0.0, 0.6 - (mean_logp(d, "chosen", i) - mean_logp(d, "rejected", i))) for i in range(B)]
    close(out.losses, expected)
    assert not unipo.resolve("repo").needs_reference


def test_repo_gradient_filters_pairs_beyond_the_margin():
    """A pair with ā_w − ā_l > γ gets no gradient; every other pair the same gradient ∓1/|y| per token (no
    logistic weighting)."""
    d = spread(batch(4, scale=1.0))
    gamma = 0.3
    out = unipo.compute_loss("repo", gamma_beta_ratio=gamma, **d)
    gw, gl = torch.autograd.grad(out.losses.sum(), [d["policy_chosen_logps"], d["policy_rejected_logps"]])
    active = 0
    for i in range(B):
        on = mean_logp(d, "chosen", i) - mean_logp(d, "rejected", i) < gamma
        active += on
        n_w, n_l = len(tokens(d, "policy_chosen_logps", i)), len(tokens(d, "policy_rejected_logps", i))
        for t in range(T):
            want_w = (-1.0 / n_w if on else 0.0) if d["chosen_mask"][i, t] else 0.0
            want_l = (1.0 / n_l if on else 0.0) if d["rejected_mask"][i, t] else 0.0
            assert float(gw[i, t]) == pytest.approx(want_w, abs=1e-12)
            assert float(gl[i, t]) == pytest.approx(want_l, abs=1e-12)
    assert 0 < active < B


def test_repo_is_simpos_limit_as_beta_grows():
    """RePO is SimPO's β → ∞ limit: SimPO's loss divided by β, with γ = ratio·β, tends to RePO's loss (the
    paper's characterisation); the gap is at most log 2 / β."""
    d = batch(5, scale=1.0)
    repo = unipo.compute_loss("repo", gamma_beta_ratio=0.5, **d).losses.detach()
    for beta in (10.0, 100.0, 1000.0):
        simpo = unipo.compute_loss("simpo", beta=beta, gamma_beta_ratio=0.5, **d).losses.detach() / beta
        assert float((simpo - repo).abs().max()) <= math.log(2) / beta + 1e-12
    assert float((simpo - repo).abs().max()) < 1e-3
