"""Start-up: what a user waits for before any work, each against `python -c "import torch"` in the same run.

    .venv/bin/python benchmarks/startup.py [--repeats 3] [--before DIR]

- the CLI: `recall --help`, `recall tasks`, `recall params check params.yaml` (fresh interpreters);
  with `--before DIR` (another checkout, e.g. `git worktree add DIR <commit>`) the same commands of
  that checkout too, alternating with this one's;
- one stage process of each kind, `python -m flows.stage KIND` as DVC starts it, on a tiny project (a
  2-layer random model, 16 training and 3 test examples, 2 fine-tuning steps, 2 evaluated examples):
  its work takes well under a second, so its wall time is the process's start-up (imports, the params
  check, a Prefect flow run against one running Prefect server as scripts/run.sh starts it, an MLflow
  run) and, for evaluate and gate, the OpenCompass child's (its imports, the model load); each kind
  in its own process and handed to a warm stage worker (flows/worker.py) as scripts/run.sh runs it.

Every command runs once untimed first (the stages in pipeline order, which also makes each stage's
inputs); then each is timed `--repeats` times, alternating with `import torch`, and the best is kept.
Writes benchmarks/results/startup.json; benchmarks/speed_summary.py adds it to speed.json and speed.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import command_line, machine, prefect_server, stage_worker, tiny_model

from recall.atomic import write_json
from recall.tracking import git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TORCH = [sys.executable, "-c", "import torch"]
CLI = {
    "recall --help": ["--help"],
    "recall tasks": ["tasks"],
    "recall params check": ["params", "check", str(ROOT / "params.yaml")],
}
# One stage of each kind of a one-step RECALL run, in pipeline order (each reads the ones before).
STAGES = {
    "base": ["base"],
    "data": ["data"],
    "finetune": ["finetune", "--step", "gen_sentiment"],
    "features": ["features", "--step", "gen_sentiment"],
    "typical": ["typical", "--step", "gen_sentiment"],
    "similarity": ["similarity", "--step", "gen_sentiment"],
    "merge": ["merge", "--method", "recall", "--step", "gen_sentiment"],
    "evaluate": ["evaluate", "--method", "recall", "--step", "gen_sentiment"],
    "gate": ["gate", "--step", "gen_sentiment"],  # the served chain's gate (promote.method: recall)
    "report": ["report"],
}


def seconds(command: list, cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def tiny_project(folder: Path) -> Path:
    """A project as the tests' tiny pipeline runs make it, with dvc.yaml written for it."""
    tiny_model(folder / "tiny", layers=2)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["model"] = "tiny"
    params["data"].update(train_size=16, test_size=3)
    params["sequence"] = [{"task": "gen_sentiment", "after": "base"}]
    params["finetune"].update(max_steps=2, batch_size=2, max_length=512)
    params["recall"].update(samples=8, typical=3, max_length=512)
    params["evaluate"].update(limit=2, max_new_tokens=8)
    params["methods"] = {"recall": {}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run([sys.executable, "-m", "recall.cli", "pipeline"], cwd=folder, check=True, stdout=subprocess.DEVNULL)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another checkout whose CLI start-up to measure alongside")
    parser.add_argument("--before-commit", help="the commit --before holds, when it is not a git checkout")
    args = parser.parse_args()
    checkouts = {"now": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    base_env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    envs = {k: {**base_env, "PYTHONPATH": str(path)} for k, path in checkouts.items()}

    with tempfile.TemporaryDirectory(prefix="recall-startup-") as tmp:
        tmp = Path(tmp)
        server, server_env = prefect_server(tmp / "prefect")
        url = server_env["PREFECT_API_URL"]
        try:
            project = tiny_project(tmp / "project")
            stage_env = {**envs["now"], "PREFECT_API_URL": url, "MLFLOW_DISABLE_TELEMETRY": "true"}
            stage_env.pop("MLFLOW_TRACKING_URI", None)
            timed: dict[str, list[float]] = {"import torch": []}
            # cwd: `python -m` puts it first on sys.path, so each checkout's CLI runs from its own folder
            jobs = {
                f"{cmd} ({k})": ([sys.executable, "-m", "recall.cli", *argv], checkouts[k], envs[k])
                for cmd, argv in CLI.items()
                for k in checkouts
            }
            with stage_worker(stage_env) as (_, served_env):
                for where, env in (("", stage_env), (", warm worker", served_env)):
                    jobs.update(
                        {
                            f"stage {kind}{where}": ([sys.executable, "-m", "flows.stage", *argv], project, env)
                            for kind, argv in STAGES.items()
                        }
                    )
                for command, cwd, env in jobs.values():  # untimed: caches warm, the stages' inputs made
                    seconds(command, cwd, env)
                for _ in range(args.repeats):
                    for name, (command, cwd, env) in jobs.items():
                        timed["import torch"].append(seconds(TORCH, ROOT, base_env))
                        timed.setdefault(name, []).append(seconds(command, cwd, env))
        finally:
            server.terminate()
            server.wait(30)
            shutil.rmtree(tmp / "prefect", ignore_errors=True)

    torch_s = min(timed["import torch"])
    result = {
        "command": command_line(),
        "machine": machine(),
        "commit": git_commit(ROOT),
        "before_commit": (args.before_commit or git_commit(args.before)) if args.before else None,
        "repeats": args.repeats,
        "import_torch_s": torch_s,
        "seconds": {name: min(times) for name, times in timed.items() if name != "import torch"},
    }
    write_json(RESULTS / "startup.json", result)
    for name, s in result["seconds"].items():
        print(f"{name:45s} {s:6.2f} s  {s / torch_s:5.2f} x import torch ({torch_s:.2f} s)")


if __name__ == "__main__":
    main()
