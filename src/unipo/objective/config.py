"""Resolve a variant (a preset name or a mapping with overrides) into a validated configuration.

A mapping looks like ``{"preset": "simpo", "weights": "bmc", "link": "js", "beta": 2.5}``: the preset is
the starting point, part keys (``prior``, ``weights``, ``aggregation``, ``link``, ``chosen_transform``,
``rejected_transform``, ``kl``, ``pair_loss``) replace parts, and everything else is a parameter. Unknown
keys, parameters of parts that are not selected and combinations that cannot work are rejected with a
message that says what is wrong and what is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from unipo.errors import ConfigError
from unipo.objective.presets import DEFAULT_PARTS, GLOBAL_PARAM_SPECS, GLOBAL_PARAMS, PRESETS
from unipo.objective.registry import KINDS, Param, Part, parts


@dataclass(frozen=True)
class Requirements:
    """What a resolved objective needs from the layers below it, gathered from its parts' :class:`Needs`.

    ``inputs``: the per-token inputs the parts read; ``kl_direction``: per-position KL over the vocabulary
    in this direction (None: none); ``reference``: reference log-probs; ``live_reference``: the reference
    model at every step; ``signal``: the default token signal that supplies an input when the data does not;
    ``perturbation``: ε of the perturbed policies whose log-probs a part reads (ε-DPO), else None.
    ``token_reference``: a part treats the reference's tokens unequally (a summed reference cannot serve it).
    ``gold``: the policy's log-probs of a third, gold response per pair (TPO's NLL term, ``gold_nll_weight`` > 0):
    the data's gold column is tokenised and forwarded only then.
    """

    inputs: frozenset[str]
    kl_direction: str | None
    reference: bool
    live_reference: bool
    signal: str | None
    perturbation: float | None = None
    token_reference: bool = False
    gold: bool = False


@dataclass(frozen=True)
class ObjectiveConfig:
    """A resolved objective: one part per kind and every parameter with its value."""

    name: str
    parts: dict[str, str]
    params: dict[str, Any]

    def part(self, kind: str) -> Part:
        return parts(kind)[self.parts[kind]]

    def components(self, kind: str) -> list[tuple[Part, float]]:
        """The parts of ``kind`` that act, with their weights: the mixed parts of a mixture (``pair_loss:
        {sigmoid: 0.8, bco_pair: 0.2}``), or the one selected part with weight 1."""
        return mixture_components(self.part(kind), self.params)

    @cached_property
    def requirements(self) -> Requirements:
        """Gathered from the parts' :class:`Needs` once per configuration (a resolved configuration never changes:
        ``Objective.requirements`` and every step read this one value)."""
        needs = [c.needs for kind in KINDS for c, _ in [(self.part(kind), 1.0), *self.components(kind)]]
        directions = {n.kl_direction for n in needs if n.kl_direction}
        signals = [n.signal for n in needs if n.signal and (n.signal_when is None or self.params.get(n.signal_when))]
        perturbations = [float(self.params[n.perturbation]) for n in needs if n.perturbation]
        return Requirements(inputs=frozenset(i for n in needs for i in n.inputs),
                            kl_direction=next(iter(directions), None),
                            reference=any(n.reference for n in needs),
                            live_reference=any(n.live_reference for n in needs),
                            signal=signals[0] if signals else None,
                            perturbation=perturbations[0] if perturbations else None,
                            token_reference=any(n.token_reference for n in needs),
                            gold=bool(self.params.get("gold_nll_weight")))

    @property
    def needs_reference(self) -> bool:
        return self.requirements.reference

    @property
    def kl_direction(self) -> str | None:
        return self.requirements.kl_direction

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.name, **self.parts, **self.params}

    def changes(self) -> dict[str, Any]:
        """The parts and parameters that differ from plain DPO's (what makes this variant itself)."""
        defaults: dict[str, Any] = {**DEFAULT_PARTS, **GLOBAL_PARAMS}
        for kind, name in self.parts.items():
            defaults.update(parts(kind)[name].params)
        return {k: v for k, v in {**self.parts, **self.params}.items() if defaults.get(k, object()) != v}


