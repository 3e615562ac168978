"""The stage table: each pipeline stage's function (`recall.pipeline.stages`) with its dependencies,
outputs and params keys, where the plan places it, and what MLflow records of it
(`recall.pipeline.tracked`). `recall.pipeline.plan` writes dvc.yaml from TABLE; `run` runs one stage
and `log_stage` logs it. Adding a stage: one function and one `StageDef` entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recall.errors import RecallError
from recall.models import allow_remote_code
from recall.pipeline import stages
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
    start_model,
    tasks,
)
from recall.pipeline.params import METHOD_KEY, SEEDS_KEY, Params
from recall.pipeline.stages import (
    evidence_chain,
    evidence_dir,
    own_evidence,
    reported_method,
    similarity_chains,
    source_of,
    sourced,
)
from recall.pipeline.tracked import (
    log_evaluate,
    log_finetune,
    log_gate,
    log_merge,
    log_multi,
    log_recall_settings,
    log_settings,
)
from recall.weights.sources import Representations

RECALL = Representations  # RECALL's weight source: its stages below read its section of params.yaml


# --- the params keys a stage reads ---


def section_keys(params: Params, section: str, *used: str) -> list[str]:
    """`<section>.<key>` params a stage reads, among those params.yaml sets (DVC fails on absent keys)."""
    return [f"{section}.{k}" for k in used if k in params.written(section)]


def settings_keys(params: Params, method: str | None, section: str, used: tuple[str, ...]) -> list[str]:
    """The keys of a weight source's `section` that a stage of chain `method` reads: `<section>.<key>`
    (among those params.yaml sets), or `methods.<label>.<key>` where the chain sets the key itself."""
    own = params.overrides(method) if method is not None else {}
    return [
        f"methods.{method}.{k}" if k in own else f"{section}.{k}"
        for k in used
        if k in own or k in params.written(section)
    ]


def method_keys(params: Params, method: str) -> list[str]:
    """The params a method's stages read: its section, or with a protocol's `seeds` in it, each other key,
    so that a seed added to a method's list adds its chains and reruns nothing."""
    given = params.sections.methods[method] or {}
    if SEEDS_KEY not in given:
        return [f"methods.{method}"]
    return [f"methods.{method}.{k}" for k in given if k != SEEDS_KEY]


def source_keys(params: Params, method: str) -> list[str]:
    """The keys of `methods.<m>` that a weight source's evidence stage reads (its settings, as written)."""
    given, own = params.sections.methods[method] or {}, params.registered(method).params
    return [f"methods.{method}.{k}" for k in given if k not in (SEEDS_KEY, METHOD_KEY) and k not in own]


def task_data(params: Params, *names: str) -> list[Path]:
    return [params.data_dir / t for t in names]


# --- the table: each stage's function, deps, outs and params keys ---

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
    of the stages planned before it to `deps`. `log` is what MLflow records of it (`recall.pipeline.tracked`).
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
    anchor = task_data(params, params.step(task).after) if params.method_of(method) == "ewc" else []
    return [*task_data(params, task), *anchor, start_model(params, method, task)]


def recall_keys(*used: str) -> Callable[[Params, str | None, str | None], list[str]]:
    return lambda params, task, method: settings_keys(params, evidence_chain(params, method), RECALL.section, used)


def recall_files(*names: str) -> Paths:
    return lambda params, task, method: [evidence_dir(params, task, method) / n for n in names]


def similarity_deps(params: Params, task: str, method: str | None) -> list[Path]:
    m = evidence_chain(params, method)
    folder = evidence_dir(params, task, m)
    inputs = [folder / "typical.json", folder / "probe.jsonl", folder / "features.npy"]
    return [*inputs, new_model(params, m, task), start_model(params, m, task)]


