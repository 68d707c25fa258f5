"""Every composition that `resolve` accepts trains the sides it should and never the reference (issue 14, 1).

Inputs are built so that each side's term must move: the policy sits above the reference on both sides
(s > 0, so MinorDPO's max(0, h_l) is active under every link), β is small (the hinge is not saturated), and
every optional input is given. Then for each composition (768 of them): both sides get gradient, the
reference gets none, a learned prior's offsets get some. Compositions that cannot train a side are refused
by `resolve` (a one-sided transform with a constant prior, where log π ≤ 0 everywhere; AOT with a link or
transform it ignores) and counted.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from unipo.errors import ConfigError
from unipo.objective import Objective
from unipo.objective.registry import KINDS, parts

pytestmark = pytest.mark.unit

B, T = 4, 6


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = {"chosen": [6, 3, 1, 5], "rejected": [2, 6, 4, 3]}
    d = {}
    for side in ("chosen", "rejected"):
        mask = torch.arange(T)[None] < torch.tensor(lengths[side])[:, None]
        a = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2 - 0.1
        delta = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.15 + 0.05  # policy above reference
        d[f"{side}_mask"] = mask
        d[f"policy_{side}_logps"] = a.clone().requires_grad_(True)
        d[f"ref_{side}_logps"] = (a - delta).detach().clone().requires_grad_(True)
        d[f"{side}_weights"] = torch.rand(B, T, generator=g, dtype=torch.float64) + 0.5
        d[f"{side}_kl_weights"] = torch.rand(B, T, generator=g, dtype=torch.float64) + 0.5
        d[f"{side}_kl"] = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.1
        d[f"{side}_diff_mask"] = (torch.rand(B, T, generator=g) > 0.4).double()
        d[f"{side}_prior_offsets"] = (torch.randn(B, T, generator=g, dtype=torch.float64) * 0.01).requires_grad_(True)
        d[f"{side}_log_sum_sq_probs"] = -torch.rand(B, T, generator=g, dtype=torch.float64)
        d[f"{side}_eps_plus_logps"] = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        d[f"{side}_eps_minus_logps"] = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
        d[f"{side}_score"] = torch.rand(B, generator=g, dtype=torch.float64) * 10
    return d


def compositions() -> list[dict[str, str]]:
    """Every (prior, link, rejected transform, chosen transform, pair loss), with the KL term, the token
    weights, the aggregation and the pair weighting sampled (seeded) for each: the part kinds that interact
    through the sign of h exhaustively, the rest broadly."""
    rng = random.Random(0)
    names = {kind: sorted(parts(kind)) for kind in KINDS}
    out = []
    for prior, link, rt, ct, loss in itertools.product(names["prior"], names["link"], names["rejected_transform"],
                                                       names["chosen_transform"], names["pair_loss"]):
        out.append({"prior": prior, "link": link, "rejected_transform": rt, "chosen_transform": ct,
                    "pair_loss": loss, "kl": rng.choice(names["kl"]), "weights": rng.choice(names["weights"]),
                    "aggregation": rng.choice(names["aggregation"]),
                    "pair_weighting": rng.choice(names["pair_weighting"])})
    return out


def grads(objective: Objective, d: dict[str, torch.Tensor]):
    out = objective(**d)
    keys = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps",
            "chosen_prior_offsets", "rejected_prior_offsets"]
    return dict(zip(keys, torch.autograd.grad(out.losses.sum(), [d[k] for k in keys], allow_unused=True),
                    strict=True))


def test_every_accepted_composition_moves_its_sides_and_never_the_reference():
    d = inputs()
    checked, refused = 0, 0
    for comp in compositions():
        try:
            # RePO's loss max(0, −z)/β is flat once the margin is met (z > 0): give it a margin the inputs do not meet
            margin = {"gamma": 1.0} if comp["pair_loss"] == "repo" else {}
            objective = Objective({"preset": "dpo", **comp, "beta": 0.05, **margin})
        except ConfigError:
            refused += 1
            continue
        g = grads(objective, d)
        name = ", ".join(f"{k}={v}" for k, v in comp.items())
        assert g["ref_chosen_logps"] is None and g["ref_rejected_logps"] is None, name
        assert g["policy_chosen_logps"] is not None and g["policy_chosen_logps"].abs().sum() > 0, name
        gl = g["policy_rejected_logps"]
        assert gl is not None and gl.abs().sum() > 0, name
        if comp["prior"] == "learned":
            assert g["chosen_prior_offsets"].abs().sum() > 0, name
        for grad, side in ((g["policy_chosen_logps"], "chosen"), (gl, "rejected")):
            if grad is not None:
                assert torch.isfinite(grad).all() and torch.all(grad[~d[f"{side}_mask"]] == 0), name
        checked += 1
    assert checked > 300 and refused > 0  # e.g. a one-sided transform with a constant prior is refused


def test_minordpo_with_forward_kl_trains_the_rejected_side():
    """The bug this fixes: forward-KL's link without its constant (−e^(−s)) is negative everywhere, so
    MinorDPO's max(0, h_l) gave the rejected side no gradient even at ρ_l = +5."""
    d = inputs()
    with torch.no_grad():
        d["policy_rejected_logps"].copy_(d["ref_rejected_logps"] + 5.0 / T)  # ρ_l ≈ +5 on full rows
    g = grads(Objective({"preset": "minordpo", "link": "forward_kl"}), d)
    assert g["policy_rejected_logps"].abs().sum() > 0


def test_links_vanish_at_zero_and_keep_the_sign_of_the_log_ratio():
    s = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64)
    for name, part in parts("link").items():
        h = part.fn(s, {"f_alpha": 0.5})
        assert h[2] == 0, name
        assert torch.equal(torch.sign(h), torch.sign(s)), name


def test_rdpo_keeps_float64():
    """R-DPO's length term in the input dtype (it was float32 for float64 inputs: error 1.3e-9)."""
    d = inputs()
    out = Objective("rdpo")(**{k: v for k, v in d.items() if "kl" not in k and "weights" not in k
                               and "diff" not in k and "offsets" not in k})
    rho = {s: ((d[f"policy_{s}_logps"] - d[f"ref_{s}_logps"]) * d[f"{s}_mask"]).sum(-1) for s in ("chosen", "rejected")}
    n = {s: d[f"{s}_mask"].sum(-1).double() for s in ("chosen", "rejected")}
    z = 0.1 * (rho["chosen"] - rho["rejected"]) - 0.05 * (n["chosen"] - n["rejected"])
    expected = torch.nn.functional.softplus(-z)
    assert out.losses.dtype == torch.float64
    torch.testing.assert_close(out.losses.detach(), expected.detach(), rtol=0, atol=1e-12)
