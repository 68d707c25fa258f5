"""Variants adopted in 2025–2026 (issue 25): each against its formula written out here in plain float64 Python
(per pair, by hand), to 1e-10, plus the properties the papers state.

Where each formula was read (docs/variants.md, "Variants adopted in 2025–2026"):
- dpo_shift: Meaquadddd/DPO-Shift scripts/dposhift_trainer.py::dpo_loss, lines 1118–1143 (fixed λ):
  logits = (π_w − λ π_l) − (ref_w − λ ref_l), loss −log σ(β·logits);
- repo: junkangwu/RePO scripts/simpo_trainer.py::get_batch_loss_metrics, lines 702–706 (loss_type "repo"):
  relu(−(ā_w − ā_l − gamma_beta_ratio)) on average log-probs;
- epsilon_dpo: oddqueue/e-dpo trainer.py, lines 212–234 (the perturbed policies log softmax((1 ± ε)z ∓ ε z_ref)
  and the steps), 286 (updated_beta = β/(1 + ε·steps)), 377 (β ← β/(1 + ε·mean steps) after a training step).
"""

from __future__ import annotations

import math

import pytest
import torch

import unipo
from unipo.errors import ConfigError, UnipoError
from unipo.objective import Objective

pytestmark = pytest.mark.unit

#: the presets whose formula tests are here (tests/test_objective_formulas.py reads this with ast)
FORMULA_TESTED = ("dpo_shift", "repo", "epsilon_dpo")

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


# -- epsilon_dpo ----------------------------------------------------------------------------------------------
V = 11


def logits_batch(seed: int, eps: float) -> tuple[dict[str, torch.Tensor], dict[str, list[list[float]]]]:
    """Random policy and reference LOGITS over a vocabulary of V at every position, labels, ragged masks: the
    objective's per-token inputs computed from them, and (for the by-hand formula) each row's summed log-probs
    under π, π_ref, π^{+ε} and π^{−ε} as plain floats."""
    g = torch.Generator().manual_seed(seed)
    lengths = {"chosen": [7, 3, 1, 5, 6], "rejected": [2, 7, 4, 1, 5]}
    d, sums = {}, {}
    for side in ("chosen", "rejected"):
        mask = torch.arange(T)[None] < torch.tensor(lengths[side])[:, None]
        z = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 2
        zr = z + torch.randn(B, T, V, generator=g, dtype=torch.float64)  # a reference near the policy
        y = torch.randint(0, V, (B, T), generator=g)

        def at(logits, y=y):
            return torch.log_softmax(logits, -1).gather(-1, y[..., None]).squeeze(-1)

        parts = {"pol": at(z), "ref": at(zr), "up": at((1 + eps) * z - eps * zr), "down": at((1 - eps) * z + eps * zr)}
        d[f"policy_{side}_logps"] = parts["pol"].clone().requires_grad_(True)
        d[f"ref_{side}_logps"] = parts["ref"]
        d[f"{side}_eps_plus_logps"] = parts["up"]
        d[f"{side}_eps_minus_logps"] = parts["down"]
        d[f"{side}_mask"] = mask
        for k, v in parts.items():
            sums[f"{side}_{k}"] = [sum(float(v[i, t]) for t in range(T) if mask[i, t]) for i in range(B)]
    return d, sums


def released_steps(sums, i: int) -> int:
    """The released code's decision for pair i (trainer.py lines 228–233), in plain floats."""
    now = sums["chosen_pol"][i] - sums["rejected_pol"][i]
    up = sums["chosen_up"][i] - sums["rejected_up"][i]
    down = sums["chosen_down"][i] - sums["rejected_down"][i]
    return int(up > now > down) - int(down > now > up)


@pytest.mark.parametrize("eps,beta,seed", [(0.01, 0.01, 0), (0.3, 0.1, 1), (0.5, 0.5, 2)])
def test_epsilon_dpo_equals_the_released_formula(eps, beta, seed):
    d, sums = logits_batch(seed, eps)
    out = unipo.compute_loss("epsilon_dpo", edpo_epsilon=eps, beta=beta, **d)
    steps = [released_steps(sums, i) for i in range(B)]
    expected = []
    for i, s in enumerate(steps):
        rho = (sums["chosen_pol"][i] - sums["chosen_ref"][i]) - (sums["rejected_pol"][i] - sums["rejected_ref"][i])
        expected.append(softplus(-beta / (1 + eps * s) * rho))
    close(out.losses, expected)
    assert out.metrics["epsilon_dpo/relaxed"].item() == pytest.approx(sum(s > 0 for s in steps) / B)
    assert out.metrics["epsilon_dpo/tightened"].item() == pytest.approx(sum(s < 0 for s in steps) / B)


