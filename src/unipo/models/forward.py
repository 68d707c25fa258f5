"""Run a causal LM over a packed preference batch and return per-token response log-probabilities.

The model is called through its own ``forward`` (so DDP / FSDP / DeepSpeed wrappers and PEFT adapters
act as usual) with ``logits_to_keep=1``, so it computes no full-sequence logits; a forward hook on the
decoder captures the final hidden states, and the LM head is applied to the response positions only,
in chunks (:mod:`unipo.models.logprobs`).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from unipo.layout import attention_mask_4d
from unipo.models import segment_attention
from unipo.models.logprobs import token_logps


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The underlying transformers model (through DDP/FSDP ``.module`` and PEFT ``get_base_model``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


@dataclass
class SideOutput:
    logps: torch.Tensor  # [B, T] policy (or reference) log-probs of the response tokens
    hidden: torch.Tensor  # [N, H] final hidden states at the predicting positions (masked tokens only)


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


def _mask_for(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    segments, documents = batch["segments"], batch.get("documents")
    impl = getattr(unwrap(model).config, "_attn_implementation", "sdpa")
    if impl == "eager":
        return attention_mask_4d(segments, documents, dtype=torch.get_autocast_dtype(segments.device.type)
                                 if torch.is_autocast_enabled(segments.device.type)
                                 else next(unwrap(model).parameters()).dtype)
    return attention_mask_4d(segments, documents)


def _attention_kwargs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict:
    """With segment attention (:mod:`unipo.models.segment_attention`) the batch's blocks, and a 1×1×1×1
    placeholder mask (a 4-D mask makes transformers skip building its own, which would be ignored);
    otherwise the dense 4-D mask."""
    if segment_attention.enabled(unwrap(model)):
        spans = segment_attention.spans_from_batch(batch["segments"], batch.get("documents"))
        placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=batch["input_ids"].device)
        return {"attention_mask": placeholder, "unipo_spans": spans}
    return {"attention_mask": _mask_for(model, batch)}


def hidden_states(model: torch.nn.Module, batch: dict[str, torch.Tensor], **extra) -> tuple[torch.Tensor, object]:
    """Final hidden states ``[rows, L, H]`` for the packed batch (and the model output)."""
    kwargs = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                  **_attention_kwargs(model, batch), **extra)
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = 1
    with _capture_decoder_output(model) as store:
        out = model(**kwargs)
    return store["hidden"], out


def gather_side(hidden: torch.Tensor, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
    """Hidden states ``[N, H]`` that predict the real response tokens of ``side``."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    return flat[batch[f"{side}_src"][batch[f"{side}_mask"]]]


def scatter_tokens(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N] values of the masked tokens back to ``[B, T]`` (zeros on padding)."""
    out = values.new_zeros(mask.shape)
    return out.masked_scatter(mask, values)


def response_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, chunk_size: int = 1024,
                   ref: dict[str, torch.Tensor] | None = None, ref_head: torch.nn.Linear | None = None,
                   kl_direction: str | None = None, head_dtype: torch.dtype | None = None,
                   **extra) -> dict[str, torch.Tensor]:
    """Per-token log-probs of the chosen and rejected responses, ``[B, T]`` each.

    With ``ref`` (the reference's ``{side}_hidden`` from :func:`reference_pass`), ``ref_head`` and
    ``kl_direction``, also the per-position KL ``chosen_kl`` / ``rejected_kl``. ``head_dtype`` casts the
    hidden states before the LM head (bf16 matmuls under mixed precision). Returns the gathered
    hidden states as ``chosen_hidden`` / ``rejected_hidden`` too, and the model output as ``output``.
    """
    hidden, out = hidden_states(model, batch, **extra)
    head = unwrap(model).get_output_embeddings()
    result: dict[str, torch.Tensor] = {"output": out}
    for side in ("chosen", "rejected"):
        h = gather_side(hidden, batch, side)
        if head_dtype is not None:
            h = h.to(head_dtype)
        labels = batch[f"{side}_labels"][batch[f"{side}_mask"]]
        lp, kl = token_logps(h, head, labels, chunk_size=chunk_size,
                             ref_hidden=ref[f"{side}_hidden"].to(h.dtype) if kl_direction else None,
                             ref_head=ref_head if kl_direction else None, kl_direction=kl_direction)
        result[f"{side}_logps"] = scatter_tokens(lp, batch[f"{side}_mask"])
        result[f"{side}_hidden"] = h
        if kl is not None:
            result[f"{side}_kl"] = scatter_tokens(kl, batch[f"{side}_mask"])
    return result
