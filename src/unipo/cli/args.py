"""Command-line flags generated from dataclass fields, in the Hugging Face convention.

Every option of a command is a dataclass field whose ``metadata`` holds its ``help`` (and ``choices`` where
the value set is closed, ``nargs``/``const``/``action``/``metavar`` where the flag needs them).
transformers' :class:`~transformers.HfArgumentParser` turns the fields into argparse arguments, as TRL's
``TrlParser`` does: ``--max-steps`` and ``--max_steps`` for ``max_steps``; ``X | None`` as an ``X`` flag;
``dict | str | None`` as a string flag; ``bool`` as ``--flag [BOOL]`` (``--flag`` alone is true) plus
``--no-flag`` when the default is true; ``list[X]`` as ``nargs="+"``; a dataclass with an
``_argument_group_name`` class attribute becomes a titled group of the help.

:func:`dataclass_parser` then adapts the generated arguments to layered configuration
(dataclass default < ``--config`` YAML < flags < ``--set KEY=VALUE``):

- every default becomes ``argparse.SUPPRESS``, so the parsed namespace holds only the flags actually given
  and a flag that is not given never overrides a value from a YAML file; the field's default is written
  into the help text instead;
- a field whose type admits a mapping (``dict | str | None``) reads its value as YAML, so
  ``--variant '{preset: simpo, link: js}'`` is a mapping and ``--variant simpo`` a name;
- the hyphenated spelling is listed first in the help (both spellings are accepted);
- a field whose metadata has ``commands`` is a flag of those commands only (``()``: of none; a setting given
  from Python alone, such as :class:`unipo.eval.config.EvalOptions`'s ``seed``): one options dataclass can
  serve two commands that expose different parts of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

import yaml

from unipo.io.assignments import parse_assignments

__all__ = ["dataclass_parser", "add_command", "given", "to_dataclass", "yaml_value", "parse_assignments",
           "show_value"]


def yaml_value(text: str) -> Any:
    """An argparse ``type``: the flag's value read as YAML (``0.1`` a float, ``{r: 8}`` a mapping)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"not valid YAML ({str(exc).splitlines()[0]}): {text!r}") from None


def show_value(value: Any) -> str:
    """A default as the help text shows it (YAML spelling: ``null``, ``true``, ``{r: 16}``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return " ".join(show_value(v) for v in value) if value else "[]"
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return str(value)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _takes_mapping(hint: Any) -> bool:
    """``dict``, ``dict[K, V]``, ``Any`` or a union holding one of them (``dict | str | None``)."""
    if hint is dict or hint is Any or typing.get_origin(hint) is dict:
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and any(
        _takes_mapping(arg) for arg in typing.get_args(hint))


def is_flag(f: dataclasses.Field, command: str | None) -> bool:
    """Whether field ``f`` is a flag of ``command`` (every field is, unless its metadata's ``commands`` says
    otherwise; ``command`` None: a parser for no particular command, where only unrestricted fields are)."""
    return f.init and ("commands" not in f.metadata or command in f.metadata["commands"])


def _flag_view(dtype: type, command: str | None) -> type:
    """``dtype`` itself, or, when some of its fields say which commands they are flags of, a dataclass of the
    same name and group holding only the flags of ``command``, without that key in their metadata
    (HfArgumentParser makes a flag of every field and hands the metadata to argparse)."""
    fields = dataclasses.fields(dtype)
    if not any("commands" in f.metadata for f in fields):
        return dtype
    hints = typing.get_type_hints(dtype)
    specs = [(f.name, hints[f.name], dataclasses.field(
        default=f.default, default_factory=f.default_factory,
        metadata={k: v for k, v in f.metadata.items() if k != "commands"})) for f in fields if is_flag(f, command)]
    namespace = {k: v for k, v in vars(dtype).items() if k == "_argument_group_name"}
    return dataclasses.make_dataclass(dtype.__name__, specs, namespace=namespace)


def dataclass_parser(*dataclass_types: type, command: str | None = None) -> argparse.ArgumentParser:
    """A parent parser (``add_help=False``) with one argument per field of ``dataclass_types`` that is a flag of
    ``command`` (:func:`is_flag`).

    Built by :class:`transformers.HfArgumentParser`, then adapted as the module docstring says. Use it as
    ``subparsers.add_parser(NAME, parents=[dataclass_parser(...)])`` (or through :func:`add_command`).
    """
    from transformers import HfArgumentParser

    dataclass_types = tuple(_flag_view(dtype, command) for dtype in dataclass_types)
    fields: dict[str, tuple[dataclasses.Field, Any]] = {}
    for dtype in dataclass_types:
        hints = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if f.init:
                if f.name in fields:
                    raise TypeError(f"option {f.name!r} is defined twice ({dtype.__name__})")
                fields[f.name] = (f, hints[f.name])
    # HfArgumentParser rewrites each Field.type in place (the resolved hint, then X for X | None): put the
    # annotations back afterwards so that the dataclasses read the same to everyone else
    saved = [(f, f.type) for dtype in dataclass_types for f in dataclasses.fields(dtype)]
    try:
        parser = HfArgumentParser(list(dataclass_types), add_help=False)
    finally:
        for f, annotation in saved:
            f.type = annotation
    for action in parser._actions:
        if action.dest not in fields:
            continue
        f, hint = fields[action.dest]
        action.option_strings.sort(key=lambda s: "_" in s)  # --max-steps first, --max_steps accepted
        if isinstance(action, argparse._StoreFalseAction):  # the --no-X of a boolean whose default is true
            action.help = f"set {f.name} to false"
        else:
            default = _field_default(f)
            notes = []
            if action.choices is not None and action.metavar is not None:  # choices not shown by argparse
                notes.append("one of: " + ", ".join(map(str, action.choices)))
            if default is dataclasses.MISSING:
                notes.append("required")
            elif not (isinstance(action, argparse._ExtendAction | argparse._AppendAction) and not default):
                notes.append(f"default: {show_value(default)}")
            help_text = f"{action.help or ''} ({'; '.join(notes)})" if notes else action.help or ""
            action.help = help_text.strip().replace("%", "%%")
        action.default = argparse.SUPPRESS
        if "nargs" in f.metadata:  # HfArgumentParser gives every list nargs="+"; a fixed count wins
            action.nargs = f.metadata["nargs"]
        if _takes_mapping(hint):
            action.type = yaml_value
    return parser


def add_command(subparsers: argparse._SubParsersAction, name: str, *dataclass_types: type,
                **kwargs: Any) -> argparse.ArgumentParser:
    """``subparsers.add_parser(name, **kwargs)`` with the flags of ``dataclass_types`` (those of command
    ``name``: :func:`is_flag`)."""
    return subparsers.add_parser(name, parents=[dataclass_parser(*dataclass_types, command=name)], **kwargs)


def given(args: argparse.Namespace, dtype: type) -> dict[str, Any]:
    """The fields of ``dtype`` given on the command line (flags not given are absent from ``args``). A field that
    is not a flag of the command that parsed ``args`` (:func:`is_flag`; ``args.command``) is never read from it:
    another option of the same name (``unipo compare``'s ``--out`` and ``--seed``) is not its value."""
    command = getattr(args, "command", None)
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(dtype)
            if hasattr(args, f.name) and is_flag(f, command)}


def to_dataclass(args: argparse.Namespace, dtype: type) -> Any:
    """An instance of ``dtype``: the flags given, the field defaults for the rest."""
    return dtype(**given(args, dtype))
