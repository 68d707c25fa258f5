"""A user's own function named ``module:function`` on the command line (``--verifier``), imported once."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from unipo.errors import ConfigError


def import_function(spec: str, flag: str = "--verifier") -> Callable[..., Any]:
    """``mypkg.checks:is_correct`` → the function; a ConfigError naming ``flag`` when it cannot be had."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"{flag} {spec!r}: expected module:function (e.g. mypkg.checks:is_correct)")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{flag} {spec!r}: cannot import it ({exc}); the module must be importable "
                          f"(on PYTHONPATH or installed)") from None
    if not callable(fn):
        raise ConfigError(f"{flag} {spec!r} is not callable")
    return fn
