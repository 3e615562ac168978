"""The pipeline's stages: plain functions over the files under `data/`, one per DVC stage.

Every compared method (params.yaml `methods`) is its own chain. In the sequential scenario a
method's step fine-tunes *its own* previous model and merges with *its own* method; in the single
scenario every method merges each expert (fine-tuned once from the base) with the base (table 1); the
multi scenario merges every expert at once (table 2).

Layout (every folder and file written atomically):

    data/tasks/<task>/{train,test}.jsonl          data stage
    data/base/model/                              base stage
    data/base/eval/                               a protocol's base model on every task
    data/experts/<task>/                          the base fine-tuned on <task>, shared by every chain
                                                  (each step of single/multi, a sequence's first step;
                                                  runs of one project share them through DVC's cache)
    data/chains/<method>/<task>/sft/              sequential: the method's previous model fine-tuned on <task>
    data/chains/recall/<task>/probe.jsonl, features.npy, typical.json, similarity.json   RECALL's inputs
    data/chains/<method>/<task>/model/            merge: the previous model and the new one, by <method>
    data/chains/<method>/<task>/eval/             the model the step hands on, on every task
    data/runs/<run>/{experts,chains}/...          a protocol's run (order, seed), e.g. o2-s1: as above;
                                                  a step is kept by the first run that makes it
    data/gate/<task>/                             gate (sequential): what it had to evaluate to compare the
                                                  step's model of promote.method's chain with the champion
    data/multi/similarity.json                    multi scenario: every model's similarity to each expert
    data/multi/<method>/{model,eval}/             multi scenario: every expert merged at once (table 2)
    reports/                                      report: tables, plots; metrics.json at the top
    gates/<task>/metrics.json                     gate: its decision (recall.gate), in git like metrics.json

`sft` and `ewc` hand on their fine-tune itself (no `model/`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from recall import tracking
from recall.atomic import atomic_dir, read_json, write_json
from recall.base_model import pull_base
from recall.errors import RecallError
from recall.hashing import sha256_file, sha256_tree
from recall.merge.engine import MergePlan, merge
from recall.merge.methods import get_method, resolve_weights
from recall.models import allow_remote_code, describe, safetensors_folder
from recall.pipeline.params import BASE_STEP, TRAINING_METHODS, Params
from recall.tasks.export import export_task
from recall.tasks.formats import TASK_FILE
from recall.tasks.generated import generate_suite
from recall.training.finetune import check_prompts_fit, finetune
from recall.weights.features import extract_features, load_features
from recall.weights.representations import similarity_and_sigmas
from recall.weights.similarity import similarity_range
from recall.weights.typical import select_typical

log = logging.getLogger(__name__)
DEFAULT_BASE = "smollm2"


def tasks(params: Params) -> list[str]:
    return [s.task for s in params.steps]


def scored_tasks(params: Params) -> list[str]:
    """The sequence's tasks, then those only scored (`evaluate.unseen`)."""
    return [*tasks(params), *params.sections.evaluate.unseen]


def data_root(params: Params) -> Path:
    return params.root / "data"


def base_model(params: Params) -> Path:
    return data_root(params) / "base" / "model"


def base_eval(params: Params) -> Path:
    """A protocol's base model on every task: what each task's learning is measured against."""
    return data_root(params) / "base" / "eval"


def scope(params: Params, task: str) -> Path:
    """Where a step's chain folders and expert live: data/, or in a protocol the folder of the run that
    owns the step (`Params.owner`), data/runs/<run>/, so runs doing the same work share it."""
    owner = params.owner(task)
    return data_root(params) if owner is None else data_root(params) / "runs" / owner.label


def chain_dir(params: Params, method: str, task: str) -> Path:
    return scope(params, task) / "chains" / method / task


def shared_expert(params: Params, task: str) -> bool:
    """Whether every chain's fine-tune on `task` is the same one: it starts from the base (every step
    of a single or multi run; the first step of a sequence, where EWC has nothing to anchor to yet)."""
    return params.step(task).after == BASE_STEP


def new_model(params: Params, method: str, task: str) -> Path:
    """The model fine-tuned on `task` that a method's step starts its merge from."""
    if shared_expert(params, task):
        return scope(params, task) / "experts" / task
    return chain_dir(params, method, task) / "sft"


