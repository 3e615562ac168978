"""`recall prune`: delete intermediate models every stage reading them has used (`recall.pipeline.prune`);
`dvc repro --allow-missing` then skips their stages."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", description=__doc__)
    p.add_argument(
        "params",
        nargs="?",
        type=Path,
        default=Path("params.yaml"),
        help="the params file whose dvc.yaml's models to prune (default: params.yaml)",
    )
    p.add_argument(
        "--lane",
        type=Path,
        action="append",
        default=[],
        help="another checkout running stages of the same pipeline with this DVC cache (repeatable)",
    )
    p.add_argument(
        "--adopt",
        action="store_true",
        help="first copy the lanes' finished stages into this checkout's dvc.lock (only while no dvc repro runs here)",
    )
    p.add_argument(
        "--finals",
        action="store_true",
        help="each chain's newest model too, once evaluated (a benchmark, whose report reads only evaluations); "
        "a model a gate reads stays",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recall.pipeline import layout
    from recall.pipeline.params import load_params
    from recall.pipeline.prune import adopt, prune

    dvc_yaml = layout.dvc_yaml(load_params(args.params))
    if args.adopt:
        print(f"adopted {adopt(dvc_yaml, args.lane)} finished stages from {len(args.lane)} lanes")
    result = prune(dvc_yaml, args.lane, args.dry_run, args.finals)
    verb = "would delete" if args.dry_run else "deleted"
    for folder in result.folders:
        print(f"{verb} {folder}")
    print(f"{verb} {len(result.folders)} model folders and {result.objects} cache objects ({result.size / 1e9:.1f} GB)")
    return 0
