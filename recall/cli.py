"""The `recall` command line. Each command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from recall.errors import RecallError

# Modules exposing `register(subparsers)`; each adds its subcommands with `set_defaults(func=...)`.
COMMAND_MODULES = (
    "recall.commands.merge",
    "recall.commands.tasks",
    "recall.commands.base",
    "recall.commands.finetune",
    "recall.commands.evaluate",
    "recall.commands.report",
    "recall.commands.lineage",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recall", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return args.func(args) or 0
    except RecallError as err:
        print(f"recall {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
