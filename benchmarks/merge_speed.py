"""Merge engine: wall time over the I/O floor and peak memory over N x the largest tensor.

    .venv/bin/python benchmarks/merge_speed.py [--work /tmp/recall-bench] [--sizes 2 3 4 6]
        [--methods opcm iso_c iso_cts tsv_m lines] [--method-sizes 2 6]

For N random ~1 GB Llama checkpoints, each `recall merge --method average` runs in a fresh process
(peak RSS from /proc). The I/O floor is measured in the same run: reading every input byte and
writing as many bytes as the output has, with large sequential I/O. Both run on a warm page cache.
The NaN/Inf check's CPU cost is measured here too: the check over one model's tensors held in memory,
times N + 1 (every input and the output), as a share of the engine's wall time.

The task-vector methods (`--methods`, on one more random checkpoint as their --base) run the same way
at `--method-sizes`, beside `average`'s run at that size: their seconds and peak memory over
`average`'s, and what their SVDs cost, in units of one thin SVD of every matrix of one model (timed
here, in memory). Random checkpoints' deltas are full rank; an SVD's cost does not depend on the rank.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from common import command_line, machine, random_llama, run_child

from recall.atomic import write_json
from recall.merge.engine import nonfinite
from recall.safetensors_io import SafetensorsModel
from recall.tracking import git_commit

CHUNK = 64 << 20


def io_floor(inputs: list[Path], out_bytes: int, scratch: Path) -> float:
    """Seconds to read every input weight file and write `out_bytes`."""
    buf = bytearray(CHUNK)
    start = time.perf_counter()
    for folder in inputs:
        for f in sorted(folder.glob("*.safetensors")):
            with f.open("rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    with scratch.open("wb", buffering=0) as fh:
        left = out_bytes
        while left > 0:
            left -= fh.write(memoryview(buf)[: min(CHUNK, left)])
    elapsed = time.perf_counter() - start
    scratch.unlink()
    return elapsed


def finite_check_seconds(model: Path) -> float:
    """Seconds the engine's NaN/Inf check spends on one model's tensors, already in memory."""
    weights = SafetensorsModel(model)
    tensors = [weights.read(name) for name in weights.tensors]
    start = time.perf_counter()
    assert not any(nonfinite(t) for t in tensors)
    return time.perf_counter() - start


def svd_seconds(model: Path) -> float:
    """Seconds of one thin SVD of every matrix of one model, already in memory (float32, as the kernels)."""
    weights = SafetensorsModel(model)
    matrices = [t.float() for t in (weights.read(name) for name in weights.tensors) if t.dim() == 2]
    start = time.perf_counter()
    for m in matrices:
        torch.linalg.svd(m, full_matrices=False)
    return time.perf_counter() - start


def method_rows(args, models: list[Path], base: Path, average: dict[int, dict]) -> list[dict]:
    """Each method at each of --method-sizes against `average`'s run there (n -> its best run)."""
    svd_s = svd_seconds(models[0])
    rows = []
    for n in args.method_sizes:
        inputs, out = models[:n], args.work / f"merged{n}"
        for method in args.methods:
            argv = ["merge", "--method", method, "--models", *map(str, inputs), "--base", str(base), "--out", str(out)]
            runs = [run_child(argv) for _ in range(args.repeats)]
            best = min(runs, key=lambda r: r["engine_wall_s"])
            peak = max(r["peak_rss"] - r["rss_after_imports"] for r in runs)
            ref = average[n]
            rows.append(
                {
                    "method": method,
                    "n_models": n,
                    "engine_wall_s": best["engine_wall_s"],
                    "average_engine_wall_s": ref["engine_wall_s"],
                    "over_average": best["engine_wall_s"] / ref["engine_wall_s"],
                    "peak_rss_over_imports_bytes": peak,
                    "peak_over_average": peak / ref["peak_rss_over_imports_bytes"],
                    "peak_over_largest_tensor": peak / ref["largest_tensor_bytes"],
                    "svd_pass_s": svd_s,  # one thin SVD of every matrix of one model
                    "extra_s_in_svd_passes": (best["engine_wall_s"] - ref["engine_wall_s"]) / svd_s,
                }
            )
            print(json.dumps(rows[-1]))
            shutil.rmtree(out, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/recall-bench"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", nargs="*", default=["opcm", "iso_c", "iso_cts", "tsv_m", "lines"])
    parser.add_argument("--method-sizes", type=int, nargs="+", default=[2, 6])
    parser.add_argument("--llama", type=json.loads, default={}, help="JSON overrides of the ~1 GB Llama config")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "merge_speed.json")
    args = parser.parse_args()

    sizes = sorted(set(args.sizes) | (set(args.method_sizes) if args.methods else set()))
    models = [random_llama(args.work / f"model{i}", seed=i, **args.llama) for i in range(max(sizes))]
    info = SafetensorsModel(models[0])
    model_bytes = info.nbytes
    largest = max(t.nbytes for t in info.tensors.values())
    check_s = min(finite_check_seconds(models[0]) for _ in range(3))
    rows = []
    for n in sizes:
        inputs, out = models[:n], args.work / f"merged{n}"
        floor, runs = [], []
        for _ in range(args.repeats):  # interleaved, best of each: the machine is noisy
            floor.append(io_floor(inputs, model_bytes, args.work / "floor.tmp"))
            runs.append(run_child(["merge", "--method", "average", "--models", *map(str, inputs), "--out", str(out)]))
        best = min(runs, key=lambda r: r["engine_wall_s"])
        peak_over_constant = max(r["peak_rss"] - r["rss_after_imports"] for r in runs)
        rows.append(
            {
                "n_models": n,
                "input_bytes": n * model_bytes,
                "output_bytes": model_bytes,
                "io_floor_s": min(floor),
                "engine_wall_s": best["engine_wall_s"],
                "command_wall_s": best["wall_s"],
                "engine_over_io_floor": best["engine_wall_s"] / min(floor),
                "finite_check_share_of_engine": (n + 1) * check_s / best["engine_wall_s"],
                "peak_rss_over_imports_bytes": peak_over_constant,
                "largest_tensor_bytes": largest,
                "peak_over_largest_tensor": peak_over_constant / largest,
                "peak_over_model_bytes": peak_over_constant / model_bytes,
            }
        )
        print(json.dumps(rows[-1]))
        shutil.rmtree(out, ignore_errors=True)
    base = random_llama(args.work / "base", seed=len(models), **args.llama) if args.methods else None
    methods = method_rows(args, models, base, {r["n_models"]: r for r in rows}) if args.methods else []
    write_json(
        args.out,
        {
            "benchmark": "merge_speed",
            "command": command_line(),
            "model": {"params_bytes": model_bytes, "largest_tensor_bytes": largest, "dtype": "float32"},
            "machine": machine(),
            "commit": git_commit(),
            "results": rows,
            "methods": methods,
        },
    )


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
