"""What differs between the transformers versions unipo supports (5.17, the lent GPU machine's, to 5.25).

transformers renamed gradient checkpointing to *activation* checkpointing after 5.17: ``TrainingArguments``
gained ``activation_checkpointing`` (``gradient_checkpointing`` became a deprecated alias) and models gained
``activation_checkpointing_enable``. 5.17 has only the old names, so unipo asks for whichever exists.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def checkpointing_args(enabled: bool) -> dict[str, bool]:
    """The ``TrainingArguments`` keyword that turns activation checkpointing on or off in this transformers."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def enable_activation_checkpointing(model: Any, **checkpoint_kwargs: Any) -> None:
    """Activation checkpointing on every decoder layer of ``model`` (``checkpoint_kwargs`` go to
    ``torch.utils.checkpoint.checkpoint``, e.g. ``use_reentrant=False``)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
