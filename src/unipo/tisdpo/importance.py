"""TI-DPO's token importance: gradient attribution mixed with a Gaussian prior (``--method ti_dpo``).

Yang et al., "Token-Importance Guided Direct Preference Optimization", ICLR 2026, arXiv 2505.19653, §4.2,
read in the ICLR 2026 camera-ready text (equation numbers of that version):

- Eq. 5: the target is the largest logit at the sequence's final position, L_target = max(L_{T−1});
- Eq. 6: the raw importance of token i is the L1 norm of the target's gradient with respect to that
  token's input embedding, I_i = ‖∇_{e_i} L_target‖₁;
- "(1) the raw scores are normalised by their sum to form a distribution I_norm";
- Eq. 7: a Gaussian-shaped prior over positions t = 0..T−1, P(t) = exp(−½((t − μ)/σ)²), μ = (T − 1)/2,
  σ = T/4 (the paper calls it a distribution but prints its unnormalised value);
- Eq. 8: W = λ·I_norm + (1 − λ)·P, applied independently to y_w and y_l; λ = 0.7 (Table B13).

The weights then enter the weighted DPO term L_DPO-w = −log σ(β(Σ w^w_t ρ_t(y_w) − Σ w^l_t ρ_t(y_l)))
(Eq. 11–12, β in Algorithm 1 line 10), which is the objective's ``weights: given`` (preset ``ti_dpo_w``).

Where unipo's producer stands (docs/tisdpo.md, "TI-DPO"): the paper recomputes I inside the training loop
(Algorithm 1, line 5) with the policy being trained; here it is computed once, before training, with the
starting model (the paper initialises π_θ ← π_ref, so at step 0 the two agree). The sequence y is the
response, scored with its prompt as context (the forward pass runs over prompt + response, the gradient is
read on the response tokens' embeddings only, and the final position is the response's last token). The
released code (gracefulning/TIDPO) could not be read here, so whether it includes the prompt and whether it
normalises the prior by its sum is not checked: ``prior_norm`` offers both ("sum": both parts are
distributions, as "a convex combination of these two distributions" says; "none": Eq. 7 as printed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: the ``--method`` of ``unipo weights estimate`` that computes these weights
TI_DPO = "ti_dpo"
#: how the Gaussian prior is scaled before mixing (see the module docstring)
PRIOR_NORMS = ("sum", "none")
#: λ of Eq. 8 in the paper's experiments (Table B13)
TI_LAMBDA = 0.7


def gaussian_prior(length: int, norm: str = "sum") -> list[float]:
    """Eq. 7 over positions 0..length−1 (μ = (T−1)/2, σ = T/4), divided by its sum when ``norm == "sum"``."""
    if length < 1:
        raise ValueError("a response has at least one token")
    mu, sigma = (length - 1) / 2, length / 4
    prior = [math.exp(-0.5 * ((t - mu) / sigma) ** 2) for t in range(length)]
    if norm == "none":
        return prior
    total = sum(prior)
    return [p / total for p in prior]


def hybrid_weights(scores: Sequence[float], lam: float = TI_LAMBDA, prior_norm: str = "sum") -> list[float]:
    """Eq. 8: W = λ·I/ΣI + (1 − λ)·P from the raw attribution scores I of one response.

    All-zero scores (no gradient reaches the embeddings) are read as a uniform distribution."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"λ must be in [0, 1], not {lam}")
    if prior_norm not in PRIOR_NORMS:
        raise ValueError(f"prior_norm must be one of {', '.join(PRIOR_NORMS)}, not {prior_norm!r}")
    total = float(sum(scores))
    norm = [s / total for s in scores] if total > 0 else [1.0 / len(scores)] * len(scores)
    prior = gaussian_prior(len(scores), prior_norm)
    return [lam * i + (1.0 - lam) * p for i, p in zip(norm, prior, strict=True)]


def attribution_scores(model, prompt_ids: Sequence[int], response_ids: Sequence[int], device) -> list[float]:
    """Eq. 5–6 for one response: I_i = ‖∇_{e_i} max(logits at the last position)‖₁ for each response token i.

    One unpadded forward pass over prompt + response from the input embeddings (``inputs_embeds``), one
    backward pass of the largest final logit; the model's own parameters get no gradient."""
    import torch

    ids = torch.tensor([list(prompt_ids) + list(response_ids)], device=device)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds).logits
    target = logits[0, -1].float().max()
    (grad,) = torch.autograd.grad(target, embeds)
    return grad[0, len(prompt_ids):].double().abs().sum(-1).tolist()


def token_importance(model, prompt_ids: Sequence[int], response_ids: Sequence[int], device, *,
                     lam: float = TI_LAMBDA, prior_norm: str = "sum") -> list[float]:
    """TI-DPO's weights of one response (Eq. 5–8)."""
    return hybrid_weights(attribution_scores(model, prompt_ids, response_ids, device), lam, prior_norm)
