"""RECALL's ablation at one merge of the sequential benchmark (issue 11, point 7).

RECALL's chain in the sequential benchmark merges, at its third step, its model after SQuAD 2.0 with
that model fine-tuned on MedMCQA. This script redoes that one merge with one RECALL setting changed at
a time (bandwidth, temperature, similarity metric, typical samples, normalisation of the pooled
states) from the same two models and the same probe samples, through the commands users run (`recall
merge`, `recall evaluate`), and scores every merged model on the three tasks learned so far at the
benchmark's evaluation settings. The benchmark's own setting is redone too: its merge weights must
equal those of the pipeline's merge (checked), so every variant differs from it in one setting only.
Two references bracket them: no merge (the MedMCQA fine-tune itself) and a plain 0.5 / 0.5 average.
Beside them, calibrated RECALL (`--calibrate zscore`, a RECALL setting like the others) and the
continual and spectral merges (issue 27) of the same two models on the chain's base, with `--chain`:
the MedMCQA fine-tune was trained from RECALL's model after SQuAD 2.0, so each method merges that
model's task vector and the step's own (README, Merge methods). In their own chains their previous
model would be their own merge; here every method starts from RECALL's, so only the merge differs.

    .venv/bin/python benchmarks/ablation.py --chain <checkout>/benchmarks/paper/sequential [--work DIR] \
        [--variants NAME ...] [--name ablation]

--variants runs a subset (two one-thread lanes: disjoint subsets, one --work); the summary always
pairs them with the benchmark's setting, and whichever lane finishes last (or a rerun) writes it.

Resumable: a variant whose scores exist is not redone; merged models are deleted once scored (their
merge_weights.json stays). Writes benchmarks/results/<name>.{json,md}: per variant the scores with
95% paired-bootstrap intervals, the difference to the benchmark's setting on the earlier tasks
(retention), on MedMCQA (learning) and on the average, and the new model's mean weight over layers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line  # noqa: E402

from recall.pipeline import layout  # noqa: E402
from recall.pipeline.params import Params, load_params  # noqa: E402
from recall.reporting import statistics as paired  # noqa: E402
from recall.tracking import git_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECALL = str(Path(sys.executable).parent / "recall")
STEP, PREVIOUS = "medmcqa", "squad_v2"
CHAIN = "recall"  # the compared method whose chain's step is merged again here
TASKS = ["sst2", "squad_v2", "medmcqa"]  # learned so far, in order
# One change each to the chain's own RECALL settings (its params.yaml's `recall` section).
VARIANTS = {
    "benchmark": {},
    "sigma=1.0 (paper)": {"sigma": "1.0"},
    "temperature=0.5": {"temperature": "0.5"},
    "temperature=2.0": {"temperature": "2.0"},
    "similarity=cosine": {"similarity": "cosine"},
    "similarity=cka": {"similarity": "cka"},
    "typical=5": {"typical": "5"},
    "typical=40": {"typical": "40"},
    "normalize=unit": {"normalize-states": "unit"},
    "normalize=sqrt_dim": {"normalize-states": "sqrt_dim"},
    "calibrate=zscore": {"calibrate": "zscore"},
}
METHODS = ("opcm", "iso_c", "iso_cts", "tsv_m", "lines")  # registry defaults, merged as a chain step
REFERENCES = ("no merge", "average")


def run(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([RECALL, *args], check=True, env=env)


def benchmark_settings(params: Params) -> dict[str, str]:
    """The chain's RECALL settings as `recall merge` options."""
    r = params.sections.recall
    named = {"sigma": r.sigma, "temperature": r.temperature, "similarity": r.similarity, "typical": r.typical}
    return {k: str(v) for k, v in {**named, "normalize-states": r.normalize}.items()}


