"""unipo.training.step: the objective's inputs that the policy pass supplies only when the objective declares
them, through the real step on the tiny model, against what the two models compute (full-vocabulary logits,
plain autograd, as ground truth):

- ε-DPO: the perturbed policies' log-probs from the policy's and the live reference's logits, and the step's
  loss is the released formula (was tests/test_family_new_model.py);
- WPO and LD-DPO: log Σ_v π_θ(v)² from the policy's chunked LM head, and the step's loss is the formula (was
  tests/test_family_trl_model.py)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import moved_policy_and_batch

pytestmark = pytest.mark.integration

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}, or so I think"}
        for i in range(4)]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """(policy moved away from the reference, the reference, a packed batch)."""
    return moved_policy_and_batch(tiny_model_dir, ROWS, seed=1, scale=0.3)


def test_epsilon_dpo_step_is_the_released_loss_on_both_models_logits(models):
    from unipo.models.forward import response_logps, unwrap
    from unipo.objective import Objective
    from unipo.training.step import preference_step

    policy, reference, batch = models
    eps, beta = 0.4, 0.5
    with torch.no_grad():
        assert response_logps(policy, batch).eps_plus is None  # not computed unless asked for
        ref = reference.outputs(policy, batch, chunk_size=1024, need_hidden=True)
        fwd = response_logps(policy, batch, reference=ref, perturbation=eps)
        head = unwrap(policy).get_output_embeddings().weight.double()
        ref_head = ref.head.weight.double()
        sums = {}
        for side, layout in batch.sides.items():
            z = fwd.hidden[side].double() @ head.t()
            zr = ref.hidden[side].double() @ ref_head.t()
            y = layout.labels[layout.mask][:, None]
            for name, logits in (("pol", z), ("ref", zr), ("up", (1 + eps) * z - eps * zr),
                                 ("down", (1 - eps) * z + eps * zr)):
                lp = torch.log_softmax(logits, -1).gather(-1, y).squeeze(-1)
                sums[side, name] = torch.zeros(layout.mask.shape, dtype=torch.float64).masked_scatter(
                    layout.mask, lp).sum(-1)
            torch.testing.assert_close(fwd.eps_plus[side].sum(-1).double(), sums[side, "up"], rtol=1e-4, atol=1e-4)
        objective = Objective("epsilon_dpo", edpo_epsilon=eps, beta=beta).train(False)
        out = preference_step(policy, reference, batch, objective)

    def lr(name):
        return sums["chosen", name] - sums["rejected", name]

    steps = ((lr("up") > lr("pol")) & (lr("pol") > lr("down"))).double() - (
        (lr("down") > lr("pol")) & (lr("pol") > lr("up"))).double()
    assert bool((steps != 0).any()), "the batch must exercise the perturbation"
    rho = lr("pol") - lr("ref")
    expected = torch.nn.functional.softplus(-beta / (1 + eps * steps) * rho)
    torch.testing.assert_close(out.losses.double(), expected, rtol=1e-4, atol=1e-5)


# ---- WPO and LD-DPO (was tests/test_family_trl_model.py) ----

@pytest.fixture(scope="module")
def wpo_models(tiny_model_dir):
    """(policy moved away from the reference, so that the pairs' losses differ; the reference; a packed batch)."""
    return moved_policy_and_batch(tiny_model_dir, ROWS, seed=0, scale=0.2)


def test_wpo_step_weights_pairs_by_the_policys_own_probabilities(wpo_models):
    from unipo.models.forward import response_logps, unwrap
    from unipo.objective import Objective
    from unipo.training.step import preference_step

    policy, reference, batch = wpo_models
    with torch.no_grad():
        plain = response_logps(policy, batch)
        assert plain.log_sum_sq is None  # not computed unless asked for
        fwd = response_logps(policy, batch, log_sum_sq=True)
        head = unwrap(policy).get_output_embeddings()
        weights = []
        for side, layout in batch.sides.items():
            full = torch.log_softmax(fwd.hidden[side].float() @ head.weight.float().t(), -1)  # [N, V]
            sq = torch.logsumexp(2 * full, -1)
            got = fwd.log_sum_sq[side][layout.mask]
            torch.testing.assert_close(got, sq, rtol=1e-5, atol=1e-5)
            a = fwd.logps[side]
            aligned = torch.zeros_like(a).masked_scatter(layout.mask, a[layout.mask] - sq)
            weights.append(torch.exp(aligned.sum(-1) / layout.mask.sum(-1)))
        dpo = preference_step(policy, reference, batch, Objective("dpo"))
        wpo = preference_step(policy, reference, batch, Objective("wpo"))
    expected = dpo.losses * weights[0] * weights[1]
    torch.testing.assert_close(wpo.losses, expected, rtol=1e-5, atol=1e-7)
    assert float((weights[0] * weights[1]).std()) > 1e-4  # the pairs are weighted differently


def test_ld_dpo_step_scales_the_longer_responses_tail(wpo_models):
    from unipo.objective import Objective
    from unipo.training.step import preference_step

    policy, reference, batch = wpo_models
    with torch.no_grad():
        full = preference_step(policy, reference, batch, Objective("dpo"))
        ld1 = preference_step(policy, reference, batch, Objective("ld_dpo", ld_alpha=1.0))
        ld0 = preference_step(policy, reference, batch, Objective("ld_dpo", ld_alpha=0.0))
    torch.testing.assert_close(ld1.losses, full.losses)  # α = 1 is DPO
    lens = {s: layout.mask.sum(-1) for s, layout in batch.sides.items()}
    assert bool((lens["rejected"] > lens["chosen"]).all())
    assert float((ld0.losses - full.losses).abs().min()) > 1e-6  # α = 0 drops the rejected tails
