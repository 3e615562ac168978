"""Evaluation speed: `recall evaluate` in PPL mode against a plain batched forward pass.

    .venv/bin/python benchmarks/eval_speed.py --model /tmp/smolbase [--task sst2] [--limit 32]
        [--batch-size 8] [--threads 1] [--data-dir ../shared/data]

All three score the same (prompt, label) pairs: each of the task's first `--limit` test examples,
rendered with the model's chat template, followed by each label, in the same length-sorted batches of
`--batch-size` pairs, on `--threads` CPU threads:
- plain: transformers alone on the already loaded model: a left-padded forward pass over each batch
  (the model's logits at every position, as a plain forward gives them), then the log-softmax at the
  answer positions only;
- core: the likelihood call `recall evaluate` makes inside OpenCompass, `ChatModel.get_answer_nll`;
- evaluate: `recall evaluate` end to end in a fresh process (fresh output folder, so nothing cached):
  imports, OpenCompass, model load, inference, scoring, examples/ and metrics.json.
plain and core alternate, best of `--repeats`; the labels plain and evaluate choose are compared.
Writes benchmarks/results/eval_speed.json and eval_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import command_line, git_commit, machine
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.atomic import atomic_file, write_json
from recall.data import chat_prompt
from recall.errors import RecallError
from recall.evaluation.inferencer import length_sorted_batches
from recall.tasks.base import get_task

Pair = tuple[int, str]  # (example index, answer)


def plain_forward(lm, tokenizer, prompts: list[str], batches: list[list[Pair]]) -> dict[Pair, float]:
    """Mean NLL per answer token of every pair, with nothing but transformers."""
    nll = {}
    with torch.inference_mode():
        for batch in batches:
            answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for _, a in batch]
            contexts = [tokenizer(prompts[i], add_special_tokens=False)["input_ids"] for i, _ in batch]
            rows = [context + answer for context, answer in zip(contexts, answers)]
            padded = tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt")
            longest = max(map(len, answers))  # left padding: every answer ends its row
            logits = lm(**padded).logits[:, -longest - 1 : -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            picked = logprobs.gather(-1, padded["input_ids"][:, -longest:].unsqueeze(-1)).squeeze(-1)
            for row, (pair, answer) in enumerate(zip(batch, answers)):
                nll[pair] = -picked[row, -len(answer):].mean().item()
    return nll


def core_forward(model, prompts: list[str], batches: list[list[Pair]]) -> dict[Pair, float]:
    nll = {}
    for batch in batches:
        nll.update(zip(batch, model.get_answer_nll([prompts[i] for i, _ in batch], [a for _, a in batch])))
    return nll


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def run_evaluate(args: argparse.Namespace, out: Path) -> tuple[float, list[str]]:
    """Wall time of `recall evaluate` in a fresh process, and the command."""
    command = [str(Path(sys.executable).with_name("recall")), "evaluate", "--model", str(args.model),
               "--tasks", args.task, "--data-dir", str(args.data_dir), "--limit", str(args.limit),
               "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--out", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"recall evaluate failed:\n{proc.stderr[-3000:]}")
    return wall, command


def markdown(result: dict) -> str:
    r = result
    return f"""# Evaluation speed: `recall evaluate` (PPL) vs a plain batched forward

{r['examples']} {r['task']} test examples x {len(r['choices'])} labels = {r['pairs']} (prompt, label) pairs,
{r['tokens']} tokens, batches of {r['batch_size']} pairs, {r['threads']} thread(s), {r['model']}.
Command: `{r['command']}`

| what | seconds | time / plain |
|---|---|---|
| plain batched forward (transformers, model loaded) | {r['plain_s']:.2f} | 1.00 |
| likelihood call inside OpenCompass (`ChatModel.get_answer_nll`) | {r['core_s']:.2f} | {r['core_over_plain_time']:.2f} |
| `recall evaluate` end to end (fresh process) | {r['evaluate_wall_s']:.2f} | {r['evaluate_over_plain_time']:.2f} |

The likelihood call computes the model's output layer at the answer positions only (`logits_to_keep`),
which is why it beats a plain forward. Fixed cost of `recall evaluate` over the likelihood call
(imports, OpenCompass, model load, scoring, files): {r['evaluate_fixed_s']:.1f} s.
Plain and `recall evaluate` chose the same label for {r['label_agreement']:.0%} of examples;
largest |NLL difference| plain vs core: {r['max_nll_difference']:.2e}.
Accuracy {r['accuracy']:.2f}, nll {r['nll']:.4f}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("data/steps/base/model"))
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_speed.json")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        raise RecallError(
            f"{args.model} is not a model folder; pull one with `.venv/bin/recall base pull --out /tmp/smolbase`"
        )
    args.model, args.data_dir = args.model.resolve(), args.data_dir.resolve()
    torch.set_num_threads(args.threads)

    task = get_task(args.task)
    if not task.choices:
        raise RecallError(f"task {args.task} has no choices to rank; pick a classification or mcq task")
    examples = task.load("test", args.data_dir, args.limit)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = [chat_prompt(tokenizer, e.prompt) for e in examples]
    pairs = [(i, c) for i in range(len(examples)) for c in task.choices]
    batches = length_sorted_batches(pairs, prompts, args.batch_size)
    tokens = sum(len(tokenizer(prompts[i] + c, add_special_tokens=False)["input_ids"]) for i, c in pairs)

    from recall.evaluation.compat import restore_batch_encode_plus
    from recall.evaluation.model import ChatModel

    restore_batch_encode_plus()
    lm = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    core = ChatModel(path=str(args.model), model_kwargs=dict(torch_dtype="float32", device_map="cpu"))
    plain_times, core_times = [], []
    for _ in range(args.repeats):
        seconds, plain = timed(plain_forward, lm, tokenizer, prompts, batches)
        plain_times.append(seconds)
        seconds, ours = timed(core_forward, core, prompts, batches)
        core_times.append(seconds)
    del lm, core

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "eval"
        wall, command = run_evaluate(args, out)
        metrics = json.loads((out / "metrics.json").read_text())[args.task]
        records = [json.loads(line) for line in (out / "examples" / f"{args.task}.jsonl").read_text().splitlines()]
    chosen = [min(task.choices, key=lambda c, i=i: plain[i, c]) for i in range(len(examples))]
    result = {
        "benchmark": "eval_speed",
        "command": command_line(),
        "evaluate_command": " ".join(command),
        "model": str(args.model), "task": args.task, "choices": list(task.choices),
        "examples": len(examples), "pairs": len(pairs), "tokens": tokens,
        "batch_size": args.batch_size, "threads": args.threads,
        "plain_s": min(plain_times), "core_s": min(core_times), "evaluate_wall_s": wall,
        "plain_tokens_per_s": tokens / min(plain_times), "core_tokens_per_s": tokens / min(core_times),
        "evaluate_tokens_per_s": tokens / wall,
        "core_over_plain_time": min(core_times) / min(plain_times),
        "evaluate_over_plain_time": wall / min(plain_times),
        "evaluate_fixed_s": wall - min(core_times),
        "max_nll_difference": max(abs(plain[p] - ours[p]) for p in pairs),
        "label_agreement": sum(c == r["prediction"] for c, r in zip(chosen, records)) / len(examples),
        "accuracy": metrics["accuracy"], "nll": metrics["nll"],
        "machine": machine(), "commit": git_commit(),
    }
    write_json(args.out, result)
    with atomic_file(args.out.with_suffix(".md")) as fh:
        fh.write(markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