def test_epsilon_dpo_batches_cover_every_decision():
    """The formula test above sees relaxed, tightened and kept pairs (else it would not test the decision)."""
    seen = {released_steps(logits_batch(seed, eps)[1], i) for eps, seed in ((0.01, 0), (0.3, 1), (0.5, 2))
            for i in range(B)}
    assert seen == {-1, 0, 1}


def test_epsilon_dpo_moves_beta_after_each_training_call_only():
    """β_{t+1} = β_t/(1 + ε·mean_i s_i) after a training call (the released code's line 377, per call here);
    evaluation uses β_t without moving it; state_dict carries β_t."""
    eps, beta = 0.3, 0.1
    d, sums = logits_batch(1, eps)
    objective = Objective("epsilon_dpo", edpo_epsilon=eps, beta=beta)
    steps = [released_steps(sums, i) for i in range(B)]
    mean = sum(steps) / B
    assert mean != 0
    objective(**d)
    beta_1 = beta / (1 + eps * mean)
    assert objective.state_dict()["pair_loss"]["beta"] == pytest.approx(beta_1, rel=1e-12)
    objective.train(False)
    out = objective(**d)
    rho = [(sums["chosen_pol"][i] - sums["chosen_ref"][i]) - (sums["rejected_pol"][i] - sums["rejected_ref"][i])
           for i in range(B)]
    close(out.losses, [softplus(-beta_1 / (1 + eps * s) * r) for s, r in zip(steps, rho, strict=True)])
    assert objective.state_dict()["pair_loss"]["beta"] == pytest.approx(beta_1, rel=1e-12)  # frozen in eval
    fresh = Objective("epsilon_dpo", edpo_epsilon=eps, beta=beta)
    fresh.load_state_dict(objective.state_dict())
    fresh.train(False)
    torch.testing.assert_close(fresh(**d).losses, out.losses, rtol=0, atol=0)


def test_epsilon_dpo_gradient_is_dpos_with_the_pairs_beta():
    """The decision carries no gradient: d loss/d a_t = −β_i σ(−β_i Δ) on chosen tokens."""
    eps, beta = 0.3, 0.1
    d, sums = logits_batch(1, eps)
    out = unipo.compute_loss("epsilon_dpo", edpo_epsilon=eps, beta=beta, **d)
    (gw,) = torch.autograd.grad(out.losses.sum(), [d["policy_chosen_logps"]])
    for i in range(B):
        b = beta / (1 + eps * released_steps(sums, i))
        rho = (sums["chosen_pol"][i] - sums["chosen_ref"][i]) - (sums["rejected_pol"][i] - sums["rejected_ref"][i])
        want = -b / (1 + math.exp(b * rho))
        for t in range(T):
            assert float(gw[i, t]) == pytest.approx(want if d["chosen_mask"][i, t] else 0.0, abs=1e-12)


def test_epsilon_dpo_needs_its_inputs_and_a_live_reference():
    d, _ = logits_batch(0, 0.01)
    del d["chosen_eps_plus_logps"]
    with pytest.raises(UnipoError, match="chosen_eps_plus_logps"):
        unipo.compute_loss("epsilon_dpo", **d)
    req = unipo.resolve("epsilon_dpo").requirements
    assert req.live_reference and req.perturbation == 0.01
    assert unipo.resolve({"preset": "epsilon_dpo", "edpo_epsilon": 0.2}).requirements.perturbation == 0.2
    assert unipo.resolve("dpo").requirements.perturbation is None
    with pytest.raises(ConfigError, match="edpo_epsilon"):
        unipo.resolve({"preset": "epsilon_dpo", "edpo_epsilon": 1.0})
    from unipo.training.reference import check_reference_mode

    with pytest.raises(ConfigError, match="needs the reference model at every step"):
        check_reference_mode(Objective("epsilon_dpo"), "precomputed")


def test_perturbed_logps_match_full_logits():
    """The chunked no-gradient head gives log softmax((1 ± ε)z ∓ ε z_ref)[y] (z from hidden states and a head)."""
    from unipo.models.logprobs import perturbed_logps

    g = torch.Generator().manual_seed(7)
    n, h, v, eps = 9, 6, 13, 0.2
    head, ref_head = torch.nn.Linear(h, v), torch.nn.Linear(h, v, bias=False)
    with torch.no_grad():
        for p in (*head.parameters(), *ref_head.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    hid, ref_hid = torch.randn(n, h, generator=g), torch.randn(n, h, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    up, down = perturbed_logps(hid, head, labels, ref_hid, ref_head, eps, chunk_size=4)
    z, zr = head(hid).double(), ref_head(ref_hid).double()
    want_up = torch.log_softmax((1 + eps) * z - eps * zr, -1).gather(-1, labels[:, None]).squeeze(-1)
    want_down = torch.log_softmax((1 - eps) * z + eps * zr, -1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(up.double(), want_up, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(down.double(), want_down, rtol=1e-5, atol=1e-5)
    assert not up.requires_grad
