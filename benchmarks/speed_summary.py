"""Every stage's speed in one place: speed.json and speed.md from the component benchmarks' results
and the default run's wall time by stage (each stage's MLflow run records its start and end).

    .venv/bin/python benchmarks/speed_summary.py [--run-dir DIR] [--run-log LOG]
        # DIR: where `bash scripts/run.sh` ran, LOG: what it printed (no run there: the last summary's)

Run the components first: merge_speed.py, merge_vs_mergekit.py, extract_speed.py, finetune_speed.py,
startup.py, and `bash scripts/run.sh` for the default run.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

from common import machine

from recall.atomic import atomic_file, write_json
from recall.tracking import git_commit

RESULTS = Path(__file__).parent / "results"


def stage_times(uri: str) -> dict:
    """Seconds per stage (summed over steps) of the latest sequence in the MLflow store."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("recall")
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], "tags.`recall.level` = 'stage'", max_results=5000)
    latest_key = max(runs, key=lambda r: r.info.start_time).data.tags["recall.run_key"]
    per_stage: dict[str, float] = defaultdict(float)
    span = [float("inf"), 0]
    for r in runs:
        if r.data.tags["recall.run_key"] != latest_key or r.info.status != "FINISHED":
            continue
        per_stage[r.data.tags["recall.stage"]] += (r.info.end_time - r.info.start_time) / 1000
        span = [min(span[0], r.info.start_time), max(span[1], r.info.end_time)]
    total = sum(per_stage.values())
    return {
        "run_key": latest_key,
        "stage_seconds": dict(sorted(per_stage.items(), key=lambda kv: -kv[1])),
        "sum_of_stage_seconds": total,
        "first_start_to_last_end_s": (span[1] - span[0]) / 1000,
    }


def finetune_totals(run_dir: Path) -> dict:
    """Tokens and seconds of every fine-tune of the run (from each step's train_metrics.json)."""
    found = [
        *run_dir.glob("data/experts/*/train_metrics.json"),
        *run_dir.glob("data/chains/*/*/sft/train_metrics.json"),
    ]
    runs = [json.loads(p.read_text()) for p in sorted(found)]
    if not runs:
        return {}
    tokens, seconds = sum(r["train_tokens"] for r in runs), sum(r["train_seconds"] for r in runs)
    return {
        "fine_tunes": len(runs),
        "train_tokens": tokens,
        "train_seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "steps": sum(r["config"]["max_steps"] for r in runs),
    }


def wall_seconds(log: Path | None) -> float | None:
    """scripts/run.sh's "wall time: N s" (from `recall pipeline` to the printed tables) in its output."""
    found = re.findall(r"^wall time: (\d+) s$", log.read_text(errors="replace"), re.M) if log else []
    return float(found[-1]) if found else None


def default_run(run_dir: Path, log: Path | None) -> dict:
    """The default run's stage times from its checkout (and its wall time from scripts/run.sh's output,
    `log`), or, without one, as the last summary recorded them (so the other sections can be refreshed
    without rerunning it)."""
    if not (run_dir / "mlflow.db").is_file():
        previous = load("speed")
        if previous is None:
            raise SystemExit(f"{run_dir} holds no default run (mlflow.db); pass --run-dir")
        return previous["default_run"]
    return {
        "checkout": str(run_dir),
        "commit": git_commit(run_dir),
        **stage_times(f"sqlite:///{run_dir / 'mlflow.db'}"),
        "wall_s": wall_seconds(log),
        "finetune": finetune_totals(run_dir),
    }


