"""The rest of the family (issue 14): hdpo, beta_dpo, sampo, alpha_dpo, simper, each against its formula
written out here in plain float64 Python (per pair, by hand), to 1e-10.

Sources read for each formula (see docs/variants.md, "The rest of the family"):
- hdpo: the paper's loss (Omura et al. 2024, arXiv 2411.07595), no released code found;
- beta_dpo: junkangwu/beta-DPO trainers.py (preference_loss with mode_loss "beta_DPO", update_and_sync_tensor_mean);
- sampo: LuJunru/SamPO dpo_trainer.py::get_batch_logps (len_norm);
- alpha_dpo: junkangwu/alpha-DPO scripts/dpo_trainer.py (loss_type "alpha-dpo", update_and_sync_ref_mean_std);
- simper: tengxiao1/SimPER scripts/simper_trainer.py (loss_type "SimPER").
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

import unipo
from unipo.errors import ConfigError
from unipo.objective import Objective

pytestmark = pytest.mark.unit

#: the presets whose formula tests are here (tests/test_objective_formulas.py reads this with ast)
FORMULA_TESTED = ("hdpo", "beta_dpo", "sampo", "alpha_dpo", "simper")

B, T = 5, 7


def batch(seed: int = 0, lengths=None) -> dict[str, torch.Tensor]:
    """Policy and reference log-probs with ragged masks and NaN in the padding (which must never count)."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or {"chosen": [7, 3, 1, 5, 6], "rejected": [2, 7, 4, 1, 5]}
    d = {}
    for side in ("chosen", "rejected"):
        mask = torch.arange(T)[None] < torch.tensor(lengths[side])[:, None]
        pol = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        d[f"policy_{side}_logps"] = pol.masked_fill(~mask, float("nan")).requires_grad_(True)
        d[f"ref_{side}_logps"] = ref.masked_fill(~mask, float("nan"))
        d[f"{side}_mask"] = mask
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


# -- alpha_dpo --------------------------------------------------------------------------------------------
def _alpha_dpo_by_hand(batches, beta=2.5, gamma=1.5, alpha=0.2, m=0.9):
    """The released update_and_sync_ref_mean_std + dpo_loss('alpha-dpo') with ln=True, per batch, in floats:
    statistics start at 0 and are updated BEFORE the batch's loss."""
    mu = sd = 0.0
    out = []
    for d in batches:
        margins, pol = [], []
        for i in range(B):
            mean = {k: statistics.fmean(tokens(d, k, i)) for k in
                    ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")}
            pol.append(mean["policy_chosen_logps"] - mean["policy_rejected_logps"])
            margins.append(pol[-1] - (mean["ref_chosen_logps"] - mean["ref_rejected_logps"]))
        mu = m * mu + (1 - m) * statistics.fmean(margins)
        sd = m * sd + (1 - m) * statistics.stdev(margins)  # torch.std: the unbiased estimate
        out.append([softplus(-(beta * (p - (alpha * (mi - mu) / sd + gamma / beta))))
                    for p, mi in zip(pol, margins, strict=True)])
    return out


def test_alpha_dpo_equals_the_released_code_over_three_steps():
    batches = [batch(s) for s in (3, 4, 5)]
    objective = Objective("alpha_dpo")
    expected = _alpha_dpo_by_hand(batches)
    for d, exp in zip(batches, expected, strict=True):
        close(objective(**d).losses, exp)
    state = objective.state_dict()["kl"]
    assert state["steps"] == 3.0
    # a second objective restored from that state continues the same way
    again = Objective("alpha_dpo")
    again.load_state_dict({"kl": state})
    d = batch(6)
    torch.testing.assert_close(again(**d).losses, objective(**d).losses, rtol=0, atol=0)


def test_alpha_dpo_margin_is_stop_gradient_and_frozen_in_evaluation():
    d = batch(7)
    objective = Objective("alpha_dpo")
    out = objective(**d)
    (g,) = torch.autograd.grad(out.losses.sum(), [d["policy_chosen_logps"]])
    z = out.logits.double()
    n = d["chosen_mask"].sum(-1, keepdim=True).double()
    expected = (-torch.sigmoid(-z)[:, None] * 2.5 / n).expand(B, T)  # SimPO's gradient: the margin adds none
    m = d["chosen_mask"]
    torch.testing.assert_close(g[m], expected[m], rtol=0, atol=1e-12)
    before = objective.state_dict()
    objective.train(False)
    first = objective(**batch(8)).losses
    assert objective.state_dict() == before  # evaluation does not move the statistics
    torch.testing.assert_close(objective(**batch(8)).losses, first, rtol=0, atol=0)


# -- beta_dpo ---------------------------------------------------------------------------------------------
def _dpo_margin(d, i) -> float:
    return (sum(tokens(d, "policy_chosen_logps", i)) - sum(tokens(d, "ref_chosen_logps", i))
            - sum(tokens(d, "policy_rejected_logps", i)) + sum(tokens(d, "ref_rejected_logps", i)))


def test_beta_dpo_without_filtering_equals_the_released_code_over_three_steps():
    """ρ = 0 keeps every pair (the draw without replacement of all B), so the loss is fully determined."""
    objective = Objective("beta_dpo", beta_dpo_filter=0.0)
    mu = sd = 0.0
    for seed in (10, 11, 12):
        d = batch(seed)
        margins = [_dpo_margin(d, i) for i in range(B)]
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
    margins = [_dpo_margin(d, i) for i in range(B)]
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
        others = statistics.fmean(_dpo_margin(d, i) for i in range(B) if i != 2)
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
    margins = [_dpo_margin(d, i) for i in range(B)]
    beta_b = 0.1 * (1 + 0.6 * (statistics.fmean(margins) - state["pair_loss"]["mean"]))
    close(out.losses, [softplus(-max(1e-3, beta_b) * mi) for mi in margins])


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
        rho_w = _dpo_margin(d, i) + sum(2.0 ** -t for t in range(T) if d["rejected_mask"][i, t])  # Σρ(y_w)
        rest = rho_w - z / beta  # Σ_{t∈S} 2^−t
        subsets.append({t for t in range(T) if (round(rest * 2 ** (T - 1)) >> (T - 1 - t)) & 1})
    return subsets


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
