"""Regenerate the parts of README.md and docs/objective.md that the objective's registry determines.

    python -m unipo.cli.docgen            # rewrite the generated blocks in place
    python -m unipo.cli.docgen --check    # exit 1 (and show the difference) when they are stale

A generated block sits between two markers, and everything outside them is handwritten::

    <!-- BEGIN GENERATED: parts (python -m unipo.cli.docgen; do not edit by hand) -->
    ...
    <!-- END GENERATED: parts -->

Everything is read from the registry (:mod:`unipo.objective.registry`: the kinds and their parts) and the
presets (:mod:`unipo.objective.presets`), through the same helpers as ``unipo variants``
(:mod:`unipo.cli.explain`): a new part or preset needs no change here, only a rerun.
``tests/test_cli_docgen.py`` fails when the committed files differ from what this writes.
This module imports no transformers.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from unipo.cli.explain import _fmt, part_info
from unipo.objective.config import resolve
from unipo.objective.inputs import KEYWORDS
from unipo.objective.presets import DEFAULT_PARTS, PRESETS
from unipo.objective.registry import KINDS, Part, parts

#: which generated blocks each file holds (paths relative to the repository root)
FILES: dict[str, tuple[str, ...]] = {
    "README.md": ("parts", "presets"),
    "docs/objective.md": ("objective-parts", "objective-presets"),
}
COMMAND = "python -m unipo.cli.docgen"
#: the markers; the text after the name on a BEGIN line is free (it is rewritten on every run)
_BEGIN = re.compile(r"^<!-- BEGIN GENERATED: ([A-Za-z0-9_-]+)\b[^\n]*-->[ \t]*$", re.M)
_END = "<!-- END GENERATED: {name} -->"
_ANY_MARKER = re.compile(r"<!-- (?:BEGIN|END) GENERATED: ([A-Za-z0-9_-]+)")


class DocgenError(Exception):
    """A file's markers are missing, unmatched or name an unknown block."""


def begin_marker(name: str) -> str:
    return f"<!-- BEGIN GENERATED: {name} ({COMMAND}; do not edit by hand) -->"


def end_marker(name: str) -> str:
    return _END.format(name=name)


# ------------------------------------------------------------------------------------------- cells


def _cell(text: Any) -> str:
    """One Markdown table cell: on one line, pipes escaped, reST literals and roles as Markdown code."""
    text = " ".join(str(text).split())
    text = re.sub(r":[a-z]+:`", "`", text).replace("``", "`")
    return text.replace("|", "\\|") or "–"


def _code(name: Any) -> str:
    return f"`{name}`"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)])


def _choices(kind: str) -> list[str]:
    """The part names of a kind, its default first, then in registration order."""
    names = list(parts(kind))
    default = DEFAULT_PARTS.get(kind)
    return ([default] if default in names else []) + [n for n in names if n != default]


def _param_defaults(part: Part) -> str:
    info = part_info(part)
    return ", ".join(f"`{k}` = {_fmt(v)}" for k, v in info["param_defaults"].items()) or "–"


def _what_it_does(part: Part) -> str:
    info = part_info(part)
    extra = []
    if info["inputs"]:
        extra.append("inputs: " + ", ".join(_code(KEYWORDS[f].format("<side>"))
                                            for f in info["inputs"]))
    if info.get("kl_direction"):
        extra.append("KL direction: " + info["kl_direction"].replace("||", " ‖ "))
    if info.get("uses_logit") is False:
        extra.append("scores the sides separately")
    text = info["doc"] + (f" ({'; '.join(extra)})" if extra else "")
    return _cell(text)


def _changes(name: str) -> str:
    """What a preset changes relative to plain DPO, as ``key=value`` items."""
    changes: Mapping[str, Any] = resolve(name).changes()
    return ", ".join(_code(f"{k}={_fmt(v)}") for k, v in changes.items()) or "–"


# ------------------------------------------------------------------------------------------ blocks


def render_readme_parts() -> str:
    """README: one row per part kind, with its choices (the default first)."""
    rows = []
    for kind, description in KINDS.items():
        names = _choices(kind)
        choices = ", ".join(_code(n) + (" (default)" if n == DEFAULT_PARTS.get(kind) else "") for n in names)
        rows.append([_code(kind), _cell(description), choices])
    return _table(["part", "what it is", "choices"], rows)


