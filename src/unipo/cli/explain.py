"""Explain presets and compositions as instances of the general objective (for ``unipo variants``).

Everything here is read from the registry (:mod:`unipo.objective.registry`) and the presets
(:mod:`unipo.objective.presets`): adding a part or a preset needs no change in this module. The functions
return plain dicts (JSON-serialisable, for ``--json``) and render them as text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from unipo.objective.config import ObjectiveConfig, resolve
from unipo.objective.inputs import KEYWORDS
from unipo.objective.presets import DEFAULT_PARTS, GLOBAL_PARAM_SPECS, GLOBAL_PARAMS, PRESETS, Preset
from unipo.objective.registry import KINDS, Part, parts

#: the general objective, as ``unipo variants NAME`` prints it
GENERAL_FORMULA = [
    "loss = ℓ(z) + auxiliary terms,   z = β·(h_w − h_l − D) − γ − α_len·(|y_w| − |y_l|)",
    "h = f′(s) (then the one-sided transforms),   s = agg_t( ω_t·(a_t − log ζ_t) )",
    "a_t policy log-prob, ζ prior, ω token weights, agg aggregation, f′ link, D KL term, ℓ pair loss",
    "(Tutnov, Grosnit, Bou-Ammar 2025, arXiv 2501.01544, Eq. 1; Δ = s_w − s_l for the default parts)",
]


def summary(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line, without reST backticks."""
    para = " ".join(doc.strip().split("\n\n", 1)[0].split())
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", para, maxsplit=1)[0]
    return first.replace("``", "`")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, Mapping):  # a mixture's weights
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def part_info(part: Part, params: Mapping[str, Any] | None = None, *, default: bool = False) -> dict[str, Any]:
    """What a user needs to know about one part (with its parameter values under ``params``)."""
    values = {k: _jsonable((params or {}).get(k, v)) for k, v in part.params.items()}
    info = {
        "kind": part.kind,
        "name": part.name,
        "is_default": default,
        "formula": part.formula,
        "source": part.source,
        "summary": summary(part.doc),
        "doc": " ".join(part.doc.split()),
        "params": values,
        "param_defaults": {k: _jsonable(v) for k, v in part.params.items()},
        "inputs": list(part.inputs),
        "needs_reference": part.needs_reference,
    }
    if part.kl_direction:
        info["kl_direction"] = part.kl_direction
    if part.kind == "pair_loss":
        info["uses_logit"] = part.uses_logit
    return info


def _key_params(preset: Preset) -> dict[str, Any]:
    """The preset's own parameter values (those it sets, not the defaults it inherits)."""
    return {k: _jsonable(v) for k, v in preset.params.items()}


def preset_rows() -> list[dict[str, Any]]:
    """One row per preset for the ``unipo variants`` table."""
    return [{
        "preset": p.name,
        "parts": dict(p.parts),
        "params": _key_params(p),
        "formula": p.formula,
        "source": p.source,
        "note": p.note,
    } for p in PRESETS.values()]


