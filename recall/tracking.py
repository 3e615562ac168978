"""MLflow tracking: one parent run per sequence, a child run per step, a grandchild per stage.

Runs are found again by tags, so each DVC stage (a separate process) logs into the same tree. A stage
that raises leaves its run FAILED. The tracking URI defaults to a sqlite file in the project folder
and honours MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import importlib.metadata
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from recall.errors import RecallError  # noqa: E402

REGISTERED_MODEL = "recall-merged"
CHAMPION, CHALLENGER = "champion", "challenger"  # aliases the promotion gate sets (recall.gate)


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


def _sequence(client: MlflowClient, experiment_id: str, run_key: str) -> str:
    tags = {"recall.run_key": run_key, "recall.level": "sequence"}
    return _find_or_create(client, experiment_id, f"sequence-{run_key}", tags, None)


@contextlib.contextmanager
def tree_lock(root: Path) -> Iterator[None]:
    """Held while a stage finds or creates its experiment, sequence and step runs: stages running at
    once (the Dask runner) would otherwise both create the same one."""
    with open(root / ".mlflow.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        yield


@contextlib.contextmanager
def stage_run(root: Path, experiment: str, run_key: str, step: str, stage: str) -> Iterator[tuple[str, str]]:
    """An active MLflow run for one stage of one step; yields (sequence run id, step run id)."""
    mlflow.set_tracking_uri(tracking_uri(root))
    client = MlflowClient()
    with tree_lock(root):
        exp = mlflow.set_experiment(experiment)
        sequence = _sequence(client, exp.experiment_id, run_key)
        step_tags = {"recall.run_key": run_key, "recall.level": "step", "recall.step": step}
        step_run = _find_or_create(client, exp.experiment_id, f"step-{step}", step_tags, sequence)
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
    client = MlflowClient()
    with tree_lock(root):
        exp = mlflow.set_experiment(experiment)
        sequence = _sequence(client, exp.experiment_id, run_key)
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


def register_model(folder: Path, tags: dict[str, str], description: str, copy: bool = True) -> str:
    """Register the merged model folder as a new version of REGISTERED_MODEL carrying `tags`, made in
    the active run; returns the version.

    With `copy`, the folder is logged as a transformers-flavour MLflow model, its weights copied into
    MLflow's artifact store, so `models:/recall-merged/<v>` loads on any machine that reaches the store.
    Without, the version's source is the folder itself: nothing is copied, and the version loads where
    the folder is (DVC restores it). Either way the version carries the folder (tag `folder`), for
    `recall lineage`.
    """
    run = mlflow.active_run()
    if run is None:
        raise RecallError(f"registering {folder} needs an active MLflow run (see stage_run)")
    if not (folder / "config.json").is_file():
        raise RecallError(f"{folder} is not a model folder (no config.json); cannot register it")
    client = MlflowClient()
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # it already exists
        client.create_registered_model(REGISTERED_MODEL, description="Models merged by recall")
    tags = {**tags, "folder": str(folder.resolve())}
    if not copy:
        made = client.create_model_version(
            REGISTERED_MODEL, source=tags["folder"], run_id=run.info.run_id, tags=tags, description=description
        )
        return str(made.version)
    version = str(_log_transformers_model(folder, tags).registered_model_version)
    client.update_model_version(REGISTERED_MODEL, version, description=description)
    return version


def version_of(folder: Path) -> str | None:
    """The newest version of REGISTERED_MODEL registered from the model folder `folder`, if any."""
    folder = str(folder.resolve())
    found = MlflowClient().search_model_versions(f"name='{REGISTERED_MODEL}'", max_results=10000)
    made = [int(v.version) for v in found if v.tags.get("folder", v.source) == folder]
    return str(max(made)) if made else None


def record_gate(folder: Path, promoted: bool, reason: str, version: str | None = None) -> str:
    """The gate's decision on the version registered from `folder` (or `version`): tags `gate` and
    `gate.reason`, and the alias `champion` when promoted (the version it takes the alias from is tagged
    `champion.replaced`, when and by which version) or `challenger` when refused. Returns the version."""
    client = MlflowClient()
    version = version or version_of(folder)
    if version is None:
        raise RecallError(
            f"no version of {REGISTERED_MODEL} was registered from {folder} in {mlflow.get_tracking_uri()}; "
            "its merge stage registers it (dvc repro), or name a registered version (models:/NAME/VERSION)"
        )
    client.set_model_version_tag(REGISTERED_MODEL, version, "gate", "promoted" if promoted else "refused")
    client.set_model_version_tag(REGISTERED_MODEL, version, "gate.reason", reason[:5000])
    if not promoted:
        client.set_registered_model_alias(REGISTERED_MODEL, CHALLENGER, version)
        return version
    previous = client.get_registered_model(REGISTERED_MODEL).aliases.get(CHAMPION)
    if previous is not None and str(previous) != version:
        when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        client.set_model_version_tag(REGISTERED_MODEL, previous, "champion.replaced", f"{when} by version {version}")
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
    return version


def _log_transformers_model(folder: Path, tags: dict[str, str]):
    import transformers
    from huggingface_hub import ModelCard

    from recall.models import load_tokenizer_from, trusted

    # MLflow's cheaper local-checkpoint input (the folder's path, copied without loading) fails with
    # transformers 5.23 (mlflow 3.17 reads check_task()'s "impl" as a class; it is now a string), so
    # the model is loaded, on the CPU in its own dtype (the same bytes), and MLflow saves it again.
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="auto", trust_remote_code=trusted(folder))
    return mlflow.transformers.log_model(
        {"model": model, "tokenizer": load_tokenizer_from(folder)},
        name="model",
        task="text-generation",
        registered_model_name=REGISTERED_MODEL,
        tags=tags,  # on the logged model and on the version
        # the card recall wrote; else MLflow asks the Hugging Face Hub for one
        model_card=ModelCard.load(folder / "README.md") if (folder / "README.md").is_file() else None,
        # given, so MLflow does not load the model once more in a subprocess to infer them
        pip_requirements=[f"{name}=={_version(name)}" for name in ("transformers", "torch")],
    )


def _version(package: str) -> str:
    """The installed version of `package` without a local label (torch's "+cpu" is not on PyPI)."""
    return importlib.metadata.version(package).split("+")[0]


def git_commit(root: str | Path = ".") -> str:
    """The commit checked out at `root` (the benchmarks record theirs too), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
