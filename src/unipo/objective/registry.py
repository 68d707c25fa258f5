"""One registry for every part of the unified objective.

The general loss (Tutnov et al. 2025, "Many of Your DPOs are Secretly One", arXiv 2501.01544, Eq. 1) is
built from parts of a few kinds (prior, token weights, aggregation, link, one-sided transforms, KL term,
pair loss). Each part is a small function registered here under ``(kind, name)`` with

- its parameters (:class:`Param`: default, range, help) — validation reads them, nothing else knows them;
- what it needs (:class:`Needs`: per-token inputs, per-position KL and its direction, a reference, a live
  reference model, a token signal) — training reads them, and never compares part names;
- the paper it comes from and its formula — ``unipo variants`` and the generated docs read them.

Adding a part means writing one function in the module of its kind and decorating it with
:func:`register`; a part may also declare the preset that names it (``preset=``), so that a new variant
is one function and its formula test.

A part that keeps state across batches (β-DPO's and α-DPO's moving statistics) is registered as a CLASS
instead (:class:`StatefulPart`): each :class:`~unipo.objective.Objective` makes its own instance from the
resolved parameters, so two objectives never share state; the instance is called like the function would
be, updates its state only while ``training`` is true, and its ``state_dict`` travels with checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from unipo.errors import ConfigError
from unipo.objective.inputs import SIDE_INPUTS
from unipo.objective.protocols import PROTOCOLS

#: the part kinds in the order they act, with a one-line description each
KINDS: dict[str, str] = {
    "prior": "per-token prior log ζ(y_t) subtracted from the policy log-prob",
    "weights": "per-token weights ω_t on the token log-ratios",
    "aggregation": "how token terms become one sequence score",
    "link": "f-DPO link f' applied to each side's sequence log-ratio",
    "chosen_transform": "one-sided transform of the chosen side",
    "rejected_transform": "one-sided transform of the rejected side",
    "kl": "term D subtracted inside the sigmoid: a sequential KL (TDPO / SparsePO / TIS-DPO) or a margin (α-DPO)",
    "pair_loss": "the shape of the pairwise loss",
    "pair_weighting": "a per-pair factor on the pair loss, computed from the pair itself (WPO, Uni-DPO)",
}

KL_DIRECTIONS = ("ref||policy", "policy||ref")
#: the per-token inputs a part may read: :data:`unipo.objective.inputs.SIDE_INPUTS` (the one input table)
#: the largest float32 magnitude: the objective computes in float32, where a larger parameter is inf
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Param:
    """A part's (or the objective's) parameter: its default, what values are valid, and what it means.

    ``kind`` is ``number`` (int or float within [lo, hi], ends open where ``lo_open`` / ``hi_open``),
    ``bool``, ``optional_number`` (a number or None), or ``weights`` (a mapping of names to positive numbers, or
    None: a mixture's components; the names are checked by the part that reads it)."""

    default: Any
    help: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    kind: str = "number"

    def check(self, key: str, value: Any) -> None:
        """Raise :class:`ConfigError` naming ``key`` and the valid range when ``value`` is not valid."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"parameter {key!r} must be true or false, got {value!r}")
            return
        if value is None and self.kind in ("optional_number", "weights"):
            return
        if self.kind == "weights":
            if not isinstance(value, Mapping) or not value:
                raise ConfigError(f"parameter {key!r} must be a mapping of names to weights, e.g. "
                                  f"{{sigmoid: 0.8, bco_pair: 0.2}}; got {value!r}")
            for name, weight in value.items():
                if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= FLOAT32_MAX:
                    raise ConfigError(f"{key}: the weight of {name!r} must be a positive finite number (in float32: "
                                      f"at most {FLOAT32_MAX:.4g}), got {weight!r}")
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"parameter {key!r} must be a number, got {value!r}")
        # NaN fails every comparison below and inf satisfies "> 0": both are refused first (issue 23, item 2)
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise ConfigError(f"parameter {key!r} must be a finite number (in float32: |value| at most "
                              f"{FLOAT32_MAX:.4g}), got {value!r}")
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise ConfigError(f"parameter {key!r} = {value} is out of range: must be "
                              f"{'>' if self.lo_open else '>='} {self.lo}")
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise ConfigError(f"parameter {key!r} = {value} is out of range: must be "
                              f"{'<' if self.hi_open else '<='} {self.hi}")

    @property
    def range(self) -> str:
        """The valid values in interval notation (``(0, 1)``, ``[0, ∞)``, ``true/false``)."""
        if self.kind == "bool":
            return "true/false"
        if self.kind == "weights":
            return "{name: weight > 0, …} or null"
        lo = "−∞" if self.lo is None else f"{self.lo:g}"
        hi = "∞" if self.hi is None else f"{self.hi:g}"
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        return f"{left}{lo}, {hi}{right}" + (" or null" if self.kind == "optional_number" else "")


@dataclass(frozen=True)
class Needs:
    """What a part needs from the layers below the objective.

    - ``inputs``: the per-token inputs it reads (keys of :data:`SIDE_INPUTS`);
    - ``kl_direction``: it reads per-position KL over the vocabulary in this direction (:data:`KL_DIRECTIONS`);
    - ``reference``: it needs reference log-probs (a frozen copy, the policy with adapters off, or
      precomputed); ``live_reference``: it needs the reference MODEL at every step (full next-token
      distributions or hidden states), so precomputed log-probs cannot serve it;
    - ``token_reference``: it treats the reference's tokens unequally (token weights on the reference term that
      are not one constant per response: BMC, SamPO's subsets, LD-DPO's tail, TIS-DPO), so one summed reference
      log-prob per response cannot serve it (TRL's ``precompute_ref_log_probs``); a part that reads the
      reference only through each response's sum or mean leaves it false;
    - ``signal``: the token signal (:mod:`unipo.models.signals`) that supplies one of its inputs when the data
      does not; ``signal_when``: only when this (boolean) parameter of the objective is true;
    - ``perturbation``: the name of the parameter that holds ε when the part reads the ε-perturbed policies'
      log-probs (``eps_plus_logps`` / ``eps_minus_logps``, ε-DPO): training computes them with that ε.
    """

    inputs: tuple[str, ...] = ()
    kl_direction: str | None = None
    reference: bool = False
    live_reference: bool = False
    token_reference: bool = False
    signal: str | None = None
    signal_when: str | None = None
    perturbation: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.inputs) - set(SIDE_INPUTS)
        if unknown:
            raise KeyError(f"unknown part inputs {sorted(unknown)}; known: {sorted(SIDE_INPUTS)}")
        if self.kl_direction is not None and self.kl_direction not in KL_DIRECTIONS:
            raise KeyError(f"kl_direction must be one of {KL_DIRECTIONS}, got {self.kl_direction!r}")


@dataclass(frozen=True)
class PresetSpec:
    """The declaration of a preset (a named variant): the parts and parameters it sets (``config``), its formula
    and source. Declared either in the table of :mod:`unipo.objective.presets` or next to the part it is named after
    (:func:`register`'s ``preset``; the part itself is then implied, and an empty ``formula`` is the part's own);
    both kinds end up in the one table :data:`unipo.objective.presets.PRESETS`."""

    name: str
    formula: str
    source: str
    note: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)


class StatefulPart:
    """Base of the parts that keep state across batches (registered as classes, see the module docstring).

    An instance is made per objective with the resolved parameters; ``training`` is set by
    :meth:`unipo.objective.Objective.train`; ``metrics`` holds detached scalars of the last call (logged with
    the objective's); ``state_dict`` / ``load_state_dict`` give the state as plain floats (JSON)."""

    def __init__(self, params: Mapping[str, Any]):
        self.training = True
        self.metrics: dict[str, Any] = {}

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        pass


@dataclass(frozen=True)
class PairLossTraits:
    """What a pair loss reads and how it combines (pair losses only; every other part has the defaults).

    - ``uses_logit``: it reads the combined logit z (margins and KL terms act on it);
    - ``uses_scores``: it reads the sides' scores h (the link and the transforms act on them);
    - ``uses_prior``: it reads the prior at all (ORPO does not: a reference or learned prior with it would be
      computed and ignored);
    - ``listwise``: it takes several rejected responses per pair (``PairTerms.groups``) and reduces each pair's
      comparisons to one loss (:mod:`unipo.objective.listwise`);
    - ``mixes``: it is a weighted mixture of other pair losses: the name of its ``weights`` parameter (name →
      weight). A mapping given for the kind (``pair_loss: {sigmoid: 0.8, bco_pair: 0.2}``) selects it with those
      weights.
    """

    uses_logit: bool = True
    uses_scores: bool = True
    uses_prior: bool = True
    listwise: bool = False
    mixes: str | None = None


@dataclass(frozen=True)
class Part:
    """A registered part: a function plus what a user, a validator and the training layer need to know. Built by
    :func:`register` (keywords only)."""

    kind: str
    name: str
    fn: Callable[..., Any]
    param_specs: dict[str, Param] = field(default_factory=dict)
    formula: str = ""
    source: str = ""
    needs: Needs = field(default_factory=Needs)
    #: the no-op part of its kind (no KL term, no transform): nothing to combine with or to report
    neutral: bool = False
    #: what a pair loss reads (defaults for every other kind)
    traits: PairLossTraits = field(default_factory=PairLossTraits)

    @property
    def uses_logit(self) -> bool:
        return self.traits.uses_logit

    @property
    def uses_scores(self) -> bool:
        return self.traits.uses_scores

    @property
    def uses_prior(self) -> bool:
        return self.traits.uses_prior

    @property
    def listwise(self) -> bool:
        return self.traits.listwise

    @property
    def mixes(self) -> str | None:
        return self.traits.mixes

    @property
    def stateful(self) -> bool:
        """Registered as a :class:`StatefulPart` class: each objective makes its own instance."""
        return isinstance(self.fn, type)

    @property
    def params(self) -> dict[str, Any]:
        """Parameter defaults by name."""
        return {k: p.default for k, p in self.param_specs.items()}

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.needs.inputs

    @property
    def kl_direction(self) -> str | None:
        return self.needs.kl_direction

    @property
    def needs_reference(self) -> bool:
        return self.needs.reference

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()


_REGISTRY: dict[str, dict[str, Part]] = {kind: {} for kind in KINDS}
#: presets declared by parts, in registration order (``unipo.objective.presets`` adds them to its table)
PART_PRESETS: list[tuple[str, str, PresetSpec]] = []


def register(kind: str, name: str, *, params: dict[str, Param] | None = None, formula: str = "",
             source: str = "", needs: Needs | None = None, uses_logit: bool = True, uses_scores: bool = True,
             neutral: bool = False, preset: PresetSpec | None = None, listwise: bool = False,
             uses_prior: bool = True, mixes: str | None = None) -> Callable:
    """Decorator: register ``fn`` as part ``name`` of ``kind`` (its signature is the kind's protocol in
    :mod:`unipo.objective.protocols`); ``preset`` also declares a named variant that uses it. ``uses_logit``,
    ``uses_scores``, ``uses_prior``, ``listwise`` and ``mixes`` are a pair loss's :class:`PairLossTraits`."""
    if kind not in KINDS:
        raise KeyError(f"unknown part kind {kind!r}; kinds are {list(KINDS)}")
    specs = dict(params or {})
    bad = [k for k, v in specs.items() if not isinstance(v, Param)]
    if bad:
        raise TypeError(f"{kind}={name}: parameters {bad} must be declared as Param(default, ...)")
    traits = PairLossTraits(uses_logit=uses_logit, uses_scores=uses_scores, uses_prior=uses_prior,
                            listwise=listwise, mixes=mixes)
    if kind != "pair_loss" and traits != PairLossTraits():
        raise TypeError(f"{kind}={name}: uses_logit, uses_scores, uses_prior, listwise and mixes describe pair losses "
                        f"only")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY[kind]:
            raise KeyError(f"part {kind}={name} registered twice")
        _REGISTRY[kind][name] = Part(kind=kind, name=name, fn=fn, param_specs=specs, formula=formula, source=source,
                                     needs=needs or Needs(), neutral=neutral, traits=traits)
        if preset is not None:
            PART_PRESETS.append((kind, name, preset))
        return fn

    return deco


def _load_parts() -> None:
    # importing the modules runs their @register decorators
    from unipo.objective import (  # noqa: F401
        aggregation,
        kl_terms,
        links,
        listwise,
        pair_losses,
        pair_weighting,
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


def protocol(kind: str) -> type:
    """The :class:`typing.Protocol` that every part of ``kind`` implements."""
    return PROTOCOLS[kind]
