"""The pipeline's stages: plain functions over the files under `data/`, each what one stage does to
the files (the folder layout is `recall.pipeline.layout`'s), and how a merge reads the evidence its
weight source's stages measured (`EVIDENCE`). `recall.pipeline.table` declares each stage's
dependencies, outputs and params keys; `recall.pipeline.tracked` what MLflow records of it.

Every compared method (params.yaml `methods`) is its own chain. In the sequential scenario a
method's step fine-tunes *its own* previous model and merges with *its own* method; in the single
scenario every method merges each expert (fine-tuned once from the base) with the base (table 1); the
multi scenario merges every expert at once (table 2). A merge method's weight source
(`recall.weights.sources`) names the stages of its evidence, which the plan places before the merge.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from recall.atomic import atomic_dir, read_json, write_json
from recall.base_model import pull_base
from recall.errors import RecallError
from recall.merge.engine import MergePlan, merge
from recall.merge.methods import get_method, resolve_weights
from recall.models import describe, safetensors_folder
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
    stage_name,
    start_model,
    tasks,
    top_metrics,
)
from recall.pipeline.params import Params
from recall.tasks.export import export_task
from recall.tasks.formats import TASK_FILE
from recall.tasks.generated import generate_suite
from recall.training.finetune import check_prompts_fit, finetune
from recall.weights.features import extract_features, load_features
from recall.weights.representations import reference_record, similarity_and_sigmas
from recall.weights.rows import uniform_deviation
from recall.weights.similarity import similarity_range
from recall.weights.sources import Evidence, Representations, WeightSource
from recall.weights.typical import select_typical

log = logging.getLogger(__name__)
DEFAULT_BASE = "smollm2"


def source_of(params: Params, method: str | None) -> type[WeightSource] | None:
    """The weight source of a compared merge chain (None for a training method)."""
    registered = params.registered(method)
    return registered.source if registered is not None else None


def sourced(params: Params, stage: str) -> str:
    """The compared chain whose weight source needs `stage`, a stage of a step no one chain owns
    (RECALL's features, typical samples and similarities): the first chain named by its method
    (`recall: {}`); another chain of that source measures its own (`own_evidence`)."""
    for m in params.merge_methods:
        source = source_of(params, m)
        if params.method_of(m) == m and stage in (*source.step_stages, *source.expert_stages, *source.multi_stages):
            return m
    raise RecallError(f"no compared method's weights need the stage {stage}; add its method to params.yaml methods")


def own_evidence(params: Params, method: str | None) -> bool:
    """Whether a chain's RECALL stages (features, typical samples, similarities) are its own, named with
    its label (`similarity-recall_paper-<task>`): a chain labelled other than its method, whose settings
    may differ (`recall_paper: {method: recall, sigma: 1.0}`). The chain named by its method keeps the
    stages named by the step alone (`similarity-<task>`)."""
    return method is not None and params.method_of(method) != method


def evidence_chain(params: Params, method: str | None = None) -> str:
    """The chain whose RECALL evidence a stage of `method`'s (or of no chain's, None) measures."""
    return method if own_evidence(params, method) else sourced(params, "features")


def evidence_dir(params: Params, task: str, method: str | None = None) -> Path:
    """Where RECALL's weight inputs for a step live (features, typical samples, similarity)."""
    return chain_dir(params, evidence_chain(params, method), task)


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
    if params.method_of(method) == "ewc":
        ewc = params.ewc(method)
        config = dataclasses.replace(config, ewc_lambda=ewc["lambda"], ewc_from=after, ewc_samples=ewc["samples"])
    return finetune(
        start_model(params, method, task),
        task,
        new_model(params, method, task),
        data_dir=params.data_dir,
        config=config,
    )


def features(params: Params, task: str, method: str | None = None) -> Path:
    """The new model's representations of the task's training samples (the probe set); `method`: a
    chain whose RECALL stages are its own (`own_evidence`)."""
    chain = evidence_chain(params, method)
    folder, settings = evidence_dir(params, task, chain), params.weight_settings(chain)
    export_task(task, "train", folder / "probe.jsonl", params.data_dir, limit=settings.samples)
    return extract_features(
        new_model(params, chain, task),
        folder / "probe.jsonl",
        folder / "features.npy",
        batch_size=settings.batch_size,
        max_length=settings.max_length,
    )


