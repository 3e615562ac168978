"""The pipeline's stages: plain functions over the files under `data/`, one per DVC stage.

Layout (every folder and file written atomically):

    data/tasks/<task>/{train,test}.jsonl         data stage
    data/steps/base/model/                       base stage
    data/steps/<task>/sft/                       fine-tune: the model after `after`, trained on <task>
    data/steps/<task>/probe.jsonl, features.npy  feature extraction (new model, task samples)
    data/steps/<task>/typical.json               clustering
    data/steps/<task>/similarity.json            similarity of every model to the new one
    data/steps/<task>/model/                     merge: RECALL of the model after `after` and sft
    data/steps/<task>/baselines/<method>/        merge: each baseline, same inputs
    data/steps/<task>/eval/<variant>/metrics.json  evaluation on every task of the sequence
    data/multi/{model,baselines,eval}/           multi scenario: all experts merged at once (table 2)
    reports/                                     report: tables, plots (and the MLflow summary)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from recall import tracking
from recall.hashing import sha256_file, sha256_tree
from recall.atomic import atomic_dir, read_json, write_json
from recall.base_model import pull_base
from recall.features import extract_features, load_features
from recall.finetune import finetune
from recall.merge.engine import MergePlan, merge
from recall.merge.methods import get_method
from recall.models import describe, safetensors_folder
from recall.pipeline.params import BASE_STEP, Params
from recall.recall_weights import similarity_to_reference
from recall.tasks.export import export_task
from recall.tasks.generated import generate_suite
from recall.typical import select_typical
from recall.weights import softmax_weights, uniform_weights

log = logging.getLogger(__name__)
DEFAULT_BASE = "smollm2"


def step_dir(params: Params, step: str) -> Path:
    return params.root / "data" / "steps" / step


def model_dir(params: Params, step: str) -> Path:
    """The model a step hands on: the base model, or the step's merged model."""
    return step_dir(params, step) / "model"


def tasks(params: Params) -> list[str]:
    return [s.task for s in params.steps]


def base(params: Params) -> Path:
    out = model_dir(params, BASE_STEP)
    spec = params.raw["base"]["model"]
    if spec == DEFAULT_BASE:
        return pull_base(out)
    local = params.root / spec  # a relative path means one inside the project
    folder = safetensors_folder(describe(local if local.exists() else spec))  # converts GGUF / .bin once
    with atomic_dir(out) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
    return out


def data(params: Params) -> Path:
    """The sequence's task data under data/tasks: `incoming/<task>/` when present, else generated or
    taken from the data.source folder."""
    cfg = params.raw["data"]
    out = params.root / "data" / "tasks"
    if cfg["source"] == "generated":
        generate_suite(out, seed=cfg["seed"], train=cfg["train_size"], test=cfg["test_size"])
    for task in tasks(params):
        source = params.root / "incoming" if (params.root / "incoming" / task).is_dir() else params.root / cfg["source"]
        if source.name == "generated":
            continue
        with atomic_dir(out / task) as tmp:
            for split, size in (("train", cfg["train_size"]), ("test", cfg["test_size"])):
                lines = (source / task / f"{split}.jsonl").read_text().splitlines(keepends=True)
                (tmp / f"{split}.jsonl").write_text("".join(lines[:size]))
    return out


def finetune_step(params: Params, task: str) -> Path:
    step = params.step(task)
    return finetune(model_dir(params, step.after), task, step_dir(params, task) / "sft",
                    data_dir=params.data_dir, config=params.finetune_config())


def features(params: Params, task: str) -> Path:
    """The new model's representations of the task's training samples (the probe set)."""
    folder, settings = step_dir(params, task), params.recall_settings()
    export_task(task, "train", folder / "probe.jsonl", params.data_dir, limit=params.raw["recall"]["samples"])
    return extract_features(folder / "sft", folder / "probe.jsonl", folder / "features.npy",
                            batch_size=settings.batch_size, max_length=settings.max_length)


def typical(params: Params, task: str) -> Path:
    folder, settings = step_dir(params, task), params.recall_settings()
    chosen = select_typical(load_features(folder / "features.npy"), settings.typical, settings.seed)
    write_json(folder / "typical.json", {"m": settings.typical, "seed": settings.seed, "indices": chosen})
    return folder / "typical.json"


def merge_inputs(params: Params, task: str) -> list[str]:
    """The models a step merges, in order: the model it started from, then the new one."""
    return [str(model_dir(params, params.step(task).after)), str(step_dir(params, task) / "sft")]


def similarity(params: Params, task: str) -> Path:
    folder, settings = step_dir(params, task), params.recall_settings()
    models = [describe(m) for m in merge_inputs(params, task)]
    indices = read_json(folder / "typical.json")["indices"]
    with tempfile.TemporaryDirectory(prefix="recall-sim-") as tmp:
        sim = similarity_to_reference(models, len(models) - 1, folder / "probe.jsonl",
                                      load_features(folder / "features.npy"), indices, settings, Path(tmp))
    record = {"metric": settings.similarity, "sigma": settings.sigma, "models": merge_inputs(params, task),
              "reference": merge_inputs(params, task)[-1], "typical": indices, "layers": sim.tolist()}
    write_json(folder / "similarity.json", record)
    return folder / "similarity.json"


