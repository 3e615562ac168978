"""The pipeline's stages: plain functions over the files under `data/`, and TABLE, which declares
each stage beside its function: its dependencies, outputs and params keys, where the plan places it,
and what MLflow records of it. `recall.pipeline.plan` writes dvc.yaml from the table; `run` runs one
stage. Adding a stage: one function and one `StageDef` entry. The files' layout is
`recall.pipeline.layout`'s.

Every compared method (params.yaml `methods`) is its own chain. In the sequential scenario a
method's step fine-tunes *its own* previous model and merges with *its own* method; in the single
scenario every method merges each expert (fine-tuned once from the base) with the base (table 1); the
multi scenario merges every expert at once (table 2). A merge method's weight source
(`recall.weights.sources`) names the stages of its evidence, which the plan places before the merge.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recall import tracking
from recall.atomic import atomic_dir, read_json, write_json
from recall.base_model import pull_base
from recall.errors import RecallError
from recall.hashing import sha256_file, sha256_tree
from recall.merge.engine import MergePlan, merge
from recall.merge.methods import METHODS, get_method, resolve_weights
from recall.models import allow_remote_code, describe, safetensors_folder
from recall.pipeline.layout import (
    BASE_STEP,
    base_eval,
    base_model,
    chain_dir,
    evaluation,
    gate_dir,
    gate_metrics,
    handed_on,
    incoming,
    merged_model,
    multi_dir,
    multi_evidence,
    multi_models,
    multi_similarity_path,
    new_model,
    report_spec_path,
    reports,
    scored_tasks,
    shared_expert,
    stage_name,
    start_model,
    tasks,
    top_metrics,
)
from recall.pipeline.params import SEEDS_KEY, Params
from recall.tasks.export import export_task
from recall.tasks.formats import TASK_FILE
from recall.tasks.generated import generate_suite
from recall.training.finetune import check_prompts_fit, finetune
from recall.weights.features import extract_features, load_features
from recall.weights.representations import similarity_and_sigmas
from recall.weights.similarity import similarity_range
from recall.weights.sources import Evidence, Representations, WeightSource
from recall.weights.typical import select_typical

log = logging.getLogger(__name__)
DEFAULT_BASE = "smollm2"
RECALL = Representations  # RECALL's weight source: its stages below read its section of params.yaml


def source_of(method: str | None) -> type[WeightSource] | None:
    """The weight source of a compared merge method (None for a training method)."""
    return METHODS[method].source if method in METHODS else None


def sourced(params: Params, stage: str) -> str:
    """The compared method whose weight source needs `stage`, a stage of a step no one chain owns
    (RECALL's features, typical samples and similarities)."""
    for m in params.merge_methods:
        source = METHODS[m].source
        if stage in (*source.step_stages, *source.expert_stages, *source.multi_stages):
            return m
    raise RecallError(f"no compared method's weights need the stage {stage}; add its method to params.yaml methods")


def evidence_dir(params: Params, task: str) -> Path:
    """Where RECALL's weight inputs for a step live (features, typical samples, similarity)."""
    return chain_dir(params, sourced(params, "features"), task)


recall_dir = evidence_dir  # its earlier name


def section_keys(params: Params, section: str, *used: str) -> list[str]:
    """`<section>.<key>` params a stage reads, among those params.yaml sets (DVC fails on absent keys)."""
    return [f"{section}.{k}" for k in used if k in params.written(section)]


def method_keys(params: Params, method: str) -> list[str]:
    """The params a method's stages read: its section, or with a protocol's `seeds` in it, each other key,
    so that a seed added to a method's list adds its chains and reruns nothing."""
    given = params.sections.methods[method] or {}
    if SEEDS_KEY not in given:
        return [f"methods.{method}"]
    return [f"methods.{method}.{k}" for k in given if k != SEEDS_KEY]


def source_keys(params: Params, method: str) -> list[str]:
    """The keys of `methods.<m>` that a weight source's evidence stage reads (its settings, as written)."""
    given, own = params.sections.methods[method] or {}, METHODS[method].params
    return [f"methods.{method}.{k}" for k in given if k != SEEDS_KEY and k not in own]


def task_data(params: Params, *names: str) -> list[Path]:
    return [params.data_dir / t for t in names]


# --- the stages' functions ---


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
        declared, new = params.declaring_folder(task), incoming(params.root) / task
        if new.is_dir():
            source = new
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
    folder, settings = evidence_dir(params, task), params.sections.recall
    export_task(task, "train", folder / "probe.jsonl", params.data_dir, limit=params.sections.recall.samples)
    return extract_features(
        new_model(params, sourced(params, "features"), task),
        folder / "probe.jsonl",
        folder / "features.npy",
        batch_size=settings.batch_size,
        max_length=settings.max_length,
    )


def typical(params: Params, task: str) -> Path:
    folder, settings = evidence_dir(params, task), params.sections.recall
    chosen = select_typical(load_features(folder / "features.npy"), settings.typical, settings.seed)
    write_json(folder / "typical.json", {"m": settings.typical, "seed": settings.seed, "indices": chosen})
    return folder / "typical.json"


def typical_similarity(params: Params, infos: list, reference: int, task: str, workdir: Path):
    """Every model's similarity per layer to infos[reference] on `task`'s typical samples: (the samples'
    indices, the (layers x models) similarities, each layer's sigma)."""
    folder = evidence_dir(params, task)
    indices = read_json(folder / "typical.json")["indices"]
    features = load_features(folder / "features.npy")
    return indices, *similarity_and_sigmas(
        infos, reference, folder / "probe.jsonl", features, indices, params.sections.recall, workdir
    )


def similarity(params: Params, task: str) -> Path:
    settings, inputs = params.sections.recall, merge_inputs(params, sourced(params, "similarity"), task)
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
    write_json(evidence_dir(params, task) / "similarity.json", record)
    return evidence_dir(params, task) / "similarity.json"


def multi_similarity(params: Params) -> Path:
    """Multi scenario: each expert is the reference on its own task's typical samples and measures every
    model merged (the multi scenario has no single new model to measure the others against). Its own
    stage, so a temperature reruns only the merge."""
    settings, models = params.sections.recall, multi_models(params, sourced(params, "similarity"))
    infos, references = [describe(m) for m in models], []
    with tempfile.TemporaryDirectory(prefix="recall-multi-") as tmp:
        for i, task in enumerate(tasks(params)):
            ref = i + int(params.with_base)
            indices, sim, sigmas = typical_similarity(params, infos, ref, task, Path(tmp))
            references.append(
                {
                    "reference": models[ref],
                    "data": str(evidence_dir(params, task) / "probe.jsonl"),
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


def cocktail_losses_of(params: Params, method: str, models: list[str], names: list[str], out: Path) -> Path:
    """LM-Cocktail's evidence: each model's loss on the first examples of every task in `names`, into `out`."""
    from recall.weights.cocktail import cocktail_losses

    settings = params.weight_settings(method)
    with tempfile.TemporaryDirectory(prefix="recall-losses-") as tmp:
        files = [Path(tmp) / f"{t}.jsonl" for t in names]
        for t, path in zip(names, files):
            export_task(t, "train", path, params.data_dir, limit=settings.examples)
        losses, extra = cocktail_losses([describe(m) for m in models], files, settings)
    extra["cocktail"]["data"] = [str(params.data_dir / t) for t in names]  # not the temporary files
    write_json(out, {"models": models, **extra})
    return out


def losses(params: Params, task: str, method: str) -> Path:
    """A chain step's models' losses on the first examples of the step's task (LM-Cocktail's weights)."""
    out = chain_dir(params, method, task) / "losses.json"
    return cocktail_losses_of(params, method, merge_inputs(params, method, task), [task], out)


def multi_losses(params: Params, method: str) -> Path:
    """Multi scenario: every merged model's loss on the first examples of every task."""
    out = multi_evidence(params, method) / "losses.json"
    return cocktail_losses_of(params, method, multi_models(params, method), tasks(params), out)


def fisher_of(params: Params, method: str, models: list[str], data_of: list[list[str]], out: Path) -> Path:
    """Fisher merging's evidence: each model's diagonal Fisher on the first examples of its tasks'
    data (`data_of`, one list of tasks per model), as the folders `out`/fisher-<i>."""
    from recall.weights.fisher import fisher_folders

    settings = params.weight_settings(method)
    with tempfile.TemporaryDirectory(prefix="recall-fisher-") as work, atomic_dir(out) as tmp:
        files = []
        for i, names in enumerate(data_of):
            parts = []
            for t in names:
                export_task(t, "train", Path(work) / f"{i}-{t}.jsonl", params.data_dir, limit=settings.examples)
                parts.append((Path(work) / f"{i}-{t}.jsonl").read_text())
            files.append(Path(work) / f"model{i}.jsonl")
            files[-1].write_text("".join(parts))
        fisher_folders([describe(m) for m in models], files, settings, tmp)
        write_json(tmp / "models.json", {"models": models, "tasks": data_of})
    return out


def fisher_step(params: Params, task: str, method: str) -> Path:
    """A chain step's models' Fisher: the model it starts from on the tasks behind it (the step's own
    task for the base), the new one on the step's task."""
    after = params.step(task).after
    learned = [task] if after == BASE_STEP else tasks(params)[: tasks(params).index(task)]
    out = chain_dir(params, method, task) / "fisher"
    return fisher_of(params, method, merge_inputs(params, method, task), [learned, [task]], out)


def multi_fisher(params: Params, method: str) -> Path:
    """Multi scenario: each expert's Fisher on its task, the base's (with `multi.with_base`) on every task."""
    data_of = ([tasks(params)] if params.with_base else []) + [[t] for t in tasks(params)]
    return fisher_of(params, method, multi_models(params, method), data_of, multi_evidence(params, method) / "fisher")


# --- each weight source's evidence, as its merge reads it (the outputs of its stages) ---


def recall_evidence(params: Params, method: str, task: str | None, infos: list) -> Evidence:
    """RECALL: a step's similarities to its new model, or in the multi scenario each expert's."""
    settings = params.sections.recall
    rows = {"temperature": settings.temperature, "calibrate": settings.calibrate}
    if task is None:
        record = read_json(multi_similarity_path(params))
        check_measured(record, infos, multi_similarity_path(params), "similarity")
        extra = {"settings": dataclasses.asdict(settings), "references": record["references"]}
        sims = [np.array(r["similarity"]) for r in record["references"]]
        return Evidence({"similarities": sims, **rows}, {**extra, "with_base": params.with_base})
    folder = evidence_dir(params, task)
    sim = read_json(folder / "similarity.json")
    extra = {
        "similarity": sim["layers"],
        "similarity_metric": sim["metric"],
        "sigmas": sim["sigmas"],
        "typical": sim["typical"],
        "probe": str(folder / "probe.jsonl"),
        "settings": dataclasses.asdict(settings),
    }
    return Evidence({"similarities": [np.array(sim["layers"])], **rows}, extra)


def check_measured(record: dict, infos: list, path: Path, stage: str) -> None:
    if record["models"] != [i.spec for i in infos]:
        raise RecallError(f"{path} measured other models than this merge; rerun its stage, `{stage}` (dvc repro does)")


def cocktail_evidence(params: Params, method: str, task: str | None, infos: list) -> Evidence:
    path = chain_dir(params, method, task) / "losses.json" if task else multi_evidence(params, method) / "losses.json"
    record = read_json(path)
    check_measured(record, infos, path, stage_name("losses", task, method))
    values = {"losses": record["cocktail"]["losses"], "temperature": params.weight_settings(method).temperature}
    return Evidence(values, {"settings": record["settings"], "cocktail": record["cocktail"]})


def fisher_evidence(params: Params, method: str, task: str | None, infos: list) -> Evidence:
    folder = chain_dir(params, method, task) / "fisher" if task else multi_evidence(params, method) / "fisher"
    check_measured(read_json(folder / "models.json"), infos, folder, stage_name("fisher", task, method))
    settings = dataclasses.asdict(params.weight_settings(method))
    return Evidence({}, {"settings": settings}, fisher=[folder / f"fisher-{i}" for i in range(len(infos))])


def merge_inputs(params: Params, method: str, task: str) -> list[str]:
    """The models a step merges, in order: the model it started from, then the new one."""
    return [str(start_model(params, method, task)), str(new_model(params, method, task))]


def merge_step(params: Params, task: str, method: str) -> Path:
    """Merge the method's previous model with its new one, weighted from its weight source's evidence."""
    infos = [describe(m) for m in merge_inputs(params, method, task)]
    return merge_with(params, method, infos, merged_model(params, method, task), task)


def merge_with(params: Params, name: str, infos: list, out: Path, task: str | None = None) -> Path:
    """A registry method's merge of `infos` (a chain's step of `task`, or the multi scenario's experts),
    each model weighted by its weight source: the method's default for given weights, else from the
    evidence its stages measured. A sequential step's models were each fine-tuned from the one before,
    so methods that take `chain` merge each step's own task vector (README, Merge methods) unless
    params.yaml says otherwise."""
    method = get_method(name)
    chain = {"chain": params.sequential} if "chain" in method.params else {}
    settings = method.resolve({**chain, **params.kernel_params(name)})
    reader = next((d.evidence for d in TABLE if d.name in method.source.merge_reads and d.evidence), None)
    evidence = reader(params, name, task, infos) if reader else Evidence()
    plan = MergePlan(
        infos,
        method,
        resolve_weights(method, infos, **evidence.values, params=settings),
        base=describe(base_model(params)) if method.needs_base else None,
        params=settings,
        reference=len(infos) - 1,
        extra={**evidence.extra, "chain": name},
        fisher=evidence.fisher,
    )
    return merge(plan, out)


def multi(params: Params, method: str) -> Path:
    """Multi scenario: merge the experts (and the base) at once with `method`, then evaluate. RECALL
    uses each expert as a reference on its own task's typical samples and averages the weight rows
    (there is no single new model to measure the others against)."""
    out = multi_dir(params, method)
    infos = [describe(p) for p in multi_models(params, method)]
    with atomic_dir(out) as tmp:
        merge_with(params, method, infos, tmp / "model")
        evaluate_model(params, tmp / "model", tmp / "eval")
    return out


def evaluate_step(params: Params, task: str, method: str) -> dict[str, dict]:
    return evaluate_model(
        params, handed_on(params, method, task), evaluation(params, method, task), params.eval_tasks(task)
    )


def evaluate_base(params: Params) -> dict[str, dict]:
    """A protocol's base model on every task."""
    return evaluate_model(params, base_model(params), base_eval(params))


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
    if reported := reported_method(params):  # RECALL's: its weights and similarities per step
        spec["merge_weights"] = [rel(merged_model(params, reported, t) / "merge_weights.json") for t in tasks(params)]
        spec["similarity"] = [rel(evidence_dir(params, t) / "similarity.json") for t in tasks(params)]
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


def reported_method(params: Params) -> str | None:
    """The compared method whose weights the report shows (RECALL's, by its weight source)."""
    return next((m for m in params.merge_methods if METHODS[m].source.reported), None)


def report(params: Params) -> Path:
    from recall.reporting.protocol import write_protocol
    from recall.reporting.report import write_report

    out, spec_path = reports(params), report_spec_path(params)
    if params.runs:
        write_json(spec_path, protocol_spec(params, spec_path.parent))
        report_md, metrics = write_protocol(spec_path, out), out / "protocol.json"
    else:
        write_json(spec_path, report_spec(params, spec_path.parent))
        report_md, metrics = write_report(spec_path, out), out / "metrics.json"
    # DVC metrics may not sit inside an output folder, so the run's metrics also live at the top.
    write_json(top_metrics(params), read_json(metrics))
    return report_md


# --- what MLflow records of a stage that just finished (each StageDef's `log`) ---


def log_settings(params: Params, task: str | None, method: str | None, sequence_run: str) -> None:
    """The settings a method's stage reads: its weight source's section (RECALL's `recall`), else its
    `methods.<m>` parameters."""
    import mlflow

    if method not in params.methods:
        return
    source = source_of(method)
    if source is not None and source.section is not None:
        mlflow.log_params({f"{source.section}.{k}": v for k, v in params.written(source.section).items()})
    else:
        mlflow.log_params({f"{method}.{k}": v for k, v in params.methods[method].items()})


def log_recall_settings(params: Params, task: str | None, method: str | None, sequence_run: str) -> None:
    """RECALL's stages of no one chain (typical samples, similarities): its section."""
    log_settings(params, task, sourced(params, "similarity"), sequence_run)


def log_finetune(params: Params, task: str, method: str | None, sequence_run: str) -> None:
    import mlflow

    mlflow.log_params({f"finetune.{k}": v for k, v in params.written("finetune").items()})
    if method == "ewc":
        mlflow.log_params({f"ewc.{k}": v for k, v in params.ewc().items()})
    trained = read_json(new_model(params, method or "sft", task) / "train_metrics.json")
    mlflow.log_param("rendering", trained["rendering"])  # chat template or plain prompts
    for row in trained["steps"]:
        mlflow.log_metric("train_loss", row["loss"], step=row["step"])


def log_merge(params: Params, task: str, method: str, sequence_run: str) -> None:
    import mlflow

    log_settings(params, task, method, sequence_run)
    for path in evidence_outs(params, task, method):  # its weights' evidence (not a folder of Fisher tensors)
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


# --- the table: each stage beside its function ---

Paths = Callable[[Params, str | None, str | None], list]


def nothing(params: Params, task: str | None, method: str | None) -> list:
    return []


def always(params: Params, task: str | None, method: str | None) -> bool:
    return True


@dataclass(frozen=True)
class StageDef:
    """A stage: its function, what its instances carry, and what DVC needs of each instance.

    `keys` names the arguments an instance carries after `params` (and in its name and command):
    ("task",), ("task", "method"), ("method",) or () for stages run once. `at` is where the plan places
    it: "start" (once, first), "expert" (per step, before the chains), "chain" (per step and compared
    method), "multi" (per merge method, multi scenario), "end" (once, last), or None: where a weight
    source's `step_stages`, `expert_stages` or `multi_stages` name it (and a protocol's base evaluation).
    `deps`, `outs`, `params`, `metrics` and `when` take (params, task, method) of the place it is planned
    at, the method even for an instance that does not carry it; `reads`, where given, adds the outputs
    of the stages planned before it to `deps`. `evidence` is how a merge reads a weight source's stage.
    """

    name: str
    run: Callable
    keys: tuple[str, ...]
    at: str | None = None
    deps: Paths = nothing
    outs: Paths = nothing
    params: Callable[[Params, str | None, str | None], list[str]] = nothing
    metrics: Paths = nothing
    when: Callable[[Params, str | None, str | None], bool] = always
    reads: Callable[[Params, list], list] | None = None
    log: Callable = log_settings
    evidence: Callable[[Params, str, str | None, list], Evidence] | None = None

    def call(self, params: Params, task: str | None, method: str | None):
        given = {"task": task, "method": method}
        return self.run(params, *(given[k] for k in self.keys))


def data_deps(params: Params, task: None, method: None) -> list[Path]:
    """incoming/<task>/ overrides a task's data (the scheduled flow drops new tasks there), if the folder
    exists; the `tasks` folder declares tasks of the user's own; data.source holds the rest. A data
    folder's files, not only its name: new data in it reruns the data stage (and what it changes). The
    base model's tokenizer checks that every training prompt fits finetune.max_length."""
    declared = [params.root / params.sections.tasks] if params.sections.tasks is not None else []
    source = params.sections.data.source
    sourced_dirs = (
        [] if source == "generated" else [p for t in scored_tasks(params) if (p := params.root / source / t).is_dir()]
    )
    return [p for p in [incoming(params.root)] if p.is_dir()] + declared + sourced_dirs + [base_model(params)]


def data_params(params: Params, task: None, method: None) -> list[str]:
    declared = ["tasks"] if params.sections.tasks is not None else []
    return ["data", *declared, *section_keys(params, "finetune", "max_length", "limit")]


def finetune_deps(params: Params, task: str, method: str) -> list[Path]:
    anchor = task_data(params, params.step(task).after) if method == "ewc" else []
    return [*task_data(params, task), *anchor, start_model(params, method, task)]


def recall_keys(*used: str) -> Callable[[Params, str | None, str | None], list[str]]:
    return lambda params, task, method: section_keys(params, RECALL.section, *used)


def recall_files(*names: str) -> Paths:
    return lambda params, task, method: [evidence_dir(params, task) / n for n in names]


def similarity_deps(params: Params, task: str, method: str | None) -> list[Path]:
    m, folder = sourced(params, "similarity"), evidence_dir(params, task)
    inputs = [folder / "typical.json", folder / "probe.jsonl", folder / "features.npy"]
    return [*inputs, new_model(params, m, task), start_model(params, m, task)]


def evidence_outs(params: Params, task: str | None, method: str) -> list[Path]:
    """The outputs of the stages whose evidence `method`'s merge reads (a chain's step, or with no
    task the multi scenario's)."""
    form = "task" if task else None
    return [
        p
        for d in TABLE
        if d.name in METHODS[method].source.merge_reads and (form in d.keys if form else "task" not in d.keys)
        for p in d.outs(params, task, method)
    ]


def merge_deps(params: Params, task: str, method: str) -> list[Path]:
    base = [base_model(params)] if get_method(method).needs_base else []
    new, start = new_model(params, method, task), start_model(params, method, task)
    if evidence := evidence_outs(params, task, method):
        return [*evidence, new, start, *base]
    return [start, new, *base]


def merge_params(params: Params, task: str | None, method: str) -> list[str]:
    source = METHODS[method].source
    if source.section is not None:
        return section_keys(params, source.section, *source.merge_keys)
    return method_keys(params, method) if task else [f"methods.{method}"]


def gate_deps(params: Params, task: str, method: str | None) -> list[Path]:
    """The served chain's gate after `task`: its model against the champion, which is the model of any
    earlier step (or the base), as the earlier gates decided; it evaluates what their evaluations lack."""
    m, names = params.gated, tasks(params)
    earlier = names[: names.index(task)]
    return [
        *task_data(params, *earlier, task),
        base_model(params),
        *(gate_metrics(params, t) for t in earlier),
        *(p for t in [*earlier, task] for p in (handed_on(params, m, t), evaluation(params, m, t))),
    ]


def multi_deps(params: Params, task: None, method: str) -> list[Path]:
    base = [base_model(params)] if get_method(method).needs_base and not params.with_base else []
    models = [Path(m) for m in multi_models(params, method)]
    return [*task_data(params, *tasks(params)), *models, *evidence_outs(params, None, method), *base]


def multi_similarity_deps(params: Params, task: None, method: None) -> list[Path]:
    inputs = ("probe.jsonl", "features.npy", "typical.json")
    models = [Path(m) for m in multi_models(params, sourced(params, "similarity"))]
    return [*models, *(evidence_dir(params, t) / f for t in tasks(params) for f in inputs)]


def fisher_tasks(params: Params, task: str) -> list[str]:
    after = params.step(task).after
    return [task] if after == BASE_STEP else [*tasks(params)[: tasks(params).index(task)], task]


def report_reads(params: Params, earlier: list) -> list[Path]:
    """Every evaluation and multi merge, every gate's decision, and the reported method's weights and
    their evidence (RECALL's similarities) per step."""
    reads = [p for s in earlier if s.stage in ("evaluate", "multi") for p in s.outs]
    reads += [p for s in earlier if s.stage == "gate" for p in s.metrics]
    if not params.runs and params.sections.scenario != "multi" and (m := reported_method(params)):
        reads += [p for t in tasks(params) for p in evidence_outs(params, t, m)]
        reads += [merged_model(params, m, t) for t in tasks(params)]
    return reads


TABLE: list[StageDef] = [
    StageDef("base", base, (), "start", params=lambda p, t, m: ["base"], outs=lambda p, t, m: [base_model(p)]),
    StageDef("data", data, (), "start", deps=data_deps, params=data_params, outs=lambda p, t, m: [p.data_dir]),
    # the expert every chain shares: the base fine-tuned on the step's task
    StageDef(
        "finetune",
        finetune_step,
        ("task",),
        "expert",
        deps=lambda p, t, m: [*task_data(p, t), base_model(p)],
        params=lambda p, t, m: ["finetune"],
        outs=lambda p, t, m: [new_model(p, None, t)],
        when=lambda p, t, m: shared_expert(p, t),
        log=log_finetune,
    ),
    StageDef(
        "finetune",
        finetune_step,
        ("task", "method"),
        "chain",
        deps=finetune_deps,
        params=lambda p, t, m: ["finetune", *(method_keys(p, "ewc") if m == "ewc" else [])],
        outs=lambda p, t, m: [new_model(p, m, t)],
        when=lambda p, t, m: not shared_expert(p, t),
        log=log_finetune,
    ),
    # RECALL's weights (the representations source): the new model's features of its task's samples,
    # their typical samples, every merged model's similarity to it on them
    StageDef(
        "features",
        features,
        ("task",),
        deps=lambda p, t, m: [p.data_dir / t, new_model(p, sourced(p, "features"), t)],
        params=recall_keys(*RECALL.FEATURE_KEYS),
        outs=recall_files("probe.jsonl", "features.npy"),
        log=lambda p, t, m, run: None,
    ),
    StageDef(
        "typical",
        typical,
        ("task",),
        deps=recall_files("features.npy"),
        params=recall_keys(*RECALL.TYPICAL_KEYS),
        outs=recall_files("typical.json"),
        log=log_recall_settings,
    ),
    StageDef(
        "similarity",
        similarity,
        ("task",),
        deps=similarity_deps,
        params=recall_keys(*RECALL.SIMILARITY_KEYS),
        outs=recall_files("similarity.json"),
        log=log_recall_settings,
        evidence=recall_evidence,
    ),
    # LM-Cocktail's weights (the loss source): the step's models' losses on examples of its task
    StageDef(
        "losses",
        losses,
        ("task", "method"),
        deps=lambda p, t, m: [*task_data(p, t), start_model(p, m, t), new_model(p, m, t)],
        params=lambda p, t, m: source_keys(p, m),
        outs=lambda p, t, m: [chain_dir(p, m, t) / "losses.json"],
        evidence=cocktail_evidence,
    ),
    # Fisher merging's evidence: the step's models' Fisher on their tasks' examples
    StageDef(
        "fisher",
        fisher_step,
        ("task", "method"),
        deps=lambda p, t, m: [*task_data(p, *fisher_tasks(p, t)), start_model(p, m, t), new_model(p, m, t)],
        params=lambda p, t, m: source_keys(p, m),
        outs=lambda p, t, m: [chain_dir(p, m, t) / "fisher"],
        evidence=fisher_evidence,
    ),
    StageDef(
        "merge",
        merge_step,
        ("task", "method"),
        "chain",
        deps=merge_deps,
        params=merge_params,
        outs=lambda p, t, m: [merged_model(p, m, t)],
        when=lambda p, t, m: not p.trains(m),
        log=log_merge,
    ),
    StageDef(
        "evaluate",
        evaluate_step,
        ("task", "method"),
        "chain",
        deps=lambda p, t, m: [*task_data(p, *p.eval_tasks(t)), handed_on(p, m, t)],
        params=lambda p, t, m: ["evaluate"],
        outs=lambda p, t, m: [evaluation(p, m, t)],
        log=log_evaluate,
    ),
    StageDef(
        "gate",
        gate_step,
        ("task",),
        "chain",
        deps=gate_deps,
        params=lambda p, t, m: ["evaluate", *section_keys(p, "promote", "tolerance")],
        outs=lambda p, t, m: [gate_dir(p, t)],
        metrics=lambda p, t, m: [gate_metrics(p, t)],
        when=lambda p, t, m: m == p.gated,
        log=log_gate,
    ),
    # the multi scenario: RECALL's similarities of every model to each expert, the other sources'
    # evidence over every expert, then each method's merge of every expert at once
    StageDef(
        "similarity",
        multi_similarity,
        (),
        deps=multi_similarity_deps,
        params=lambda p, t, m: ["multi", *section_keys(p, RECALL.section, *RECALL.SIMILARITY_KEYS)],
        outs=lambda p, t, m: [multi_similarity_path(p)],
        log=log_recall_settings,
        evidence=recall_evidence,
    ),
    StageDef(
        "losses",
        multi_losses,
        ("method",),
        deps=lambda p, t, m: [*task_data(p, *tasks(p)), *map(Path, multi_models(p, m))],
        params=lambda p, t, m: ["multi", *source_keys(p, m)],
        outs=lambda p, t, m: [multi_evidence(p, m) / "losses.json"],
    ),
    StageDef(
        "fisher",
        multi_fisher,
        ("method",),
        deps=lambda p, t, m: [*task_data(p, *tasks(p)), *map(Path, multi_models(p, m))],
        params=lambda p, t, m: ["multi", *source_keys(p, m)],
        outs=lambda p, t, m: [multi_evidence(p, m) / "fisher"],
    ),
    StageDef(
        "multi",
        multi,
        ("method",),
        "multi",
        deps=multi_deps,
        params=lambda p, t, m: ["multi", "evaluate", *merge_params(p, None, m)],
        outs=lambda p, t, m: [multi_dir(p, m)],
        log=log_multi,
    ),
    # a protocol's base model on every task (placed by the protocol's plan)
    StageDef(
        "evaluate",
        evaluate_base,
        (),
        deps=lambda p, t, m: [*task_data(p, *scored_tasks(p)), base_model(p)],
        params=lambda p, t, m: ["evaluate"],
        outs=lambda p, t, m: [base_eval(p)],
        log=log_evaluate,
    ),
    StageDef(
        "report",
        report,
        (),
        "end",
        outs=lambda p, t, m: [reports(p), report_spec_path(p)],
        reads=report_reads,
    ),
]
STAGES = {d.name: d.run for d in TABLE}  # the stages' names (`python -m flows.stage <name>`)


def stage_def(stage: str, task: str | None = None, method: str | None = None) -> StageDef:
    """The table's entry of a stage instance: its name and the arguments it carries."""
    keys = tuple(k for k, v in (("task", task), ("method", method)) if v is not None)
    for d in TABLE:
        if d.name == stage and d.keys == keys:
            return d
    raise RecallError(f"no stage {stage} with {', '.join(keys) or 'no step or method'} in recall.pipeline.stages")


def run(params: Params, stage: str, task: str | None = None, method: str | None = None):
    """Run one stage; `task` and `method` as the stage takes them (its `StageDef.keys`)."""
    allow_remote_code(params.sections.base.trust_remote_code)
    return stage_def(stage, task, method).call(params, task, method)


def log_stage(params: Params, stage: str, task: str | None, method: str | None, sequence_run: str) -> None:
    """What the active MLflow run records for a stage that just finished (its `StageDef.log`).

    Evaluation metrics also go to the sequence's run with the step index, so MLflow plots each
    chain's forgetting curve; each merged model is registered with its chain's method.
    """
    stage_def(stage, task, method).log(params, task, method, sequence_run)
