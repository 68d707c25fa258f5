"""Segment attention: the attention of a packed preference batch without a dense mask and without padding.

A pair is ONE sequence ``[prompt | chosen | rejected]`` (:mod:`unipo.data.batching`): chosen tokens see
the prompt and earlier chosen tokens; rejected tokens see the prompt and earlier rejected tokens. With the
dense ``[rows, 1, L, L]`` mask, attention computes every (query, key) block of a row and throws most of it
away: the upper triangle, the rejected → chosen block, other sequences packed in the row, padding. Here
each sequence's attention is computed from its own pieces with
:func:`torch.nn.functional.scaled_dot_product_attention`:

- ``[prompt | chosen]`` (and a plain ``[prompt | response]``) is ordinary causal attention, ``is_causal=True``,
  so the kernel skips the upper triangle;
- ``rejected`` queries attend to the keys ``[prompt ; rejected]`` with the causal diagonal shifted by the
  prompt length (``mask[i, j] = j < P + i + 1``, "lower-right" causal);
- padding queries get zeros (their outputs are never read).

Nothing here depends on how the rows are packed, so the whole batch can be one row of real tokens only
(padding-free batches): the MLPs then see no padding at all and attention no masked block. This is the
CPU/any-device counterpart of flash-attention's variable-length kernels, exact up to float rounding
(tested against the dense-mask path, values and gradients).

It plugs into transformers as an attention implementation (``AttentionInterface``): models whose attention
layers go through ``ALL_ATTENTION_FUNCTIONS`` (Llama, Qwen2, Mistral without sliding window, …) get it with
:func:`enable`. Calls without ``unipo_spans`` (generation, a plain forward) run transformers' own SDPA path
with its own mask, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby

import torch
import torch.nn.functional as F

NAME = "unipo_segments"
PAD_SEGMENT, PROMPT = -1, 0  # the segment ids of unipo.data.batching (kept free of that import)


@dataclass
class _Block:
    """One piece of the flattened positions: ``kind`` "causal" (attends to itself, causally), "branch"
    (attends to the first ``prompt_len`` positions of piece ``head`` and, causally, to itself) or "pad"."""

    kind: str
    head: int = -1
    prompt_len: int = 0


@dataclass
class Spans:
    """How the flattened ``rows × L`` positions of a batch split into pieces, one :class:`_Block` each."""

    sizes: list[int]
    blocks: list[_Block]
    _masks: dict = field(default_factory=dict)

    def branch_mask(self, prompt_len: int, n: int, device: torch.device) -> torch.Tensor:
        """``[n, prompt_len + n]``: every prompt key, then causal over the branch's own keys."""
        key = (prompt_len, n, device)
        if key not in self._masks:
            self._masks[key] = torch.ones(n, prompt_len + n, dtype=torch.bool, device=device).tril(prompt_len)
        return self._masks[key]


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Run-length encoding: ``[(value, length), ...]``."""
    return [(v, sum(1 for _ in group)) for v, group in groupby(values)]


def spans_from_batch(segments: torch.Tensor, documents: torch.Tensor | None = None) -> Spans:
    """The pieces of a batch from its ``segments`` ([rows, L]; -1 padding, 0 prompt, then one id per response)
    and ``documents`` (the sequence id of every position, -1 on padding; each row is one sequence if absent).

    Within a sequence the prompt comes first; the prompt and the first response are one causal piece, and
    every later response (the rejected one after the chosen one) is a branch that sees the prompt and itself."""
    sizes: list[int] = []
    blocks: list[_Block] = []
    segs = segments.tolist()
    docs = documents.tolist() if documents is not None else [[0 if s != PAD_SEGMENT else -1 for s in row]
                                                              for row in segs]
    for seg_row, doc_row in zip(segs, docs, strict=True):
        pos = 0
        for doc, length in _runs(doc_row):
            seg_runs = _runs(seg_row[pos:pos + length])
            pos += length
            if doc < 0 or seg_runs[0][0] == PAD_SEGMENT:
                sizes.append(length)
                blocks.append(_Block("pad"))
                continue
            prompt_len = seg_runs[0][1] if seg_runs[0][0] == PROMPT else 0
            branches = [n for _, n in (seg_runs[1:] if prompt_len else seg_runs)]
            head = len(sizes)
            sizes.append(prompt_len + (branches[0] if branches else 0))
            blocks.append(_Block("causal"))
            for n in branches[1:]:
                sizes.append(n)
                blocks.append(_Block("branch", head, prompt_len))
    return Spans(sizes, blocks)


def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      unipo_spans: Spans | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention interface: ``query`` [B, heads, L, D], ``key``/``value`` [B, kv_heads, L, D];
    returns ``[B, L, heads, D]``. Without ``unipo_spans``: transformers' SDPA attention, as is."""
    if unipo_spans is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    b, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    sizes = unipo_spans.sizes
    # [B, heads, L, D] → [B·L, heads, D] pieces along the positions (one split: one cheap backward)
    qs = query.transpose(1, 2).reshape(b * length, heads, dim).split(sizes)
    ks = key.transpose(1, 2).reshape(b * length, kv_heads, -1).split(sizes)
    vs = value.transpose(1, 2).reshape(b * length, kv_heads, -1).split(sizes)
    p = dropout if module.training else 0.0
    outs = []
    for i, blk in enumerate(unipo_spans.blocks):
        q, k, v = qs[i], ks[i], vs[i]
        mask = None
        if blk.kind == "pad":
            outs.append(q.new_zeros(q.shape[0], heads, v.shape[-1]))
            continue
        if blk.kind == "branch":
            n_p = blk.prompt_len
            k = torch.cat([ks[blk.head][:n_p], k])
            v = torch.cat([vs[blk.head][:n_p], v])
            mask = unipo_spans.branch_mask(n_p, q.shape[0], q.device)
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], attn_mask=mask,
            dropout_p=p, is_causal=mask is None, scale=scaling, enable_gqa=heads != kv_heads)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs).reshape(b, length, heads, -1), None


def register() -> None:
    """Register :data:`NAME` with transformers (idempotent): the attention above, and SDPA's mask builder for
    the calls that fall back to SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def supports(model: torch.nn.Module) -> bool:
    """Whether segment attention is exact for ``model``: its attention goes through transformers' interface,
    currently SDPA, with no sliding window and no logit soft-capping (which this function does not apply)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    if not getattr(model, "_supports_attention_backend", False):
        return False
    for attr in ("sliding_window", "attn_logit_softcapping", "use_sliding_window"):
        if getattr(config, attr, None):
            return False
    return True


def enable(model: torch.nn.Module) -> bool:
    """Switch ``model`` (an unwrapped transformers model) to segment attention where :func:`supports` says it
    is exact; returns whether it did."""
    if not supports(model):
        return False
    register()
    model.config._attn_implementation = NAME
    return True


def enabled(model: torch.nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == NAME
