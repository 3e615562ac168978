"""One pipeline stage as a Prefect flow, tracked as an MLflow run, in this process: what
`python -m flows.stage` runs, here or in a warm stage worker's process (flows/worker.py).

params.yaml is validated first, and dvc.yaml must be the one `recall pipeline` writes for it (one
clear error before any work); the stage then runs with retries and its MLflow run is FAILED if it
raises. MLflow keeps one step run per chain step (`<method>/<task>`).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY as HEARTBEATS
from prefect.settings import temporary_settings

from recall import tracking
from recall.errors import RecallError, boundary
from recall.pipeline import plan, table
from recall.pipeline.params import load_params


def transient(task, task_run, state) -> bool:
    """Retry crashes and I/O hiccups, not mistakes in the input: those fail the same way again."""
    return not isinstance(state.result(raise_on_failure=False), RecallError)


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=transient)
def execute(stage: str, step: str | None, method: str | None, params_file: str, run: str | None = None) -> str:
    params = load_params(params_file)
    params = params.select(run) if run else params
    label = "/".join(filter(None, (run, method, step))) or stage
    experiment = params.sections.tracking.experiment
    with tracking.stage_run(params.root, experiment, params.key, label, stage) as (sequence_run, _):
        result = table.run(params, stage, step, method)
        table.log_stage(params, stage, step, method, sequence_run)
    return str(result) if isinstance(result, Path) else "ok"


@flow(name="recall-stage", log_prints=True)
def run_stage(
    stage: str,
    step: str | None = None,
    method: str | None = None,
    params_file: str = "params.yaml",
    run: str | None = None,
) -> str:
    logger = get_run_logger()
    name = plan.stage_name(stage, step, method, run)
    logger.info("stage %s", name)
    result = execute(stage, step, method, params_file, run)
    logger.info("stage %s done: %s", name, result)
    return result


def quiet_heartbeats() -> dict:
    """No flow-run heartbeats unless the user asks for them: they only feed a zombie-run automation,
    which recall does not set up, and the flow's end waits up to a second for the heartbeat thread."""
    if HEARTBEATS.name in os.environ:
        return {}
    return {HEARTBEATS: None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.stage", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=sorted(table.STAGES))
    parser.add_argument("--step", help="the step's task (per-step stages)")
    parser.add_argument("--method", help="the compared method whose chain this stage belongs to")
    parser.add_argument("--run", help="a protocol's run (order and seed, e.g. o2-s1) that owns the step")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure (also RECALL_DEBUG=1)")
    args = parser.parse_args(argv)
    # Prefect's handler on the root logger (at WARNING) prints them: recall's progress (e.g. a resumed fine-tune).
    logging.getLogger("recall").setLevel(logging.INFO)

    def work() -> int:
        params = load_params(args.params)  # fail before Prefect or MLflow start
        plan.check_current(params)
        plan.find(params, plan.stage_name(args.stage, args.step, args.method, args.run))  # a stage of this pipeline
        with temporary_settings(updates=quiet_heartbeats()):
            run_stage(args.stage, args.step, args.method, args.params, args.run)
        return 0

    return boundary(f"recall stage {args.stage}", work, args.debug)
