"""`recall tasks [list|show|generate|export]`: the task registry, the generated suite, data export."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from recall.tasks import get_task, list_tasks
from recall.tasks.export import export_task
from recall.tasks.generated import DEFAULT_TEST, DEFAULT_TRAIN, generate_suite


def register(subparsers) -> None:
    parser = subparsers.add_parser("tasks")
    declared = "folder holding tasks of your own, each a <task>/ folder with task.yaml, train.jsonl and test.jsonl"
    parser.add_argument("--data-dir", type=Path, help=declared)
    parser.set_defaults(func=run_list)
    sub = parser.add_subparsers(dest="tasks_command")

    listing = sub.add_parser("list", help="each task with its format, metrics and source")
    listing.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=declared)
    listing.set_defaults(func=run_list)

    show = sub.add_parser("show", help="a task's spec as a task.yaml, to copy for a task of your own")
    show.add_argument("task")
    show.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=declared)
    show.set_defaults(func=run_show)

    gen = sub.add_parser("generate", help="write the offline generated task suite")
    gen.add_argument("--out", type=Path, required=True, help="folder to write <task>/{train,test}.jsonl into")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="train examples per task")
    gen.add_argument("--test", type=int, default=DEFAULT_TEST, help="test examples per task")
    gen.set_defaults(func=run_generate)

    exp = sub.add_parser("export", help='write a split as {"prompt", "response"} JSONL (for `recall merge --data`)')
    exp.add_argument("--task", required=True)
    exp.add_argument("--split", default="train", choices=("train", "test"))
    exp.add_argument("--data-dir", type=Path, help="folder holding <task>/<split>.jsonl (default: the HF hub)")
    exp.add_argument("--limit", type=int, help="first N examples only")
    exp.add_argument("--out", type=Path, required=True)
    exp.set_defaults(func=run_export)


def run_list(args: argparse.Namespace) -> int:
    rows = [("TASK", "FORMAT", "METRICS", "SOURCE")]
    rows += [(t.name, t.format, ", ".join(t.metrics), t.source) for t in list_tasks(args.data_dir)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    return 0


class _SpecDumper(yaml.SafeDumper):
    """Writes a multi-line template as one double-quoted line, as a task.yaml is written by hand."""


_SpecDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style='"' if "\n" in text else None),
)


def run_show(args: argparse.Namespace) -> int:
    spec = get_task(args.task, args.data_dir).spec.as_dict()
    print(yaml.dump(spec, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=float("inf")), end="")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    folders = generate_suite(args.out, seed=args.seed, train=args.train, test=args.test)
    print(f"wrote {len(folders)} tasks ({args.train} train / {args.test} test each, seed {args.seed}) to {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    count = export_task(args.task, args.split, args.out, args.data_dir, args.limit)
    print(f"wrote {count} {args.task} {args.split} examples to {args.out}")
    return 0