def evidence_outs(params: Params, task: str | None, method: str) -> list[Path]:
    """The outputs of the stages whose evidence `method`'s merge reads (a chain's step, or with no
    task the multi scenario's)."""
    form = "task" if task else None
    return [
        p
        for d in TABLE
        if d.name in source_of(params, method).merge_reads
        and (form in d.keys if form else "task" not in d.keys)
        and d.when(params, task, method)
        for p in d.outs(params, task, method)
    ]


def merge_deps(params: Params, task: str, method: str) -> list[Path]:
    base = [base_model(params)] if params.registered(method).needs_base else []
    new, start = new_model(params, method, task), start_model(params, method, task)
    if evidence := evidence_outs(params, task, method):
        return [*evidence, new, start, *base]
    return [start, new, *base]


def merge_params(params: Params, task: str | None, method: str) -> list[str]:
    source = source_of(params, method)
    if source.section is not None:
        return settings_keys(params, method, source.section, source.merge_keys)
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


def multi_evidence_deps(params: Params, task: None, method: str) -> list[Path]:
    """What a weight source's multi-scenario stage (losses, Fisher) reads: every task's data and merged model."""
    return [*task_data(params, *tasks(params)), *map(Path, multi_models(params, method))]


def multi_evidence_keys(params: Params, task: None, method: str) -> list[str]:
    return ["multi", *source_keys(params, method)]


