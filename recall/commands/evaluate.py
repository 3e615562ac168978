"""`recall evaluate`: score a model on tasks with OpenCompass; write OUT/metrics.json and OUT/examples/."""

from __future__ import annotations

import argparse
from pathlib import Path

from recall.commands import add_output, add_trust_remote_code
from recall.evaluation import evaluate
from recall.evaluation.config import BACKENDS, BATCH_SIZE, DEFAULT_BACKEND
from recall.tasks.formats import FORMATS


def _task_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _mode(text: str) -> tuple[str, str]:
    fmt, sep, mode = text.partition("=")
    if not sep or not fmt.strip() or not mode.strip():
        raise argparse.ArgumentTypeError(f"expected FORMAT=MODE, e.g. classification=gen, got {text!r}")
    return fmt.strip(), mode.strip()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", description=__doc__)
    p.add_argument(
        "--model",
        required=True,
        type=Path,
        help="Hugging Face model folder; prompted through its chat template, or plain without one",
    )
    p.add_argument("--tasks", required=True, type=_task_list, help="comma-separated task names, e.g. sst2,race")
    add_output(p, "output folder: metrics.json, examples/<task>.jsonl, OpenCompass outputs")
    add_trust_remote_code(p)
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding <task>/test.jsonl, or a task of your own as "
        "<task>/{task.yaml,train.jsonl,test.jsonl} (default: the Hugging Face hub)",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N test examples of each task")
    p.add_argument(
        "--mode",
        type=_mode,
        action="append",
        metavar="FORMAT=MODE",
        help="how a task format is inferred: ppl (its choices ranked by likelihood) or gen (greedy "
        "reply); repeatable. Default: "
        + ", ".join(f"{name}={cls.mode}" for name, cls in FORMATS.items() if cls.ranked)
        + "; other formats always gen",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help=f"sequences per forward pass: prompts (gen) or prompt+answer pairs (ppl) (default {BATCH_SIZE})",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="reply length for every generated task (default per format: "
        + ", ".join(f"{cls.reply_tokens} {name}" for name, cls in FORMATS.items())
        + ")",
    )
    p.add_argument("--threads", type=int, help="CPU threads of the OpenCompass process (default: torch's choice)")
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        choices=tuple(BACKENDS),
        help="how OpenCompass runs the model: hf (transformers, CPU or GPU; default) or, on a CUDA GPU with "
        "the package installed, vllm or lmdeploy (generation only: every task in mode gen, no nll)",
    )
    p.set_defaults(func=run, exit_fast=True)  # see `recall.cli.main`


def run(args: argparse.Namespace) -> int:
    from recall.models import allow_remote_code

    allow_remote_code(args.trust_remote_code)
    metrics = evaluate(
        args.model,
        args.tasks,
        args.out,
        data_dir=args.data_dir,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        modes=dict(args.mode or []),
        threads=args.threads,
        overwrite=args.overwrite,
        backend=args.backend,
    )
    for task, scores in metrics.items():
        print(task, " ".join(f"{metric}={value:.2f}" for metric, value in scores.items()))
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'examples'}/")
    return 0
