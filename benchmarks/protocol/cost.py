"""Machine-hours of a protocol suite, from its plan and measured per-stage rates (benchmarks/protocol/PLAN.md):

    .venv/bin/python benchmarks/protocol/cost.py benchmarks/protocol/standard/params.yaml [--steps 50] [--limit 200]

Counts the stages `recall pipeline` writes for the params, and prices each at one thread:
fine-tuning at TRAIN_TOK_S over the task's padded tokens for max_steps x batch_size examples, likelihood
scoring at SCORE_TOK_S over the prompts of each task's `limit` test examples (one number or one per
format), generation (a task its format's mode scores by generating) also at GEN_S_PER_TOKEN per reply
token, as many as the format allows (an upper bound: a batch stops at its replies' ends), plus each
stage's fixed cost. A task not measured here is priced at the measured tasks' mean, and named.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from recall.evaluation.config import reply_length
from recall.evaluation.pipeline import resolve_modes
from recall.pipeline import plan
from recall.pipeline.params import Params, load_params

# Measured (PLAN.md says where): one thread, beside one other job, SmolLM2-135M fp32.
TRAIN_TOK_S = 104.0  # LoRA fine-tuning, training tokens per second
SCORE_TOK_S = 400.0  # likelihood scoring, prompt tokens per second (one forward per prompt, all options)
# generation, seconds per reply token and example: 8 SQuAD 2.0 prompts, replies of up to 48 tokens, in
# batches of 8, 18.46 s at one thread (benchmarks/results/eval_speed.json)
GEN_S_PER_TOKEN = 18.46 / (8 * 48)
FIXED_S = {"finetune": 20, "evaluate": 15, "merge": 25, "features": 30, "typical": 5, "similarity": 40}
EWC_FISHER_EXAMPLES = 64  # a forward and backward pass each, on the previous task
# Mean tokens per example through the chat template (SmolLM2's tokenizer; the first 400 training rows,
# the first 200 test rows), and the padding factor of batches of 4 (longest row x 4 / tokens).
# The paper suite's SST-2, SQuAD 2.0 and IWSLT measured the same way, for benchmarks/protocol/paper.
TRAIN_TOKENS = {
    "agnews": 116.8,
    "dbpedia": 168.7,
    "amazon": 165.4,
    "yelp": 235.9,
    "sst2": 66.0,
    "squad_v2": 297.8,
    "iwslt2017_en_fr": 103.6,
}
PADDING = {
    "agnews": 1.16,
    "dbpedia": 1.21,
    "amazon": 1.42,
    "yelp": 1.70,
    "sst2": 1.17,
    "squad_v2": 1.10,
    "iwslt2017_en_fr": 1.36,
}
TEST_TOKENS = {
    "agnews": 113.0,
    "dbpedia": 170.2,
    "amazon": 158.8,
    "yelp": 257.0,
    "sst2": 76.4,
    "medmcqa": 98.0,
    "squad_v2": 255.6,
    "iwslt2017_en_fr": 64.7,
}


def measured(table: dict[str, float], task: str) -> float:
    """The task's measured value, else the measured tasks' mean."""
    return table[task] if task in table else sum(table.values()) / len(table)


def unmeasured(params) -> list[str]:
    """The params' tasks priced at the measured mean: learned ones missing from a table, only scored
    ones missing from TEST_TOKENS."""
    learned = {s.task for s in params.steps}
    scored = learned | set(params.sections.evaluate.unseen)
    tables = lambda t: (TRAIN_TOKENS, PADDING, TEST_TOKENS) if t in learned else (TEST_TOKENS,)  # noqa: E731
    return sorted(t for t in scored if any(t not in table for table in tables(t)))


def limits(params: Params, limit: int | None = None) -> dict[str, int]:
    """Task -> test examples scored: `limit` for every task, else the params' (all of the test split: its size)."""
    return {t: limit or n or params.sections.data.test_size for t, n in params.eval_limits().items()}


def scoring_seconds(params: Params, task: str, examples: int) -> float:
    """One evaluation's seconds on one task: its prompts, and its replies when its format generates."""
    seconds = examples * measured(TEST_TOKENS, task) / SCORE_TOK_S
    fmt = params.find_task(task).format
    if resolve_modes(params.eval_modes)[fmt] == "gen":
        seconds += examples * reply_length(fmt, params.sections.evaluate.max_new_tokens) * GEN_S_PER_TOKEN
    return seconds


def stage_seconds(stage: plan.Stage, params: Params, steps: int, limit: dict[str, int]) -> float:
    task = stage.task
    if stage.stage == "finetune":
        examples = steps * params.sections.finetune.batch_size
        seconds = examples * measured(TRAIN_TOKENS, task) * measured(PADDING, task) / TRAIN_TOK_S
        if params.method_of(stage.method) == "ewc":
            after = params.select(stage.run).step(task).after
            seconds += EWC_FISHER_EXAMPLES * measured(TRAIN_TOKENS, after) / TRAIN_TOK_S
        return FIXED_S["finetune"] + seconds
    if stage.stage == "evaluate":
        scored = [p.name for p in stage.deps if p.parent == params.data_dir]
        return FIXED_S["evaluate"] + sum(scoring_seconds(params, t, limit[t]) for t in scored)
    return FIXED_S.get(stage.stage, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("params", type=Path)
    parser.add_argument("--steps", type=int, help="finetune.max_steps (default: the params')")
    parser.add_argument("--limit", type=int, help="test examples per task (default: the params')")
    args = parser.parse_args()
    params = load_params(args.params)
    steps = args.steps or params.sections.finetune.max_steps
    limit = limits(params, args.limit)
    seconds, counts = Counter(), Counter()
    for stage in plan.plan(params):
        seconds[stage.stage] += stage_seconds(stage, params, steps, limit)
        counts[stage.stage] += 1
    total = sum(seconds.values())
    scored = ", ".join(f"{t} {n}" for t, n in limit.items())
    print(f"{args.params}: max_steps {steps}; test examples scored: {scored}")
    if guessed := unmeasured(params):
        print(f"  not measured, priced at the measured tasks' mean: {', '.join(guessed)}")
    for kind in sorted(seconds, key=seconds.get, reverse=True):
        print(f"  {kind:<10} {counts[kind]:>4} stages  {seconds[kind] / 3600:6.2f} one-thread hours")
    print(f"  total: {total / 3600:.2f} one-thread hours = {total / 7200:.2f} h on two one-thread lanes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