def startup_section(startup: dict) -> list[str]:
    """benchmarks/startup.py's table: each command's wall time against `import torch` in the same run."""
    torch_s = startup["import_torch_s"]
    lines = [
        "## Start-up",
        "",
        f'Each command in a fresh process against `python -c "import torch"` ({torch_s:.2f} s) in the same '
        f"run, best of {startup['repeats']} (`{startup['command']}`, commit `{startup['commit'][:10]}`"
        + (f"; *before*: commit `{startup['before_commit'][:10]}`" if startup.get("before_commit") else "")
        + "). A stage is `python -m flows.stage KIND` on a tiny project, whose work takes well under a second: "
        "its time is the process's start-up (imports, params check, Prefect flow, MLflow run; for evaluate, "
        'the OpenCompass child\'s too); ", warm worker": the same stage handed to a warm stage worker '
        "(flows/worker.py), as scripts/run.sh runs it." + (f" Note: {startup['note']}." if startup.get("note") else ""),
        "",
        "| command | seconds | / import torch |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {s:.2f} | {s / torch_s:.2f} |" for name, s in startup["seconds"].items()]
    return [*lines, ""]


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path.cwd(), help="the checkout where the default run ran")
    parser.add_argument("--run-log", type=Path, help="what `bash scripts/run.sh` printed there")
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    merge, extract, finetune, vs, startup = (
        load(n) for n in ("merge_speed", "extract_speed", "finetune_speed", "merge_vs_mergekit", "startup")
    )
    summary = {
        "machine": machine(),
        "commit": git_commit(),
        "merge": merge,
        "merge_vs_mergekit": vs,
        "extraction": extract,
        "finetune": finetune,
        "default_run": default_run(run_dir, args.run_log),
        "startup": startup,
    }
    write_json(RESULTS / "speed.json", summary)

    lines = [
        "# Speed of every stage",
        "",
        "Each number against a baseline measured in the same run (see each JSON for the command).",
        "",
    ]
    if merge:
        lines += [
            "## Merge engine vs the I/O floor",
            "",
            "| models | input GB | engine s | I/O floor s | engine / floor | "
            "NaN/Inf check CPU / engine | peak RSS over imports / largest tensor |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['n_models']} | {r['input_bytes'] / 1e9:.2f} | {r['engine_wall_s']:.2f} | {r['io_floor_s']:.2f} | "
            f"{r['engine_over_io_floor']:.2f} | {r['finite_check_share_of_engine']:.2f} | "
            f"{r['peak_over_largest_tensor']:.1f} |"
            for r in merge["results"]
        ]
        lines += [
            "",
            "The I/O floor reads and writes through the page cache; with every input already cached it "
            "falls to memory speed and the ratio rises with it (compare engine seconds across runs). "
            "The NaN/Inf check's CPU time is an upper bound: the inputs' share runs on the prefetch "
            "thread, beside the merge.",
            "",
        ]
    if extract:
        lines += [
            "## Feature extraction vs a plain forward pass",
            "",
            f"{extract['tokens']} tokens: {extract['extract_tokens_per_s']:.0f} tok/s vs "
            f"{extract['plain_forward_tokens_per_s']:.0f} tok/s plain (time ratio "
            f"{extract['extract_over_plain_time']:.3f}); pooled output {extract['pooled_output_bytes'] / 1e6:.1f} MB, "
            f"peak RSS growth during the runs {extract['peak_rss_growth_during_runs_bytes'] / 1e6:.0f} MB.",
            "",
        ]
    if finetune:
        lines += [
            "## Fine-tuning vs plain forward+backward",
            "",
            f"{finetune['ours_tokens_per_s_median']:.1f} tok/s vs "
            f"{finetune['bare_tokens_per_s_median']:.1f} tok/s bare: "
            f"{finetune['overhead_percent_total_time']:.1f}% overhead (goal < {finetune['goal_percent']}%).",
            "",
        ]
    if vs:
        lines += ["## recall vs mergekit", "", "See [merge_vs_mergekit.md](merge_vs_mergekit.md).", ""]
    run = summary["default_run"]
    if run.get("stage_seconds"):
        lines += ["## The default run, by stage", "", "| stage | seconds (all steps) | share |", "|---|---|---|"]
        lines += [f"| {s} | {t:.0f} | {t / run['sum_of_stage_seconds']:.0%} |" for s, t in run["stage_seconds"].items()]
        if run.get("wall_s"):
            lines += [
                "",
                f"`dvc repro` (scripts/run.sh's wall time, from `recall pipeline` to the printed tables): "
                f"{run['wall_s']:.0f} s, of which {run['sum_of_stage_seconds']:.0f} s are the stages' own work "
                f"and {run['wall_s'] - run['sum_of_stage_seconds']:.0f} s everything outside them.",
            ]
        lines += [
            "",
            f"First stage start to last stage end: {run['first_start_to_last_end_s']:.0f} s "
            f"(run at commit `{run['commit'][:10]}` in `{run['checkout']}`); the "
            f"{run['first_start_to_last_end_s'] - run['sum_of_stage_seconds']:.0f} s outside the stages' MLflow runs "
            "are each stage process starting (handed to the warm stage worker that scripts/run.sh starts, or "
            "importing torch and transformers itself without one), its Prefect flow and MLflow run, and DVC "
            "hashing outputs between stages.",
            "",
        ]
        if ft := run["finetune"]:
            lines += [
                f"Why fine-tuning dominates: {ft['fine_tunes']} LoRA fine-tunes of {ft['steps']} steps in all "
                f"train on {ft['train_tokens']} tokens at {ft['tokens_per_s']:.0f} tok/s "
                f"({ft['train_seconds']:.0f} s in the loop): each token costs a forward, a backward through every "
                "block (LoRA adapters sit in every linear layer) and an optimizer step, roughly three forwards of "
                "compute, while features, similarity and evaluation only run forwards on a few dozen examples.",
                "",
            ]
    if startup:
        lines += startup_section(startup)
    with atomic_file(RESULTS / "speed.md") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
