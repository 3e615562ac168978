"""`recall finetune`: LoRA fine-tuning of a base (or previously fine-tuned / merged) model on a task.

On a GPU when one is visible. `accelerate launch -m recall.cli finetune ...` (same arguments) trains
data-parallel in several processes; see `recall.training.parallel`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from recall.commands import add_output, add_trust_remote_code
from recall.training.finetune import DTYPES, FinetuneConfig, finetune

DEFAULTS = FinetuneConfig()


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune")
    p.add_argument("--base", required=True, help="model folder, LoRA adapter folder, .gguf file or hub id")
    p.add_argument("--task", required=True, help="task name (see `recall tasks`) or a prompt/response JSONL file")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding <task>/train.jsonl, or a task of your own as "
        "<task>/{task.yaml,train.jsonl,test.jsonl} (default: the HF hub)",
    )
    add_output(p, "output model folder")
    add_trust_remote_code(p)
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--epochs", type=float, default=DEFAULTS.epochs)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--max-length", type=int, default=DEFAULTS.max_length, help="tokens per example (prompt + answer)")
    p.add_argument("--limit", type=int, help="use only the first N training examples")
    p.add_argument("--lora-r", type=int, default=DEFAULTS.lora_r)
    p.add_argument("--lora-alpha", type=int, default=DEFAULTS.lora_alpha)
    p.add_argument("--lora-dropout", type=float, default=DEFAULTS.lora_dropout)
    p.add_argument("--ewc-lambda", type=float, default=DEFAULTS.ewc_lambda, help="EWC strength (0: off)")
    p.add_argument("--ewc-from", help="previous task name or its prompt/response JSONL, for the EWC Fisher")
    p.add_argument("--ewc-samples", type=int, default=DEFAULTS.ewc_samples, help="examples for the Fisher estimate")
    p.add_argument(
        "--dtype",
        default=DEFAULTS.dtype,
        choices=DTYPES,
        help="weights' dtype (default: float32 on the CPU, bfloat16 on a GPU that supports it, else float32)",
    )
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULTS.checkpoint_every,
        help="save a resumable checkpoint beside --out every N steps; a killed run rerun with the same "
        "inputs resumes from it (0: no checkpoints)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is faster on a busy CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recall.models import allow_remote_code

    allow_remote_code(args.trust_remote_code)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = FinetuneConfig(
        max_steps=args.max_steps,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        max_length=args.max_length,
        limit=args.limit,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        ewc_lambda=args.ewc_lambda,
        ewc_from=args.ewc_from,
        ewc_samples=args.ewc_samples,
        dtype=args.dtype,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    out = finetune(args.base, args.task, args.out, args.data_dir, config, args.overwrite)
    if int(os.environ.get("RANK") or 0) == 0:  # under `accelerate launch`, the process that wrote it
        print(f"fine-tuned model written to {out}")
    return 0
