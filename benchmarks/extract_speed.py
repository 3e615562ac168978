"""Feature extraction: tokens/s against a plain forward pass with output_hidden_states.

    .venv/bin/python benchmarks/extract_speed.py --model data/steps/base/model [--samples 96]

Both run the same model object over the same length-sorted, padded batches, alternating (best of
`--repeats`), so the ratio shows what pooling and writing to disk cost on top of the forward pass.
Peak memory of the extraction is compared with the size of its pooled output.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch
from common import command_line, machine

from recall.atomic import write_json
from recall.data import encode, read_examples
from recall.models import describe, load_causal_lm, load_tokenizer
from recall.tasks.export import export_task
from recall.tasks.generated import generate_suite
from recall.tracking import git_commit
from recall.weights.features import length_sorted_batches, write_features


def plain_forward(lm, tokenizer, encoded, batch_size) -> int:
    tokens = 0
    with torch.inference_mode():
        for batch in length_sorted_batches([len(ids) for ids in encoded], batch_size):
            padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            lm(**padded, output_hidden_states=True, use_cache=False)
            tokens += int(padded["attention_mask"].sum())
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/steps/base/model")
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "extract_speed.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    info = describe(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_suite(tmp / "tasks", seed=0, train=args.samples, test=1)
        export_task("gen_reading", "train", tmp / "probe.jsonl", tmp / "tasks")
        tokenizer = load_tokenizer(info)
        encoded = [encode(tokenizer, r, 512).input_ids for r in read_examples(tmp / "probe.jsonl")]
        lm = load_causal_lm(info, device="cpu")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        plain, ours = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            tokens = plain_forward(lm, tokenizer, encoded, args.batch_size)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            write_features(lm, tokenizer, encoded, tmp / "features.npy", args.batch_size)
            ours.append(time.perf_counter() - t)
        output_bytes = (tmp / "features.npy").stat().st_size
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "benchmark": "extract_speed",
        "command": command_line(),
        "model": args.model,
        "layers": info.num_layers,
        "hidden": info.config.hidden_size,
        "samples": len(encoded),
        "tokens": tokens,
        "batch_size": args.batch_size,
        "plain_forward_tokens_per_s": tokens / min(plain),
        "extract_tokens_per_s": tokens / min(ours),
        "extract_over_plain_time": min(ours) / min(plain),
        "pooled_output_bytes": output_bytes,
        "peak_rss_growth_during_runs_bytes": peak - rss_before,
        "machine": machine(),
        "commit": git_commit(),
    }
    write_json(args.out, result)
    print(result)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