def explain(variant: str | Mapping[str, Any] | ObjectiveConfig,
            overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Explain a preset name or a composition (``{"preset": ..., part/param: ...}``) as an instance of the
    general objective. Unknown names and bad compositions raise :class:`unipo.errors.ConfigError`."""
    cfg = variant if isinstance(variant, ObjectiveConfig) else resolve(variant, overrides)
    preset = PRESETS[cfg.name]
    base_parts = {**DEFAULT_PARTS, **preset.parts}
    # what the parameters would be without parameter overrides: the globals, the selected parts'
    # defaults, then the preset's own values
    base_params: dict[str, Any] = dict(GLOBAL_PARAMS)
    for kind in KINDS:
        base_params.update(parts(kind)[cfg.parts[kind]].params)
    base_params.update({k: v for k, v in preset.params.items() if k in base_params})
    changed_parts = {k: v for k, v in cfg.parts.items() if base_parts[k] != v}
    changed_params = {k: _jsonable(v) for k, v in cfg.params.items()
                      if k not in base_params or base_params[k] != v}
    part_list = []
    for kind in KINDS:
        part = parts(kind)[cfg.parts[kind]]
        info = part_info(part, cfg.params, default=cfg.parts[kind] == DEFAULT_PARTS[kind])
        info["kind_description"] = KINDS[kind]
        info["from_preset"] = kind not in changed_parts
        if part.mixes:
            info["components"] = [{"name": c.name, "weight": w, "formula": c.formula, "source": c.source,
                                   "summary": summary(c.doc)} for c, w in cfg.components(kind)]
        part_list.append(info)
    p = cfg.params
    gamma = float(p["gamma"]) + (float(p["gamma_beta_ratio"]) * float(p["beta"]) if p["gamma_beta_ratio"] else 0.0)
    inputs = ["policy_chosen_logps", "policy_rejected_logps", "chosen_mask", "rejected_mask"]
    for info in part_list:
        for field in info["inputs"]:
            for side in ("chosen", "rejected"):
                key = KEYWORDS[field].format(side)
                if key not in inputs:
                    inputs.append(key)
    if cfg.requirements.gold:  # TPO's gold NLL term: a third response's log-probs (compute_loss's keywords)
        inputs += ["policy_gold_logps", "gold_mask"]
    return {
        "name": cfg.name,
        "composition": bool(changed_parts or changed_params),
        "overrides": {"parts": changed_parts, "params": changed_params},
        "config": {k: _jsonable(v) for k, v in cfg.to_dict().items()},
        "differs_from_dpo": differences(cfg),
        "general_formula": list(GENERAL_FORMULA),
        "parts": part_list,
        "global_params": {k: _jsonable(p[k]) for k in GLOBAL_PARAMS},
        "effective_gamma": gamma,
        "needs_reference": cfg.needs_reference,
        "kl_direction": cfg.kl_direction,
        "required_inputs": inputs,
        "preset": {"name": preset.name, "formula": preset.formula, "source": preset.source,
                   "note": preset.note, "parts": dict(preset.parts), "params": _key_params(preset)},
    }


def differences(cfg: ObjectiveConfig) -> dict[str, Any]:
    """What makes ``cfg`` differ from plain DPO, per part kind and parameter (JSON-ready); a mixture's weights are
    shown with its part (``pair_loss: mixture {sigmoid: 0.8, bco_pair: 0.2}``), not as a parameter of their own."""
    changes = cfg.changes()
    mixed = {cfg.part(kind).mixes for kind in KINDS if cfg.part(kind).mixes}
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if key in mixed:
            continue
        if key in KINDS and cfg.part(key).mixes:
            value = f"{value} {_fmt(cfg.params[cfg.part(key).mixes])}"
        out[key] = _jsonable(value)
    return out


def compare(variants: list[str]) -> dict[str, Any]:
    """Presets side by side, as their differences from plain DPO: ``rows`` holds one row per part kind or parameter
    that any of them changes, with plain DPO's value and each one's (None where it keeps DPO's)."""
    configs = [resolve(v) for v in variants]
    diffs = [differences(c) for c in configs]
    base = resolve("dpo")
    keys = [k for k in KINDS if any(k in d for d in diffs)]
    keys += list(dict.fromkeys(k for d in diffs for k in d if k not in KINDS))
    rows = [{"key": k, "dpo": _jsonable(base.parts.get(k, base.params.get(k))),
             "values": [d.get(k) for d in diffs]} for k in keys]
    return {"names": [c.name for c in configs], "differences": diffs, "rows": rows}


# ----------------------------------------------------------------------------------------- rendering


def _fmt(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kv(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in mapping.items())


def render_table(rows: list[dict[str, Any]] | None = None) -> str:
    """The presets as an aligned text table: name, non-default parts, key parameters, formula."""
    rows = preset_rows() if rows is None else rows
    header = ("preset", "parts (non-default)", "parameters", "loss")
    cells = [header] + [(r["preset"], _kv(r["parts"]) or "-", _kv(r["params"]) or "-", r["formula"])
                        for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(x.ljust(w) for x, w in zip(c[:3], widths, strict=True)) + "  " + c[3])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(c[3]))
    defaults = ", ".join(f"{k}={v}" for k, v in DEFAULT_PARTS.items())
    lines += ["", f"Default parts (plain DPO): {defaults}.",
              f"Global defaults: {_kv(GLOBAL_PARAMS)}.",
              "Explain one: `unipo variants NAME`; a composition: `unipo variants --config FILE.yaml`."]
    return "\n".join(lines)


def render_explain(info: dict[str, Any]) -> str:
    """``info`` from :func:`explain` as readable text."""
    pre = info["preset"]
    out = []
    if info["composition"]:
        changes = _kv({**info["overrides"]["parts"], **info["overrides"]["params"]})
        out.append(f"Composition: preset {info['name']} with {changes}")
    else:
        out.append(f"Preset: {info['name']}")
    diff = info["differs_from_dpo"]
    out.append(f"Differs from plain DPO in: {_kv(diff)}" if diff else "Differs from plain DPO in: nothing")
    out += ["", "The general objective:"] + [f"  {line}" for line in info["general_formula"]]
    out += ["", "Parts (* = differs from plain DPO; + = set by this composition, not by the preset):"]
    for part in info["parts"]:
        mark = "+" if not part["from_preset"] else ("*" if not part["is_default"] else " ")
        out.append(f" {mark} {part['kind']} = {part['name']}    ({part['kind_description']})")
        if part["formula"]:
            out.append(f"      formula: {part['formula']}")
        if part["source"]:
            out.append(f"      source:  {part['source']}")
        if part["summary"]:
            out.append(f"      about:   {part['summary']}")
        for c in part.get("components", []):
            out.append(f"      mixes:   {_fmt(c['weight'])} × {c['name']}: {c['formula']}    ({c['source']})")
        if part["params"]:
            vals = []
            for k, v in part["params"].items():
                d = part["param_defaults"][k]
                vals.append(f"{k}={_fmt(v)}" + ("" if v == d else f" (default {_fmt(d)})"))
            out.append(f"      params:  {', '.join(vals)}")
        if part.get("kl_direction"):
            out.append(f"      KL inputs: per-token KL({part['kl_direction'].replace('||', ' ‖ ')})")
    out += ["", "Global parameters:"]
    for k, v in info["global_params"].items():
        d = GLOBAL_PARAMS[k]
        mark = "*" if v != d else " "
        out.append(f" {mark} {k} = {_fmt(v)}    ({GLOBAL_PARAM_SPECS[k].help if k in GLOBAL_PARAM_SPECS else ''})")
    if info["global_params"].get("gamma_beta_ratio") is not None:
        out.append(f"   effective γ = {_fmt(info['effective_gamma'])}")
    out += ["", f"Needs a reference model: {'yes' if info['needs_reference'] else 'no'}",
            f"Inputs: {', '.join(info['required_inputs'])}"]
    label = "Base preset" if info["composition"] else "Preset"
    out += ["", f"{label} {pre['name']}:", f"  loss:   {pre['formula']}", f"  source: {pre['source']}"]
    if pre["note"]:
        out.append(f"  note:   {pre['note']}")
    if info["composition"]:
        out.append("  (the composition changes the parts marked +; the preset's formula no longer applies as is)")
    out += ["", "As configuration:", "  " + _kv(info["config"])]
    return "\n".join(out)


def render_compare(info: dict[str, Any]) -> str:
    """``info`` from :func:`compare` as an aligned table: a row per part or parameter that one of them changes,
    ``·`` where a variant keeps plain DPO's value."""
    header = ["part / parameter", "dpo", *info["names"]]
    cells = [header] + [[r["key"], _fmt(r["dpo"]), *("·" if v is None else _fmt(v) for v in r["values"])]
                        for r in info["rows"]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += ["", "· = as plain DPO. `unipo variants NAME` explains one part by part."]
    return "\n".join(lines)