def merge_step(params: Params, task: str) -> Path:
    """RECALL-merge the step's inputs, and merge them with each baseline method too."""
    folder, settings = step_dir(params, task), params.recall_settings()
    inputs = merge_inputs(params, task)
    infos = [describe(m) for m in inputs]
    sim = read_json(folder / "similarity.json")
    weights = softmax_weights(np.array(sim["layers"]), settings.temperature)
    extra = {"similarity": sim["layers"], "similarity_metric": sim["metric"], "typical": sim["typical"],
             "probe": str(folder / "probe.jsonl"), "settings": params.raw["recall"]}
    out = merge(MergePlan(infos, get_method("recall"), weights, reference=1, extra=extra), folder / "model")
    merge_baselines(params, infos, folder / "baselines")
    return out


def merge_baselines(params: Params, infos: list, out: Path) -> None:
    """Merge `infos` with each baseline method into out/<method>/ (one output, even when empty)."""
    n_groups = infos[0].num_layers + 1
    base_model = describe(model_dir(params, BASE_STEP))
    with atomic_dir(out) as tmp:
        write_json(tmp / "methods.json", params.baselines)
        for name, given in params.baselines.items():
            method = get_method(name)
            w = method.default_weight if method.default_weight is not None else 1 / len(infos)
            plan = MergePlan(infos, method, uniform_weights(n_groups, [w] * len(infos)),
                             base=base_model if method.needs_base else None, params=method.resolve(given),
                             reference=len(infos) - 1)
            merge(plan, tmp / name)


def multi(params: Params) -> Path:
    """Multi scenario: merge the experts (and the base) at once. Each expert is a reference on its own
    task's typical samples; the weight rows are averaged (DESIGN: no single new model)."""
    out = params.root / "data" / "multi"
    if params.raw["scenario"] != "multi":
        with atomic_dir(out) as tmp:  # DVC wants the output; say why it is empty
            (tmp / "SKIPPED").write_text(f"scenario is {params.raw['scenario']}, not multi\n")
        return out
    settings = params.recall_settings()
    with_base = params.raw.get("multi", {}).get("with_base", True)
    paths = ([str(model_dir(params, BASE_STEP))] if with_base else []) + [str(step_dir(params, t) / "sft") for t in tasks(params)]
    infos = [describe(p) for p in paths]
    rows, references = [], []
    with tempfile.TemporaryDirectory(prefix="recall-multi-") as tmp:
        for i, task in enumerate(tasks(params)):
            folder, ref = step_dir(params, task), i + int(with_base)
            indices = read_json(folder / "typical.json")["indices"]
            sim = similarity_to_reference(infos, ref, folder / "probe.jsonl", load_features(folder / "features.npy"),
                                          indices, settings, Path(tmp))
            rows.append(softmax_weights(sim, settings.temperature))
            references.append({"reference": paths[ref], "data": str(folder / "probe.jsonl"), "typical": indices,
                               "similarity": sim.tolist()})
    with atomic_dir(out) as tmp:
        extra = {"settings": params.raw["recall"], "references": references, "with_base": with_base}
        merge(MergePlan(infos, get_method("recall"), np.mean(rows, axis=0), reference=len(infos) - 1, extra=extra),
              tmp / "model")
        merge_baselines(params, infos, tmp / "baselines")
        evaluate_models(params, {"recall": tmp / "model", **{m: tmp / "baselines" / m for m in params.baselines}},
                        tmp / "eval")
    return out


def variants(params: Params, task: str) -> dict[str, Path]:
    """The models evaluated after a step: RECALL's merge, the fine-tuned model, each baseline."""
    folder = step_dir(params, task)
    found = {"recall": folder / "model", "sft": folder / "sft"}
    found.update({m: folder / "baselines" / m for m in params.baselines})
    return found


def evaluate_step(params: Params, task: str) -> dict[str, dict]:
    return evaluate_models(params, variants(params, task), step_dir(params, task) / "eval")


def evaluate_models(params: Params, models: dict[str, Path], out: Path) -> dict[str, dict]:
    """Each named model on every task of the sequence, with the run's evaluation settings, into out/<name>/."""
    from recall.evaluation.pipeline import evaluate

    cfg = params.raw["evaluate"]
    return {
        name: evaluate(path, tasks(params), out / name, data_dir=params.data_dir, limit=cfg["limit"],
                       batch_size=cfg["batch_size"], max_new_tokens=cfg.get("max_new_tokens"))
        for name, path in models.items()
    }