def handed_on(params: Params, method: str, task: str) -> Path:
    """The model a method's chain holds after `task`: its fine-tune for training methods, else its merge."""
    return new_model(params, method, task) if method in TRAINING_METHODS else chain_dir(params, method, task) / "model"


def start_model(params: Params, method: str, task: str) -> Path:
    """The model a method's step starts from: the base, or the chain's model after `after`."""
    after = params.step(task).after
    return base_model(params) if after == BASE_STEP else handed_on(params, method, after)


def recall_dir(params: Params, task: str) -> Path:
    """Where RECALL's weight inputs for a step live (features, typical samples, similarity)."""
    return chain_dir(params, "recall", task)


def gate_dir(params: Params, task: str) -> Path:
    return data_root(params) / "gate" / task


def gate_metrics(params: Params, task: str) -> Path:
    """The gate's decision: DVC metrics may not sit in an output folder, and data/ is git-ignored."""
    return params.root / "gates" / task / "metrics.json"


def multi_dir(params: Params, method: str) -> Path:
    return data_root(params) / "multi" / method


def multi_similarity_path(params: Params) -> Path:
    return data_root(params) / "multi" / "similarity.json"


def multi_models(params: Params, method: str) -> list[str]:
    """The models the multi scenario merges, in order: the base (with `multi.with_base`), then the experts."""
    return ([str(base_model(params))] if params.with_base else []) + [
        str(new_model(params, method, t)) for t in tasks(params)
    ]


def base(params: Params) -> Path:
    out = base_model(params)
    spec = params.sections.base.model
    if spec == DEFAULT_BASE:
        return pull_base(out)
    local = params.root / spec  # a relative path means one inside the project
    folder = safetensors_folder(describe(local if local.exists() else spec))  # converts GGUF / .bin once
    with atomic_dir(out) as tmp:
        shutil.copytree(folder, tmp, dirs_exist_ok=True)
    return out


def data(params: Params) -> Path:
    """The sequence's task data under data/tasks: `incoming/<task>/` when present, else the folder
    that declares the task, else generated or taken from the data.source folder. A declared task's
    task.yaml goes with its data, so every later stage reads the task from there. Every task's training
    prompts are checked against finetune.max_length here, before the first fine-tune."""
    cfg = params.sections.data
    out = params.data_dir
    if cfg.source == "generated":
        generate_suite(out, seed=cfg.seed, train=cfg.train_size, test=cfg.test_size)
    for task in scored_tasks(params):
        declared, incoming = params.declaring_folder(task), params.root / "incoming" / task
        if incoming.is_dir():
            source = incoming
        elif declared is not None:
            source = declared
        elif cfg.source != "generated":
            source = params.root / cfg.source / task
        else:
            continue
        with atomic_dir(out / task) as tmp:
            for split, size in (("train", cfg.train_size), ("test", cfg.test_size)):
                lines = (source / f"{split}.jsonl").read_text().splitlines(keepends=True)
                (tmp / f"{split}.jsonl").write_text("".join(lines[:size]))
            if declared is not None:
                shutil.copyfile(declared / TASK_FILE, tmp / TASK_FILE)
    check_prompts_fit(base_model(params), tasks(params), out, params.sections.finetune, "finetune.max_length")
    return out


def finetune_step(params: Params, task: str, method: str | None = None) -> Path:
    """The method's previous model fine-tuned on `task` (EWC adds its penalty against the previous
    task); without a method, the expert every chain shares, fine-tuned from the base."""
    config, after = params.sections.finetune, params.step(task).after
    if method == "ewc":
        ewc = params.ewc()
        config = dataclasses.replace(config, ewc_lambda=ewc["lambda"], ewc_from=after, ewc_samples=ewc["samples"])
    return finetune(
        start_model(params, method, task),
        task,
        new_model(params, method, task),
        data_dir=params.data_dir,
        config=config,
    )