def typical(params: Params, task: str, method: str | None = None) -> Path:
    chain = evidence_chain(params, method)
    folder, settings = evidence_dir(params, task, chain), params.weight_settings(chain)
    chosen = select_typical(load_features(folder / "features.npy"), settings.typical, settings.seed)
    write_json(folder / "typical.json", {"m": settings.typical, "seed": settings.seed, "indices": chosen})
    return folder / "typical.json"


def typical_similarity(params: Params, infos: list, reference: int, task: str, workdir: Path, chain: str):
    """Every model's similarity per layer to infos[reference] on `task`'s typical samples, with the
    settings of `chain`: (the samples' indices, the (layers x models) similarities, each layer's sigma)."""
    folder = evidence_dir(params, task, chain)
    indices = read_json(folder / "typical.json")["indices"]
    features = load_features(folder / "features.npy")
    return indices, *similarity_and_sigmas(
        infos, reference, folder / "probe.jsonl", features, indices, params.weight_settings(chain), workdir
    )


def similarity(params: Params, task: str, method: str | None = None) -> Path:
    chain = evidence_chain(params, method)
    settings, inputs = params.weight_settings(chain), merge_inputs(params, chain, task)
    with tempfile.TemporaryDirectory(prefix="recall-sim-") as tmp:
        indices, sim, sigmas = typical_similarity(
            params, [describe(m) for m in inputs], len(inputs) - 1, task, Path(tmp), chain
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
    write_json(evidence_dir(params, task, chain) / "similarity.json", record)
    return evidence_dir(params, task, chain) / "similarity.json"


def multi_similarity(params: Params) -> Path:
    """Multi scenario: each expert is the reference on its own task's typical samples and measures every
    model merged (the multi scenario has no single new model to measure the others against). Its own
    stage, so a temperature reruns only the merge."""
    chain = sourced(params, "similarity")
    settings, models = params.weight_settings(chain), multi_models(params, chain)
    infos, references = [describe(m) for m in models], []
    with tempfile.TemporaryDirectory(prefix="recall-multi-") as tmp:
        for i, task in enumerate(tasks(params)):
            ref = i + int(params.with_base)
            indices, sim, sigmas = typical_similarity(params, infos, ref, task, Path(tmp), chain)
            references.append(
                reference_record(models[ref], evidence_dir(params, task) / "probe.jsonl", indices, sim, sigmas)
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


def merge_settings(params: Params, method: str) -> dict:
    """The settings of a chain's weight source that its merge reads (`WeightSource.merge_keys`, RECALL's
    temperature and calibration): with the evidence, the keywords of its weight rows."""
    settings = params.weight_settings(method)
    return {k: getattr(settings, k) for k in source_of(params, method).merge_keys}


def similarity_chains(params: Params) -> list[str]:
    """The compared chains whose merges weigh their models by similarities (RECALL's representations
    source, whatever the chain's label): each merge reads its step's similarity.json."""
    return [m for m in params.merge_methods if "similarity" in source_of(params, m).merge_reads]


def similarity_file(params: Params, task: str, method: str) -> Path:
    """The similarity.json a chain's merge of `task` reads (the `similarity` stage's output)."""
    return evidence_dir(params, task, method) / "similarity.json"


def recall_evidence(params: Params, method: str, task: str | None, infos: list) -> Evidence:
    """RECALL: a step's similarities to its new model, or in the multi scenario each expert's."""
    settings = params.weight_settings(method)
    rows = merge_settings(params, method)
    if task is None:
        record = read_json(multi_similarity_path(params))
        check_measured(record, infos, multi_similarity_path(params), "similarity")
        extra = {"settings": dataclasses.asdict(settings), "references": record["references"]}
        sims = [np.array(r["similarity"]) for r in record["references"]]
        return Evidence({"similarities": sims, **rows}, {**extra, "with_base": params.with_base})
    folder = evidence_dir(params, task, method)
    sim = read_json(similarity_file(params, task, method))
    extra = {
        "similarity": sim["layers"],
        "similarity_metric": sim["metric"],
        "sigmas": sim["sigmas"],
        "typical": sim["typical"],
        "probe": str(folder / "probe.jsonl"),
        "settings": dataclasses.asdict(settings),
    }
    return Evidence({**Representations.step_evidence(sim), **rows}, extra)


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


# how a merge reads the evidence of its weight source's stage (`WeightSource.merge_reads`), by the stage's name
EVIDENCE: dict[str, Callable[[Params, str, str | None, list], Evidence]] = {
    "similarity": recall_evidence,
    "losses": cocktail_evidence,
    "fisher": fisher_evidence,
}


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
    method = get_method(params.method_of(name))
    chain = {"chain": params.sequential} if "chain" in method.params else {}
    settings = method.resolve({**chain, **params.kernel_params(name)})
    reader = next((EVIDENCE[s] for s in method.source.merge_reads if s in EVIDENCE), None)
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
        spec["similarity"] = [rel(evidence_dir(params, t, reported) / "similarity.json") for t in tasks(params)]
    if params.gated:
        spec["gate"] = [rel(gate_metrics(params, t)) for t in tasks(params)]
    return spec


def protocol_spec(params: Params, spec_dir: Path) -> dict:
    """The spec `recall.reporting.protocol` reads: every run's evaluations per method and step, and the base's;
    for the chains weighted by similarities (`similarity_chains`), each run's similarity.json per step and
    the settings that turn them into the merge's weights."""
    rel = lambda p: os.path.relpath(p, spec_dir)  # noqa: E731
    weighted, runs = similarity_chains(params), []
    for run in params.runs:
        of_run = params.for_run(run)
        evals = {m: [rel(chain_dir(of_run, m, t) / "eval" / "metrics.json") for t in run.tasks] for m in of_run.methods}
        runs.append({"label": run.label, "order": list(run.tasks), "seed": run.seed, "methods": evals})
        if similar := {m: [rel(similarity_file(of_run, t, m)) for t in run.tasks] for m in weighted if m in evals}:
            runs[-1]["similarity"] = similar
    spec = {
        "tasks": tasks(params),
        "unseen": list(params.sections.evaluate.unseen),
        "base": rel(base_eval(params) / "metrics.json"),
        "runs": runs,
    }
    if weighted:
        spec["weighted"] = {m: {"method": params.method_of(m), "settings": merge_settings(params, m)} for m in weighted}
    return spec


def weigh(spec: dict, spec_dir: Path) -> dict:
    """The spec with each run's `weights`: per chain weighted by similarities and step, what its merge gave
    the newest model (the step's fine-tune, the similarities' reference) per layer group and the merge
    weights' largest deviation from uniform, recomputed as the merge stage computed them (the step's
    similarity.json and the chain's settings through `resolve_weights`: the model folders may be pruned)."""
    for run in spec["runs"]:
        run["weights"] = {chain: [] for chain in run.get("similarity", {})}
        for chain, paths in run.get("similarity", {}).items():
            given = spec["weighted"][chain]
            for path in paths:
                record = read_json(spec_dir / path)
                weights = resolve_weights(
                    get_method(given["method"]), (), **Representations.step_evidence(record), **given["settings"]
                )
                newest = weights[:, record["models"].index(record["reference"])]
                run["weights"][chain].append(
                    {"similarity": path, "newest": newest.tolist(), "deviation": uniform_deviation(weights)}
                )
    return spec


def reported_method(params: Params) -> str | None:
    """The compared chain whose weights the report shows (RECALL's, by its weight source; the first)."""
    return next((m for m in params.merge_methods if source_of(params, m).reported), None)


def report(params: Params) -> Path:
    from recall.reporting.protocol import write_protocol
    from recall.reporting.report import write_report

    out, spec_path = reports(params), report_spec_path(params)
    if params.runs:
        write_json(spec_path, weigh(protocol_spec(params, spec_path.parent), spec_path.parent))
        report_md, metrics = write_protocol(spec_path, out), out / "protocol.json"
    else:
        write_json(spec_path, report_spec(params, spec_path.parent))
        report_md, metrics = write_report(spec_path, out), out / "metrics.json"
    # DVC metrics may not sit inside an output folder, so the run's metrics also live at the top.
    write_json(top_metrics(params), read_json(metrics))
    return report_md
