"""MLflow tracking: one parent run per sequence, a child run per step, a grandchild per stage.

Runs are found again by tags, so each DVC stage (a separate process) logs into the same tree. A stage
that raises leaves its run FAILED. The tracking URI defaults to a sqlite file in the project folder
and honours MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

REGISTERED_MODEL = "recall-merged"


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"


def _find_or_create(client: MlflowClient, experiment_id: str, name: str, tags: dict, parent: str | None) -> str:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([experiment_id], query, max_results=1)
    if found:
        return found[0].info.run_id
    all_tags = {**tags, **({"mlflow.parentRunId": parent} if parent else {})}
    run = client.create_run(experiment_id, run_name=name, tags=all_tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@contextlib.contextmanager
def stage_run(root: Path, experiment: str, run_key: str, step: str, stage: str) -> Iterator[tuple[str, str]]:
    """An active MLflow run for one stage of one step; yields (sequence run id, step run id)."""
    mlflow.set_tracking_uri(tracking_uri(root))
    exp = mlflow.set_experiment(experiment)
    client = MlflowClient()
    sequence = _find_or_create(
        client, exp.experiment_id, f"sequence-{run_key}", {"recall.run_key": run_key, "recall.level": "sequence"}, None
    )
    step_run = _find_or_create(
        client,
        exp.experiment_id,
        f"step-{step}",
        {"recall.run_key": run_key, "recall.level": "step", "recall.step": step},
        sequence,
    )
    tags = {
        "recall.run_key": run_key,
        "recall.level": "stage",
        "recall.step": step,
        "recall.stage": stage,
        "mlflow.parentRunId": step_run,
        "git_commit": git_commit(root),
    }
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name=f"{step}/{stage}", tags=tags):
        yield sequence, step_run


def record_rejected(root: Path, experiment: str, run_key: str, what: str, error: str) -> None:
    """A FAILED run under the sequence's for input left out of it (a task folder that fails its
    checks), with the error as a tag and as error.txt."""
    mlflow.set_tracking_uri(tracking_uri(root))
    exp = mlflow.set_experiment(experiment)
    client = MlflowClient()
    sequence = _find_or_create(
        client, exp.experiment_id, f"sequence-{run_key}", {"recall.run_key": run_key, "recall.level": "sequence"}, None
    )
    run = client.create_run(
        exp.experiment_id,
        run_name=what,
        tags={
            "recall.run_key": run_key,
            "recall.level": "rejected",
            "recall.input": what,
            "mlflow.parentRunId": sequence,
            "error": error[:4000],
        },
    )
    client.log_text(run.info.run_id, error, "error.txt")
    client.set_terminated(run.info.run_id, "FAILED")


def register_model(folder: Path, tags: dict[str, str], description: str) -> str:
    """Register a model folder as a new version, pointing at the folder itself (no copy)."""
    client = MlflowClient()
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(REGISTERED_MODEL, description="Models merged by recall")
    run = mlflow.active_run()
    version = client.create_model_version(
        REGISTERED_MODEL,
        source=str(folder.resolve()),
        run_id=run.info.run_id if run else None,
        tags=tags,
        description=description,
    )
    return version.version


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