def features(params: Params, task: str) -> Path:
    """The new model's representations of the task's training samples (the probe set)."""
    folder, settings = recall_dir(params, task), params.sections.recall
    export_task(task, "train", folder / "probe.jsonl", params.data_dir, limit=params.sections.recall.samples)
    return extract_features(
        new_model(params, "recall", task),
        folder / "probe.jsonl",
        folder / "features.npy",
        batch_size=settings.batch_size,
        max_length=settings.max_length,
    )


def typical(params: Params, task: str) -> Path:
    folder, settings = recall_dir(params, task), params.sections.recall
    chosen = select_typical(load_features(folder / "features.npy"), settings.typical, settings.seed)
    write_json(folder / "typical.json", {"m": settings.typical, "seed": settings.seed, "indices": chosen})
    return folder / "typical.json"


def merge_inputs(params: Params, method: str, task: str) -> list[str]:
    """The models a step merges, in order: the model it started from, then the new one."""
    return [str(start_model(params, method, task)), str(new_model(params, method, task))]


def typical_similarity(params: Params, infos: list, reference: int, task: str, workdir: Path):
    """Every model's similarity per layer to infos[reference] on `task`'s typical samples: (the samples'
    indices, the (layers x models) similarities, each layer's sigma)."""
    folder = recall_dir(params, task)
    indices = read_json(folder / "typical.json")["indices"]
    features = load_features(folder / "features.npy")
    return indices, *similarity_and_sigmas(
        infos, reference, folder / "probe.jsonl", features, indices, params.sections.recall, workdir
    )


def similarity(params: Params, task: str) -> Path:
    settings, inputs = params.sections.recall, merge_inputs(params, "recall", task)
    with tempfile.TemporaryDirectory(prefix="recall-sim-") as tmp:
        indices, sim, sigmas = typical_similarity(
            params, [describe(m) for m in inputs], len(inputs) - 1, task, Path(tmp)
        )
    record = {
        "metric": settings.similarity,
        "sigma": settings.sigma,
        "normalize": settings.normalize,
        "sigmas": sigmas,
        "range": similarity_range(sim),
        "models": inputs,
        "reference": inputs[-1],
        "typical": indices,
        "layers": sim.tolist(),
    }
    write_json(recall_dir(params, task) / "similarity.json", record)
    return recall_dir(params, task) / "similarity.json"


def multi_similarity(params: Params) -> Path:
    """Multi scenario: each expert is the reference on its own task's typical samples and measures every
    model merged (DESIGN: no single new model). Its own stage, so a temperature reruns only the merge."""
    settings, models = params.sections.recall, multi_models(params, "recall")
    infos, references = [describe(m) for m in models], []
    with tempfile.TemporaryDirectory(prefix="recall-multi-") as tmp:
        for i, task in enumerate(tasks(params)):
            ref = i + int(params.with_base)
            indices, sim, sigmas = typical_similarity(params, infos, ref, task, Path(tmp))
            references.append(
                {
                    "reference": models[ref],
                    "data": str(recall_dir(params, task) / "probe.jsonl"),
                    "typical": indices,
                    "similarity": sim.tolist(),
                    "sigmas": sigmas,
                    "range": similarity_range(sim),
                }
            )
    record = {
        "metric": settings.similarity,
        "sigma": settings.sigma,
        "normalize": settings.normalize,
        "models": models,
        "references": references,
    }
    write_json(multi_similarity_path(params), record)
    return multi_similarity_path(params)


def merge_step(params: Params, task: str, method: str) -> Path:
    """Merge the method's previous model with its new one: RECALL from the similarities, any other
    method with its registry kernel."""
    infos = [describe(m) for m in merge_inputs(params, method, task)]
    out = chain_dir(params, method, task) / "model"
    if method != "recall":
        return merge_with(params, method, infos, out)
    folder, recall = recall_dir(params, task), get_method("recall")
    sim = read_json(folder / "similarity.json")
    weights = resolve_weights(
        recall,
        infos,
        similarities=[np.array(sim["layers"])],
        temperature=params.sections.recall.temperature,
        calibrate=params.sections.recall.calibrate,
    )
    extra = {
        "similarity": sim["layers"],
        "similarity_metric": sim["metric"],
        "sigmas": sim["sigmas"],
        "typical": sim["typical"],
        "probe": str(folder / "probe.jsonl"),
        "settings": dataclasses.asdict(params.sections.recall),
        "chain": method,
    }
    return merge(MergePlan(infos, recall, weights, reference=1, extra=extra), out)


