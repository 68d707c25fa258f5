"""The collate function for a model: how a batch of tokenized pairs is laid out for it."""

from __future__ import annotations

from functools import partial

import torch

from unipo.data.batching import collate_pairs
from unipo.models import segment_attention
from unipo.models.forward import unwrap


def collate_for(model: torch.nn.Module, pad_token_id: int, share_prompt: bool = True, packing: bool = True):
    """The collate function for ``model``: with packing, one padding-free row when the model runs segment
    attention (:mod:`unipo.models.segment_attention`), else first-fit-decreasing rows for the dense mask."""
    one_row = packing and segment_attention.enabled(unwrap(model))
    return partial(collate_pairs, pad_token_id=pad_token_id, share_prompt=share_prompt, packing=packing,
                   one_row=one_row)
