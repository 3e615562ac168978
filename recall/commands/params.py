"""`recall params check [PATH]`: check a params file as the pipeline does before any stage, running nothing.
`recall params schema [--task]`: the JSON schema of params.yaml (or of a task.yaml), for editors."""

from __future__ import annotations

import argparse
import json
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
    schema = commands.add_parser(
        "schema",
        help="print the JSON schema of params.yaml (schemas/params.schema.json), which editors use to "
        "complete and check keys as you type",
    )
    schema.add_argument("--task", action="store_true", help="the schema of a task folder's task.yaml instead")
    schema.set_defaults(func=run_schema)


def run_check(args: argparse.Namespace) -> int:
    from recall.pipeline.params import load_params

    params = load_params(args.path)  # the pipeline's own check; a problem is a RecallError (exit 2)
    tasks = [s.task for s in params.steps]
    print(
        f"{args.path}: ok: {params.sections.scenario} run of {len(tasks)} tasks ({', '.join(tasks)}), "
        f"methods {', '.join(params.methods)}"
    )
    return 0


def run_schema(args: argparse.Namespace) -> int:
    print(schema_text(args.task), end="")
    return 0


def schema_text(task: bool = False) -> str:
    """The JSON schema of a task.yaml or of params.yaml, as schemas/ holds it."""
    if task:
        from recall.tasks.formats import task_schema as schema
    else:
        from recall.pipeline.sections import params_schema as schema
    return json.dumps(schema(), indent=2) + "\n"
