"""unipo.objective.token_weights: hdpo, sampo and BMC's weights against their formulas (plain float64, by hand).

Sources read: hdpo: the paper's loss (Omura et al. 2024, arXiv 2411.07595), no released code found;
sampo: LuJunru/SamPO dpo_trainer.py::get_batch_logps (len_norm).
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
    dpo_margin,
    make_batch,
    run,
    softplus,
    tokens,
)
from unipo.objective import Objective

pytestmark = pytest.mark.unit


def test_bmc_weights_are_stop_gradient():
    """The gradient of BMC wrt a_t is λ_t times DPO's token gradient: no term from d λ_t / d a_t."""
    d = make_batch(seed=5)
    out = run("bmc", d)
    (g,) = torch.autograd.grad(out.losses.sum(), [d["a_w"]])
    lam = 1 + d["diff_w"] * torch.clamp(torch.exp(-d["a_w"].detach()), max=2.0)
    z = out.logits.double()
    expected = -torch.sigmoid(-z)[:, None] * 0.05 * lam * d["m_w"]
    torch.testing.assert_close(g.double(), expected, rtol=1e-4, atol=1e-7)


# -- sampo ------------------------------------------------------------------------------------------------
def _bits_batch(seed: int) -> dict[str, torch.Tensor]:
    """Chosen responses shorter than rejected ones (the chosen side keeps every token); the rejected side's token
    log-ratios are distinct powers of two, so the sum over a subset names the subset."""
    d = batch(seed, {"chosen": [2, 3, 1, 4, 5], "rejected": [6, 7, 4, 5, 7]})
    with torch.no_grad():
        bits = torch.tensor([2.0 ** -t for t in range(T)], dtype=torch.float64).expand(B, T)
        d["policy_rejected_logps"].copy_(d["ref_rejected_logps"] + bits)
    return d


def _decode(d, out, beta=0.1) -> list[set[int]]:
    """The rejected tokens each pair's loss summed, read back from the loss value: z = −log(e^loss − 1)."""
    subsets = []
    for i in range(B):
        z = -math.log(math.expm1(float(out.losses.detach()[i])))
        rho_w = dpo_margin(d, i) + sum(2.0 ** -t for t in range(T) if d["rejected_mask"][i, t])  # Σρ(y_w)
        rest = rho_w - z / beta  # Σ_{t∈S} 2^−t
        subsets.append({t for t in range(T) if (round(rest * 2 ** (T - 1)) >> (T - 1 - t)) & 1})
    return subsets


def _shifted(d, left: int, right: int) -> dict[str, torch.Tensor]:
    """The same pairs in another layout: ``left`` padding positions before each response, ``right`` after."""
    out = {}
    for key, value in d.items():
        pad = (left, right)
        if value.dtype == torch.bool:
            out[key] = torch.nn.functional.pad(value, pad, value=False)
        else:
            out[key] = torch.nn.functional.pad(value.detach(), pad, value=float("nan"))
    return out


def _sampo(objective, d, pair_ids=None) -> unipo.LossOutput:
    from unipo.objective.sides import ObjectiveInputs

    return objective.loss(ObjectiveInputs.from_tensors(**d, pair_ids=pair_ids))


# -- hdpo -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha,beta", [(0.95, 0.1), (0.5, 0.3), (1.3, 0.05)])
def test_hdpo_equals_the_paper_formula(alpha, beta):
    d = batch()
    out = unipo.compute_loss("hdpo", hdpo_alpha=alpha, beta=beta, **d)
    expected = []
    for i in range(B):
        h = {s: alpha * sum(tokens(d, f"policy_{s}_logps", i)) - sum(tokens(d, f"ref_{s}_logps", i))
             for s in ("chosen", "rejected")}
        expected.append(softplus(-beta * (h["chosen"] - h["rejected"])))
    close(out.losses, expected)
    out.loss.backward()
    assert torch.isfinite(d["policy_chosen_logps"].grad).all()


def test_hdpo_with_alpha_one_is_dpo_and_its_gradient_is_alpha_times_dpos_direction():
    d = batch(1)
    torch.testing.assert_close(unipo.compute_loss("hdpo", hdpo_alpha=1.0, **d).losses,
                               unipo.compute_loss("dpo", **d).losses, rtol=0, atol=1e-12)
    out = unipo.compute_loss("hdpo", hdpo_alpha=0.5, **d)
    (g,) = torch.autograd.grad(out.losses.sum(), [d["policy_chosen_logps"]])
    z = out.logits.double()
    expected = (-torch.sigmoid(-z) * 0.1 * 0.5)[:, None].expand(B, T)  # ∂/∂a_t of softplus(−z), z ∋ β·α·a_t
    m = d["chosen_mask"]
    torch.testing.assert_close(g[m], expected[m], rtol=0, atol=1e-12)
    assert torch.all(g[~m] == 0)


