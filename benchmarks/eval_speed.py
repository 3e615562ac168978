"""Evaluation speed: `recall evaluate`'s fixed cost over the scoring itself, for likelihood (PPL) and
generated tasks; for PPL tasks also its one pass per prompt against one forward per (prompt, answer)
pair and against a plain batched forward.

    .venv/bin/python benchmarks/eval_speed.py --model /tmp/smolbase [--case sst2:32 --case squad_v2:8]
        [--batch-size 8] [--threads 1] [--repeats 1] [--data-dir ../shared/data] [--baseline DIR]

Each `--case TASK:LIMIT` (default: sst2, short prompts and two labels, race, ~500-token articles and
four options, and squad_v2, generated answers) runs the task's first LIMIT test examples, rendered
with the model's chat template, on `--threads` CPU threads, `--batch-size` rows per forward pass.

The scoring itself, timed in this process on the model already loaded, with the calls `recall
evaluate` makes inside OpenCompass and its batches:
- PPL (a task with choices): `ChatModel.get_answer_nll`, each prompt once, in batches of prompts,
  every label scored from it (one pass); and for comparison
  - plain: transformers alone: a left-padded forward pass over each batch of (prompt, label) pairs
    (the model's logits at every position), then the log-softmax at the answer positions only;
  - per pair: the likelihood `recall evaluate` computed before it ran each prompt once: the same
    batches of pairs, the output layer at the answer positions only (`logits_to_keep`);
- generation (a task without choices): `ChatModel.generate_from_template` on OpenCompass's
  `GenInferencer` batches (test order), greedy, up to the format's reply length; then the reference's
  likelihood (`get_answer_nll` with the reference as the only answer) for the `nll` metric.
evaluate: `recall evaluate` end to end in a fresh process (fresh output folder, so nothing cached):
imports, OpenCompass, model load, inference, scoring, examples/ and metrics.json. Its fixed cost is its
wall time less the scoring's. With `--baseline DIR`, `recall evaluate` also runs with the `recall`
package of DIR (e.g. a worktree of the code before a change; same interpreter and packages),
alternating with this tree's, and its metrics.json and examples/ are compared byte for byte.
Timings are the best of `--repeats`. Writes benchmarks/results/eval_speed.json and eval_speed.md.
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
from common import command_line, machine
from transformers import AutoModelForCausalLM, AutoTokenizer

from recall.atomic import atomic_file, write_json
from recall.data import chat_prompt
from recall.errors import RecallError
from recall.evaluation.config import MAX_NEW_TOKENS
from recall.evaluation.inferencer import length_sorted_batches
from recall.tasks.registry import get_task
from recall.tracking import git_commit

Pair = tuple[int, str]  # (example index, answer)


def pair_batches(prompts: list[str], choices: list[str], size: int) -> list[list[Pair]]:
    """Every (example, label) pair in batches of `size`, longest text first (the per-pair batching)."""
    pairs = [(i, c) for i in range(len(prompts)) for c in choices]
    order = sorted(pairs, key=lambda pair: len(prompts[pair[0]]) + len(pair[1]), reverse=True)
    return [order[start : start + size] for start in range(0, len(order), size)]


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
                nll[pair] = -picked[row, -len(answer) :].mean().item()
    return nll


def per_pair_nll(model, prompts: list[str], answers: list[str]) -> list[float]:
    """Mean NLL per token of each answer after its prompt, one left-padded row per pair (the
    computation `ChatModel.get_answer_nll` replaced), the output layer at the answer positions only."""
    encode = model.tokenizer
    rows = [
        (encode(p, add_special_tokens=False)["input_ids"], encode(a, add_special_tokens=False)["input_ids"])
        for p, a in zip(prompts, answers)
    ]
    rows = [(prompt[-(model.max_seq_len - len(answer)) :] + answer, len(answer)) for prompt, answer in rows]
    width = max(len(ids) for ids, _ in rows)
    longest = max(n for _, n in rows)
    pad = encode.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in rows])
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows])
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = (
            model.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                logits_to_keep=longest + 1,
                use_cache=False,
            )
            .logits[:, :-1]
            .float()
        )
    targets = input_ids[:, -longest:]
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return [nll[i, longest - n :].mean().item() for i, (_, n) in enumerate(rows)]


def per_pair(model, prompts: list[str], batches: list[list[Pair]]) -> dict[Pair, float]:
    nll = {}
    for batch in batches:
        nll.update(zip(batch, per_pair_nll(model, [prompts[i] for i, _ in batch], [a for _, a in batch])))
    return nll


def one_pass(model, prompts: list[str], choices: list[str], batches: list[list[int]]) -> dict[Pair, float]:
    nll = {}
    for batch in batches:
        values = model.get_answer_nll([prompts[i] for i in batch], [choices] * len(batch))
        for i, scores in zip(batch, values):
            nll.update({(i, c): v for c, v in zip(choices, scores)})
    return nll


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def run_evaluate(
    args: argparse.Namespace, task: str, limit: int, out: Path, code: Path | None
) -> tuple[float, list[str]]:
    """Wall time of `recall evaluate` in a fresh process, with the `recall` package of `code` (None:
    this tree's), and the command."""
    command = [
        str(Path(sys.executable).with_name("recall")),
        "evaluate",
        "--model",
        str(args.model),
        "--tasks",
        task,
        "--data-dir",
        str(args.data_dir),
        "--limit",
        str(limit),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--out",
        str(out),
    ]
    root = code or Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise RuntimeError(f"recall evaluate failed:\n{proc.stderr[-3000:]}")
    return wall, command


def outputs(out: Path, task: str) -> tuple[bytes, bytes]:
    return (out / "metrics.json").read_bytes(), (out / "examples" / f"{task}.jsonl").read_bytes()


def evaluate_runs(args: argparse.Namespace, task: str, limit: int) -> dict:
    """`recall evaluate` `--repeats` times (and as often with `--baseline`, alternating): the best wall
    times, the metrics and records of this tree's run, and whether the baseline's are the same bytes."""
    walls: dict[str, list[float]] = {"evaluate": [], "baseline": []}
    results: dict[str, tuple[bytes, bytes]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, code in [("baseline", args.baseline), ("evaluate", None)]:
                if name == "baseline" and code is None:
                    continue
                out = Path(tmp) / f"{name}-{repeat}"
                wall, command = run_evaluate(args, task, limit, out, code)
                walls[name].append(wall)
                results.setdefault(name, outputs(out, task))
                if outputs(out, task) != results[name]:
                    raise RuntimeError(f"{name}: repeat {repeat} of {task} scored differently")
                if name == "evaluate":
                    evaluate_command = command
    metrics, records = results["evaluate"]
    return {
        "evaluate_command": " ".join(evaluate_command),
        "evaluate_wall_s": min(walls["evaluate"]),
        "evaluate_walls_s": walls["evaluate"],
        **(
            {
                "baseline_wall_s": min(walls["baseline"]),
                "baseline_walls_s": walls["baseline"],
                "baseline_identical": results["baseline"] == results["evaluate"],
            }
            if args.baseline
            else {}
        ),
        "metrics": json.loads(metrics)[task],
        "records": [json.loads(line) for line in records.decode().splitlines()],
    }


def fixed_costs(result: dict, scoring_s: float) -> dict:
    fixed = {"scoring_s": scoring_s, "evaluate_fixed_s": result["evaluate_wall_s"] - scoring_s}
    if "baseline_wall_s" in result:
        fixed["baseline_fixed_s"] = result["baseline_wall_s"] - scoring_s
    return fixed


def run_case(args: argparse.Namespace, name: str, limit: int, lm, model, tokenizer) -> dict:
    task = get_task(name)
    if not task.choices:
        return run_gen_case(args, name, limit, model, tokenizer)
    model.max_seq_len = lm.config.max_position_embeddings  # as `recall evaluate` gives it: nothing generated
    choices = list(task.choices)
    examples = task.load("test", args.data_dir, limit)
    prompts = [chat_prompt(tokenizer, e.prompt) for e in examples]
    pairs = pair_batches(prompts, choices, args.batch_size)
    prompt_batches = length_sorted_batches(prompts, args.batch_size)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    pair_tokens = sum(count(prompts[i] + c) for batch in pairs for i, c in batch)
    prompt_tokens = sum(map(count, prompts))
    times = {"plain": [], "per_pair": [], "one_pass": []}
    for _ in range(args.repeats):
        seconds, plain = timed(plain_forward, lm, tokenizer, prompts, pairs)
        times["plain"].append(seconds)
        seconds, old = timed(per_pair, model, prompts, pairs)
        times["per_pair"].append(seconds)
        seconds, new = timed(one_pass, model, prompts, choices, prompt_batches)
        times["one_pass"].append(seconds)
    best = {key: min(values) for key, values in times.items()}

    runs = evaluate_runs(args, name, limit)
    metrics, records = runs.pop("metrics"), runs.pop("records")
    wall = runs["evaluate_wall_s"]
    chosen = [min(choices, key=lambda c, i=i: plain[i, c]) for i in range(len(examples))]
    keys = list(plain)
    return {
        **runs,
        **fixed_costs(runs, best["one_pass"]),
        "kind": "ppl",
        "task": name,
        "choices": choices,
        "examples": len(examples),
        "pairs": len(keys),
        "label_tokens": [count(c) for c in choices],
        "pair_tokens": pair_tokens,
        "prompt_tokens": prompt_tokens,
        "plain_s": best["plain"],
        "per_pair_s": best["per_pair"],
        "one_pass_s": best["one_pass"],
        "times_s": times,
        "per_pair_over_plain_time": best["per_pair"] / best["plain"],
        "one_pass_over_plain_time": best["one_pass"] / best["plain"],
        "one_pass_over_per_pair_time": best["one_pass"] / best["per_pair"],
        "evaluate_over_plain_time": wall / best["plain"],
        "max_nll_difference_plain": max(abs(plain[k] - new[k]) for k in keys),
        "max_nll_difference_per_pair": max(abs(old[k] - new[k]) for k in keys),
        "max_nll_relative_difference_per_pair": max(abs(old[k] - new[k]) / abs(old[k]) for k in keys),
        "label_agreement": sum(c == r["prediction"] for c, r in zip(chosen, records)) / len(examples),
        "accuracy": metrics["accuracy"],
        "nll": metrics["nll"],
    }


def generate(model, prompts: list[str], batch_size: int, max_out_len: int) -> list[str]:
    """Greedy replies as OpenCompass's GenInferencer asks for them: batches in test order."""
    replies = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        replies += model.generate_from_template(batch, max_out_len=max_out_len, min_out_len=None, stopping_criteria=[])
    return replies


def reference_nll(model, prompts: list[str], references: list[str], batch_size: int) -> list[float]:
    """The reference's mean NLL per token, as AnswerPPLInferencer without candidates computes it."""
    nll: list[float] = [0.0] * len(prompts)
    for batch in length_sorted_batches(prompts, batch_size):
        values = model.get_answer_nll([prompts[i] for i in batch], [[references[i]] for i in batch])
        for i, (value,) in zip(batch, values):
            nll[i] = value
    return nll


def run_gen_case(args: argparse.Namespace, name: str, limit: int, model, tokenizer) -> dict:
    task = get_task(name)
    reply_tokens = MAX_NEW_TOKENS[task.format]
    model.max_seq_len = model.model.config.max_position_embeddings - reply_tokens  # as `recall evaluate` gives it
    examples = task.load("test", args.data_dir, limit)
    prompts = [chat_prompt(tokenizer, e.prompt) for e in examples]
    references = [e.answer for e in examples]
    times = {"generate": [], "nll": []}
    for _ in range(args.repeats):
        seconds, replies = timed(generate, model, prompts, args.batch_size, reply_tokens)
        times["generate"].append(seconds)
        seconds, nll = timed(reference_nll, model, prompts, references, args.batch_size)
        times["nll"].append(seconds)
    best = {key: min(values) for key, values in times.items()}
    runs = evaluate_runs(args, name, limit)
    metrics, records = runs.pop("metrics"), runs.pop("records")
    return {
        **runs,
        **fixed_costs(runs, best["generate"] + best["nll"]),
        "kind": "gen",
        "task": name,
        "examples": len(examples),
        "reply_tokens": reply_tokens,
        "prompt_tokens": sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts),
        "generate_s": best["generate"],
        "nll_s": best["nll"],
        "times_s": times,
        "reply_agreement": sum(r == rec["prediction"] for r, rec in zip(replies, records)) / len(examples),
        "max_nll_difference": max(abs(a - rec["nll"]) for a, rec in zip(nll, records)),
        "metrics": metrics,
    }


def evaluate_rows(r: dict, scale: float) -> str:
    """The `recall evaluate` rows of a case's table; `scale`: the time the ratio column divides by."""
    rows = ""
    if "baseline_wall_s" in r:
        rows += (
            f"| `recall evaluate` end to end, baseline code (fresh process) | {r['baseline_wall_s']:.2f} | "
            f"{r['baseline_wall_s'] / scale:.2f} | {r['baseline_fixed_s']:.2f} |\n"
        )
    rows += (
        f"| `recall evaluate` end to end (fresh process) | {r['evaluate_wall_s']:.2f} | "
        f"{r['evaluate_wall_s'] / scale:.2f} | {r['evaluate_fixed_s']:.2f} |\n"
    )
    return rows


def identical_line(r: dict) -> str:
    if "baseline_identical" not in r:
        return ""
    same = "identical" if r["baseline_identical"] else "DIFFERENT"
    return f"Baseline and this code: metrics.json and examples/{r['task']}.jsonl byte for byte {same}.\n"


def case_markdown(r: dict, batch_size: int) -> str:
    if r["kind"] == "gen":
        return gen_markdown(r, batch_size)
    return f"""## {r["task"]} (PPL): {r["examples"]} examples x {len(r["choices"])} labels

{r["pairs"]} (prompt, label) pairs of {r["pair_tokens"]} tokens in all; the prompts alone:
{r["prompt_tokens"]} tokens; tokens per label: {r["label_tokens"]}.
Batches of {batch_size} rows: pairs for plain and per pair, prompts for one pass and `recall evaluate`.

| what | seconds | time / plain | fixed cost (s) |
|---|---|---|---|
| plain batched forward per pair (transformers, model loaded) | {r["plain_s"]:.2f} | 1.00 | |
| per pair, answer positions only (the former `get_answer_nll`) | {r["per_pair_s"]:.2f} | \
{r["per_pair_over_plain_time"]:.2f} | |
| one pass per prompt (`ChatModel.get_answer_nll`): the scoring itself | {r["one_pass_s"]:.2f} | \
{r["one_pass_over_plain_time"]:.2f} | |
{evaluate_rows(r, r["plain_s"])}
Fixed cost: `recall evaluate`'s wall time less the one-pass scoring (imports, OpenCompass, model load,
files). {identical_line(r)}Largest |NLL difference| of one pass against per pair: {r["max_nll_difference_per_pair"]:.2e}
(relative {r["max_nll_relative_difference_per_pair"]:.2e}); against plain: {r["max_nll_difference_plain"]:.2e}.
Plain and `recall evaluate` chose the same label for {r["label_agreement"]:.0%} of examples.
Accuracy {r["accuracy"]:.2f}, nll {r["nll"]:.4f}.
"""


def gen_markdown(r: dict, batch_size: int) -> str:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
    return f"""## {r["task"]} (generation): {r["examples"]} examples, replies of up to {r["reply_tokens"]} tokens

Prompts: {r["prompt_tokens"]} tokens in all; batches of {batch_size} prompts.

| what | seconds | time / scoring | fixed cost (s) |
|---|---|---|---|
| greedy replies (`ChatModel.generate_from_template`, GenInferencer's batches) | {r["generate_s"]:.2f} | | |
| reference likelihood for `nll` (`ChatModel.get_answer_nll`) | {r["nll_s"]:.2f} | | |
| the scoring itself (both) | {r["scoring_s"]:.2f} | 1.00 | |
{evaluate_rows(r, r["scoring_s"])}
Fixed cost: `recall evaluate`'s wall time less the scoring (imports, OpenCompass, model load, files).
{identical_line(r)}`recall evaluate` and the replies generated here agree for {r["reply_agreement"]:.0%} of examples;
largest |nll difference| {r["max_nll_difference"]:.2e}. {metrics}.
"""


def markdown(result: dict) -> str:
    r = result
    cases = "\n".join(case_markdown(case, r["batch_size"]) for case in r["cases"].values())
    baseline = r["baseline"] is not None
    head = "| case | scoring (s) | " + ("baseline fixed cost (s) | " if baseline else "") + "fixed cost (s) |"
    rows = [head, "|---|---|" + ("---|" if baseline else "") + "---|"]
    for name, case in r["cases"].items():
        before = f"{case['baseline_fixed_s']:.2f} | " if baseline else ""
        rows.append(f"| {name} ({case['kind']}) | {case['scoring_s']:.2f} | {before}{case['evaluate_fixed_s']:.2f} |")
    table = "\n".join(rows)
    load = (
        ", ".join(f"{x:.2f}" for x in r["load_average"]["start"])
        + " at the start; "
        + ", ".join(f"{x:.2f}" for x in r["load_average"]["end"])
    )
    return f"""# Evaluation speed: `recall evaluate`'s fixed cost over the scoring itself

{r["model"]}, {r["threads"]} thread(s), {r["batch_size"]} rows per batch, best of {r["repeats"]}.
Command: `{r["command"]}`
{f"Baseline: the `recall` package of {r['baseline']} (commit {r['baseline_commit']})." if baseline else ""}
Machine: {r["machine"]["cpu_count"]} cores; load average (1, 5, 15 min) {load} at the end.
{r["note"] or ""}

{table}

One pass (PPL) runs each prompt once: a label of one token is scored from the prompt's last position
(the output layer there only), a longer one continues from the prompt's key/value cache with its other
tokens. Per pair runs prompt + label once per label.

{cases}"""


def parse_case(text: str) -> tuple[str, int]:
    task, _, limit = text.partition(":")
    if not limit.isdigit() or int(limit) < 1:
        raise argparse.ArgumentTypeError(f"expected TASK:LIMIT, got {text!r}")
    return task, int(limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("data/steps/base/model"))
    parser.add_argument(
        "--case",
        type=parse_case,
        action="append",
        dest="cases",
        help="TASK:LIMIT, repeatable (default: sst2:32, race:12 and squad_v2:8)",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--baseline", type=Path, help="also time `recall evaluate` with the recall package of DIR")
    parser.add_argument("--note", help="a line for the report (e.g. what else ran on the machine)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_speed.json")
    args = parser.parse_args()
    args.cases = args.cases or [("sst2", 32), ("race", 12), ("squad_v2", 8)]
    if args.baseline is not None and not (args.baseline / "recall" / "__init__.py").is_file():
        raise RecallError(f"--baseline {args.baseline} holds no recall package (recall/__init__.py)")
    if not (args.model / "config.json").is_file():
        raise RecallError(
            f"{args.model} is not a model folder; pull one with `.venv/bin/recall base pull --out /tmp/smolbase`"
        )
    args.model, args.data_dir = args.model.resolve(), args.data_dir.resolve()
    torch.set_num_threads(args.threads)

    from recall.evaluation.compat import restore_batch_encode_plus
    from recall.evaluation.model import ChatModel

    restore_batch_encode_plus()
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False)
    lm = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, trust_remote_code=False).eval()
    model = ChatModel(  # OpenCompass defaults to remote code, and reads the config itself without max_seq_len
        path=str(args.model),
        model_kwargs=dict(torch_dtype="float32", device_map="cpu", trust_remote_code=False),
        tokenizer_kwargs=dict(trust_remote_code=False),
        max_seq_len=lm.config.max_position_embeddings,
    )
    # Warm-up: the first forward of a process pays one-off costs that none of the timed paths should.
    plain_forward(lm, tokenizer, ["Hello"], [[(0, "A")]])
    one_pass(model, ["Hello"], ["A"], [[0]])
    reference_nll(model, ["Hello"], ["An answer of several tokens"], 1)
    generate(model, ["Hello"], 1, 2)
    load_start = os.getloadavg()
    cases = {f"{name}:{limit}": run_case(args, name, limit, lm, model, tokenizer) for name, limit in args.cases}
    result = {
        "benchmark": "eval_speed",
        "command": command_line(),
        "model": str(args.model),
        "baseline": str(args.baseline) if args.baseline else None,
        "baseline_commit": git_commit(args.baseline) if args.baseline else None,
        "note": args.note,
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "cases": cases,
        "machine": machine(),
        "commit": git_commit(),
    }
    write_json(args.out, result)
    with atomic_file(args.out.with_suffix(".md")) as fh:
        fh.write(markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