def merge_with(params: Params, name: str, infos: list, out: Path) -> Path:
    """A registry method's merge of `infos`, each model weighted by the method's default. A sequential
    step's models were each fine-tuned from the one before, so methods that take `chain` merge each
    step's own task vector (README, Merge methods) unless params.yaml says otherwise."""
    method = get_method(name)
    chain = {"chain": params.sequential} if "chain" in method.params else {}
    settings = method.resolve({**chain, **params.methods[name]})
    plan = MergePlan(
        infos,
        method,
        resolve_weights(method, infos, params=settings),
        base=describe(base_model(params)) if method.needs_base else None,
        params=settings,
        reference=len(infos) - 1,
        extra={"chain": name},
    )
    return merge(plan, out)


def multi(params: Params, method: str) -> Path:
    """Multi scenario: merge the experts (and the base) at once with `method`, then evaluate. RECALL
    uses each expert as a reference on its own task's typical samples and averages the weight rows
    (DESIGN: no single new model)."""
    out = multi_dir(params, method)
    infos = [describe(p) for p in multi_models(params, method)]
    with atomic_dir(out) as tmp:
        if method == "recall":
            merge_multi_recall(params, infos, tmp / "model")
        else:
            merge_with(params, method, infos, tmp / "model")
        evaluate_model(params, tmp / "model", tmp / "eval")
    return out


def merge_multi_recall(params: Params, infos: list, out: Path) -> Path:
    record = read_json(multi_similarity_path(params))
    if record["models"] != [i.spec for i in infos]:
        raise RecallError(
            f"{multi_similarity_path(params)} measured other models than this merge; "
            "rerun its stage, `similarity` (dvc repro does)"
        )
    settings, sims = params.sections.recall, [np.array(r["similarity"]) for r in record["references"]]
    method = get_method("recall")
    weights = resolve_weights(
        method, infos, similarities=sims, temperature=settings.temperature, calibrate=settings.calibrate
    )
    extra = {
        "settings": dataclasses.asdict(params.sections.recall),
        "references": record["references"],
        "with_base": params.with_base,
        "chain": "recall",
    }
    return merge(MergePlan(infos, method, weights, reference=len(infos) - 1, extra=extra), out)


def evaluate_step(params: Params, task: str, method: str) -> dict[str, dict]:
    return evaluate_model(
        params, handed_on(params, method, task), chain_dir(params, method, task) / "eval", params.eval_tasks(task)
    )


def evaluate_model(params: Params, model: Path, out: Path, names: list[str] | None = None) -> dict[str, dict]:
    """`model` on `names` (default: every task of the sequence) with the run's evaluation settings, into `out`."""
    from recall.evaluation.pipeline import evaluate

    cfg = params.sections.evaluate
    return evaluate(
        model,
        names or scored_tasks(params),
        out,
        data_dir=params.data_dir,
        limit=params.eval_limits(),
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        modes=params.eval_modes,
        backend=cfg.backend,
    )


def champion_step(params: Params, task: str) -> str:
    """The step whose model is the champion when `task`'s gate runs: the last earlier step its gate
    promoted, else the base (read from the earlier gates' metrics.json, this stage's dependencies)."""
    names = tasks(params)
    promoted = [t for t in names[: names.index(task)] if read_json(gate_metrics(params, t))["promoted"]]
    return promoted[-1] if promoted else BASE_STEP


def evaluation_of(params: Params, model: Path) -> Path | None:
    """The pipeline's evaluation folder of `model` (a chain's step or a multi merge), if it has one."""
    made = {handed_on(params, m, t): chain_dir(params, m, t) / "eval" for m in params.methods for t in tasks(params)}
    made.update({multi_dir(params, m) / "model": multi_dir(params, m) / "eval" for m in params.merge_methods})
    found = next((e for m, e in made.items() if m.resolve() == model.resolve()), None)
    return found if found is not None and found.is_dir() else None


