"""``KEY=VALUE`` command-line assignments (``--set``, ``--train-set``) read as YAML: one parser for the CLI and
for the pipelines that take such lists in their configuration (``unipo iterate``'s ``set``)."""

from __future__ import annotations

from typing import Any

import yaml

from unipo.errors import ConfigError


def parse_assignments(items: list[str], flag: str = "--set") -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` → ``{KEY: VALUE read as YAML}`` (later items win)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{flag} {item!r}: the value is not valid YAML: {exc}") from None
    return out
