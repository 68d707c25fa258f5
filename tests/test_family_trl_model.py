"""WPO and LD-DPO through the real step on the tiny model: the policy pass supplies log Σ_v π_θ(v)² from its
chunked LM head when (and only when) the objective's parts declare that input, and the step's loss is the
formula on what the model computes (full-vocabulary logits, plain autograd, as ground truth)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import moved_policy_and_batch

pytestmark = pytest.mark.integration

ROWS = [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}", "rejected": f"{2 * i + 1}, or so I think"}
        for i in range(4)]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    """(policy moved away from the reference, so that the pairs' losses differ; the reference; a packed batch)."""
    return moved_policy_and_batch(tiny_model_dir, ROWS, seed=0, scale=0.2)


def test_wpo_step_weights_pairs_by_the_policys_own_probabilities(models):
    from unipo.models.forward import response_logps, unwrap
    from unipo.objective import Objective
    from unipo.training.step import preference_step

    policy, reference, batch = models
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


def test_ld_dpo_step_scales_the_longer_responses_tail(models):
    from unipo.objective import Objective
    from unipo.training.step import preference_step

    policy, reference, batch = models
    with torch.no_grad():
        full = preference_step(policy, reference, batch, Objective("dpo"))
        ld1 = preference_step(policy, reference, batch, Objective("ld_dpo", ld_alpha=1.0))
        ld0 = preference_step(policy, reference, batch, Objective("ld_dpo", ld_alpha=0.0))
    torch.testing.assert_close(ld1.losses, full.losses)  # α = 1 is DPO
    lens = {s: layout.mask.sum(-1) for s, layout in batch.sides.items()}
    assert bool((lens["rejected"] > lens["chosen"]).all())
    assert float((ld0.losses - full.losses).abs().min()) > 1e-6  # α = 0 drops the rejected tails