def scored(params: Params, model: Path, evaluation: Path | None, names: list[str], out: Path) -> dict[str, list]:
    """`model`'s per-example records on `names`: those its evaluation folder holds, the rest evaluated into `out`."""
    from recall.reporting.report import read_records

    have = read_records(evaluation / "examples", names) if evaluation else {}
    if missing := [t for t in names if t not in have]:
        evaluate_model(params, model, out, missing)
        have.update(read_records(out / "examples", missing))
    return have


def gate_step(params: Params, task: str) -> Path:
    """The gate after `task` in the served chain: its model (the candidate) against the champion on every
    task learned so far (`recall.gate`), evaluating whatever their evaluations lack; the decision into
    metrics.json."""
    from recall.gate import decide

    names, method = tasks(params), params.gated
    seen, before = names[: names.index(task) + 1], champion_step(params, task)
    candidate = handed_on(params, method, task)
    champion = base_model(params) if before == BASE_STEP else handed_on(params, method, before)
    champion_eval = None if before == BASE_STEP else chain_dir(params, method, before) / "eval"
    with atomic_dir(gate_dir(params, task)) as tmp:
        write_json(tmp / "inputs.json", {"candidate": str(candidate), "champion": str(champion), "tasks": seen})
        records = [
            scored(params, candidate, chain_dir(params, method, task) / "eval", seen, tmp / "candidate"),
            scored(params, champion, champion_eval, seen, tmp / "champion"),
        ]
    decision = decide(*records, seen, task, params.sections.promote.tolerance)
    rel = lambda p: os.path.relpath(p, params.root)  # noqa: E731
    write_json(
        gate_metrics(params, task),
        {**decision.record(), "candidate": rel(candidate), "champion": rel(champion), "champion_step": before},
    )
    log.info("gate %s: %s (%s)\n%s", task, decision.record()["decision"], decision.reason, decision.table())
    return gate_metrics(params, task)


def report_spec(params: Params, spec_dir: Path) -> dict:
    """The spec `recall report` reads for this run's artifacts (paths relative to the spec's folder)."""
    rel = lambda p: os.path.relpath(p, spec_dir)  # noqa: E731
    spec: dict = {"tasks": tasks(params)}
    if params.sections.scenario == "multi":
        setting = "with base model" if params.with_base else "without base model"
        spec["multi"] = [
            {"setting": setting, "method": m, "metrics": rel(multi_dir(params, m) / "eval" / "metrics.json")}
            for m in params.merge_methods
        ]
        return spec  # RECALL's weights there: data/multi/recall/model/merge_weights.json
    evals = {
        m: {t: rel(chain_dir(params, m, t) / "eval" / "metrics.json") for t in tasks(params)} for m in params.methods
    }
    if params.sequential:
        spec["sequential"] = [
            {"method": m, "steps": [{"task": t, "metrics": evals[m][t]} for t in tasks(params)]} for m in params.methods
        ]
    else:
        spec["single"] = [
            {"finetuned_on": t, "method": m, "metrics": evals[m][t]} for t in tasks(params) for m in params.methods
        ]
    if "recall" in params.methods:
        spec["merge_weights"] = [
            rel(chain_dir(params, "recall", t) / "model" / "merge_weights.json") for t in tasks(params)
        ]
        spec["similarity"] = [rel(recall_dir(params, t) / "similarity.json") for t in tasks(params)]
    if params.gated:
        spec["gate"] = [rel(gate_metrics(params, t)) for t in tasks(params)]
    return spec


def protocol_spec(params: Params, spec_dir: Path) -> dict:
    """The spec `recall.reporting.protocol` reads: every run's evaluations per method and step, and the base's."""
    rel = lambda p: os.path.relpath(p, spec_dir)  # noqa: E731
    runs = []
    for run in params.runs:
        of_run = params.for_run(run)
        evals = {m: [rel(chain_dir(of_run, m, t) / "eval" / "metrics.json") for t in run.tasks] for m in of_run.methods}
        runs.append({"label": run.label, "order": list(run.tasks), "seed": run.seed, "methods": evals})
    return {
        "tasks": tasks(params),
        "unseen": list(params.sections.evaluate.unseen),
        "base": rel(base_eval(params) / "metrics.json"),
        "runs": runs,
    }


