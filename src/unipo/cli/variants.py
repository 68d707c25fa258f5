"""``unipo variants``: list the presets, or explain one preset or composition as an instance of the
general objective.

Examples::

    unipo variants                       # every preset: non-default parts, key parameters, loss
    unipo variants simpo                 # SimPO part by part, with formulas, sources and parameters
    unipo variants mpo wpo simpo         # side by side: the parts and parameters each sets, vs plain DPO
    unipo variants simpo --set weights=bmc --set link=js
    unipo variants --config my_objective.yaml   # {preset: simpo, weights: bmc, link: js, beta: 2.5}
    unipo variants --json                # machine-readable (also with NAME / --config)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from unipo.cli.args import parse_assignments
from unipo.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "variants",
        help="list the preference-optimisation presets, or explain one as parts of the general objective",
        description=(
            "Without arguments: a table of every preset (its parts that differ from plain DPO, its key "
            "parameters and its loss). With NAME, or --config FILE.yaml (a mapping: preset plus part and "
            "parameter overrides, e.g. {preset: simpo, weights: bmc, link: js}): the objective part by "
            "part, with formulas, sources and parameter values. With several NAMEs: side by side, the parts "
            "and parameters each one sets where it differs from plain DPO."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("names", nargs="*", default=[], metavar="NAME",
                   help="a preset to explain; several: compared side by side")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML (or JSON) file with a mapping: preset plus part / parameter overrides; the "
                        "mapping may also sit under a top-level 'objective' key")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a part or parameter (repeatable; VALUE is read as YAML: 2.5, true, js)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read the objective mapping from a YAML / JSON file (top level, or under ``objective:``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("objective"), dict):
        data = data["objective"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping such as {{preset: simpo, weights: bmc, link: js}}, "
                          f"got {type(data).__name__}")
    return data


def run(args: argparse.Namespace) -> int:
    from unipo.cli import explain as ex

    overrides = parse_assignments(args.overrides)
    if len(args.names) > 1:
        if args.config is not None or overrides:
            raise ConfigError("several NAMEs are compared as presets: give --config / --set with one NAME")
        info = ex.compare(args.names)
        return _emit(json.dumps(info, ensure_ascii=False, indent=2) if args.json else ex.render_compare(info))
    args.name = args.names[0] if args.names else None
    if args.name is not None and args.config is not None:
        raise ConfigError("give a preset NAME or --config FILE, not both (put the preset in the file)")
    if args.config is not None:
        spec: Any = {**load_config_file(args.config), **overrides}
    elif args.name is not None:
        if "preset" in overrides or "variant" in overrides:
            raise ConfigError("give the preset either as NAME or as --set preset=..., not both")
        spec = {"preset": args.name, **overrides} if overrides else args.name
    elif overrides:
        spec = overrides  # a composition from --set alone (preset=... or plain DPO)
    else:
        rows = ex.preset_rows()
        return _emit(json.dumps(rows, ensure_ascii=False, indent=2) if args.json else ex.render_table(rows))
    info = ex.explain(spec)
    return _emit(json.dumps(info, ensure_ascii=False, indent=2) if args.json else ex.render_explain(info))


def _emit(text: str) -> int:
    """Print; a closed pipe (``unipo variants | head``) is not an error."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit does not raise again
    return 0