def merge(name: str, params: Params, out: Path) -> Path:
    """The variant's merged model in `out` (the MedMCQA fine-tune itself for "no merge")."""
    step = layout.chain_dir(params, CHAIN, STEP)
    models = [str(layout.merged_model(params, CHAIN, PREVIOUS)), str(layout.new_model(params, CHAIN, STEP))]
    if name == "no merge":
        return Path(models[1])
    if name == "average":
        run("merge", "--method", "average", "--models", *models, "--out", str(out), "--overwrite")
        return out
    if name in METHODS:
        base = ["--base", str(layout.base_model(params)), "--chain"]
        run("merge", "--method", name, "--models", *models, *base, "--out", str(out), "--overwrite")
        return out
    settings, r = {**benchmark_settings(params), **VARIANTS[name]}, params.sections.recall
    options = [f"--{k}={v}" for k, v in settings.items()]
    probe = ["--data", str(step / "probe.jsonl"), "--max-length", str(r.max_length), "--batch-size", str(r.batch_size)]
    probe += ["--seed", str(r.seed)]
    run("merge", "--method", CHAIN, "--models", *models, *probe, *options, "--out", str(out), "--overwrite")
    return out


def evaluate(model: Path, params: Params, folder: Path) -> None:
    """Scores on the tasks learned so far, at the chain's evaluate.limit per task (label tasks by likelihood)."""
    limits = params.eval_limits()
    for tasks in (["sst2", "medmcqa"], ["squad_v2"]):  # one `recall evaluate` per limit
        out = folder / ("eval_" + "_".join(tasks))
        if not (out / "metrics.json").is_file():
            limit, data = str(limits[tasks[0]]), str(params.data_dir)
            options = ["--limit", limit, "--data-dir", data, "--out", str(out), "--overwrite", "--threads", "1"]
            run("evaluate", "--model", str(model), "--tasks", ",".join(tasks), *options)


def records(folder: Path) -> dict[str, list[dict]]:
    """Task -> the variant's per-example records."""
    found = {path.stem: path for path in folder.glob("eval_*/examples/*.jsonl")}
    return {task: [json.loads(line) for line in found[task].open()] for task in TASKS if task in found}


def new_weight(folder: Path) -> float | None:
    """The new model's weight, mean over the merge's layer groups, where the weights average the models
    (not the task-vector methods' scales)."""
    path = folder / "merge_weights.json"
    layers = np.array(json.loads(path.read_text())["layers"]) if path.is_file() else None
    return float(layers[:, -1].mean()) if layers is not None and np.allclose(layers.sum(1), 1) else None


def done(folder: Path) -> bool:
    return all((folder / f"eval_{t}" / "metrics.json").is_file() for t in ("sst2_medmcqa", "squad_v2"))


def produce(name: str, params: Params, folder: Path) -> float:
    """Merge and score one variant unless done; the seconds it took (kept beside its scores)."""
    if done(folder):
        return json.loads((folder / "seconds.json").read_text()) if (folder / "seconds.json").is_file() else 0.0
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    model = merge(name, params, folder / "model")
    if (model / "merge_weights.json").is_file():
        shutil.copyfile(model / "merge_weights.json", folder / "merge_weights.json")
    evaluate(model, params, folder)
    if model == folder / "model":
        shutil.rmtree(model)
    seconds = time.perf_counter() - start
    (folder / "seconds.json").write_text(json.dumps(seconds))
    return seconds


def summarise(names: list[str], folders: dict[str, Path], pipeline_weights: np.ndarray, base: dict) -> dict:
    evaluations = [records(folders[n]) for n in names]
    scores, draws = paired.full_scores(evaluations, TASKS), paired.score_draws(evaluations, TASKS)
    ref = names.index("benchmark")
    old, new, every = [0, 1], [2], [0, 1, 2]

    def iv(statistic) -> list[float]:
        low, estimate, high = paired.interval(statistic, scores, draws)
        return [round(low, 2), round(estimate, 2), round(high, 2)]

    mine = np.array(json.loads((folders["benchmark"] / "merge_weights.json").read_text())["layers"])
    out = {"n_test": paired.example_counts(evaluations, TASKS), "variants": {}}
    out["benchmark_weights_max_abs_diff_to_pipeline"] = float(np.abs(mine - pipeline_weights).max())
    for e, name in enumerate(names):
        row = {"settings": {**base, **VARIANTS[name]} if name in VARIANTS else name}
        row |= {task: iv(paired.mean_score(e, [t])) for t, task in enumerate(TASKS)}
        row["avg"] = iv(paired.mean_score(e, every))
        for key, cols in (("earlier_tasks", old), ("medmcqa", new), ("avg", every)):
            row[f"diff_vs_benchmark_{key}"] = iv(
                paired.difference(paired.mean_score(e, cols), paired.mean_score(ref, cols))
            )
        row["new_model_weight"] = new_weight(folders[name])
        out["variants"][name] = row
    return out


