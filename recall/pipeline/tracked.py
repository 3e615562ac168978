"""What MLflow records of a pipeline stage that just finished: each `StageDef.log` of
`recall.pipeline.table` (called by `log_stage`) on the stage's active run, evaluation metrics also on
the sequence's run, and each merged model registered with its lineage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from recall import tracking
from recall.atomic import read_json
from recall.hashing import sha256_file, sha256_tree
from recall.pipeline.layout import (
    base_eval,
    evaluation,
    gate_metrics,
    handed_on,
    merged_model,
    multi_dir,
    new_model,
    stage_name,
    tasks,
)
from recall.pipeline.params import Params
from recall.pipeline.stages import evidence_chain, source_of

log = logging.getLogger(__name__)


def log_settings(params: Params, task: str | None, method: str | None, sequence_run: str) -> None:
    """The settings a chain's stage reads: its weight source's section (RECALL's `recall`, with the keys
    the chain sets itself), else its `methods.<label>` parameters; and the method a label runs."""
    import mlflow

    if method not in params.methods:
        return
    source = source_of(params, method)
    if source is not None and source.section is not None:
        written = {**params.written(source.section), **params.overrides(method)}
        mlflow.log_params({f"{source.section}.{k}": v for k, v in written.items()})
    else:
        mlflow.log_params({f"{method}.{k}": v for k, v in params.methods[method].items()})
    if params.method_of(method) != method:
        mlflow.log_param(f"{method}.method", params.method_of(method))


def log_recall_settings(params: Params, task: str | None, method: str | None, sequence_run: str) -> None:
    """RECALL's stages (typical samples, similarities) of no one chain, or of a chain's own: its settings."""
    log_settings(params, task, evidence_chain(params, method), sequence_run)


def log_finetune(params: Params, task: str, method: str | None, sequence_run: str) -> None:
    import mlflow

    mlflow.log_params({f"finetune.{k}": v for k, v in params.written("finetune").items()})
    if params.method_of(method) == "ewc":
        mlflow.log_params({f"ewc.{k}": v for k, v in params.ewc(method).items()})
    trained = read_json(new_model(params, method or "sft", task) / "train_metrics.json")
    mlflow.log_param("rendering", trained["rendering"])  # chat template or plain prompts
    for row in trained["steps"]:
        mlflow.log_metric("train_loss", row["loss"], step=row["step"])


def log_merge(params: Params, task: str, method: str, sequence_run: str, evidence: list[Path]) -> None:
    """A chain step's merge: its settings, the files of its weights' evidence (`evidence`, the outputs
    of the stages it reads) and its registered model."""
    import mlflow

    log_settings(params, task, method, sequence_run)
    for path in evidence:  # its weights' evidence (not a folder of Fisher tensors)
        if path.suffix == ".json":
            mlflow.log_artifact(str(path))
    register_merge(
        params,
        merged_model(params, method, task),
        [task],
        stage_name("merge", task, method),
        f"{method} chain: merge after step {task}",
    )


def log_evaluate(params: Params, task: str | None, method: str | None, sequence_run: str) -> None:
    log_settings(params, task, method, sequence_run)
    index = tasks(params).index(task) + 1 if task in tasks(params) else 0
    folder = evaluation(params, method, task) if task else base_eval(params)
    log_scores({method or "base": folder}, "", index, sequence_run)


def log_gate(params: Params, task: str, method: None, sequence_run: str) -> None:
    import mlflow

    record = read_json(gate_metrics(params, task))
    mlflow.log_params({f"promote.{k}": v for k, v in params.written("promote").items()})
    mlflow.log_metric("gate.promoted", record["promoted"])
    for t, row in record["tasks"].items():
        mlflow.log_metrics({f"gate.{t}.{k}": row[k] for k in ("difference", "low", "high") if row[k] is not None})
    mlflow.log_dict(record, "gate.json")
    if params.gated in params.merge_methods:  # a registered version to tag; training methods register none
        model = handed_on(params, params.gated, task)
        tracking.record_gate(model, record["decision"] == "promoted", record["reason"])


def log_multi(params: Params, task: None, method: str, sequence_run: str) -> None:
    log_settings(params, task, method, sequence_run)
    name = stage_name("multi", method=method)
    register_merge(params, multi_dir(params, method) / "model", tasks(params), name, f"{method}: every expert merged")
    log_scores({method: multi_dir(params, method) / "eval"}, "multi.", 0, sequence_run)


def register_merge(params: Params, model: Path, data_tasks: list[str], dvc_stage: str, description: str) -> None:
    """Log a merge's weights as artifacts and register the model, as an MLflow model, with its lineage tags."""
    import mlflow

    mlflow.log_artifact(str(model / "merge_weights.json"))
    mlflow.log_artifact(str(model / "merge_weights.png"))
    record = read_json(model / "merge_weights.json")
    mlflow.log_dict({"layers": record["layers"], "models": record["models"]}, "weights_matrix.json")
    if spread := record.get("spread"):  # softmax weights: how far each layer group's row is from uniform
        for group, (width, entropy) in enumerate(zip(spread["range"], spread["entropy"])):
            mlflow.log_metrics({"weights.range": width, "weights.entropy": entropy}, step=group)
        mlflow.set_tag("weights.near_uniform", str(record["near_uniform"] is not None).lower())
    tags = {
        "parents": json.dumps(record["models"]),
        "method": record["method"],
        "chain": record.get("chain", ""),
        "weights_sha256": sha256_file(model / "merge_weights.json"),
        "data_sha256": json.dumps({t: sha256_tree(params.data_dir / t) for t in data_tasks}),
        "git_commit": tracking.git_commit(params.root),
        "dvc_stage": dvc_stage,
    }
    copy = params.sections.tracking.registry == "copy"
    version = tracking.register_model(model, tags, description, copy=copy)
    log.info("registered %s version %s", tracking.REGISTERED_MODEL, version)


def log_scores(evals: dict[str, Path], prefix: str, step: int, sequence_run: str) -> None:
    """Every task's metrics of each evaluated model, on this stage's run and the sequence's, and how
    its prompts were rendered."""
    import mlflow

    for variant, folder in evals.items():
        mlflow.log_param(f"{prefix}{variant}.rendering", read_json(folder / "evaluation.json")["rendering"])
        for task, metrics in read_json(folder / "metrics.json").items():
            for name, value in metrics.items():
                key = f"{prefix}{variant}.{task}.{name}"
                mlflow.log_metric(key, value, step=step)
                mlflow.MlflowClient().log_metric(sequence_run, key, value, step=step)
