"""unipo.objective.pair_weighting: each pair weighting against its formula written out here in float64 from the paper
and its authors' released code (never from unipo's code).

- Uni-DPO (Peng et al., ICLR 2026, arXiv 2506.10054): transcribed from pspdada/Uni-DPO
  ``Textual/train/scripts/uni_dpo_trainer.py::uni_dpo_loss`` (lines 1021–1070) and ``compute_w_qual`` (978–980),
  with the released configs' ``dpo_length_norm: true`` (mean token log-probs, ``get_batch_logps`` lines 664–700).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import unipo
from unipo.errors import UnipoError

pytestmark = pytest.mark.unit

B, T = 6, 7


def batch(seed: int = 0, scale: float = 3.0) -> dict[str, torch.Tensor]:
    """Ragged float64 inputs with 1-token responses; scores on both sides of τ_good; some chosen responses below
    the reference (the calibrated NLL's case) and some above."""
    g = torch.Generator().manual_seed(seed)
    lengths = {"chosen": [7, 1, 4, 2, 7, 3], "rejected": [1, 5, 7, 3, 2, 6]}
    d: dict[str, torch.Tensor] = {}
    for side in ("chosen", "rejected"):
        mask = torch.arange(T)[None] < torch.tensor(lengths[side])[:, None]
        a = -torch.rand(B, T, generator=g, dtype=torch.float64) * scale
        shift = torch.tensor([0.3, -0.3, 0.3, -0.3, 0.3, -0.3], dtype=torch.float64)[:, None]  # ± the reference
        r = a + shift + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.1
        d[f"{side}_mask"] = mask
        d[f"policy_{side}_logps"] = torch.where(mask, a, torch.full_like(a, float("nan"))).requires_grad_(True)
        d[f"ref_{side}_logps"] = torch.where(mask, r, torch.full_like(r, float("-inf")))
    d["chosen_score"] = torch.tensor([5.0, 2.0, 3.2, 8.5, 4.0, 1.0], dtype=torch.float64)
    d["rejected_score"] = torch.tensor([1.0, 2.5, 3.0, 2.0, 4.5, 0.5], dtype=torch.float64)
    return d


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m, x, torch.zeros((), dtype=x.dtype)).sum(-1) / m.sum(-1)


def masked_sum(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m, x, torch.zeros((), dtype=x.dtype)).sum(-1)


def released_uni_dpo(d, *, beta, eta, tau_ref, gamma, lam, tau_good, length_norm=True, perf_grad=True):
    """pspdada/Uni-DPO ``uni_dpo_loss`` line by line, on ``get_batch_logps`` (mean or sum over response tokens)."""
    agg = masked_mean if length_norm else masked_sum
    pcl, prl = agg(d["policy_chosen_logps"], d["chosen_mask"]), agg(d["policy_rejected_logps"], d["rejected_mask"])
    rcl, rrl = agg(d["ref_chosen_logps"], d["chosen_mask"]), agg(d["ref_rejected_logps"], d["rejected_mask"])
    pi_logratios = pcl - prl
    ref_logratios = rcl - rrl
    logits = pi_logratios - ref_logratios
    w_qual = torch.sigmoid(eta * (d["chosen_score"] - d["rejected_score"]))
    w_perf = (1 - torch.sigmoid(beta * pi_logratios - tau_ref)) ** gamma
    if not perf_grad:
        w_perf = w_perf.detach()
    loss = -w_qual * w_perf * F.logsigmoid(beta * logits)
    if lam > 0.0:
        nll_coeffi = torch.clamp(torch.sign(rcl - pcl), min=0)
        nll_coeffi = torch.where(d["chosen_score"] >= tau_good, nll_coeffi, 0)
        loss = loss - lam * nll_coeffi * pcl
    return loss


HYPER = {"beta": 2.0, "eta": 0.7, "tau_ref": 0.8, "gamma": 3.0, "lam": 0.2, "tau_good": 3.2}


def unipo_uni_dpo(d, **over):
    params = {"beta": HYPER["beta"], "uni_eta": HYPER["eta"], "uni_tau_ref": HYPER["tau_ref"],
              "uni_gamma": HYPER["gamma"], "uni_nll_lambda": HYPER["lam"], "uni_tau_good": HYPER["tau_good"], **over}
    return unipo.compute_loss("uni_dpo", **d, **params)


def grads(losses: torch.Tensor, d) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.autograd.grad(losses.sum(), [d["policy_chosen_logps"], d["policy_rejected_logps"]])


def assert_grads_close(g1, g2, d) -> None:
    for x, y, side in zip(g1, g2, ("chosen", "rejected"), strict=True):
        m = d[f"{side}_mask"]
        torch.testing.assert_close(torch.where(m, x, 0.0), torch.where(m, y, 0.0), rtol=1e-10, atol=1e-12)
        assert torch.all(x[~m] == 0), "padding must get no gradient"


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_uni_dpo_is_the_released_loss_values_and_gradients(scale):
    d = batch(scale=scale)
    out = unipo_uni_dpo(d)
    expected = released_uni_dpo(d, **HYPER)
    torch.testing.assert_close(out.losses, expected, rtol=1e-10, atol=1e-12)
    # the batch exercises the calibrated NLL on some pairs and not on others
    pcl = masked_mean(d["policy_chosen_logps"], d["chosen_mask"])
    active = (masked_mean(d["ref_chosen_logps"], d["chosen_mask"]) > pcl) & (d["chosen_score"] >= 3.2)
    assert 0 < int(active.sum()) < B
    d2 = batch(scale=scale)
    assert_grads_close(grads(out.losses, d), grads(released_uni_dpo(d2, **HYPER), d2), d)


