"""The fast log-probability path: per-token log-probabilities (and per-position KL) from hidden states.

The language-model head is applied to the response positions only, in chunks of ``chunk_size`` rows, and a
custom autograd function recomputes each chunk's logits in the backward pass instead of storing them: the
peak memory of the loss path is O(chunk_size × vocabulary), never O(tokens × vocabulary). Log-softmax is
taken in float32 (never log of a softmax), whatever the dtype of the hidden states.

KL directions (over the whole vocabulary, at every response position):
- ``"ref||policy"``: KL(π_ref ‖ π_θ) = Σ_v q_v (log q_v − log p_v) — TDPO (Zeng et al. 2024, Eq. 4), SparsePO;
- ``"policy||ref"``: KL(π_θ ‖ π_ref) = Σ_v p_v (log p_v − log q_v) — TIS-DPO (Liu et al. 2025, Eq. 16).
Gradients flow into the policy's hidden states and head weight only; the reference side is constant.

On request the forward pass also returns log Σ_v p_v² of the policy's next-token distribution at each position
(no gradient): WPO's aligned weights (Zhou et al. 2024, arXiv 2406.11827; TRL's ``log_sum_sq_probs``) need this
statistic of the whole vocabulary, which costs one more log-sum-exp over each chunk's logits and no extra matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unipo.errors import UnipoError

KL_DIRECTIONS = ("ref||policy", "policy||ref")


def _logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    z = h @ w.t()
    if b is not None:
        z = z + b
    return z.to(torch.promote_types(z.dtype, torch.float32))


class _ChunkedHead(torch.autograd.Function):
    """logps[n] = log softmax(h_n W^T + b)[label_n]; optionally kl[n] against a reference head, and
    sq[n] = log Σ_v p_v² (``sq``; without gradient, an empty tensor when not asked for)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ref_hidden, ref_weight, ref_bias, direction, chunk_size,
                sq=False):
        n = hidden.shape[0]
        w = weight.to(hidden.dtype)
        b = bias.to(hidden.dtype) if bias is not None else None
        do_kl = ref_hidden is not None
        rw = ref_weight.to(ref_hidden.dtype) if do_kl else None
        rb = ref_bias.to(ref_hidden.dtype) if do_kl and ref_bias is not None else None
        acc = torch.promote_types(hidden.dtype, torch.float32)
        logps = hidden.new_empty(n, dtype=acc)
        lse_all = hidden.new_empty(n, dtype=acc)
        kl = hidden.new_empty(n, dtype=acc) if do_kl else None
        log_sum_sq = hidden.new_empty(n if sq else 0, dtype=acc)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                z = _logits(hidden[s:e], w, b)
                lse = torch.logsumexp(z, dim=-1)
                lse_all[s:e] = lse
                logps[s:e] = z.gather(-1, labels[s:e, None]).squeeze(-1) - lse
                if sq:  # log Σ_v p_v² = logsumexp(2z) − 2·logsumexp(z)
                    log_sum_sq[s:e] = torch.logsumexp(2 * z, dim=-1) - 2 * lse
                if do_kl:
                    logp = z - lse[:, None]
                    logq = F.log_softmax(_logits(ref_hidden[s:e], rw, rb).to(acc), dim=-1)
                    if direction == "ref||policy":
                        kl[s:e] = (logq.exp() * (logq - logp)).sum(-1)
                    else:
                        kl[s:e] = (logp.exp() * (logp - logq)).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, lse_all, ref_hidden, ref_weight, ref_bias, kl)
        ctx.direction, ctx.chunk_size = direction, chunk_size
        ctx.mark_non_differentiable(log_sum_sq)
        if do_kl:
            ctx.mark_non_differentiable(lse_all)
            return logps, kl, log_sum_sq
        return logps, lse_all.detach(), log_sum_sq

    @staticmethod
    def backward(ctx, g_logps, g_kl, g_sq=None):
        hidden, weight, bias, labels, lse_all, ref_hidden, ref_weight, ref_bias, kl = ctx.saved_tensors
        do_kl = ref_hidden is not None
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        w = weight.to(hidden.dtype)
        b = bias.to(hidden.dtype) if bias is not None else None
        rw = ref_weight.to(ref_hidden.dtype) if do_kl else None
        rb = ref_bias.to(ref_hidden.dtype) if do_kl and ref_bias is not None else None
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = torch.promote_types(hidden.dtype, torch.float32)
        grad_w = grad_b = None
        n = hidden.shape[0]
        kl_grad = do_kl and g_kl is not None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            for s in range(0, n, ctx.chunk_size):
                e = min(s + ctx.chunk_size, n)
                g = g_logps[s:e, None]
                # [chunk, V] buffers are updated in place: each full-vocabulary pass is memory-bound
                z = _logits(hidden[s:e], w, b)
                logp = z.sub_(lse_all[s:e, None])
                p = logp.exp() if kl_grad else logp.exp_()
                if kl_grad:
                    logq = F.log_softmax(_logits(ref_hidden[s:e], rw, rb), dim=-1)
                    if ctx.direction == "ref||policy":  # d/dz Σ q(log q − log p) = p − q
                        extra = (p - logq.exp()).mul_(g_kl[s:e, None])
                    else:  # d/dz Σ p(log p − log q) = p ⊙ (log p − log q − KL)
                        extra = (logp - logq).sub_(kl[s:e, None]).mul_(p).mul_(g_kl[s:e, None])
                # d logp[label] / dz = onehot − p
                dz = p.mul_(-g)
                dz.scatter_add_(-1, labels[s:e, None], g)
                if kl_grad:
                    dz += extra
                dzc = dz.to(hidden.dtype)
                if need_h:
                    torch.mm(dzc, w, out=grad_h[s:e])
                if need_w:
                    part = (dzc.t() @ hidden[s:e]).to(acc)
                    grad_w = part if grad_w is None else grad_w.add_(part)
                if need_b:
                    part = dz.sum(0)
                    grad_b = part if grad_b is None else grad_b.add_(part)
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None, None, None, None, None, None)


