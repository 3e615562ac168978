"""recall vs mergekit on the same models: wall time, peak memory, and whether the outputs agree.

    .venv/bin/pip install -e ".[mergekit]"
    .venv/bin/python benchmarks/merge_vs_mergekit.py [--work /tmp/recall-mergekit-bench] [--repeats 2]

Three random ~1 GB float32 Llama checkpoints (benchmarks/common.py). Two merges, each run by both
tools in fresh processes, interleaved, `--repeats` times (best time, worst memory):
- linear: the weighted average of the 3 models (recall `average`, mergekit `linear`, normalize false);
- TIES: model 0 as base, models 1 and 2 as experts, density 0.5, weights 1 (recall `ties`, mergekit
  `ties`, normalize true).
Reported per tool: `process_s`, the whole command as a user runs it (Python start-up, imports, config
reading, merge, exit); `merge_s`, the merge call alone (recall's engine `merge`, mergekit's
`run_merge`); and the peak resident memory of the process (VmHWM: anonymous plus touched file-backed
pages, what the machine must hold). The page cache is warm for both: the inputs are read once first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import yaml
from common import CHILD_PRELUDE, command_line, machine, random_llama, run_child

from recall.atomic import write_json
from recall.safetensors_io import SafetensorsModel
from recall.tracking import git_commit

# Run mergekit's own CLI entry point (what `mergekit-yaml CONFIG OUT` runs), measured like recall's child.
MERGEKIT_CHILD = (
    CHILD_PRELUDE
    + """
import mergekit.scripts.run_yaml as cli
timing = {}
def timed_run_merge(*args, _run=cli.run_merge, **kwargs):
    t = time.perf_counter()
    _run(*args, **kwargs)
    timing["merge_s"] = time.perf_counter() - t
cli.run_merge = timed_run_merge
rss0 = status("VmRSS")
cli.main(sys.argv[1:], standalone_mode=False)
print(json.dumps({**timing, "rss_after_imports": rss0, "peak_rss": status("VmHWM")}))
"""
)


def run_mergekit(config: dict, out: Path) -> dict:
    """`mergekit-yaml config out` in a fresh process: process and merge wall time, peak resident memory."""
    path = out.with_suffix(".yml")
    path.write_text(yaml.safe_dump({**config, "dtype": "float32"}))
    t = time.perf_counter()
    # The random checkpoints have no tokenizer to copy.
    proc = subprocess.run(
        [sys.executable, "-c", MERGEKIT_CHILD, str(path), str(out), "--quiet", "--no-copy-tokenizer"],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-4000:])
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - t}


def run_recall(args: list[str]) -> dict:
    """`recall ARGS` in a fresh process: process and merge wall time, peak resident memory."""
    t = time.perf_counter()
    result = run_child(args)
    return {**result, "merge_s": result["engine_wall_s"], "process_s": time.perf_counter() - t}


def compare(ours: Path, theirs: Path) -> dict:
    """The largest per-tensor ||ours - theirs|| / ||theirs|| (and its tensor), and how many entries differ."""
    a, b = SafetensorsModel(ours), SafetensorsModel(theirs)
    assert a.tensors.keys() == b.tensors.keys(), sorted(set(a.tensors) ^ set(b.tensors))[:5]
    worst, worst_name, differing = 0.0, None, {}
    for name in a.tensors:
        x, y = a.read(name).float(), b.read(name).float()
        rel = float((x - y).norm() / y.norm().clamp_min(1e-12))
        if rel > worst:
            worst, worst_name = rel, name
        if n := int((x != y).sum()):
            differing[name] = n
    return {"max_relative_error": worst, "worst_tensor": worst_name, "differing_entries": differing}


def warm(models: list[Path]) -> None:
    for folder in models:
        for f in folder.glob("*.safetensors"):
            with f.open("rb", buffering=0) as fh:
                while fh.read(64 << 20):
                    pass


def summary(runs: list[dict]) -> dict:
    """Best of the repeats for times (the machine is shared), worst for memory."""
    return {
        "process_s": round(min(r["process_s"] for r in runs), 2),
        "merge_s": round(min(r["merge_s"] for r in runs), 2),
        "all_process_s": [round(r["process_s"], 2) for r in runs],
        "all_merge_s": [round(r["merge_s"], 2) for r in runs],
        "peak_rss_bytes": max(r["peak_rss"] for r in runs),
        "peak_rss_over_imports_bytes": max(r["peak_rss"] - r["rss_after_imports"] for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recall-mergekit-bench"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "merge_vs_mergekit.json")
    args = parser.parse_args()

    # mergekit reads the architecture from config.json
    models = [random_llama(args.work / f"model{i}", seed=i, architectures=["LlamaForCausalLM"]) for i in range(3)]
    info = SafetensorsModel(models[0])
    paths = [str(m) for m in models]
    merges = {
        "linear": (
            ["merge", "--method", "average", "--models", *paths, "--weights", "0.2", "0.3", "0.5"],
            {
                "merge_method": "linear",
                "parameters": {"normalize": False},
                "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(paths, [0.2, 0.3, 0.5])],
            },
        ),
        "ties": (
            ["merge", "--method", "ties", "--base", paths[0], "--models", *paths[1:], "--density", "0.5"],
            {
                "merge_method": "ties",
                "base_model": paths[0],
                "parameters": {"normalize": True},
                "models": [{"model": m, "parameters": {"weight": 1.0, "density": 0.5}} for m in paths[1:]],
            },
        ),
    }
    warm(models)
    rows = []
    for name, (recall_args, config) in merges.items():
        ours, theirs = args.work / f"recall-{name}", args.work / f"mergekit-{name}"
        runs: dict[str, list[dict]] = {"recall": [], "mergekit": []}
        for _ in range(args.repeats):  # interleaved: the machine is shared and noisy
            for out in (ours, theirs):
                shutil.rmtree(out, ignore_errors=True)
            runs["recall"].append(run_recall([*recall_args, "--out", str(ours)]))
            runs["mergekit"].append(run_mergekit(config, theirs))
        row = {
            "merge": name,
            "recall": summary(runs["recall"]),
            "mergekit": summary(runs["mergekit"]),
            **compare(ours, theirs),
        }
        for key in ("process_s", "merge_s"):
            row[f"speedup_{key[:-2]}"] = round(row["mergekit"][key] / row["recall"][key], 2)
        row["memory_ratio"] = round(row["recall"]["peak_rss_bytes"] / row["mergekit"]["peak_rss_bytes"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        for out in (ours, theirs):
            shutil.rmtree(out, ignore_errors=True)
    write_json(
        args.out,
        {
            "benchmark": "merge_vs_mergekit",
            "command": command_line(),
            "model": {
                "params_bytes": info.nbytes,
                "largest_tensor_bytes": info.largest,
                "dtype": "float32",
                "n_inputs": 3,
            },
            "mergekit": version("mergekit"),
            "machine": machine(),
            "commit": git_commit(),
            "results": rows,
        },
    )


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - t0:.0f} s")
