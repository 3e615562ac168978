"""The continual-learning flow: every DVC stage of the sequence, in order, as a retried Prefect task.

DVC owns the artifacts and their cache (a stage whose inputs are unchanged is skipped), Prefect owns
scheduling, retries, state and logs. dvc.yaml is written from params.yaml first (`recall pipeline`),
so a task appended from incoming/ gets its stages in every method's chain. A folder in incoming/ is a
task of the user's own when it holds a task.yaml; one that fails its checks stays where it is, is
reported in the flow's log and as a FAILED MLflow run, and does not stop the others.

    python -m flows.continual run                       # once
    python -m flows.continual serve --cron "0 3 * * *"  # a deployment: nightly, and whenever new
                                                        # task data sits in incoming/<task>/
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

from recall import tracking
from recall.errors import RecallError
from recall.pipeline import plan
from recall.pipeline.params import add_steps, load_params


def stage_names(params_file: str = "params.yaml") -> list[str]:
    """DVC stage names in an order that respects their dependencies, after writing dvc.yaml."""
    params = load_params(params_file)
    plan.write(params)
    return [s.name for s in plan.plan(params)]


@task(retries=2, retry_delay_seconds=10)
def dvc_stage(name: str, project: str) -> str:
    logger = get_run_logger()
    proc = subprocess.run(["dvc", "repro", "--single-item", name], cwd=project, capture_output=True, text=True)
    logger.info(proc.stdout[-4000:])
    if proc.returncode:
        raise RuntimeError(f"dvc repro {name} failed:\n{proc.stderr[-4000:]}")
    return name


def adopt_incoming(project: Path) -> tuple[list[str], dict[str, str]]:
    """Append each task found in incoming/<task>/ to the sequence: a registered one, or one its
    task.yaml declares (checked with both splits). Returns the new tasks, and the error of each
    folder left out."""
    params_file = project / "params.yaml"
    params = load_params(params_file)
    known = {s.task for s in params.steps}
    added, rejected = [], {}
    for folder in sorted(p for p in (project / "incoming").glob("*") if p.is_dir()):
        if folder.name in known or not (folder / "train.jsonl").is_file():
            continue
        try:
            params.find_task(folder.name)
        except RecallError as err:
            rejected[folder.name] = str(err)
            continue
        added.append(folder.name)
    if added:
        add_steps(params_file, added)
    return added, rejected


@flow(name="recall-continual-learning", log_prints=True)
def continual_learning(project: str = ".") -> list[str]:
    logger = get_run_logger()
    added, rejected = adopt_incoming(Path(project))
    if added:
        logger.info("new task data: %s appended to the sequence", ", ".join(added))
    if rejected:
        params = load_params(Path(project) / "params.yaml")
        experiment = params.sections.tracking.experiment
        for name, error in rejected.items():
            logger.warning("incoming/%s left out: %s", name, error)
            tracking.record_rejected(params.root, experiment, params.key, f"incoming/{name}", error)
    done = []
    for name in stage_names(str(Path(project) / "params.yaml")):
        done.append(dvc_stage(name, project))
    logger.info("sequence complete: %d stages", len(done))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the sequence once")
    serve = sub.add_parser("serve", help="serve a scheduled deployment (Ctrl-C to stop)")
    serve.add_argument("--cron", default="0 * * * *", help="when to look for new task data and run")
    parser.add_argument("--project", default=".")
    args = parser.parse_args(argv)
    if args.command == "run":
        continual_learning(args.project)
    else:
        continual_learning.serve(name="recall-continual", cron=args.cron, parameters={"project": args.project})
    return 0


if __name__ == "__main__":
    sys.exit(main())