def normalise_name(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def mixture_components(part: Part, params: Mapping[str, Any]) -> list[tuple[Part, float]]:
    """``part``'s mixed parts with their weights when it is a mixture (``Part.mixes``), else ``[(part, 1.0)]``."""
    if part.mixes is None:
        return [(part, 1.0)]
    table = parts(part.kind)
    return [(table[name], float(weight)) for name, weight in (params.get(part.mixes) or {}).items()]


def _check_mixture(part: Part, weights: Any) -> None:
    """A mixture names known parts of its kind, none of them a mixture, listwise or stateful (with the reason)."""
    if not weights:
        raise ConfigError(f"{part.kind}={part.name} needs {part.mixes}: the parts mixed and their weights, e.g. "
                          f"{part.kind}: {{sigmoid: 0.8, bco_pair: 0.2}}")
    table = parts(part.kind)
    for name in weights:
        if name not in table:
            raise ConfigError(f"unknown {part.kind} {name!r} in the mixture{_suggest(name, table)}; allowed: "
                              f"{', '.join(n for n, p in table.items() if not (p.mixes or p.stateful or p.listwise))}")
        member = table[name]
        if member.mixes is not None:
            raise ConfigError(f"a {part.kind} mixture cannot contain another mixture ({name!r}): list its parts")
        if member.stateful:
            raise ConfigError(f"{part.kind}={name} keeps state across batches (moving statistics and a selection of "
                              f"pairs that reweights the batch, as β-DPO's filtering does) and cannot be one term of a "
                              f"mixture: its selection would drop the other terms' pairs too; train it alone")
        if member.listwise:
            raise ConfigError(f"{part.kind}={name} compares one chosen response with several rejected ones and "
                              f"cannot be mixed with pair losses over one rejected response; train it alone")


def _mixed_params(selected: dict[str, Part], weights_by_kind: dict[str, Any],
                  user_params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of the mixed parts, with their defaults. Mixed parts that share a parameter (TRL's
    ``label_smoothing`` of robust and exo_pair) share one value: where their defaults differ, the user must give it."""
    out: dict[str, Any] = {}
    for kind, part in selected.items():
        if part.mixes is None:
            continue
        owners: dict[str, list[tuple[str, Any]]] = {}
        for name in weights_by_kind[kind]:
            for key, default in parts(kind)[name].params.items():
                owners.setdefault(key, []).append((name, default))
        for key, found in owners.items():
            if len({repr(d) for _, d in found}) > 1 and key not in user_params:
                listed = ", ".join(f"{n}: {d}" for n, d in found)
                raise ConfigError(f"the mixed {kind} parts share the parameter {key!r} with different defaults "
                                  f"({listed}): give {key} explicitly")
            out[key] = found[0][1]
    return out


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: methods that are not an objective but a training behaviour: where ``unipo train`` configures them
TRAINING_BEHAVIOURS = {
    "tr_dpo": "TR-DPO (arXiv 2404.09656) changes where the reference comes from, not the loss: train variant "
              "dpo (or any variant with a reference) with ref_sync: soft (ref_sync_alpha, ref_sync_steps) or "
              "ref_sync: hard in the training configuration (docs/objective.md, 'Training behaviours')",
}
TRAINING_BEHAVIOURS["trdpo"] = TRAINING_BEHAVIOURS["tr_dpo"]
TRAINING_BEHAVIOURS["bema"] = (
    "BEMA (arXiv 2508.00180) changes where the reference comes from, not the loss: train any variant with a reference "
    "with ref_sync: bema (ref_sync_bema, ref_sync_steps) in the training configuration (docs/objective.md, "
    "'Training behaviours')")


def with_beta(variant: str | Mapping[str, Any], beta: float | None, *, source: str) -> dict[str, Any]:
    """The variant as a mapping, with a β given outside it (``source``: TrainConfig's ``beta``, DPOConfig's ``beta``).

    One rule wherever β can be given twice: given once, it is used (over the preset's default); given in both places
    with different values, refused in one line naming both; the same value in both is fine."""
    spec = {"preset": variant} if isinstance(variant, str) else dict(variant)
    if beta is None:
        return spec
    check_beta(spec.get("beta"), beta, source=source)
    return {**spec, "beta": beta}


def check_beta(variant_beta: Any, beta: float, *, source: str) -> None:
    """Refuse two different explicit values of β: the variant's (None: not given) and ``source``'s."""
    if variant_beta is None:
        return
    number = isinstance(variant_beta, int | float) and not isinstance(variant_beta, bool)
    if not number or float(variant_beta) != float(beta):
        raise ConfigError(f"{source}={beta} but the variant sets beta={variant_beta}: give beta in one place (or the "
                          f"same value in both)")


def _params_owner() -> dict[str, str]:
    owner = {}
    for kind in KINDS:
        for name, part in parts(kind).items():
            for p in part.params:
                owner.setdefault(p, f"{kind}={name}")
    return owner


def resolve(variant: str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> ObjectiveConfig:
    """Turn a preset name or a mapping (plus keyword overrides) into an :class:`ObjectiveConfig`."""
    spec: dict[str, Any] = {}
    if isinstance(variant, Mapping):
        spec.update(variant)
        preset_name = spec.pop("preset", None) or spec.pop("variant", None) or "dpo"
    elif isinstance(variant, str):
        preset_name = variant
    else:
        raise ConfigError(f"variant must be a preset name or a mapping, got {type(variant).__name__}")
    spec.update(overrides or {})
    preset_name = normalise_name(preset_name)
    if preset_name in TRAINING_BEHAVIOURS:
        raise ConfigError(f"{preset_name!r} is not a preset: {TRAINING_BEHAVIOURS[preset_name]}")
    if preset_name not in PRESETS:
        raise ConfigError(f"unknown variant {preset_name!r}{_suggest(preset_name, PRESETS)}; "
                          f"presets are: {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]

    chosen_parts = {**DEFAULT_PARTS, **preset.parts}
    user_params: dict[str, Any] = {}
    for key, value in spec.items():
        if key in KINDS and isinstance(value, Mapping):  # a weighted mixture of parts of this kind
            mixer = next((part for part in parts(key).values() if part.mixes), None)
            if mixer is None:
                raise ConfigError(f"{key} takes one part name, got a mapping {dict(value)!r}; only "
                                  f"{', '.join(k for k in KINDS if any(p.mixes for p in parts(k).values()))} can mix")
            chosen_parts[key] = mixer.name
            user_params[mixer.mixes] = {normalise_name(k): v for k, v in value.items()}
        elif key in KINDS:
            name = normalise_name(value)
            table = parts(key)
            if name not in table:
                raise ConfigError(f"unknown {key} {value!r}{_suggest(name, table)}; "
                                  f"allowed {key} values: {', '.join(table)}")
            chosen_parts[key] = name
        else:
            user_params[key] = value

    selected = {kind: parts(kind)[name] for kind, name in chosen_parts.items()}
    allowed: dict[str, Any] = dict(GLOBAL_PARAMS)
    for part in selected.values():
        allowed.update(part.params)
    mixtures = {kind: user_params.get(part.mixes, preset.params.get(part.mixes))
                for kind, part in selected.items() if part.mixes}
    for kind, weights in mixtures.items():
        selected[kind].param_specs[selected[kind].mixes].check(selected[kind].mixes, weights)
        _check_mixture(selected[kind], weights)
    allowed.update(_mixed_params(selected, mixtures, user_params))
    owner = _params_owner()
    for key in user_params:
        if key in allowed:
            continue
        if key in owner:
            kind = owner[key].split("=")[0]
            raise ConfigError(f"parameter {key!r} belongs to {owner[key]}, but this objective uses "
                              f"{kind}={chosen_parts[kind]}; set {owner[key].replace('=', ': ')} to use it")
        raise ConfigError(f"unknown key {key!r}{_suggest(key, list(allowed) + list(KINDS))}; allowed keys: "
                          f"part kinds {', '.join(KINDS)} and parameters {', '.join(sorted(allowed))}")

    params = {**allowed, **{k: v for k, v in preset.params.items() if k in allowed}}
    if "gamma_beta_ratio" in user_params and "gamma" not in user_params:
        params["gamma"] = 0.0  # the user's ratio replaces the preset's absolute γ
    params.update(user_params)
    for kind, part in selected.items():
        if part.mixes:  # normalised names (the preset's or the user's), as resolved
            params[part.mixes] = {normalise_name(k): v for k, v in mixtures[kind].items()}
    _validate(selected, params)
    return ObjectiveConfig(preset_name, chosen_parts, params)


@dataclass(frozen=True)
class _Effective:
    """What a pair loss (or a mixture of them: any of its components) reads, for the rules that span parts."""

    name: str
    uses_logit: bool
    uses_scores: bool
    uses_prior: bool


def _effective_loss(loss: Part, params: Mapping[str, Any]) -> _Effective:
    members = [p for p, _ in mixture_components(loss, params)]
    name = loss.name if loss.mixes is None else "{" + ", ".join(p.name for p in members) + "}"
    return _Effective(name, any(p.uses_logit for p in members), any(p.uses_scores for p in members),
                      any(p.uses_prior for p in members))


def _validate(selected: dict[str, Part], params: dict[str, Any]) -> None:
    """Every parameter against its declared :class:`Param` (a mixture's parts' too); then the rules that span
    parts."""
    specs: list[tuple[str, Param]] = list(GLOBAL_PARAM_SPECS.items())
    for part in selected.values():
        specs += [(k, spec) for member, _ in mixture_components(part, params) for k, spec in member.param_specs.items()]
        specs += list(part.param_specs.items())
    for key, spec in specs:
        spec.check(key, params[key])
    if params["gamma_beta_ratio"] is not None and params["gamma"]:
        raise ConfigError("give either 'gamma' (absolute SimPO margin) or 'gamma_beta_ratio' (γ/β), not both")
    loss = _effective_loss(selected["pair_loss"], params)
    if not loss.uses_logit:
        ignored = [k for k in ("gamma", "gamma_beta_ratio", "length_alpha") if params[k]]
        if not selected["kl"].neutral:
            ignored.append(f"kl={selected['kl'].name}")
        if ignored:
            on_logit = ", ".join(name for name, part in parts("pair_loss").items()
                                 if part.uses_logit and not part.mixes)
            raise ConfigError(f"pair_loss={loss.name} scores each side separately and would ignore "
                              f"{', '.join(ignored)}; use a pair loss on the combined logit ({on_logit}) with these")
    transforms = [f"{k}={selected[k].name}" for k in ("chosen_transform", "rejected_transform")
                  if not selected[k].neutral]
    if transforms and not selected["prior"].needs.reference:
        raise ConfigError(f"{', '.join(transforms)} compare a side's log-ratio with 0, but with prior="
                          f"{selected['prior'].name} the score is log π ≤ 0 everywhere (MinorDPO would never train "
                          f"the rejected side, DPOP would always penalise the chosen one); use prior: reference")
    if not loss.uses_scores:
        unused = [f"{k}={selected[k].name}" for k in ("link", "chosen_transform", "rejected_transform")
                  if not selected[k].neutral]
        if unused:
            raise ConfigError(f"pair_loss={loss.name} compares the policy's and the prior's log-probabilities "
                              f"directly and would ignore {', '.join(unused)}; drop them or use another pair loss")
    if not loss.uses_prior and selected["prior"].needs.reference:
        raise ConfigError(f"pair_loss={loss.name} reads the policy's log-probabilities only and would ignore "
                          f"prior={selected['prior'].name} (a reference would be computed for nothing, a learned "
                          f"prior never trained); use prior: none")
    directions = {p.needs.kl_direction for p in selected.values() if p.needs.kl_direction}
    if len(directions) > 1:
        raise ConfigError(f"these parts need per-position KL in different directions {sorted(directions)}; "
                          f"choose parts that agree")