def test_uni_dpo_performance_weight_with_and_without_gradient():
    """The released code keeps the performance weight's gradient (a focal factor); ``uni_perf_grad: false``
    is the same value with the weight a constant of the step, and a different gradient."""
    d, d2, d3 = batch(1), batch(1), batch(1)
    with_grad = grads(unipo_uni_dpo(d).losses, d)
    detached = unipo_uni_dpo(d2, uni_perf_grad=False)
    torch.testing.assert_close(detached.losses, released_uni_dpo(d3, **HYPER), rtol=1e-10, atol=1e-12)
    g_detached = grads(detached.losses, d2)
    assert_grads_close(g_detached, grads(released_uni_dpo(d3, **HYPER, perf_grad=False), d3), d2)
    assert not torch.allclose(with_grad[0], g_detached[0])


def test_uni_dpo_with_summed_log_probs_is_the_code_without_length_norm():
    d, d2 = batch(2), batch(2)
    out = unipo_uni_dpo(d, aggregation="sum", uni_length_norm=False, beta=0.1)
    expected = released_uni_dpo(d2, **{**HYPER, "beta": 0.1}, length_norm=False)
    torch.testing.assert_close(out.losses, expected, rtol=1e-10, atol=1e-12)
    assert_grads_close(grads(out.losses, d), grads(expected, d2), d)


def test_uni_dpo_one_pair_by_hand():
    """One token per response: a_w = −1, a_l = −2, r_w = −0.5, r_l = −2; scores 5 and 1; β 2, η 0.5, τ_ref 1,
    γ 2, λ 0.1, τ_good 4. Δ = (−1 + 0.5) − 0 = −0.5, log π(y_w) − log π(y_l) = 1;
    loss = σ(0.5·4)·(1 − σ(2·1 − 1))²·softplus(−2·(−0.5)) + 0.1 (π(y_w) below the reference, s_w ≥ 4)."""
    one = torch.ones(1, 1, dtype=torch.bool)
    out = unipo.compute_loss(
        "uni_dpo", policy_chosen_logps=torch.tensor([[-1.0]], dtype=torch.float64),
        policy_rejected_logps=torch.tensor([[-2.0]], dtype=torch.float64), chosen_mask=one, rejected_mask=one,
        ref_chosen_logps=torch.tensor([[-0.5]], dtype=torch.float64),
        ref_rejected_logps=torch.tensor([[-2.0]], dtype=torch.float64),
        chosen_score=torch.tensor([5.0]), rejected_score=torch.tensor([1.0]),
        beta=2.0, uni_eta=0.5, uni_tau_ref=1.0, uni_gamma=2.0, uni_nll_lambda=0.1, uni_tau_good=4.0)

    def sig(x):
        return 1 / (1 + math.exp(-x))

    expected = sig(2.0) * (1 - sig(1.0)) ** 2 * math.log1p(math.exp(1.0)) + 0.1
    assert out.losses.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["pair_weighting/added"].item() == pytest.approx(0.1, rel=1e-12)


def test_uni_dpo_without_scores_is_a_clear_error():
    d = batch()
    del d["chosen_score"], d["rejected_score"]
    with pytest.raises(UnipoError, match="pair_weighting=uni_dpo needs the input 'chosen_score'"):
        unipo_uni_dpo(d)
    d = batch()
    d["rejected_score"] = d["rejected_score"][:3]
    with pytest.raises(UnipoError, match="rejected_score must be finite, one value per response"):
        unipo_uni_dpo(d)


def test_wpo_weight_still_carries_no_gradient():
    """The pair weighting's factor is no longer detached by the objective (Uni-DPO's keeps its gradient): WPO's
    weight must still be a constant of the step, as TRL's use_weighting."""
    d = batch(3)
    for side in ("chosen", "rejected"):
        d[f"{side}_log_sum_sq_probs"] = torch.full((B, T), -1.5, dtype=torch.float64)
    out = unipo.compute_loss("wpo", **{k: v for k, v in d.items() if "score" not in k})
    d2 = batch(3)
    w = 1.0
    for side in ("chosen", "rejected"):
        m = d2[f"{side}_mask"]
        w = w * torch.exp(masked_mean(d2[f"policy_{side}_logps"].detach() + 1.5, m))
    delta = (masked_sum(d2["policy_chosen_logps"] - d2["ref_chosen_logps"], d2["chosen_mask"])
             - masked_sum(d2["policy_rejected_logps"] - d2["ref_rejected_logps"], d2["rejected_mask"]))
    expected = w * F.softplus(-0.1 * delta)
    torch.testing.assert_close(out.losses, expected, rtol=1e-10, atol=1e-12)
    assert_grads_close(grads(out.losses, d), grads(expected, d2), d)