def multi_deps(params: Params, task: None, method: str) -> list[Path]:
    base = [base_model(params)] if params.registered(method).needs_base and not params.with_base else []
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
    their evidence (RECALL's similarities) per step; a protocol's: every run's similarities of the chains
    weighted by them (never their merged models, which `recall.pipeline.prune` removes)."""
    reads = [p for s in earlier if s.stage in ("evaluate", "multi") for p in s.outs]
    reads += [p for s in earlier if s.stage == "gate" for p in s.metrics]
    if params.runs and params.run is None:  # a protocol's (a run's own plan's report is never placed)
        reads += dict.fromkeys(
            p
            for run in params.runs
            for of_run in [params.for_run(run)]
            for m in similarity_chains(of_run)
            for t in run.tasks
            for p in evidence_outs(of_run, t, m)
        )
    elif not params.runs and params.sections.scenario != "multi" and (m := reported_method(params)):
        reads += [p for t in tasks(params) for p in evidence_outs(params, t, m)]
        reads += [merged_model(params, m, t) for t in tasks(params)]
    return reads


def recall_stage(name: str, run: Callable, **given) -> list[StageDef]:
    """A RECALL stage of a step: named by the step alone (`similarity-<task>`, the chain named by its
    method and the multi scenario's experts), and by chain and step (`similarity-recall_paper-<task>`)
    for a chain whose RECALL stages are its own."""
    return [
        StageDef(name, run, ("task",), when=lambda p, t, m: not own_evidence(p, m), **given),
        StageDef(name, run, ("task", "method"), when=lambda p, t, m: own_evidence(p, m), **given),
    ]


TABLE: list[StageDef] = [
    StageDef("base", stages.base, (), "start", params=lambda p, t, m: ["base"], outs=lambda p, t, m: [base_model(p)]),
    StageDef("data", stages.data, (), "start", deps=data_deps, params=data_params, outs=lambda p, t, m: [p.data_dir]),
    # the expert every chain shares: the base fine-tuned on the step's task
    StageDef(
        "finetune",
        stages.finetune_step,
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
        stages.finetune_step,
        ("task", "method"),
        "chain",
        deps=finetune_deps,
        params=lambda p, t, m: ["finetune", *(method_keys(p, m) if p.method_of(m) == "ewc" else [])],
        outs=lambda p, t, m: [new_model(p, m, t)],
        when=lambda p, t, m: not shared_expert(p, t),
        log=log_finetune,
    ),
    # RECALL's weights (the representations source): the new model's features of its task's samples,
    # their typical samples, every merged model's similarity to it on them; each stage named by the step
    # alone, and by chain and step for a chain whose RECALL stages are its own (`own_evidence`)
    *recall_stage(
        "features",
        stages.features,
        deps=lambda p, t, m: [p.data_dir / t, new_model(p, evidence_chain(p, m), t)],
        params=recall_keys(*RECALL.FEATURE_KEYS),
        outs=recall_files("probe.jsonl", "features.npy"),
        log=lambda p, t, m, run: None,
    ),
    *recall_stage(
        "typical",
        stages.typical,
        deps=recall_files("features.npy"),
        params=recall_keys(*RECALL.TYPICAL_KEYS),
        outs=recall_files("typical.json"),
        log=log_recall_settings,
    ),
    *recall_stage(
        "similarity",
        stages.similarity,
        deps=similarity_deps,
        params=recall_keys(*RECALL.SIMILARITY_KEYS),
        outs=recall_files("similarity.json"),
        log=log_recall_settings,
    ),
    # LM-Cocktail's weights (the loss source): the step's models' losses on examples of its task
    StageDef(
        "losses",
        stages.losses,
        ("task", "method"),
        deps=lambda p, t, m: [*task_data(p, t), start_model(p, m, t), new_model(p, m, t)],
        params=lambda p, t, m: source_keys(p, m),
        outs=lambda p, t, m: [chain_dir(p, m, t) / "losses.json"],
    ),
    # Fisher merging's evidence: the step's models' Fisher on their tasks' examples
    StageDef(
        "fisher",
        stages.fisher_step,
        ("task", "method"),
        deps=lambda p, t, m: [*task_data(p, *fisher_tasks(p, t)), start_model(p, m, t), new_model(p, m, t)],
        params=lambda p, t, m: source_keys(p, m),
        outs=lambda p, t, m: [chain_dir(p, m, t) / "fisher"],
    ),
    StageDef(
        "merge",
        stages.merge_step,
        ("task", "method"),
        "chain",
        deps=merge_deps,
        params=merge_params,
        outs=lambda p, t, m: [merged_model(p, m, t)],
        when=lambda p, t, m: not p.trains(m),
        log=lambda p, t, m, run: log_merge(p, t, m, run, evidence_outs(p, t, m)),
    ),
    StageDef(
        "evaluate",
        stages.evaluate_step,
        ("task", "method"),
        "chain",
        deps=lambda p, t, m: [*task_data(p, *p.eval_tasks(t)), handed_on(p, m, t)],
        params=lambda p, t, m: ["evaluate"],
        outs=lambda p, t, m: [evaluation(p, m, t)],
        log=log_evaluate,
    ),
    StageDef(
        "gate",
        stages.gate_step,
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
        stages.multi_similarity,
        (),
        deps=multi_similarity_deps,
        params=lambda p, t, m: ["multi", *section_keys(p, RECALL.section, *RECALL.SIMILARITY_KEYS)],
        outs=lambda p, t, m: [multi_similarity_path(p)],
        log=log_recall_settings,
    ),
    StageDef(
        "losses",
        stages.multi_losses,
        ("method",),
        deps=multi_evidence_deps,
        params=multi_evidence_keys,
        outs=lambda p, t, m: [multi_evidence(p, m) / "losses.json"],
    ),
    StageDef(
        "fisher",
        stages.multi_fisher,
        ("method",),
        deps=multi_evidence_deps,
        params=multi_evidence_keys,
        outs=lambda p, t, m: [multi_evidence(p, m) / "fisher"],
    ),
    StageDef(
        "multi",
        stages.multi,
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
        stages.evaluate_base,
        (),
        deps=lambda p, t, m: [*task_data(p, *scored_tasks(p)), base_model(p)],
        params=lambda p, t, m: ["evaluate"],
        outs=lambda p, t, m: [base_eval(p)],
        log=log_evaluate,
    ),
    StageDef(
        "report",
        stages.report,
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
    raise RecallError(f"no stage {stage} with {', '.join(keys) or 'no step or method'} in recall.pipeline.table")


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