def render_readme_presets() -> str:
    """README: the preset names, and where the mathematics of every variant is written down."""
    names = ", ".join(PRESETS)
    lines = textwrap.wrap(f"Presets ({len(PRESETS)}): {names}.", width=110, break_long_words=False,
                          break_on_hyphens=False)
    lines += textwrap.wrap(
        "The mathematical reference for every variant (each loss as its paper and its authors' released code "
        "define it, their defaults, where they disagree): [docs/variants.md](docs/variants.md).",
        width=110, break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def render_objective_parts() -> str:
    """docs/objective.md: every kind (a heading, its default) with a table of every part of it."""
    sections = []
    for kind, description in KINDS.items():
        rows = [[_code(part.name), _param_defaults(part), _cell(part.formula), _cell(part.source),
                 _what_it_does(part)]
                for part in (parts(kind)[n] for n in _choices(kind))]
        default = DEFAULT_PARTS.get(kind)
        sections.append("\n\n".join([
            f"### `{kind}`: {description}",
            f"Default: `{default}`." if default else "No default.",
            _table(["name", "parameters (default)", "formula", "source", "what it does"], rows),
        ]))
    return "\n\n".join(sections)


def render_objective_presets() -> str:
    """docs/objective.md: one table of every preset."""
    rows = [[_code(p.name), _changes(p.name), _cell(p.formula), _cell(p.source), _cell(p.note)]
            for p in PRESETS.values()]
    return _table(["preset", "changes from DPO", "loss per example", "source", "note"], rows)


_RENDERERS = {
    "parts": render_readme_parts,
    "presets": render_readme_presets,
    "objective-parts": render_objective_parts,
    "objective-presets": render_objective_presets,
}


def render_blocks() -> dict[str, str]:
    """Every generated block by name (the text between its markers), rendered from the registry."""
    return {name: fn() for name, fn in _RENDERERS.items()}


# ------------------------------------------------------------------------------------------- files


def apply_blocks(text: str, blocks: Mapping[str, str], expected: Iterable[str] = (), where: str = "") -> str:
    """``text`` with each generated block replaced by ``blocks[name]`` (markers rewritten too).

    Raises :class:`DocgenError` for a block that is not in ``blocks``, a BEGIN without its END, a block
    given twice, or a block of ``expected`` that the text lacks."""
    where = f"{where}: " if where else ""
    out, pos, seen = [], 0, []
    for m in _BEGIN.finditer(text):
        if m.start() < pos:
            raise DocgenError(f"{where}'{m.group(0)}' sits inside another generated block")
        name = m.group(1)
        if name not in blocks:
            raise DocgenError(f"{where}unknown generated block {name!r}; known: {', '.join(blocks)}")
        if name in seen:
            raise DocgenError(f"{where}generated block {name!r} appears twice")
        end = text.find(end_marker(name), m.end())
        if end < 0:
            raise DocgenError(f"{where}'{m.group(0)}' has no '{end_marker(name)}'")
        inner = text[m.end():end]
        if _ANY_MARKER.search(inner):
            raise DocgenError(f"{where}generated block {name!r} contains another marker")
        out += [text[pos:m.start()], begin_marker(name), "\n", blocks[name].strip("\n"), "\n", end_marker(name)]
        pos = end + len(end_marker(name))
        seen.append(name)
    out.append(text[pos:])
    missing = [n for n in expected if n not in seen]
    if missing:
        raise DocgenError(f"{where}no generated block {', '.join(map(repr, missing))}: add the lines "
                          f"'{begin_marker(missing[0])}' and '{end_marker(missing[0])}' where it belongs")
    stray = [m.group(0) for m in re.finditer(r"<!-- END GENERATED: [^\n]*-->", "".join(out))
             if m.group(0) not in {end_marker(n) for n in seen}]
    if stray:
        raise DocgenError(f"{where}'{stray[0]}' has no BEGIN marker")
    return "".join(out)


def default_root() -> Path:
    """The checkout this module lives in (src/unipo/cli/docgen.py), else the current directory."""
    root = Path(__file__).resolve().parents[3]
    return root if all((root / f).is_file() for f in FILES) else Path.cwd()


def generate(root: Path | None = None) -> dict[str, tuple[str, str]]:
    """``{relative path: (current text, generated text)}`` for every file that holds generated blocks."""
    root = default_root() if root is None else Path(root)
    blocks = render_blocks()
    result = {}
    for rel, names in FILES.items():
        path = root / rel
        if not path.is_file():
            raise DocgenError(f"{path}: no such file (give the repository root with --root)")
        old = path.read_text(encoding="utf-8")
        result[rel] = (old, apply_blocks(old, {n: blocks[n] for n in names}, names, where=rel))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m unipo.cli.docgen", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 when a generated block differs from the registry")
    ap.add_argument("--root", type=Path, default=None,
                    help="the repository root (default: the checkout this module is in, else the current "
                         "directory)")
    args = ap.parse_args(argv)
    try:
        files = generate(args.root)
    except DocgenError as exc:
        print(f"docgen: error: {exc}", file=sys.stderr)
        return 2
    root = default_root() if args.root is None else args.root
    stale = [rel for rel, (old, new) in files.items() if old != new]
    if args.check:
        for rel in stale:
            old, new = files[rel]
            diff = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{rel} (committed)",
                                             f"{rel} (generated)", lineterm="", n=1))
            print("\n".join(diff[:60] + ([f"... ({len(diff) - 60} more diff lines)"] if len(diff) > 60 else [])),
                  file=sys.stderr)
        if stale:
            print(f"docgen: {', '.join(stale)} out of date with the registry: run `{COMMAND}`", file=sys.stderr)
            return 1
        print(f"docgen: {', '.join(files)} up to date")
        return 0
    for rel in stale:
        (root / rel).write_text(files[rel][1], encoding="utf-8")
        print(f"docgen: updated {rel}")
    if not stale:
        print(f"docgen: {', '.join(files)} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
