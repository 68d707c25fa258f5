"""Run a causal LM over a packed preference batch and return per-token response log-probabilities.

The model is called through its own ``forward`` (so DDP / FSDP / DeepSpeed wrappers and PEFT adapters
act as usual) with ``logits_to_keep=1``, so it computes no full-sequence logits; a forward hook on the
decoder captures the final hidden states, and the LM head is applied to the response positions only,
in chunks (:mod:`unipo.models.logprobs`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from unipo.errors import UnipoError
from unipo.layout import PackedBatch, SideLayout, Sides, attention_mask_4d, gather_side, scatter_tokens
from unipo.models import segment_attention
from unipo.models.logprobs import perturbed_logps, token_logps


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying transformers model (through DDP/FSDP ``.module`` and PEFT ``get_base_model``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def keep_root_unsharded(model: torch.nn.Module) -> None:
    """Under FSDP2 (``fully_shard``), keep the root unit's parameters gathered from its forward to the end of
    the backward (``reshard_after_forward=False`` on the root only, torch's own default for a root; accelerate
    passes its configured value to the root too). unipo reads the root's parameters after the forward (the LM
    head, a token signal that is a submodule) and takes the decoder's hidden states rather than the root's
    output, so FSDP's pre-backward hook on that output would never gather them again
    (:mod:`unipo.models.sharding`). A no-op for any other module."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without distributed support
        return
    if isinstance(model, FSDPModule):
        model.set_reshard_after_forward(False, recurse=False)


@contextmanager
def _capture_decoder_output(model: torch.nn.Module):
    store: dict = {}
    decoder = unwrap(model).get_decoder()

    def hook(module, args, output):
        store["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = decoder.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    base = unwrap(model)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _mask_for(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    segments, documents = batch.segments, batch.documents
    impl = getattr(unwrap(model).config, "_attn_implementation", "sdpa")
    if impl == "eager":
        return attention_mask_4d(segments, documents, dtype=torch.get_autocast_dtype(segments.device.type)
                                 if torch.is_autocast_enabled(segments.device.type)
                                 else next(unwrap(model).parameters()).dtype)
    return attention_mask_4d(segments, documents)


def _attention_kwargs(model: torch.nn.Module, batch: PackedBatch) -> dict:
    """With segment attention (:mod:`unipo.models.segment_attention`) the batch's blocks, and a 1×1×1×1
    placeholder mask (a 4-D mask makes transformers skip building its own, which would be ignored);
    otherwise the dense 4-D mask."""
    if segment_attention.enabled(unwrap(model)):
        spans = segment_attention.spans_from_batch(batch.segments, batch.documents)
        placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=batch.input_ids.device)
        return {"attention_mask": placeholder, "unipo_spans": spans}
    return {"attention_mask": _mask_for(model, batch)}


def hidden_states(model: torch.nn.Module, batch: PackedBatch | Mapping[str, torch.Tensor],
                  **extra: Any) -> tuple[torch.Tensor, Any]:
    """Final hidden states ``[rows, L, H]`` for the packed batch (and the model output)."""
    batch = PackedBatch.from_dict(batch)
    kwargs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                  **_attention_kwargs(model, batch), **extra)
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = 1
    keep_root_unsharded(model)
    with _capture_decoder_output(model) as store:
        out = model(**kwargs)
    return store["hidden"], out


@dataclass(frozen=True)
class ReferenceOutputs:
    """What the reference contributes to a step (all detached):

    - ``logps``: per-token log-probs ``[B, T]`` per side; or, when a per-position KL or a token signal needs
      more than log-probs,
    - ``hidden``: the final hidden states ``[N, H]`` at the positions that predict each side's real tokens,
      and ``head``: the reference's LM head (log-probs and full next-token distributions come from them);
    - ``layers``: every layer's hidden states ``[rows, L, H]`` (embeddings first), for token signals that
      read them.
    An empty instance means no reference (reference-free variants).
    """

    logps: Sides[torch.Tensor] | None = None
    hidden: Sides[torch.Tensor] | None = None
    head: torch.nn.Module | None = None
    layers: tuple[torch.Tensor, ...] | None = None

    def with_logps(self, batch: PackedBatch, chunk_size: int, head_dtype: torch.dtype | None = None
                   ) -> ReferenceOutputs:
        """Itself with ``logps`` computed from ``hidden`` and ``head`` when only those were kept (the hidden
        states cast to ``head_dtype`` first, as the policy's are)."""
        if self.logps is not None or self.hidden is None:
            return self

        def side_logps(side: str, layout: SideLayout) -> torch.Tensor:
            h = self.hidden[side] if head_dtype is None else self.hidden[side].to(head_dtype)
            return scatter_tokens(token_logps(h, self.head, layout.labels[layout.mask], chunk_size=chunk_size)[0],
                                  layout.mask)

        with torch.no_grad():
            logps = batch.sides.map(side_logps)
        return replace(self, logps=logps)


