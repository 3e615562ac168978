"""Scale-out: the single scenario's experts on a local Dask cluster against the sequential runner.

    .venv/bin/python benchmarks/scale_out.py [--tasks gen_sentiment gen_translation] [--methods recall sft]

One project built from params.yaml (SmolLM2-135M-Instruct, the generated tasks) with `scenario:
single`: every task an expert fine-tuned from the base, merged with it by each method, evaluated. It
runs twice through `python -m flows.continual run`, in the same folder (artifacts record their paths)
and each time from an empty DVC cache: first with the sequential runner, every stage one after the
other at 2 torch threads; then with `--runner dask --workers 2`, a local cluster of 2 worker
processes whose stages run at 1 thread each. Reports the wall-time ratio (dask / sequential) and
whether the two runs' artifacts are identical (recall.pipeline.fingerprint: every file of every DVC
output, wall-clock records left out). Writes benchmarks/results/scale_out.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import command_line, machine

from recall.atomic import write_json
from recall.pipeline.fingerprint import fingerprint
from recall.tracking import git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale_out.json"


def make_project(folder: Path, tasks: list[str], methods: list[str]) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(
        scenario="single",
        sequence=[{"task": t, "after": "base"} for t in tasks],
        methods={m: {} for m in methods},
    )
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=folder, check=True)


def timed_run(pristine: Path, project: Path, *args: str, threads: int | None) -> tuple[float, dict[str, str]]:
    """Seconds of one flow run in a fresh copy of the project, and its artifacts' fingerprint."""
    if project.exists():
        shutil.rmtree(project)
    shutil.copytree(pristine, project)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "flows.continual", "--project", str(project), *args, "run"],
        cwd=project,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start, fingerprint(project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["gen_sentiment", "gen_translation"])
    parser.add_argument("--methods", nargs="+", default=["recall", "sft"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recall-scale-out-") as tmp:
        pristine, project = Path(tmp) / "pristine", Path(tmp) / "project"
        make_project(pristine, args.tasks, args.methods)
        sequential_s, sequential = timed_run(pristine, project, threads=2)
        dask_s, dask = timed_run(pristine, project, "--runner", "dask", "--workers", "2", threads=None)
    differing = sorted(k for k in sequential.keys() | dask.keys() if sequential.get(k) != dask.get(k))
    result = {
        "command": command_line(),
        "commit": git_commit(ROOT),
        "machine": machine(),
        "scenario": {"scenario": "single", "tasks": args.tasks, "methods": args.methods},
        "sequential_s": round(sequential_s, 1),
        "dask_s": round(dask_s, 1),
        "ratio": round(dask_s / sequential_s, 3),
        "identical_artifacts": not differing,
        "files_compared": len(sequential),
        "differing_files": differing,
    }
    write_json(RESULTS, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if not os.environ.get("PREFECT_API_URL"):  # one Prefect server for every stage process, as scripts/run.sh does
        again = shlex.join(["python", "benchmarks/scale_out.py", *sys.argv[1:]])
        script = f"source scripts/env.sh && source scripts/services.sh && {again}"
        sys.exit(subprocess.run(["bash", "-c", script], cwd=ROOT).returncode)
    main()