def full_weight(weight: torch.Tensor | None) -> torch.Tensor | None:
    """``weight`` as a plain tensor: a sharded ``DTensor`` (an FSDP2 parameter whose module's forward did not
    gather it, :mod:`unipo.models.sharding`) is all-gathered, and its gradient comes back reduce-scattered and
    averaged over the ranks, as FSDP2 averages every other gradient; anything else is returned as is."""
    if weight is None:
        return None
    if weight.numel() == 0 and hasattr(weight, "ds_id"):
        raise UnipoError("the LM head's weight is partitioned by DeepSpeed ZeRO-3 outside the head's own forward, "
                         "where unipo's chunked log-prob head reads it: ZeRO-3 is not supported by unipo's training "
                         "path (use configs/accelerate/fsdp.yaml, FSDP2, or zero2.yaml; docs/scaling.md)")
    try:
        from torch.distributed.tensor import DTensor, Partial
    except ImportError:  # a torch without distributed support
        return weight
    if not isinstance(weight, DTensor):
        return weight
    if not weight.requires_grad:
        return weight.full_tensor()
    return weight.full_tensor(grad_placements=[Partial("avg")] * weight.device_mesh.ndim)


def token_logps(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, *,
                ref_hidden: torch.Tensor | None = None, ref_head: torch.nn.Linear | None = None,
                kl_direction: str | None = None, chunk_size: int = 1024, log_sum_sq: bool = False
                ) -> tuple[torch.Tensor | None, ...]:
    """Per-token log-probabilities of ``labels`` ([N]) from ``hidden`` ([N, H]) through ``head``.

    With ``ref_hidden``/``ref_head``/``kl_direction`` also returns the per-position KL between the policy
    and reference next-token distributions ([N], differentiable in the policy only); else ``None``. With
    ``log_sum_sq`` a third tensor: log Σ_v p_v² of the policy's next-token distribution ([N], no gradient).
    """
    if kl_direction is not None and kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"kl_direction must be one of {KL_DIRECTIONS}, got {kl_direction!r}")
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return (empty, (empty if kl_direction else None)) + ((empty,) if log_sum_sq else ())
    do_kl = kl_direction is not None
    ref_weight = full_weight(ref_head.weight).detach() if do_kl else None
    ref_bias = full_weight(ref_head.bias).detach() if do_kl and ref_head.bias is not None else None
    logps, second, sq = _ChunkedHead.apply(
        hidden, full_weight(head.weight), full_weight(head.bias), labels,
        ref_hidden.detach() if do_kl else None, ref_weight, ref_bias, kl_direction, int(chunk_size),
        bool(log_sum_sq),
    )
    return (logps, (second if do_kl else None)) + ((sq,) if log_sum_sq else ())


@torch.no_grad()
def perturbed_logps(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, ref_hidden: torch.Tensor,
                    ref_head: torch.nn.Module, epsilon: float, chunk_size: int = 1024
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """ε-DPO's perturbed policies at every response position (Lee et al. 2025, arXiv 2502.13177; released code
    oddqueue/e-dpo ``trainer.py::concatenated_forward``): the log-probs of ``labels`` ([N]) under
    log softmax((1 + ε)·z − ε·z_ref) and log softmax((1 − ε)·z + ε·z_ref), z = h W^T + b the policy's logits and
    z_ref the reference's, each in float32, chunk by chunk (one more policy head matmul per chunk; no gradient).
    Returns two ``[N]`` tensors."""
    acc = torch.promote_types(hidden.dtype, torch.float32)
    plus, minus = hidden.new_empty(hidden.shape[0], dtype=acc), hidden.new_empty(hidden.shape[0], dtype=acc)
    w, b = full_weight(head.weight).detach(), full_weight(head.bias)
    rw, rb = full_weight(ref_head.weight).detach(), full_weight(ref_head.bias)
    w, rw = w.to(hidden.dtype), rw.to(ref_hidden.dtype)
    b = b.detach().to(hidden.dtype) if b is not None else None
    rb = rb.detach().to(ref_hidden.dtype) if rb is not None else None
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        for s in range(0, hidden.shape[0], chunk_size):
            e = min(s + chunk_size, hidden.shape[0])
            z = _logits(hidden[s:e].detach(), w, b).to(acc)
            zr = _logits(ref_hidden[s:e].detach(), rw, rb).to(acc)
            idx = labels[s:e, None]
            plus[s:e] = F.log_softmax((1 + epsilon) * z - epsilon * zr, dim=-1).gather(-1, idx).squeeze(-1)
            minus[s:e] = F.log_softmax((1 - epsilon) * z + epsilon * zr, dim=-1).gather(-1, idx).squeeze(-1)
    return plus, minus


def token_logps_reference(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, *,
                          ref_hidden: torch.Tensor | None = None, ref_head: torch.nn.Linear | None = None,
                          kl_direction: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plain path (full logits, autograd): the ground truth that the chunked path is tested against."""
    logp = F.log_softmax(_logits(hidden, head.weight, head.bias), dim=-1)
    out = logp.gather(-1, labels[:, None]).squeeze(-1)
    if kl_direction is None:
        return out, None
    logq = F.log_softmax(_logits(ref_hidden, ref_head.weight, ref_head.bias), dim=-1).detach()
    if kl_direction == "ref||policy":
        kl = (logq.exp() * (logq - logp)).sum(-1)
    else:
        kl = (logp.exp() * (logp - logq)).sum(-1)
    return out, kl
