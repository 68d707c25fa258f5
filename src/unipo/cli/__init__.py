"""The ``unipo`` command line.

Each sub-command lives in its own module that exposes ``register(subparsers)``; this file only lists
them, so adding a command touches one line here. Modules are imported when the parser is built, and
heavy imports (torch, transformers) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from unipo.errors import UnipoError

#: module path of each sub-command provider, in the order ``unipo --help`` lists them
COMMAND_MODULES = [
    "unipo.cli.variants",  # unipo variants
    "unipo.cli.train",  # unipo train
    "unipo.cli.demo",  # unipo demo
    "unipo.cli.eval",  # unipo eval, unipo compare
    "unipo.cli.bridge",  # unipo bridge
    "unipo.cli.tisdpo",  # unipo weights
    "unipo.cli.iterate",  # unipo iterate
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unipo", description="DPO and its variants as one composable objective."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command not built yet
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UnipoError as exc:
        print(f"unipo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unipo {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a file-system error of any type that no save path described: still one line
        from unipo.io.atomic import describe_fs_error, is_file_system_error

        if not is_file_system_error(exc):
            raise
        print(f"unipo {args.command}: error: {describe_fs_error(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m unipo.cli
    sys.exit(main())
