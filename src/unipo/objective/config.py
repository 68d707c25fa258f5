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
from unipo.objective.presets import DEFAULT_PARTS, GLOBAL_PARAMS, PRESETS
from unipo.objective.registry import KINDS, Part, parts


@dataclass(frozen=True)
class ObjectiveConfig:
    """A resolved objective: one part per kind and every parameter with its value."""

    name: str
    parts: dict[str, str]
    params: dict[str, Any]

    def part(self, kind: str) -> Part:
        return parts(kind)[self.parts[kind]]

    @property
    def needs_reference(self) -> bool:
        return any(self.part(k).needs_reference for k in KINDS)

    @property
    def kl_direction(self) -> str | None:
        return self.part("kl").kl_direction

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
    _validate(chosen_parts, selected, params)
    return ObjectiveConfig(preset_name, chosen_parts, params)


def _number(params: dict, key: str, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> None:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"parameter {key!r} must be a number, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"parameter {key!r} = {value} is out of range: must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ConfigError(f"parameter {key!r} = {value} is out of range: must be {'<' if hi_open else '<='} {hi}")


def _validate(chosen: dict[str, str], selected: dict[str, Part], params: dict[str, Any]) -> None:
    _number(params, "beta", 0, lo_open=True)
    for key in ("gamma", "length_alpha"):
        _number(params, key)
    for key in ("nll_weight", "l1_weight", "prior_reg_weight"):
        _number(params, key, 0)
    if params["gamma_beta_ratio"] is not None:
        _number(params, "gamma_beta_ratio")
        if params["gamma"]:
            raise ConfigError("give either 'gamma' (absolute SimPO margin) or 'gamma_beta_ratio' (γ/β), not both")
    if "label_smoothing" in params:
        hi_open = chosen["pair_loss"] in ("robust", "exo_pair")
        lo_open = chosen["pair_loss"] == "exo_pair"
        _number(params, "label_smoothing", 0, 0.5 if hi_open else 1, lo_open=lo_open, hi_open=hi_open)
    if "f_alpha" in params:
        _number(params, "f_alpha", 0, 1, lo_open=True, hi_open=True)
    for key in ("bmc_delta", "dpop_lambda", "kl_alpha", "kl_eta", "discopop_tau"):
        if key in params:
            _number(params, key, 0, lo_open=key in ("bmc_delta", "discopop_tau"))
    for key in ("bmc_reference_weighting", "kl_stopgrad_chosen", "kl_masks"):
        if key in params and not isinstance(params[key], bool):
            raise ConfigError(f"parameter {key!r} must be true or false, got {params[key]!r}")
    loss = selected["pair_loss"]
    if not loss.uses_logit:
        ignored = [k for k in ("gamma", "gamma_beta_ratio", "length_alpha") if params[k]]
        if chosen["kl"] != "none":
            ignored.append(f"kl={chosen['kl']}")
        if ignored:
            raise ConfigError(f"pair_loss={loss.name} scores each side separately and would ignore "
                              f"{', '.join(ignored)}; use a pair loss on the combined logit "
                              f"(sigmoid, cdpo, robust, hinge, ipo, exo_pair, discopop) with these")
    if chosen["kl"] == "tisdpo" and chosen["weights"] == "none":
        pass  # unweighted TIS-DPO KL term: allowed (w = 1)
