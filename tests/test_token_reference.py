"""``Needs.token_reference`` (issue 25, 1): a part that treats the reference's tokens unequally declares it, so
that one summed reference log-prob per response (TRL's ``precompute_ref_log_probs``) is refused for it.

Ground truth is behaviour, not the declaration: for every part (of every kind) that can run on log-probs alone,
the loss is computed twice in float64 on ragged pairs (the lengths differ within each pair), once with the
reference per token and once with each response's reference sum spread evenly over its tokens. The two differ
exactly when the part declares ``token_reference``. A new part that forgets to declare it fails here.
"""

from __future__ import annotations

import pytest
import torch

from unipo.errors import ConfigError
from unipo.objective import Objective
from unipo.objective.inputs import KEYWORDS, SIDE_INPUTS
from unipo.objective.registry import KINDS, parts

pytestmark = pytest.mark.unit

B, T = 4, 7
LENGTHS = {"chosen": [7, 3, 1, 5], "rejected": [2, 6, 4, 3]}


def _inputs(spread: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    out = {}
    for side, ns in LENGTHS.items():
        mask = torch.arange(T)[None] < torch.tensor(ns)[:, None]
        ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
        if spread:
            per_token = torch.where(mask, ref, 0.0).sum(-1) / mask.sum(-1)
            ref = per_token[:, None].expand(B, T).clone()
        out[f"{side}_mask"] = mask
        out[f"policy_{side}_logps"] = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.05
        out[f"ref_{side}_logps"] = ref
        for attr in ("weights", "diff_mask", "log_sum_sq_probs", "prior_offsets", "kl_weights", "eps_plus_logps",
                     "eps_minus_logps"):
            value = torch.rand(B, T, generator=g, dtype=torch.float64)
            out[KEYWORDS[attr].format(side)] = (value > 0.5).double() if attr == "diff_mask" else -value
        out[KEYWORDS["score"].format(side)] = torch.rand(B, generator=g, dtype=torch.float64) * 10  # one per response
    return out


def _cases():
    for kind in KINDS:
        for name, part in parts(kind).items():
            if part.needs.kl_direction or part.listwise or part.mixes:
                # needs a live reference model (per-position KL) or several rejected responses; a mixture's
                # parts are probed one by one (its needs are theirs: ObjectiveConfig.requirements)
                continue
            yield kind, name


@pytest.mark.parametrize("kind,name", list(_cases()), ids=lambda v: str(v))
def test_token_reference_is_declared_exactly_by_the_parts_that_need_it(kind, name):
    spec = {"preset": "dpo", kind: name}
    try:
        objective = Objective(spec)
    except ConfigError:  # a reference-free pair loss (ORPO) is refused with a reference prior
        objective = Objective({**spec, "prior": "none"})
    losses = []
    for spread in (False, True):
        x = _inputs(spread)
        needed = {KEYWORDS[k].format(s) for k in objective.requirements.inputs - {"kl"} for s in LENGTHS}
        given = {k: v for k, v in x.items() if k in needed or k.endswith("_mask") or k.startswith("policy_")
                 or k.startswith("ref_")}
        # a fresh objective each time, in evaluation mode: stateful parts start equal and update nothing
        losses.append(Objective(objective.config).train(False).loss(_objective_inputs(given)).losses)
    differs = not torch.allclose(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    declared = objective.requirements.token_reference
    assert differs == declared, (f"{kind}={name}: the loss {'changes' if differs else 'does not change'} when the "
                                 f"reference is spread evenly, but token_reference is {declared}")


def _objective_inputs(x: dict[str, torch.Tensor]):
    from unipo.objective.sides import ObjectiveInputs

    return ObjectiveInputs.from_tensors(**x)


def test_the_probe_sees_every_side_input():
    assert {"weights", "diff_mask", "log_sum_sq_probs", "prior_offsets", "kl_weights", "eps_plus_logps",
            "eps_minus_logps", "score"} | {"ref_logps", "kl"} == set(SIDE_INPUTS)
