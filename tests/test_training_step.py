"""ε-DPO through the real step on the tiny model: the policy pass supplies the perturbed policies' log-probs
from the policy's and the live reference's logits when (and only when) the objective declares them, and the
step's loss is the released formula on what the two models compute (full-vocabulary logits as ground truth)."""

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
