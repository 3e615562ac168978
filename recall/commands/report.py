"""`recall report`: the paper's tables (1, 2, 7), continual-learning metrics and plots from a report spec,
with paired-bootstrap 95% intervals over test examples for every average, BWT and difference.

The spec (YAML or JSON) lists metrics.json files by method, fine-tuning task or sequence step, plus
merge_weights.json and similarity JSON files to plot; see `recall.reporting.report` for its format.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from recall.commands import add_output
from recall.reporting import report
from recall.tasks import list_tasks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        description=f"{__doc__}\n{report.__doc__}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", type=Path, help="report spec (YAML or JSON)")
    add_output(p, "output folder: report.md, CSV tables, PNG plots")
    p.add_argument(
        "--data-dir", type=Path, help="folder of the spec's own tasks (<task>/task.yaml), as given to `recall evaluate`"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.data_dir:
        list_tasks(args.data_dir)  # declares them: the report recomputes their metrics per resample
    markdown = report.write_report(args.spec, args.out, args.overwrite)
    print(markdown.read_text())
    print(f"wrote {markdown} and its CSV tables and plots in {args.out}")
    return 0