def cell(iv: list[float], difference: bool = False) -> str:
    low, estimate, high = iv
    text = f"{estimate:+.2f} [{low:+.2f}, {high:+.2f}]" if difference else f"{estimate:.2f} [{low:.2f}, {high:.2f}]"
    return text + ("*" if difference and (low > 0 or high < 0) else "")


def markdown(result: dict) -> str:
    n = result["n_test"]
    lines = [
        "# RECALL ablation at one merge of the sequential benchmark",
        "",
        f"Generated by `{result['command']}` at commit {result['commit']} from the chain in `{result['chain']}`.",
        "RECALL's step-3 merge (its model after SQuAD 2.0 with its MedMCQA fine-tune), redone with one setting",
        "changed, and by each continual or spectral merge method (`--chain`, the chain's base); scores on the",
        "tasks learned so far (n = "
        + ", ".join(f"{t} {n[t]}" for t in TASKS)
        + " test examples), 95% paired-bootstrap intervals (1000 resamples). Differences are to the",
        "benchmark's setting; `*` marks an interval that excludes 0, any other is no difference.",
        f"The benchmark setting's weights redone here differ from the pipeline's merge by at most "
        f"{result['benchmark_weights_max_abs_diff_to_pipeline']:.2e}.",
        "",
        "| variant | new model weight | SST-2 | SQuAD EM | MedMCQA | average "
        "| Δ earlier tasks | Δ MedMCQA | Δ average |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["variants"].items():
        weight = "" if row["new_model_weight"] is None else f"{row['new_model_weight']:.3f}"
        diffs = [cell(row[f"diff_vs_benchmark_{k}"], True) for k in ("earlier_tasks", "medmcqa", "avg")]
        tasks = [cell(row[t]) for t in (*TASKS, "avg")]
        lines.append("| " + " | ".join([name, weight, *tasks, *diffs]) + " |")
    lines += ["", f"Seconds per variant (merge and scoring, one thread): {result['seconds']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", type=Path, required=True, help="a finished sequential benchmark folder")
    parser.add_argument("--work", type=Path, default=ROOT / ".ablation", help="merged models and scores")
    parser.add_argument(
        "--variants", nargs="+", help="produce only these (lanes: one checkout, one --work, disjoint --variants)"
    )
    parser.add_argument("--name", default="ablation", help="results file stem in benchmarks/results/")
    args = parser.parse_args()
    chain = args.chain.resolve()
    params = load_params(chain / "params.yaml")
    pipeline = layout.merged_model(params, CHAIN, STEP) / "merge_weights.json"
    if not pipeline.is_file():
        sys.exit(f"{pipeline} is missing: run RECALL's chain first (bash benchmarks/paper/run.sh sequential)")
    names = [*VARIANTS, *METHODS, *REFERENCES]
    if args.variants:
        if unknown := sorted(set(args.variants) - set(names)):
            sys.exit(f"unknown variant {unknown[0]!r}; choose among: {', '.join(names)}")
        names = [n for n in names if n in args.variants]
    folders = {n: args.work / n.replace(" ", "_").replace("=", "-") for n in ["benchmark", *names]}
    seconds = {n: round(produce(n, params, folders[n]), 1) for n in names}
    if not done(folders["benchmark"]):  # another lane is producing the reference: its last run summarises
        sys.exit(f"scores kept in {args.work}; the summary needs the benchmark variant: rerun once it is done")
    names = list(dict.fromkeys(["benchmark", *names]))
    weights = np.array(json.loads(pipeline.read_text())["layers"])
    result = {
        "command": command_line(),
        "commit": git_commit(),
        "chain": str(chain),
        "seconds": seconds,
        **summarise(names, folders, weights, benchmark_settings(params)),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