def report_spec(params: Params, spec_dir: Path) -> dict:
    """The spec `recall report` reads for this run's artifacts (paths relative to the spec's folder)."""
    rel = lambda p: os.path.relpath(p, spec_dir)  # noqa: E731
    methods = ["recall", "sft", *params.baselines]
    spec: dict = {"tasks": tasks(params)}
    steps = [(s.task, {m: rel(step_dir(params, s.task) / "eval" / m / "metrics.json") for m in methods}) for s in params.steps]
    if params.raw["scenario"] == "sequential":
        spec["sequential"] = [{"method": m, "steps": [{"task": t, "metrics": paths[m]} for t, paths in steps]} for m in methods]
    else:
        spec["single"] = [{"finetuned_on": t, "method": m, "metrics": paths[m]} for t, paths in steps for m in methods]
    if params.raw["scenario"] == "multi":
        setting = "with base model" if params.raw.get("multi", {}).get("with_base", True) else "without base model"
        multi_eval = params.root / "data" / "multi" / "eval"
        spec["multi"] = [{"setting": setting, "method": m, "metrics": rel(multi_eval / m / "metrics.json")}
                         for m in ["recall", *params.baselines]]
    spec["merge_weights"] = [rel(model_dir(params, t) / "merge_weights.json") for t in tasks(params)]
    spec["similarity"] = [rel(step_dir(params, t) / "similarity.json") for t in tasks(params)]
    return spec


def report(params: Params) -> Path:
    from recall.report import write_report

    out = params.root / "reports"
    spec_path = params.root / "data" / "report_spec.json"
    write_json(spec_path, report_spec(params, spec_path.parent))
    report_md = write_report(spec_path, out)
    # DVC metrics may not sit inside an output folder, so the run's metrics also live at the top.
    write_json(params.root / "metrics.json", read_json(out / "metrics.json"))
    return report_md


def log_stage(params: Params, task: str, stage: str, sequence_run: str) -> None:
    """What the active MLflow run records for a stage that just finished.

    Evaluation metrics also go to the sequence's run with the step index, so MLflow plots forgetting
    curves; each merged model is registered.
    """
    import mlflow

    folder = step_dir(params, task)
    index = tasks(params).index(task) + 1 if task in tasks(params) else 0
    if stage == "finetune":
        mlflow.log_params({f"finetune.{k}": v for k, v in params.raw["finetune"].items()})
        for row in read_json(folder / "sft" / "train_metrics.json")["steps"]:
            mlflow.log_metric("train_loss", row["loss"], step=row["step"])
    elif stage in ("typical", "similarity", "merge", "multi"):
        mlflow.log_params({f"recall.{k}": v for k, v in params.raw["recall"].items()})
    if stage == "merge":
        mlflow.log_artifact(str(folder / "similarity.json"))
        register_merge(params, folder / "model", [task], f"merge@{index - 1}", f"RECALL merge after step {task}")
    elif stage == "evaluate":
        log_scores({v: folder / "eval" / v for v in variants(params, task)}, "", index, sequence_run)
    elif stage == "multi" and params.raw["scenario"] == "multi":
        multi_dir = params.root / "data" / "multi"
        register_merge(params, multi_dir / "model", tasks(params), "multi", "RECALL merge of every expert")
        log_scores({v: multi_dir / "eval" / v for v in ["recall", *params.baselines]}, "multi.", 0, sequence_run)


def register_merge(params: Params, model: Path, data_tasks: list[str], dvc_stage: str, description: str) -> None:
    """Log a merge's weights as artifacts and register the model folder with its lineage tags."""
    import mlflow

    mlflow.log_artifact(str(model / "merge_weights.json"))
    mlflow.log_artifact(str(model / "merge_weights.png"))
    record = read_json(model / "merge_weights.json")
    mlflow.log_dict({"layers": record["layers"], "models": record["models"]}, "weights_matrix.json")
    tags = {
        "parents": json.dumps(record["models"]), "method": record["method"],
        "weights_sha256": sha256_file(model / "merge_weights.json"),
        "data_sha256": json.dumps({t: sha256_tree(params.data_dir / t) for t in data_tasks}),
        "git_commit": tracking.git_commit(params.root), "dvc_stage": dvc_stage,
    }
    version = tracking.register_model(model, tags, description)
    log.info("registered %s version %s", tracking.REGISTERED_MODEL, version)


def log_scores(evals: dict[str, Path], prefix: str, step: int, sequence_run: str) -> None:
    """Every task's metrics of each evaluated variant, on this stage's run and the sequence's."""
    import mlflow

    for variant, folder in evals.items():
        for task, metrics in read_json(folder / "metrics.json").items():
            for name, value in metrics.items():
                key = f"{prefix}{variant}.{task}.{name}"
                mlflow.log_metric(key, value, step=step)
                mlflow.MlflowClient().log_metric(sequence_run, key, value, step=step)


STAGES = {
    "base": base, "data": data, "finetune": finetune_step, "features": features, "typical": typical,
    "similarity": similarity, "merge": merge_step, "evaluate": evaluate_step, "multi": multi, "report": report,
}
PER_STEP = {"finetune", "features", "typical", "similarity", "merge", "evaluate"}
