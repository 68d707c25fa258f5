"""The objective tests' shared helpers (tests/objective/): random batches with ragged masks and junk in the padding, and
the by-hand arithmetic the formula tests write their expected values with. Nothing here calls the library's math:
:func:`run` and the batches only feed it.

Two batch layouts: :func:`batch` (keyword tensors as :func:`unipo.compute_loss` takes them, NaN in the padding, read
per pair with :func:`tokens`) and :func:`make_batch` (short names ``a_w``, ``r_l``, ``m_w``, … with every optional
input, -1e9 in the padding, fed by :func:`run`).
"""

from __future__ import annotations

import math

import torch

import unipo

B, T = 5, 7


def batch(seed: int = 0, lengths=None, scale: float = 3.0) -> dict[str, torch.Tensor]:
    """Policy and reference log-probs with ragged masks (a 1-token response included) and NaN in the padding (which
    must never count)."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or {"chosen": [7, 3, 1, 5, 6], "rejected": [2, 7, 4, 1, 5]}
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
    return [float(d[key].detach()[i, t]) for t in range(d[key].shape[1]) if d[f"{side}_mask"][i, t]]


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


def make_batch(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lengths_w = torch.tensor([7, 3, 1, 5, 6])
    lengths_l = torch.tensor([2, 7, 4, 1, 5])
    ar = torch.arange(T)
    mw = (ar[None] < lengths_w[:, None]).to(dtype)
    ml = (ar[None] < lengths_l[:, None]).to(dtype)
    d = {
        "a_w": -torch.rand(B, T, generator=g, dtype=dtype) * 3,
        "a_l": -torch.rand(B, T, generator=g, dtype=dtype) * 3,
        "r_w": -torch.rand(B, T, generator=g, dtype=dtype) * 3,
        "r_l": -torch.rand(B, T, generator=g, dtype=dtype) * 3,
        "w_w": torch.rand(B, T, generator=g, dtype=dtype) + 0.5,
        "w_l": torch.rand(B, T, generator=g, dtype=dtype) + 0.5,
        "k_w": torch.rand(B, T, generator=g, dtype=dtype),
        "k_l": torch.rand(B, T, generator=g, dtype=dtype),
        "diff_w": (torch.rand(B, T, generator=g) > 0.5).to(dtype),
        "diff_l": (torch.rand(B, T, generator=g) > 0.5).to(dtype),
        "m_w": mw, "m_l": ml,
    }
    d["q_w"], d["q_l"] = -d["k_w"], -d["k_l"]  # WPO's log Σ_v π(v)²
    # garbage in the padding must not leak into the loss
    for k in ("a_w", "a_l", "r_w", "r_l"):
        m = d["m_w"] if k.endswith("w") else d["m_l"]
        d[k] = torch.where(m.bool(), d[k], torch.full_like(d[k], -1e9))
    d["a_w"].requires_grad_(True)
    d["a_l"].requires_grad_(True)
    return d


def run(variant, d, **params):
    """Every optional input is given; the parts that do not read an input ignore it."""
    return unipo.compute_loss(
        variant, policy_chosen_logps=d["a_w"], policy_rejected_logps=d["a_l"],
        chosen_mask=d["m_w"], rejected_mask=d["m_l"], ref_chosen_logps=d["r_w"], ref_rejected_logps=d["r_l"],
        chosen_weights=d["w_w"], rejected_weights=d["w_l"], chosen_kl=d["k_w"], rejected_kl=d["k_l"],
        chosen_diff_mask=d["diff_w"], rejected_diff_mask=d["diff_l"], chosen_log_sum_sq_probs=d["q_w"],
        rejected_log_sum_sq_probs=d["q_l"], **params,
    )


def S(x, m):  # masked sum
    return (torch.where(m.bool(), x, torch.zeros_like(x))).sum(-1)


def quantities(d):
    rho_w, rho_l = S(d["a_w"] - d["r_w"], d["m_w"]), S(d["a_l"] - d["r_l"], d["m_l"])
    n_w, n_l = d["m_w"].sum(-1), d["m_l"].sum(-1)
    return rho_w, rho_l, n_w, n_l


def dpo_margin(d, i) -> float:
    """DPO's log-ratio margin Δ of pair i of a :func:`batch`, by hand."""
    return (sum(tokens(d, "policy_chosen_logps", i)) - sum(tokens(d, "ref_chosen_logps", i))
            - sum(tokens(d, "policy_rejected_logps", i)) + sum(tokens(d, "ref_rejected_logps", i)))
