"""`recall evaluate`: score a model on tasks with OpenCompass and write OUT/metrics.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from recall.evaluation import evaluate


def _task_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on tasks with OpenCompass", description=__doc__)
    p.add_argument("--model", required=True, type=Path, help="Hugging Face model folder (with a chat template)")
    p.add_argument("--tasks", required=True, type=_task_list, help="comma-separated task names, e.g. sst2,race")
    p.add_argument("--out", required=True, type=Path, help="output folder: metrics.json + OpenCompass outputs")
    p.add_argument("--data-dir", type=Path, help="folder holding <task>/test.jsonl (default: the Hugging Face hub)")
    p.add_argument("--limit", type=int, help="evaluate only the first N test examples of each task")
    p.add_argument("--batch-size", type=int, default=8, help="generation batch size (default 8)")
    p.add_argument(
        "--max-new-tokens", type=int,
        help="reply length for every task (default per format: 16 labels/letters, 48 QA, 128 translation)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    metrics = evaluate(
        args.model, args.tasks, args.out, data_dir=args.data_dir, limit=args.limit,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
    )
    for task, scores in metrics.items():
        print(task, " ".join(f"{metric}={value:.2f}" for metric, value in scores.items()))
    print(f"wrote {args.out / 'metrics.json'}")
    return 0
