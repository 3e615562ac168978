"""Fine-tuning loop overhead: training tokens/s of `recall.training.finetune.train_loop` vs a bare loop.

    .venv/bin/python benchmarks/finetune_speed.py [--base models/base] [--rounds 3] [--steps 4] [--threads N]

Both loops train the same LoRA model (SmolLM2-135M-Instruct from `recall base pull`, r=8 on all
linear layers) on the same batches of generated reading-comprehension examples, in the same process.
The bare loop is the minimum any training step needs: forward, backward, AdamW step, zero_grad, over
pre-built batches. Ours adds lazy batch building, gradient clipping, the LR schedule, per-step loss
logging and the tqdm bar. Rounds alternate ours/bare so drift in machine load hits both alike; the
median round is reported. On a shared machine whole-step timings swing by +-30%, so the extras are
also timed in isolation and set against the bare step time. Goal: overhead < 10%.
Writes benchmarks/results/finetune_speed.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import command_line, machine
from tqdm.auto import tqdm

from recall.atomic import write_json
from recall.base_model import pull_base
from recall.models import describe, load_causal_lm, load_tokenizer
from recall.tasks import get_task
from recall.tasks.generated import generate_suite
from recall.tracking import git_commit
from recall.training.finetune import FinetuneConfig, add_lora, encode_examples, iterate_batches, to_device, train_loop

RESULTS = Path(__file__).parent / "results" / "finetune_speed.json"
TASK = "gen_reading"


def bare_loop(model: torch.nn.Module, batches: list[dict], lr: float) -> tuple[int, float]:
    """(tokens, seconds) of forward + backward + AdamW step over `batches`."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    model.train()
    tokens = 0
    start = time.perf_counter()
    for batch in batches:
        tokens += int(batch["attention_mask"].sum())
        model(**to_device(batch, device)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens, time.perf_counter() - start


def extras_ms_per_step(model: torch.nn.Module, make_batches, steps: int, repeats: int = 20) -> dict[str, float]:
    """Milliseconds per step of what our loop adds to the bare one, timed in isolation (immune to
    the machine-load noise that blurs the A/B comparison of whole steps)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / (repeats + 1))
    loss = torch.tensor(1.0, requires_grad=True) * 2

    def per_step(fn, count: int) -> float:
        start = time.perf_counter()
        fn()
        return round(1000 * (time.perf_counter() - start) / count, 3)

    def clip_and_schedule():
        for _ in range(repeats):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            schedule.step()

    def logging():
        with open(os.devnull, "w") as sink, tqdm(total=repeats, file=sink) as bar:
            for step in range(repeats):
                entry = {"step": step, "loss": round(loss.item(), 6)}
                bar.set_postfix(loss=f"{entry['loss']:.4f}", tok_s="1")
                bar.update()

    extras = {
        "batch_building": per_step(make_batches, steps),
        "clip_and_schedule": per_step(clip_and_schedule, repeats),
        "logging_and_progress": per_step(logging, repeats),
    }
    model.zero_grad(set_to_none=True)
    return extras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per loop per round")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch CPU threads (on a busy machine 1 beats 2 by 5-15x)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = pull_base(args.base)
    config = FinetuneConfig(batch_size=args.batch_size, lr=1e-4)
    info = describe(base)
    tokenizer = load_tokenizer(info)
    with tempfile.TemporaryDirectory() as tmp:
        generate_suite(tmp, seed=0, train=64, test=1)
        examples = get_task(TASK).load("train", Path(tmp))
    encoded = encode_examples(tokenizer, examples, config.max_length, TASK)
    torch.manual_seed(0)
    model = add_lora(load_causal_lm(info), config)

    def batches(round_: int) -> list[dict]:  # the same seed gives both loops identical batches
        return list(iterate_batches(encoded, args.batch_size, args.steps, round_, tokenizer.pad_token_id))

    bare_loop(model, batches(99)[:1], config.lr)  # warm-up: first-call allocations, not counted
    rounds = []
    for r in range(args.rounds):
        record = train_loop(model, iter(batches(r)), args.steps, config.lr, desc=f"round {r} ours")
        tokens, seconds = bare_loop(model, batches(r), config.lr)
        assert tokens == record.train_tokens, "both loops must see the same tokens"
        rounds.append(
            {
                "tokens": tokens,
                "ours_s": round(record.seconds, 3),
                "bare_s": round(seconds, 3),
                "ours_tokens_per_s": round(tokens / record.seconds, 2),
                "bare_tokens_per_s": round(tokens / seconds, 2),
            }
        )
        print(rounds[-1], flush=True)

    extras = extras_ms_per_step(model, lambda: batches(0), args.steps)
    step_ms = 1000 * statistics.median(r["bare_s"] for r in rounds) / args.steps
    ours = statistics.median(r["ours_tokens_per_s"] for r in rounds)
    bare = statistics.median(r["bare_tokens_per_s"] for r in rounds)
    overhead = 100 * (sum(r["ours_s"] for r in rounds) / sum(r["bare_s"] for r in rounds) - 1)
    result = {
        "benchmark": "finetune_speed",
        "model": str(base),
        "task": TASK,
        "lora": "r=8 alpha=32 all-linear",
        "dtype": "float32",
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": rounds,
        "ours_tokens_per_s_median": ours,
        "bare_tokens_per_s_median": bare,
        "overhead_percent_total_time": round(overhead, 2),
        "goal_percent": 10,
        "extras_ms_per_step": extras,
        "bare_step_ms_median": round(step_ms, 1),
        "extras_percent_of_step": round(100 * sum(extras.values()) / step_ms, 4),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
        "command": command_line(),
        "machine": machine(),
        "commit": git_commit(),
    }
    write_json(RESULTS, result)
    print(
        f"ours {ours:.1f} tok/s, bare {bare:.1f} tok/s, overhead {overhead:+.1f}% (A/B, noisy); "
        f"loop extras {sum(extras.values()):.1f} ms per {step_ms:.0f} ms step -> {RESULTS}"
    )


if __name__ == "__main__":
    main()
