"""`recall pipeline`: write dvc.yaml for params.yaml (one stage per stage, method and step), or check it."""

from __future__ import annotations

import argparse
from pathlib import Path

from recall.errors import RecallError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", description=__doc__)
    p.add_argument(
        "params",
        nargs="?",
        type=Path,
        default=Path("params.yaml"),
        help="the params file; dvc.yaml is written beside it (default: params.yaml)",
    )
    p.add_argument(
        "--check", action="store_true", help="write nothing; exit 2 when dvc.yaml is not the one these params give"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recall.pipeline import layout, plan
    from recall.pipeline.params import load_params

    params = load_params(args.params)
    if args.check:
        path = layout.dvc_yaml(params)
        if not path.is_file() or path.read_text() != plan.render(params):
            raise RecallError(f"{path} differs from what {args.params} gives; run `recall pipeline {args.params}`")
        print(f"{path} is current")
        return 0
    path = plan.write(params)
    print(f"wrote {path}: {len(plan.plan(params))} stages for methods {', '.join(params.methods)}")
    return 0