@dataclass(frozen=True)
class ForwardOutput:
    """One model pass over a :class:`~unipo.layout.PackedBatch`:

    - ``logps``: per-token log-probs of each side's response tokens ``[B, T]`` (zeros on padding);
    - ``hidden``: the final hidden states ``[N, H]`` that predict each side's real tokens;
    - ``kl``: the per-position KL ``[B, T]`` against the reference, when asked for (else None);
    - ``output``: the model's own output (``.hidden_states`` of every layer when requested);
    - ``log_sum_sq``: log Σ_v p_v² of the next-token distribution ``[B, T]`` (no gradient), when asked for;
    - ``eps_plus`` / ``eps_minus``: ε-DPO's perturbed log-probs ``[B, T]`` (no gradient), when asked for
      (:func:`unipo.models.logprobs.perturbed_logps`);
    - ``gold_logps``: per-token log-probs of the batch's gold responses ``[B, T'']`` (TPO), when it has them.
    """

    logps: Sides[torch.Tensor]
    hidden: Sides[torch.Tensor]
    kl: Sides[torch.Tensor] | None
    output: Any
    log_sum_sq: Sides[torch.Tensor] | None = None
    eps_plus: Sides[torch.Tensor] | None = None
    eps_minus: Sides[torch.Tensor] | None = None
    gold_logps: torch.Tensor | None = None


def _layout_logps(hidden: torch.Tensor, head: torch.nn.Module, layout: SideLayout, chunk_size: int,
                  head_dtype: torch.dtype | None) -> torch.Tensor:
    """``[B, T]``: the log-probs of ``layout``'s tokens from the packed ``hidden`` states (zeros on padding)."""
    h = gather_side(hidden, layout)
    h = h if head_dtype is None else h.to(head_dtype)
    lp, _kl, *_ = token_logps(h, head, layout.labels[layout.mask], chunk_size=chunk_size)
    return scatter_tokens(lp, layout.mask)


def response_logps(model: torch.nn.Module, batch: PackedBatch | Mapping[str, torch.Tensor], *,
                   chunk_size: int = 1024, reference: ReferenceOutputs | None = None,
                   kl_direction: str | None = None, head_dtype: torch.dtype | None = None,
                   log_sum_sq: bool = False, perturbation: float | None = None, **extra: Any) -> ForwardOutput:
    """Per-token log-probs of the chosen and rejected responses of ``batch`` (and of its gold responses, TPO, when
    it carries them: ``gold_logps``).

    With ``kl_direction`` (and ``reference`` holding the reference's ``hidden`` and ``head``), also the
    per-position KL over the vocabulary in that direction. ``head_dtype`` casts the hidden states before
    the LM head (bf16 matmuls under mixed precision). ``log_sum_sq``: also log Σ_v p_v² per position, from the
    same chunked head pass (WPO). ``perturbation`` (ε): also ε-DPO's perturbed log-probs, from the policy's and the
    reference's logits (``reference`` must hold the hidden states and head). ``extra`` goes to the model call
    (e.g. ``output_hidden_states=True``).
    """
    batch = PackedBatch.from_dict(batch)
    if kl_direction is not None and (reference is None or reference.hidden is None or reference.head is None):
        raise UnipoError(f"a per-position KL ({kl_direction}) needs the reference's hidden states and head")
    if perturbation is not None and (reference is None or reference.hidden is None or reference.head is None):
        raise UnipoError("ε-DPO's perturbed log-probs need the reference's hidden states and head")
    hidden, out = hidden_states(model, batch, **extra)
    head = unwrap(model).get_output_embeddings()
    logps, hiddens, kls, sqs, plus, minus = {}, {}, {}, {}, {}, {}
    for side, layout in batch.sides.items():
        h = gather_side(hidden, layout)
        if head_dtype is not None:
            h = h.to(head_dtype)
        labels = layout.labels[layout.mask]
        lp, kl, *sq = token_logps(h, head, labels, chunk_size=chunk_size,
                                  ref_hidden=reference.hidden[side].to(h.dtype) if kl_direction else None,
                                  ref_head=reference.head if kl_direction else None, kl_direction=kl_direction,
                                  log_sum_sq=log_sum_sq)
        logps[side], hiddens[side] = scatter_tokens(lp, layout.mask), h
        if kl is not None:
            kls[side] = scatter_tokens(kl, layout.mask)
        if sq:
            sqs[side] = scatter_tokens(sq[0], layout.mask)
        if perturbation is not None:
            up, down = perturbed_logps(h, head, labels, reference.hidden[side].to(h.dtype), reference.head,
                                       perturbation, chunk_size)
            plus[side], minus[side] = scatter_tokens(up, layout.mask), scatter_tokens(down, layout.mask)
    gold = None if batch.gold is None else _layout_logps(hidden, head, batch.gold, chunk_size, head_dtype)
    return ForwardOutput(Sides(**logps), Sides(**hiddens), Sides(**kls) if kls else None, out,
                         Sides(**sqs) if sqs else None, Sides(**plus) if plus else None,
                         Sides(**minus) if minus else None, gold)
