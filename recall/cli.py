"""The `recall` command line. Each command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from recall.errors import boundary, end_process

# Each command: its module, recall.commands.<name>, whose `register(subparsers)` adds it with
# `set_defaults(func=...)`, and the one line `recall --help` lists it with.
COMMANDS = {
    "merge": "merge models layer by layer",
    "tasks": "list, show, generate and export tasks",
    "base": "the default base model",
    "finetune": "LoRA fine-tune a model on a task; writes a merged HF model folder",
    "evaluate": "evaluate a model on tasks with OpenCompass",
    "report": "render tables and plots from evaluation results",
    "lineage": "which models, weights, data and commit produced a model",
    "gate": "would a candidate model replace the champion (exit 0) or not (1)",
    "pipeline": "write dvc.yaml from params.yaml (then `dvc repro`)",
    "prune": "delete intermediate models every stage reading them has used",
    "params": "check a params file (params.yaml), or print its JSON schema",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser. Only the command named in `argv` is imported and registered, so start-up pays for
    its own dependencies alone (torch, mlflow and OpenCompass are heavy); without one, the commands are
    listed from COMMANDS and none is imported."""
    parser = argparse.ArgumentParser(prog="recall", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure (also RECALL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = next((a for a in argv or [] if not a.startswith("-")), None)
    for name, help in COMMANDS.items():
        if name == chosen:
            importlib.import_module(f"recall.commands.{name}").register(sub)
        elif chosen not in COMMANDS:
            sub.add_parser(name, help=help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command in `argv` (default: the process's arguments) and return its exit status.

    Run as the process's entry point (no `argv`), a command that sets `exit_fast` ends the process
    here, skipping the interpreter's teardown (`recall.errors.end_process`): its outputs are written
    and closed by then."""
    entry_point = argv is None
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    status = boundary(f"recall {args.command}", lambda: args.func(args) or 0, args.debug)
    if entry_point and getattr(args, "exit_fast", False):
        end_process(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
