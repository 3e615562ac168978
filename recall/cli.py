"""The `recall` command line. Each command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from recall.errors import boundary

# Modules exposing `register(subparsers)`; each adds its subcommands with `set_defaults(func=...)`.
COMMAND_MODULES = (
    "recall.commands.merge",
    "recall.commands.tasks",
    "recall.commands.base",
    "recall.commands.finetune",
    "recall.commands.evaluate",
    "recall.commands.report",
    "recall.commands.lineage",
    "recall.commands.gate",
    "recall.commands.pipeline",
    "recall.commands.params",
)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with a known command in `argv`, only that command's module is imported (start-up
    then pays for its own dependencies alone: torch, mlflow and OpenCompass are heavy)."""
    parser = argparse.ArgumentParser(prog="recall", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure (also RECALL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    names = {m.rsplit(".", 1)[1]: m for m in COMMAND_MODULES}
    chosen = next((a for a in argv or [] if not a.startswith("-")), None)
    for name, module in names.items():
        if chosen not in names or name == chosen:
            importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    return boundary(f"recall {args.command}", lambda: args.func(args) or 0, args.debug)


if __name__ == "__main__":
    sys.exit(main())
