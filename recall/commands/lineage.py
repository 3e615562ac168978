"""`recall lineage MODEL`: the tree of ancestors of a merged model."""

from __future__ import annotations

import argparse
from pathlib import Path

from recall import tracking
from recall.lineage import lineage, resolve_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lineage", description=__doc__)
    p.add_argument(
        "model",
        help="a model folder, or a registered model NAME/VERSION or NAME@ALIAS (e.g. models:/recall-merged@champion)",
    )
    p.add_argument("--project", type=Path, default=Path("."), help="project folder holding mlflow.db")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(args.project))
    print("\n".join(lineage(resolve_model(args.model))))
    return 0