def report(params: Params) -> Path:
    from recall.reporting.protocol import write_protocol
    from recall.reporting.report import write_report

    out = params.root / "reports"
    spec_path = data_root(params) / "report_spec.json"
    if params.runs:
        write_json(spec_path, protocol_spec(params, spec_path.parent))
        report_md, metrics = write_protocol(spec_path, out), out / "protocol.json"
    else:
        write_json(spec_path, report_spec(params, spec_path.parent))
        report_md, metrics = write_report(spec_path, out), out / "metrics.json"
    # DVC metrics may not sit inside an output folder, so the run's metrics also live at the top.
    write_json(params.root / "metrics.json", read_json(metrics))
    return report_md


def run(params: Params, stage: str, task: str | None = None, method: str | None = None):
    """Run one stage; `task` and `method` as the stage takes them (see recall.pipeline.plan)."""
    allow_remote_code(params.sections.base.trust_remote_code)
    if stage in ("base", "data", "report"):
        return STAGES[stage](params)
    if stage == "similarity" and task is None:
        return multi_similarity(params)
    if stage == "evaluate" and task is None:
        return evaluate_model(params, base_model(params), base_eval(params))
    if stage in ("features", "typical", "similarity", "gate"):
        return STAGES[stage](params, task)
    if stage == "multi":
        return multi(params, method)
    return STAGES[stage](params, task, method)


def log_stage(params: Params, stage: str, task: str | None, method: str | None, sequence_run: str) -> None:
    """What the active MLflow run records for a stage that just finished.

    Evaluation metrics also go to the sequence's run with the step index, so MLflow plots each
    chain's forgetting curve; each merged model is registered with its chain's method.
    """
    import mlflow

    from recall.pipeline.plan import stage_name

    index = tasks(params).index(task) + 1 if task in tasks(params) else 0
    if stage == "finetune":
        mlflow.log_params({f"finetune.{k}": v for k, v in params.written("finetune").items()})
        if method == "ewc":
            mlflow.log_params({f"ewc.{k}": v for k, v in params.ewc().items()})
        trained = read_json(new_model(params, method or "sft", task) / "train_metrics.json")
        mlflow.log_param("rendering", trained["rendering"])  # chat template or plain prompts
        for row in trained["steps"]:
            mlflow.log_metric("train_loss", row["loss"], step=row["step"])
    elif "recall" in (stage, method) or stage in ("typical", "similarity"):
        mlflow.log_params({f"recall.{k}": v for k, v in params.written("recall").items()})
    elif method in params.methods:
        mlflow.log_params({f"{method}.{k}": v for k, v in params.methods[method].items()})
    name = stage_name(stage, task, method)
    if stage == "merge":
        if method == "recall":
            mlflow.log_artifact(str(recall_dir(params, task) / "similarity.json"))
        register_merge(
            params, chain_dir(params, method, task) / "model", [task], name, f"{method} chain: merge after step {task}"
        )
    elif stage == "evaluate":
        folder = chain_dir(params, method, task) / "eval" if task else base_eval(params)
        log_scores({method or "base": folder}, "", index, sequence_run)
    elif stage == "gate":
        record = read_json(gate_metrics(params, task))
        mlflow.log_params({f"promote.{k}": v for k, v in params.written("promote").items()})
        mlflow.log_metric("gate.promoted", record["promoted"])
        for t, row in record["tasks"].items():
            mlflow.log_metrics({f"gate.{t}.{k}": row[k] for k in ("difference", "low", "high") if row[k] is not None})
        mlflow.log_dict(record, "gate.json")
        if params.gated in params.merge_methods:  # a registered version to tag; training methods register none
            model = handed_on(params, params.gated, task)
            tracking.record_gate(model, record["decision"] == "promoted", record["reason"])
    elif stage == "multi":
        register_merge(
            params, multi_dir(params, method) / "model", tasks(params), name, f"{method}: every expert merged"
        )
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


STAGES = {
    "base": base,
    "data": data,
    "finetune": finetune_step,
    "features": features,
    "typical": typical,
    "similarity": similarity,
    "merge": merge_step,
    "evaluate": evaluate_step,
    "gate": gate_step,
    "multi": multi,
    "report": report,
}
