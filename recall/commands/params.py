"""`recall params check [PATH]`: check a params file as the pipeline does before any stage, running nothing."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("params", description=__doc__)
    commands = parser.add_subparsers(dest="params_command", required=True)
    check = commands.add_parser(
        "check",
        help="every section and key, the task names and method parameters: "
        "ok, or the first problem named by its key's path",
    )
    check.add_argument(
        "path", nargs="?", type=Path, default=Path("params.yaml"), help="the params file (default: params.yaml)"
    )
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from recall.pipeline.params import load_params

    params = load_params(args.path)  # the pipeline's own check; a problem is a RecallError (exit 2)
    tasks = [s.task for s in params.steps]
    print(
        f"{args.path}: ok: {params.sections.scenario} run of {len(tasks)} tasks ({', '.join(tasks)}), "
        f"methods {', '.join(params.methods)}"
    )
    return 0
