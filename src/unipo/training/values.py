"""Typed, finite, in-range values for the fields of an options dataclass (TrainConfig, IterateConfig).

Issue 23, items 2 and 7: every number a user can set is checked for its type, finiteness and range, and every
boolean takes only a boolean, before anything is read or loaded, with one line naming the key. The type of each
field comes from its annotation (``int``, ``float``, ``bool``, ``str``, ``list[str]``, each optionally ``| None``);
the range from a table of :class:`Range` by key (``RANGES`` beside the dataclass). Normalisation is the
YAML user's friend and nothing more: a number written as text (YAML reads ``1e-4`` without a dot as a string)
becomes that number, a whole float (``8.0``) an integer, a single string a one-item list; nothing else is
converted (``"no"`` is not false).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from unipo.errors import ConfigError

#: the largest float32 magnitude: a value beyond it becomes inf in the model's arithmetic
FLOAT32_MAX = 3.4028234663852886e38
#: the largest integer any count or length may take (a C int: torch and the tokenizers take no more)
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Range:
    """The valid numbers: [lo, hi] with ``lo_open`` / ``hi_open`` ends; ``also``: single values allowed outside
    (``max_steps: -1``); ``whole_from``: values at or above it must be whole numbers (``warmup_ratio`` >= 1 is a
    number of steps)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple[float, ...] = ()
    whole_from: float | None = None

    def contains(self, v: float) -> bool:
        if v in self.also:
            return True
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return False
        return self.whole_from is None or v < self.whole_from or float(v).is_integer()

    def __str__(self) -> str:
        """``in (0, 1]``, ``at least 1``, ``greater than 0``, ``-1 or at least 1`` (what follows "must be")."""
        if self.hi is None or self.hi == INT_MAX:
            text = (f"greater than {_show(self.lo)}" if self.lo_open else f"at least {_show(self.lo)}") \
                if self.lo is not None else "a number"
        else:
            lo = "-inf" if self.lo is None else _show(self.lo)
            left = "(" if self.lo_open or self.lo is None else "["
            text = f"in {left}{lo}, {_show(self.hi)}{')' if self.hi_open else ']'}"
        if self.also:
            text = " or ".join([*(_show(a) for a in self.also), text])
        if self.whole_from is not None:
            text += f" (a whole number from {_show(self.whole_from)})"
        return text


def _show(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


POSITIVE = Range(0, None, lo_open=True)
NON_NEGATIVE = Range(0, None)
AT_LEAST_1 = Range(1, INT_MAX)
FRACTION = Range(0, 1, hi_open=True)


def _parts(hint: Any) -> tuple[set[Any], bool]:
    """The non-None members of a type hint and whether None is allowed."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = set(typing.get_args(hint))
        return args - {type(None)}, type(None) in args
    return {hint}, False


def _number(key: str, value: Any, kind: type, source: str) -> int | float:
    what = "an integer" if kind is int else "a number"
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float or not value.strip().lstrip("+-").isdigit() \
                else int(value.strip())
        except ValueError:
            raise ConfigError(f"{source}: {key} must be {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{source}: {key} must be {what}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
    if abs(value) > FLOAT32_MAX:
        raise ConfigError(f"{source}: {key} = {value:g} is not finite in float32 (|value| at most {FLOAT32_MAX:.4g})")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _string(key: str, value: Any, source: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    if not value.strip():
        raise ConfigError(f"{source}: {key} must not be empty")
    return value


def checked(key: str, value: Any, hint: Any, rng: Range | None, source: str) -> Any:
    """``value`` for field ``key`` of type ``hint`` normalised as the module docstring says, or ConfigError."""
    kinds, optional = _parts(hint)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {key} must not be null")
    if kinds == {bool}:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    number = next((k for k in (int, float) if k in kinds), None)
    if number is not None and kinds <= {int, float}:
        v = _number(key, value, number, source)
        if rng is not None and not rng.contains(v):
            raise ConfigError(f"{source}: {key} = {v!r} is out of range: must be {rng}")
        return v
    if kinds == {str}:
        return _string(key, value, source)
    if any(typing.get_origin(k) is list for k in kinds):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(f"{source}: {key} must be a list of strings, got {value!r}")
        return [_string(key, v, source) for v in items]
    return value  # mappings and names (variant, lora, token_signal) are checked by their own code


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any, source: str, ranges: dict[str, Range]) -> None:
    """Check and normalise every typed field of the dataclass instance ``obj`` in place (the ``choices`` of its
    ``metadata`` and its range in ``ranges`` included)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = checked(f.name, getattr(obj, f.name), hints[f.name], ranges.get(f.name), source)
        choices = f.metadata.get("choices")
        if choices and value is not None and (not isinstance(value, str) or value not in choices):
            raise ConfigError(f"{source}: {f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        setattr(obj, f.name, value)
