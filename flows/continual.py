"""The continual-learning flow: every DVC stage of the sequence as a retried Prefect task.

DVC owns the artifacts and their cache (a stage whose inputs are unchanged is skipped), Prefect owns
scheduling, retries, state and logs. A stage is submitted once the stages whose outputs it reads have
finished, so with `--runner dask` independent stages (method chains, experts, evaluations) run at
once on a Dask cluster: a local one of `--workers` worker processes, or the scheduler at `--address`
(a cluster on Kubernetes or a batch system). The default `--runner sequential` runs them one by one.

dvc.yaml is written from params.yaml first (`recall pipeline`), so a task appended from incoming/ gets
its stages in every method's chain. A folder in incoming/ is a task of the user's own when it holds a
task.yaml; one that fails its checks stays where it is, is reported in the flow's log and as a FAILED
MLflow run, and does not stop the others.

When a step's gate refuses its model (`gates/<task>/metrics.json` changed to refused in this run) or a
stage fails, the Prefect notification block named in params.yaml (`promote.notify`) is told, and the
flow run's state message says why (a refusal completes the run; a failure fails it).

    python -m flows.continual run                       # once
    python -m flows.continual run --runner dask         # independent stages at once
    python -m flows.continual serve --cron "0 3 * * *"  # a deployment: nightly, and whenever new
                                                        # task data sits in incoming/<task>/
    python -m flows.continual deploy --pool recall      # a deployment run by the pool's workers,
                                                        # on any machine (prefect worker start)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.states import Completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows import worker
from recall import tracking
from recall.atomic import read_json
from recall.errors import RecallError
from recall.pipeline import plan
from recall.pipeline.layout import gate_metrics
from recall.pipeline.params import add_steps, load_params

RUNNERS = ("sequential", "dask")
CODE = Path(__file__).resolve().parents[1]  # this checkout: what a deployment's workers run


def stages(params_file: str = "params.yaml") -> list[plan.Stage]:
    """The DVC stages in an order that respects their dependencies, after writing dvc.yaml."""
    params = load_params(params_file)
    plan.write(params)
    return plan.plan(params)


def stage_names(params_file: str = "params.yaml") -> list[str]:
    return [s.name for s in stages(params_file)]


def producers(ordered: list[plan.Stage]) -> dict[str, list[str]]:
    """For each stage, the earlier stages whose outputs it reads (a dependency at, inside or above an output)."""

    def reads(dep: Path, out: Path) -> bool:
        return dep == out or out in dep.parents or dep in out.parents

    return {
        s.name: [p.name for p in ordered[:i] if any(reads(d, o) for d in s.deps for o in [*p.outs, *p.metrics])]
        for i, s in enumerate(ordered)
    }


def task_runner(runner: str, workers: int = 2, address: str | None = None) -> TaskRunner:
    if runner == "sequential":
        return ThreadPoolTaskRunner(max_workers=1)
    if runner != "dask":
        raise RecallError(f"unknown runner {runner!r}; runners: {', '.join(RUNNERS)}")
    if workers < 1:
        raise RecallError(f"a Dask runner needs at least 1 worker, got {workers}")
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    # Processes, one thread each: a stage is a subprocess anyway, and its torch threads are set apart.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})


@task(retries=2, retry_delay_seconds=10)
def dvc_stage(name: str, project: str, threads: int | None = None) -> str:
    """`dvc repro` of one stage, handed to this process's warm stage worker. DVC releases its
    repository lock while the stage command runs, so concurrent stages only wait for each other's short
    lock-file updates (--wait-for-lock)."""
    logger = get_run_logger()
    # torch reads its thread count at start: pinned here so that workers sharing a machine do not fight
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    env = worker.warm(env)
    proc = subprocess.run(
        ["dvc", "--wait-for-lock", "repro", "--single-item", name], cwd=project, env=env, capture_output=True, text=True
    )
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


def gate_decisions(project: Path) -> dict[str, dict]:
    """Each step's gate decision on disk, in the sequence's order: {task: its gates/<task>/metrics.json}."""
    params = load_params(project / "params.yaml")
    paths = {s.task: gate_metrics(params, s.task) for s in params.steps}
    return {task: read_json(path) for task, path in paths.items() if path.is_file()}


def notify(block: str | None, subject: str, body: str) -> None:
    """Tell the Prefect notification block `block` ("<type slug>/<name>", e.g. custom-webhook/ops), if any.
    A notification that cannot be sent is logged; it does not change the run's outcome."""
    logger = get_run_logger()
    if not block:
        return
    from prefect.blocks.core import Block

    try:
        Block.load(block).notify(body=body, subject=subject)
        logger.info("notified %s: %s", block, subject)
    except Exception as err:  # a missing block, an unreachable endpoint: the run's result stands
        logger.error("promote.notify %s: could not notify (%s: %s)", block, type(err).__name__, err)


