"""unipo.objective.pair_losses: each pair loss against its formula written out here in plain float64 Python
(per pair, by hand), to 1e-10, its gradient, its parameters and its state.

Sources read for each formula (docs/variants.md):
- cal_dpo: the released formula (Xiao et al. 2024);
- beta_dpo: junkangwu/beta-DPO trainers.py (preference_loss with mode_loss "beta_DPO", update_and_sync_tensor_mean);
- simper: tengxiao1/SimPER scripts/simper_trainer.py (loss_type "SimPER");
- repo and epsilon_dpo: the released code named in each test (docs/variants.md); ε-DPO's producer, the perturbed
  log-probs of unipo.models.logprobs, is tested here with its loss;
- bpo: the paper's general loss and its Code 1 (the BPO section at the end).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

import unipo
from tests.objective.helpers import (
    B,
    T,
    batch,
    close,
    dpo_margin,
    mean_logp,
    softplus,
    spread,
    tokens,
)
from unipo.errors import ConfigError, UnipoError
from unipo.objective import Objective

pytestmark = pytest.mark.unit


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


# -- simper -----------------------------------------------------------------------------------------------
def test_simper_equals_the_released_formula_and_ignores_beta_and_the_reference():
    d = batch(2)
    expected = [-math.exp(statistics.fmean(tokens(d, "policy_chosen_logps", i)))
                + math.exp(statistics.fmean(tokens(d, "policy_rejected_logps", i))) for i in range(B)]
    close(unipo.compute_loss("simper", **d).losses, expected)
    close(unipo.compute_loss("simper", beta=7.0, **d).losses, expected)
    assert not unipo.resolve("simper").needs_reference
    with pytest.raises(ConfigError, match="would ignore gamma"):
        unipo.resolve("simper", {"gamma": 1.0})


def test_beta_dpo_without_filtering_equals_the_released_code_over_three_steps():
    """ρ = 0 keeps every pair (the draw without replacement of all B), so the loss is fully determined."""
    objective = Objective("beta_dpo", beta_dpo_filter=0.0)
    mu = sd = 0.0
    for seed in (10, 11, 12):
        d = batch(seed)
        margins = [dpo_margin(d, i) for i in range(B)]
        mu = 0.9 * mu + 0.1 * statistics.fmean(margins)
        sd = 0.9 * sd + 0.1 * statistics.stdev(margins)
        beta_b = max(1e-3, 0.1 * (1 + 0.6 * (statistics.fmean(margins) - mu)))
        out = objective(**d)
        close(out.losses, [softplus(-beta_b * mi) for mi in margins])
        assert out.pair_weights.tolist() == [1.0] * B
        assert float(out.metrics["beta_dpo/beta"]) == pytest.approx(beta_b, abs=1e-7)
    assert objective.state_dict()["pair_loss"] == pytest.approx({"mean": mu, "std": sd, "steps": 3.0}, abs=1e-15)


def test_beta_dpo_filtering_keeps_its_share_and_uses_the_kept_pairs_for_beta():
    objective = Objective("beta_dpo")  # ρ = 0.2: 4 of 5 pairs
    d = batch(13)
    out = objective(**d)
    kept = [i for i in range(B) if out.pair_weights[i] == 1.0]
    assert len(kept) == 4 and out.pair_weights.sum() == 4
    margins = [dpo_margin(d, i) for i in range(B)]
    mu = 0.1 * statistics.fmean(margins)
    beta_b = max(1e-3, 0.1 * (1 + 0.6 * (statistics.fmean(margins[i] for i in kept) - mu)))
    close(out.losses, [softplus(-beta_b * mi) for mi in margins])
    by_hand = statistics.fmean(softplus(-beta_b * margins[i]) for i in kept)  # the mean over the kept pairs
    assert float(out.loss.detach()) == pytest.approx(by_hand, abs=1e-12)


def test_beta_dpo_drops_the_outlier_and_is_reproducible():
    """A pair whose margin lies ~10 running standard deviations away has weight e^(−50): never drawn."""
    d = batch(14)
    with torch.no_grad():
        d["policy_chosen_logps"][2] += 40.0  # pair 2's margin jumps by 40·|y_w| = 40
    drops = []
    for seed in range(20):
        objective = Objective("beta_dpo", beta_dpo_seed=seed)
        others = statistics.fmean(dpo_margin(d, i) for i in range(B) if i != 2)
        objective.load_state_dict({"pair_loss": {"mean": others, "std": 1.0, "steps": 5.0}})
        out = objective(**d)
        drops.append(out.pair_weights[2].item())
    assert drops == [0.0] * 20
    a, b = (Objective("beta_dpo", beta_dpo_seed=3)(**batch(15)) for _ in range(2))
    assert torch.equal(a.losses, b.losses) and torch.equal(a.pair_weights, b.pair_weights)


def test_beta_dpo_in_evaluation_keeps_every_pair_and_freezes_its_statistics():
    objective = Objective("beta_dpo")
    objective(**batch(16))
    state = objective.state_dict()
    objective.train(False)
    d = batch(17)
    out = objective(**d)
    assert out.pair_weights is None and objective.state_dict() == state
    margins = [dpo_margin(d, i) for i in range(B)]
    beta_b = 0.1 * (1 + 0.6 * (statistics.fmean(margins) - state["pair_loss"]["mean"]))
    close(out.losses, [softplus(-max(1e-3, beta_b) * mi) for mi in margins])


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


# ---------------------------------------------------------------------------------------------------- BPO
# BPO (Kim et al., NeurIPS 2025, arXiv 2505.19601): the pair loss ``bpo`` and the preset ``bpo_sba``.
#
# Ground truth written here from the paper (camera-ready text): the model ratio R_θ = exp(−βΔ) (Algorithm 1 line 4),
# the general loss h′(R)R − h(R) − h′(1/R) (Eq. 10, Algorithm 1 line 5) with the h of Table 2 — the logistic
# regression h(R) = [R log R − (1 + R) log(1 + R)]/2 and SBA's h(R) = (R^{1+λ} − R)/(sλ(λ + 1)) — each with its
# derivative worked out by hand below, and the authors' ``BPO_loss`` (Appendix C, Code 1) transcribed. §3.3: BPO
# with the logistic h is DPO; s = 4 makes SBA's gradient at R_θ = 1 equal to DPO's.

BPO_BETA = 0.1


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


def _bpo_batch(scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 5
    a_w, a_l, r_w, r_l = (-torch.rand(B, T, generator=g, dtype=torch.float64) * scale for _ in range(4))
    m_w = torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [1] + [0] * 4, [1] * 4 + [0], [1] * 5, [1] * 3 + [0] * 2],
                       dtype=torch.bool)
    m_l = torch.tensor([[1] * 3 + [0] * 2, [1] * 5, [1] * 5, [1] + [0] * 4, [1] * 2 + [0] * 3, [1] * 5],
                       dtype=torch.bool)
    return a_w.requires_grad_(True), a_l, r_w, r_l, m_w, m_l


def _bpo_loss(config, batch):
    a_w, a_l, r_w, r_l, m_w, m_l = batch
    return unipo.compute_loss(config, policy_chosen_logps=a_w, policy_rejected_logps=a_l, chosen_mask=m_w,
                              rejected_mask=m_l, ref_chosen_logps=r_w, ref_rejected_logps=r_l).losses


def _bpo_sums(batch):
    a_w, a_l, r_w, r_l, m_w, m_l = batch
    return ((a_w * m_w).sum(-1), (a_l * m_l).sum(-1), (r_w * m_w).sum(-1), (r_l * m_l).sum(-1))


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_bpo_logistic_h_is_dpo(scale):
    """§3.3 / Appendix A.5: the general loss with the logistic h is DPO's −log σ(βΔ), values and gradients."""
    batch = _bpo_batch(scale)
    got = _bpo_loss({"pair_loss": "bpo", "bpo_lambda": None}, batch)
    dpo = _bpo_loss("dpo", batch)
    torch.testing.assert_close(got, dpo, rtol=1e-13, atol=1e-15)
    pw, pl, rw, rl = _bpo_sums(batch)
    z = BPO_BETA * (pw - rw - pl + rl)
    r = torch.exp(-z)
    torch.testing.assert_close(got, _general(r, _h_lr, _h_lr_prime), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(got, _code_1(pw, pl, rw, rl, BPO_BETA, "DPO", None), rtol=1e-12, atol=1e-13)
    (g_got,) = torch.autograd.grad(got.sum(), batch[0], retain_graph=True)
    (g_dpo,) = torch.autograd.grad(dpo.sum(), batch[0])
    torch.testing.assert_close(g_got, g_dpo, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("lam", [-0.5, -0.9, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_bpo_sba_is_the_general_loss_of_its_h_and_the_released_function(lam, scale):
    batch = _bpo_batch(scale, seed=1)
    got = _bpo_loss({"pair_loss": "bpo", "bpo_lambda": lam}, batch)
    pw, pl, rw, rl = _bpo_sums(batch)
    r = torch.exp(-BPO_BETA * (pw - rw - pl + rl))
    general = _general(r, _h_sba(lam, 4.0), _h_sba_prime(lam, 4.0))
    # Table 2 drops the constant 1/(sλ(λ+1)) of the general form
    torch.testing.assert_close(got, general - 1 / (4 * lam * (lam + 1)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, _code_1(pw, pl, rw, rl, BPO_BETA, "SBA", lam), rtol=1e-12, atol=1e-13)
    # gradients: the general form through autograd of the hand-written h′ against unipo's closed form
    (g_got,) = torch.autograd.grad(got.sum(), batch[0])
    batch2 = _bpo_batch(scale, seed=1)
    pw2, pl2, rw2, rl2 = _bpo_sums(batch2)
    r2 = torch.exp(-BPO_BETA * (pw2 - rw2 - pl2 + rl2))
    (g_gen,) = torch.autograd.grad(_general(r2, _h_sba(lam, 4.0), _h_sba_prime(lam, 4.0)).sum(), batch2[0])
    torch.testing.assert_close(g_got, g_gen, rtol=1e-10, atol=1e-13)


def test_bpo_sba_lambda_zero_is_the_kliep_limit_of_code_1():
    batch = _bpo_batch(1.0, seed=2)
    got = _bpo_loss({"pair_loss": "bpo", "bpo_lambda": 0.0}, batch)
    pw, pl, rw, rl = _bpo_sums(batch)
    torch.testing.assert_close(got, _code_1(pw, pl, rw, rl, BPO_BETA, "SBA", 0), rtol=1e-12, atol=1e-13)
    # the λ → 0 limit of the λ ≠ 0 form, up to its diverging constant −1/(sλ): gradients agree
    (g0,) = torch.autograd.grad(got.sum(), batch[0])
    batch2 = _bpo_batch(1.0, seed=2)
    (g_small,) = torch.autograd.grad(_bpo_loss({"pair_loss": "bpo", "bpo_lambda": 1e-7}, batch2).sum(), batch2[0])
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
    assert g.tolist()[0] == pytest.approx([-0.5 * math.exp(0.015) * BPO_BETA] * 3, rel=1e-13)


@pytest.mark.parametrize("lam", [-0.5, 0.0, 1.0, 3.0])
def test_bpo_scale_4_matches_dpo_gradient_at_ratio_one(lam):
    """§3.3: at R_θ = 1 (π_θ = π_ref) every SBA instance with s = 4 has DPO's gradient −½ in z."""
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(3, 1, dtype=torch.float64)
    ones = torch.ones(3, 1, dtype=torch.bool)
    out = unipo.compute_loss({"pair_loss": "bpo", "bpo_lambda": lam}, policy_chosen_logps=zeros + z[:, None],
                             policy_rejected_logps=zeros, chosen_mask=ones, rejected_mask=ones,
                             ref_chosen_logps=zeros, ref_rejected_logps=zeros, beta=1.0)
    (g,) = torch.autograd.grad(out.losses.sum(), z)
    assert g.tolist() == pytest.approx([-0.5] * 3, rel=1e-14)


def test_bpo_ratio_clip_binds_with_zero_gradient():
    """Appendix C.2: R_θ clipped below at r_min (0.01 on HH): a pair with R_θ < r_min gets loss at r_min and no
    gradient; R_θ ≥ r_min is untouched."""
    zeros, ones = torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.bool)
    a_w = torch.tensor([[60.0], [1.0]], dtype=torch.float64, requires_grad=True)  # z = 6 (R = e^−6) and 0.1
    out = unipo.compute_loss("bpo_sba", policy_chosen_logps=a_w, policy_rejected_logps=zeros, chosen_mask=ones,
                             rejected_mask=ones, ref_chosen_logps=zeros, ref_rejected_logps=zeros)
    assert out.losses.tolist() == pytest.approx([math.sqrt(0.01), math.exp(-0.05)], rel=1e-13)
    (g,) = torch.autograd.grad(out.losses.sum(), a_w)
    assert g[:, 0].tolist() == pytest.approx([0.0, -0.5 * math.exp(-0.05) * BPO_BETA], rel=1e-13)


def test_bpo_the_papers_mixture_with_the_logistic_loss():
    """C.2: "we interpolate between the SBA loss (0.3) and the logistic regression loss (0.7)"."""
    batch = _bpo_batch(1.0, seed=3)
    mixed = _bpo_loss({"pair_loss": {"sigmoid": 0.7, "bpo": 0.3}}, batch)
    torch.testing.assert_close(mixed, 0.7 * _bpo_loss("dpo", batch) + 0.3 * _bpo_loss({"pair_loss": "bpo"}, batch),
                               rtol=1e-13, atol=1e-15)


def test_bpo_lambda_range_is_checked():
    with pytest.raises(ConfigError, match="bpo_lambda"):
        unipo.Objective({"pair_loss": "bpo", "bpo_lambda": -1.0})
    with pytest.raises(ConfigError, match="bpo_ratio_min"):
        unipo.Objective({"pair_loss": "bpo", "bpo_ratio_min": 0.0})
    with pytest.raises(ConfigError, match="above bpo_ratio_max"):
        _bpo_loss({"pair_loss": "bpo", "bpo_ratio_min": 2.0, "bpo_ratio_max": 1.0}, _bpo_batch(1.0))
