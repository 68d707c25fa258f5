"""One registry for every part of the unified objective.

The general loss (Tutnov et al. 2025, "Many of Your DPOs are Secretly One", arXiv 2501.01544, Eq. 1) is
built from parts of a few kinds (prior, token weights, aggregation, link, one-sided transforms, KL term,
pair loss). Each part is a small function registered here under ``(kind, name)`` with its parameters and
their defaults, the paper it comes from and its formula. Adding a part means writing one function in the
module of its kind and decorating it with :func:`register`; configuration validation, ``unipo variants``
and the docs all read this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: the part kinds in the order they act, with a one-line description each
KINDS: dict[str, str] = {
    "prior": "per-token prior log ζ(y_t) subtracted from the policy log-prob",
    "weights": "per-token weights ω_t on the token log-ratios",
    "aggregation": "how token terms become one sequence score",
    "link": "f-DPO link f' applied to each side's sequence log-ratio",
    "chosen_transform": "one-sided transform of the chosen side",
    "rejected_transform": "one-sided transform of the rejected side",
    "kl": "sequential KL term subtracted inside the sigmoid (TDPO / SparsePO / TIS-DPO)",
    "pair_loss": "the shape of the pairwise loss",
}


@dataclass(frozen=True)
class Part:
    """A registered part: a function plus what a user and a validator need to know about it."""

    kind: str
    name: str
    fn: Callable[..., Any]
    params: dict[str, Any] = field(default_factory=dict)
    formula: str = ""
    source: str = ""
    #: optional tensors the part reads (e.g. ``chosen_diff_mask``); missing ones are a clear error
    inputs: tuple[str, ...] = ()
    #: for KL parts: which direction the per-token KL inputs must be
    kl_direction: str | None = None
    #: for pair losses: whether the loss reads the combined logit (margins and KL terms act on it)
    uses_logit: bool = True
    #: whether the part needs a reference model (or precomputed reference log-probs)
    needs_reference: bool = False

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()


_REGISTRY: dict[str, dict[str, Part]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, *, params: dict[str, Any] | None = None, formula: str = "",
             source: str = "", inputs: tuple[str, ...] = (), kl_direction: str | None = None,
             uses_logit: bool = True, needs_reference: bool = False) -> Callable:
    """Decorator: register ``fn`` as part ``name`` of ``kind``."""
    if kind not in KINDS:
        raise KeyError(f"unknown part kind {kind!r}; kinds are {list(KINDS)}")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY[kind]:
            raise KeyError(f"part {kind}={name} registered twice")
        _REGISTRY[kind][name] = Part(kind, name, fn, dict(params or {}), formula, source, inputs,
                                     kl_direction, uses_logit, needs_reference)
        return fn

    return deco


def _load_parts() -> None:
    # importing the modules runs their @register decorators
    from unipo.objective import (  # noqa: F401
        aggregation,
        kl_terms,
        links,
        pair_losses,
        priors,
        token_weights,
        transforms,
    )


def parts(kind: str) -> dict[str, Part]:
    _load_parts()
    return _REGISTRY[kind]


def get_part(kind: str, name: str) -> Part:
    table = parts(kind)
    if name not in table:
        raise KeyError(name)
    return table[name]