@flow(name="recall-stages")
def run_stages(project: str, graph: dict[str, list[str]], threads: int | None = None) -> list[str]:
    """Every stage of `graph` ({stage: the stages it reads from}, in dependency order), each submitted
    to the flow's task runner as soon as it is known what it waits for."""
    futures = {}
    for stage, needs in graph.items():
        futures[stage] = dvc_stage.submit(stage, project, threads, wait_for=[futures[n] for n in needs])
    return [f.result() for f in futures.values()]


@flow(name="recall-continual-learning", log_prints=True)
def continual_learning(
    project: str = ".", runner: str = "sequential", workers: int = 2, address: str | None = None
) -> list[str]:
    """`runner`: sequential, or dask (`workers` local worker processes, or the scheduler at `address`)."""
    logger = get_run_logger()
    stage_runner = task_runner(runner, workers, address)  # a bad setting fails before any work
    project = str(Path(project).resolve())  # workers elsewhere have other working directories
    added, rejected = adopt_incoming(Path(project))
    if added:
        logger.info("new task data: %s appended to the sequence", ", ".join(added))
    if rejected:
        params = load_params(Path(project) / "params.yaml")
        experiment = params.sections.tracking.experiment
        for name, error in rejected.items():
            logger.warning("incoming/%s left out: %s", name, error)
            tracking.record_rejected(params.root, experiment, params.key, f"incoming/{name}", error)
    graph = producers(stages(str(Path(project) / "params.yaml")))
    # On a local cluster every worker's stage gets an equal share of the CPUs; otherwise torch's choice.
    threads = max(1, (os.cpu_count() or 1) // workers) if runner == "dask" and not address else None
    block = load_params(Path(project) / "params.yaml").sections.promote.notify
    before = gate_decisions(Path(project))
    try:
        done = run_stages.with_options(task_runner=stage_runner)(project, graph, threads)
    except Exception as err:
        notify(block, f"recall: a scheduled run failed in {project}", str(err)[-4000:])
        raise
    logger.info("sequence complete: %d stages", len(done))
    refused = {
        t: d["reason"] for t, d in gate_decisions(Path(project)).items() if d != before.get(t) and not d["promoted"]
    }
    if not refused:
        return done
    message = "; ".join(f"step {t} refused by the gate: {reason}" for t, reason in refused.items())
    logger.warning(message)
    notify(block, f"recall: {', '.join(refused)} refused in {project}", message)
    return Completed(message=message, data=done)


def options(parser: argparse.ArgumentParser, defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (only the main parser sets defaults)."""
    default = (lambda value: value) if defaults else (lambda value: argparse.SUPPRESS)  # noqa: E731
    parser.add_argument("--project", default=default("."))
    parser.add_argument("--runner", choices=RUNNERS, default=default("sequential"), help="how independent stages run")
    parser.add_argument("--workers", type=int, default=default(2), help="worker processes of a local Dask cluster")
    parser.add_argument("--address", default=default(None), help="a running Dask scheduler instead (tcp://host:8786)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = options(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter), True
    )
    common = options(argparse.ArgumentParser(add_help=False), False)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the sequence once", parents=[common])
    serve = sub.add_parser("serve", help="serve a scheduled deployment (Ctrl-C to stop)", parents=[common])
    serve.add_argument("--cron", default="0 * * * *", help="when to look for new task data and run")
    deploy = sub.add_parser("deploy", help="a deployment on a Prefect work pool, run by its workers", parents=[common])
    deploy.add_argument("--pool", required=True, help="the work pool (prefect work-pool create POOL --type process)")
    deploy.add_argument("--source", default=str(CODE), help="where workers get this code: a git URL or a folder")
    deploy.add_argument("--cron", help="also run on this schedule")
    args = parser.parse_args(argv)
    parameters = {"project": args.project, "runner": args.runner, "workers": args.workers, "address": args.address}
    if args.command == "run":
        try:
            continual_learning(**parameters)
        except RecallError as err:
            print(f"recall flow: error: {err}", file=sys.stderr)
            return 2
    elif args.command == "serve":
        continual_learning.serve(name="recall-continual", cron=args.cron, parameters=parameters)
    else:
        entry = f"{Path(__file__).resolve().relative_to(CODE)}:continual_learning"
        continual_learning.from_source(source=args.source, entrypoint=entry).deploy(
            name="recall-continual", work_pool_name=args.pool, parameters=parameters, cron=args.cron
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