def test_sampo_sums_min_length_tokens_shared_by_policy_and_reference():
    d = _bits_batch(18)
    out = unipo.compute_loss("sampo", **d)
    lw, ll = d["chosen_mask"].sum(-1).tolist(), d["rejected_mask"].sum(-1).tolist()
    for i, subset in enumerate(_decode(d, out)):
        assert len(subset) == min(lw[i], ll[i]) and max(subset) < ll[i], (i, subset)
        # the loss equals the formula over that subset (the chosen side keeps all its tokens)
        rho_w = sum(tokens(d, "policy_chosen_logps", i)) - sum(tokens(d, "ref_chosen_logps", i))
        expected = softplus(-0.1 * (rho_w - sum(2.0 ** -t for t in subset)))
        assert abs(float(out.losses[i]) - expected) < 1e-10


def test_sampo_is_reproducible_and_uniform():
    d = _bits_batch(19)
    a, b = unipo.compute_loss("sampo", **d), unipo.compute_loss("sampo", **d)
    assert torch.equal(a.losses, b.losses)  # same seed, same batch: same loss
    others = {tuple(sorted(_decode(d, unipo.compute_loss("sampo", sampo_seed=s, **d))[1])) for s in range(1, 6)}
    assert len(others) > 1  # another seed, other tokens
    # 400 copies of one pair (3 chosen tokens, 7 rejected): each rejected token is drawn with probability 3/7
    n = 400
    chosen_mask = torch.arange(T)[None].expand(n, T) < 3
    bits = torch.tensor([2.0 ** -t for t in range(T)], dtype=torch.float64).expand(n, T)
    zeros = torch.zeros(n, T, dtype=torch.float64)
    out = unipo.compute_loss("sampo", policy_chosen_logps=zeros, policy_rejected_logps=bits, chosen_mask=chosen_mask,
                             rejected_mask=torch.ones(n, T, dtype=torch.bool), ref_chosen_logps=zeros,
                             ref_rejected_logps=zeros)
    counts = [0] * T
    for loss in out.losses.tolist():
        rest = math.log(math.expm1(loss)) / 0.1  # z = −0.1·Σ_S 2^−t
        drawn = [t for t in range(T) if (round(rest * 2 ** (T - 1)) >> (T - 1 - t)) & 1]
        assert len(drawn) == 3
        for t in drawn:
            counts[t] += 1
    assert all(abs(c / n - 3 / 7) < 0.08 for c in counts), counts  # 3.2 standard deviations


def test_sampo_draw_is_independent_of_layout():
    """A 2-token offset and a wider padding keep each pair's subset (the draw is keyed by the token's position among
    the response's tokens, not by its column); the same pair at another batch position with its id keeps it too."""
    d = _bits_batch(21)
    base = _decode(d, _sampo(Objective("sampo"), d))
    for left, right in ((2, 0), (0, 5), (2, 3)):
        moved = _shifted(d, left, right)
        out = _sampo(Objective("sampo"), moved)
        torch.testing.assert_close(out.losses, _sampo(Objective("sampo"), d).losses, rtol=0, atol=1e-12)
    order = torch.tensor([3, 0, 4, 1, 2])
    permuted = {k: v.detach()[order] for k, v in d.items()}
    ids = torch.arange(B)
    out = _sampo(Objective("sampo"), permuted, pair_ids=ids[order])
    torch.testing.assert_close(out.losses, _sampo(Objective("sampo"), d, pair_ids=ids).losses[order], rtol=0,
                               atol=1e-12)
    assert len({tuple(sorted(s)) for s in base}) > 1  # not one fixed subset for every pair


def test_sampo_draws_afresh_each_training_batch_and_resumes_the_same():
    """Training batches advance the draw (the same pairs get other subsets), evaluation does not; an objective
    restored from the state of one that has trained k batches draws what that one draws next."""
    d = _bits_batch(22)
    obj = Objective("sampo")
    draws = [_decode(d, _sampo(obj, d)) for _ in range(4)]
    assert obj.state_dict() == {"weights": {"steps": 4.0}}
    assert all(len(s) == min(a, b) for step in draws for s, a, b in zip(
        step, d["chosen_mask"].sum(-1).tolist(), d["rejected_mask"].sum(-1).tolist(), strict=True))
    assert len({tuple(tuple(sorted(s)) for s in step) for step in draws}) == 4  # each batch another draw
    assert draws[0] == _decode(d, _sampo(Objective("sampo"), d))  # a fresh objective draws the first again
    obj.train(False)
    held_out = [_decode(d, _sampo(obj, d)) for _ in range(2)]
    assert held_out[0] == held_out[1] and obj.state_dict() == {"weights": {"steps": 4.0}}
    obj.train(True)
    resumed = Objective("sampo")
    resumed.load_state_dict({"weights": {"steps": 4.0}})
    assert _decode(d, _sampo(resumed, d)) == _decode(d, _sampo(obj, d)) == held_out[0]


def test_sampo_equal_lengths_is_dpo():
    d = batch(20, {"chosen": [3, 7, 2, 5, 1], "rejected": [3, 7, 2, 5, 1]})
    torch.testing.assert_close(unipo.compute_loss("sampo", **d).losses, unipo.compute_loss("dpo", **d).losses,
                               rtol=0, atol=1e-12)
