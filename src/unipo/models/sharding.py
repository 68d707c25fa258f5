"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for unipo's model path.

unipo calls the model with ``logits_to_keep=1`` and applies the LM head itself, to the response positions
only, AFTER the model's forward has returned (:mod:`unipo.models.forward`, :mod:`unipo.models.logprobs`);
token signals (:mod:`unipo.models.signals`) are called after it too. Two consequences under FSDP2:

- the root unit (embeddings, final norm, a tied or untied LM head when it is not its own unit) must stay
  unsharded between its forward and the backward: its parameters are read after the forward (the head) and
  the hidden states unipo uses are not the root's output, so FSDP's pre-backward hook on that output never
  fires to gather them again. :func:`keep_root_unsharded` sets ``reshard_after_forward=False`` on the root
  only (torch's own default for the root; accelerate passes the configured value to the root too);
- a head whose weight is still a sharded ``DTensor`` (the head was made its own unit and its forward never
  runs, or a reference model under ``no_grad``) is gathered by :func:`unipo.models.logprobs.full_weight`,
  with its gradient reduce-scattered and averaged as FSDP averages the others.

:func:`shard_model` applies ``fully_shard`` the way accelerate's FSDP2 plugin does with
``TRANSFORMER_BASED_WRAP``: one unit per decoder layer (the classes of the model's ``_no_split_modules``),
extra units (a token signal), then the root. accelerate does not do this on CPU (it falls back to DDP or to
no distribution), so unipo's CPU test applies it directly (``tests/test_fsdp.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from unipo.models.forward import keep_root_unsharded, unwrap

__all__ = ["decoder_layers", "keep_root_unsharded", "shard_model"]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of a transformers model (through PEFT / DDP wrappers): the modules whose class is
    in the model's ``_no_split_modules``, as accelerate's transformer-based wrap policy selects them."""
    base = unwrap(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in base.modules() if type(m).__name__ in names]


def shard_model(model: torch.nn.Module, *, units: Iterable[torch.nn.Module] = (), mesh: Any = None,
                reshard_after_forward: bool = True, mp_policy: Any = None) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, each module of ``units`` (e.g. a token signal) and then ``model``
    itself (the root, kept unsharded after its forward: :func:`keep_root_unsharded`). ``model`` is changed in
    place (FSDP2 swaps its class) and returned. Needs an initialised process group."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
                              "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    keep_root_unsharded(model)
    return model
