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
    ``token_reference``: a part treats the reference's tokens unequally (a summed reference cannot serve it).
    """

    inputs: frozenset[str]
    kl_direction: str | None
    reference: bool
    live_reference: bool
    signal: str | None
    token_reference: bool = False


@dataclass(frozen=True)
class ObjectiveConfig:
    """A resolved objective: one part per kind and every parameter with its value."""

    name: str
    parts: dict[str, str]
    params: dict[str, Any]

    def part(self, kind: str) -> Part:
        return parts(kind)[self.parts[kind]]

    @property
    def requirements(self) -> Requirements:
        needs = [self.part(kind).needs for kind in KINDS]
        directions = {n.kl_direction for n in needs if n.kl_direction}
        signals = [n.signal for n in needs if n.signal and (n.signal_when is None or self.params.get(n.signal_when))]
        return Requirements(inputs=frozenset(i for n in needs for i in n.inputs),
                            kl_direction=next(iter(directions), None),
                            reference=any(n.reference for n in needs),
                            live_reference=any(n.live_reference for n in needs),
                            signal=signals[0] if signals else None,
                            token_reference=any(n.token_reference for n in needs))

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
        if key in KINDS:
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
    _validate(selected, params)
    return ObjectiveConfig(preset_name, chosen_parts, params)


def _validate(selected: dict[str, Part], params: dict[str, Any]) -> None:
    """Every parameter against its declared :class:`Param`; then the rules that span parts."""
    specs: dict[str, Param] = dict(GLOBAL_PARAM_SPECS)
    for part in selected.values():
        specs.update(part.param_specs)
    for key, spec in specs.items():
        spec.check(key, params[key])
    if params["gamma_beta_ratio"] is not None and params["gamma"]:
        raise ConfigError("give either 'gamma' (absolute SimPO margin) or 'gamma_beta_ratio' (γ/β), not both")
    loss = selected["pair_loss"]
    if not loss.uses_logit:
        ignored = [k for k in ("gamma", "gamma_beta_ratio", "length_alpha") if params[k]]
        if not selected["kl"].neutral:
            ignored.append(f"kl={selected['kl'].name}")
        if ignored:
            on_logit = ", ".join(name for name, part in parts("pair_loss").items() if part.uses_logit)
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
