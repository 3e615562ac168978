"""The DVC pipeline of a params file: one stage per (stage, method, step), with exact dependencies.

The DAG's shape depends on the params (scenario, sequence, compared methods): a method's step
depends on *its own* previous model, RECALL's steps on their similarities, the multi merges on every
expert. DVC's `foreach`/`matrix` cannot vary dependencies per item, so `recall pipeline` writes
dvc.yaml from params.yaml. Everything else a stage reads is a params dependency, so `dvc exp run -S`
of a setting reruns exactly the stages that read it. dvc.yaml records the key of the shape it was
written for; a stage refuses to run when params.yaml has another shape.

Stage names: `<stage>-<method>-<task>` (e.g. `finetune-recall-gen_sentiment`), `<stage>-<task>` for
RECALL's weight inputs and the shared experts, `multi-<method>`, then `base`, `data`, `report`, and in
the multi scenario `similarity` (every model against each expert). A protocol (params `orders`/`seeds`)
has every step stage once per run that owns it, its label appended: `finetune-recall-amazon-o1-s0`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from recall.atomic import atomic_file
from recall.errors import RecallError
from recall.merge.methods import get_method
from recall.pipeline import stages as S
from recall.pipeline.params import SEEDS_KEY, TRAINING_METHODS, Params

KEY_PREFIX = "# plan key: "
SIMILARITY_KEYS = ("similarity", "sigma", "normalize", "batch_size", "max_length")  # what the similarities read
MERGE_KEYS = ("temperature", "calibrate")  # what RECALL's merge reads besides them


@dataclass
class Stage:
    name: str
    stage: str
    task: str | None = None
    method: str | None = None
    deps: list[Path] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    outs: list[Path] = field(default_factory=list)
    run: str | None = None  # a protocol's run (Run.label) that owns the step
    metrics: list[Path] = field(default_factory=list)  # small files kept in git, not DVC's cache

    def entry(self, root: Path) -> dict:
        args = "".join(f" --{k} {v}" for k, v in (("method", self.method), ("step", self.task), ("run", self.run)) if v)
        rel = lambda ps: [os.path.relpath(p, root) for p in ps]  # noqa: E731
        entry = {"cmd": f"python -m flows.stage {self.stage}{args}"}
        entry.update(
            {k: v for k, v in (("deps", rel(self.deps)), ("params", self.params), ("outs", rel(self.outs))) if v}
        )
        if self.metrics:
            entry["metrics"] = [{path: {"cache": False}} for path in rel(self.metrics)]
        return entry


def stage_name(stage: str, task: str | None = None, method: str | None = None, run: str | None = None) -> str:
    return "-".join(part for part in (stage, method, task, run) if part)


def shape_key(params: Params) -> str:
    """What decides the DAG's shape; every other setting is a params dependency of some stage."""
    sections = params.sections
    shape = {
        "scenario": sections.scenario,
        "sequence": [asdict(s) for s in params.steps],
        "methods": list(params.methods),
        "with_base": params.with_base,
        "eval_tasks": sections.evaluate.tasks,
        "incoming": (params.root / "incoming").is_dir(),
    }
    if params.gated:  # the gate stages (absent from earlier keys of runs without them, which stay valid)
        shape["gated"] = params.gated
    if sections.tasks is not None:  # the data stage's dependencies (absent from earlier keys, which stay valid)
        shape["tasks"] = sections.tasks
    if sections.evaluate.unseen:
        shape["unseen"] = list(sections.evaluate.unseen)
    if params.runs:
        shape["runs"] = [[r.label, *r.tasks] for r in params.runs]
        shape["seeds"] = {m: params.method_seeds(m) for m in params.methods}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


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


def plan(params: Params) -> list[Stage]:
    if params.runs and params.run is None:
        return protocol_plan(params)
    tasks, scored = S.tasks(params), S.scored_tasks(params)
    task_data = lambda *ts: [params.data_dir / t for t in ts]  # noqa: E731
    declared = [params.root / params.sections.tasks] if params.sections.tasks is not None else []
    source = params.sections.data.source
    # A data folder's files, not only its name: new data in it reruns the data stage (and what it changes).
    sourced = [] if source == "generated" else [p for t in scored if (p := params.root / source / t).is_dir()]
    out: list[Stage] = [
        Stage("base", "base", params=["base"], outs=[S.base_model(params)]),
        # incoming/<task>/ overrides a task's data (the scheduled flow drops new tasks there), if the
        # folder exists; the `tasks` folder declares tasks of the user's own; data.source holds the rest
        Stage(
            "data",
            "data",
            # the base model's tokenizer checks that every training prompt fits finetune.max_length
            deps=[p for p in [params.root / "incoming"] if p.is_dir()] + declared + sourced + [S.base_model(params)],
            params=["data", *(["tasks"] if declared else []), *section_keys(params, "finetune", "max_length", "limit")],
            outs=[params.data_dir],
        ),
    ]
    for t in tasks:
        after = params.step(t).after
        if S.shared_expert(params, t):
            out.append(
                Stage(
                    stage_name("finetune", t),
                    "finetune",
                    t,
                    deps=[*task_data(t), S.base_model(params)],
                    params=["finetune"],
                    outs=[S.new_model(params, "sft", t)],
                )
            )
        if params.sections.scenario == "multi":  # table 2 merges the experts at once: no merge per step
            out += recall_inputs(params, t) if "recall" in params.methods else []
            continue
        for m in params.methods:
            new, start = S.new_model(params, m, t), S.start_model(params, m, t)
            if not S.shared_expert(params, t):
                extra = method_keys(params, "ewc") if m == "ewc" else []
                anchor = task_data(after) if m == "ewc" else []
                out.append(
                    Stage(
                        stage_name("finetune", t, m),
                        "finetune",
                        t,
                        m,
                        deps=[*task_data(t), *anchor, start],
                        params=["finetune", *extra],
                        outs=[new],
                    )
                )
            if m == "recall":
                out += recall_stages(params, t)
            elif m not in TRAINING_METHODS:
                base = [S.base_model(params)] if get_method(m).needs_base else []
                out.append(
                    Stage(
                        stage_name("merge", t, m),
                        "merge",
                        t,
                        m,
                        deps=[start, new, *base],
                        params=method_keys(params, m),
                        outs=[S.chain_dir(params, m, t) / "model"],
                    )
                )
            out.append(
                Stage(
                    stage_name("evaluate", t, m),
                    "evaluate",
                    t,
                    m,
                    deps=[*task_data(*params.eval_tasks(t)), S.handed_on(params, m, t)],
                    params=["evaluate"],
                    outs=[S.chain_dir(params, m, t) / "eval"],
                )
            )
            if m == params.gated:
                out.append(gate_stage(params, t))
    if params.sections.scenario == "multi":
        if "recall" in params.methods:
            out.append(
                Stage(
                    "similarity",
                    "similarity",
                    deps=[
                        *map(Path, S.multi_models(params, "recall")),
                        *(
                            S.recall_dir(params, t) / f
                            for t in tasks
                            for f in ("probe.jsonl", "features.npy", "typical.json")
                        ),
                    ],
                    params=["multi", *section_keys(params, "recall", *SIMILARITY_KEYS)],
                    outs=[S.multi_similarity_path(params)],
                )
            )
        for m in params.merge_methods:
            inputs = [*map(Path, S.multi_models(params, m))]
            if m == "recall":
                inputs.append(S.multi_similarity_path(params))
            setting = section_keys(params, "recall", *MERGE_KEYS) if m == "recall" else [f"methods.{m}"]
            if m != "recall" and get_method(m).needs_base and not params.with_base:
                inputs.append(S.base_model(params))
            out.append(
                Stage(
                    stage_name("multi", method=m),
                    "multi",
                    method=m,
                    deps=[*task_data(*tasks), *inputs],
                    params=["multi", "evaluate", *setting],
                    outs=[S.multi_dir(params, m)],
                )
            )
    reads = [p for s in out if s.stage in ("evaluate", "multi") for p in s.outs]
    reads += [p for s in out if s.stage == "gate" for p in s.metrics]
    if "recall" in params.methods and params.sections.scenario != "multi":
        reads += [S.recall_dir(params, t) / "similarity.json" for t in tasks]
        reads += [S.chain_dir(params, "recall", t) / "model" for t in tasks]
    out.append(
        Stage("report", "report", deps=reads, outs=[params.root / "reports", S.data_root(params) / "report_spec.json"])
    )
    return out


def protocol_plan(params: Params) -> list[Stage]:
    """A protocol's stages: every run's steps (a step that runs share once, in the name of the first run
    that makes it, `Params.owner`), the one-sequence plan's base and data, the base's evaluation on every
    task, and a report of every evaluation."""
    chains: dict[str, Stage] = {}
    for run in params.runs:
        of_run = params.for_run(run)
        for stage in (s for s in plan(of_run) if s.task is not None and s.stage != "gate"):  # gates serve one chain
            owner = of_run.owner(stage.task).label
            named = stage_name(stage.stage, stage.task, stage.method, owner)
            chains.setdefault(named, dataclasses.replace(stage, name=named, run=owner))
    sequence = dataclasses.replace(params, sections=dataclasses.replace(params.sections, orders=None, seeds=None))
    shared = [s for s in plan(sequence) if s.name in ("base", "data")]
    base_eval = Stage(
        "evaluate",
        "evaluate",
        deps=[*(params.data_dir / t for t in S.scored_tasks(params)), S.base_model(params)],
        params=["evaluate"],
        outs=[S.base_eval(params)],
    )
    steps = [*chains.values(), base_eval]
    reads = [p for s in steps if s.stage == "evaluate" for p in s.outs]
    report = Stage(
        "report", "report", deps=reads, outs=[params.root / "reports", S.data_root(params) / "report_spec.json"]
    )
    return [*shared, *steps, report]


def gate_stage(params: Params, task: str) -> Stage:
    """The served chain's gate after `task`: its model against the champion, which is the model of any
    earlier step (or the base), as the earlier gates decided; it evaluates what their evaluations lack."""
    m, names = params.gated, S.tasks(params)
    earlier = names[: names.index(task)]
    return Stage(
        stage_name("gate", task),
        "gate",
        task,
        deps=[
            *(params.data_dir / t for t in [*earlier, task]),
            S.base_model(params),
            *(S.gate_metrics(params, t) for t in earlier),
            *(p for t in [*earlier, task] for p in (S.handed_on(params, m, t), S.chain_dir(params, m, t) / "eval")),
        ],
        params=["evaluate", *section_keys(params, "promote", "tolerance")],
        outs=[S.gate_dir(params, task)],
        metrics=[S.gate_metrics(params, task)],
    )


def recall_inputs(params: Params, task: str) -> list[Stage]:
    """What RECALL needs of a task's new model in any scenario: its features and typical samples."""
    folder = S.recall_dir(params, task)
    return [
        Stage(
            stage_name("features", task),
            "features",
            task,
            deps=[params.data_dir / task, S.new_model(params, "recall", task)],
            params=section_keys(params, "recall", "samples", "batch_size", "max_length"),
            outs=[folder / "probe.jsonl", folder / "features.npy"],
        ),
        Stage(
            stage_name("typical", task),
            "typical",
            task,
            deps=[folder / "features.npy"],
            params=section_keys(params, "recall", "typical", "seed"),
            outs=[folder / "typical.json"],
        ),
    ]


def recall_stages(params: Params, task: str) -> list[Stage]:
    """RECALL's step in a chain: its inputs, the similarities to the step's start model, the merge."""
    folder, new, start = (
        S.recall_dir(params, task),
        S.new_model(params, "recall", task),
        S.start_model(params, "recall", task),
    )
    return [
        *recall_inputs(params, task),
        Stage(
            stage_name("similarity", task),
            "similarity",
            task,
            deps=[folder / "typical.json", folder / "probe.jsonl", folder / "features.npy", new, start],
            params=section_keys(params, "recall", *SIMILARITY_KEYS),
            outs=[folder / "similarity.json"],
        ),
        Stage(
            stage_name("merge", task, "recall"),
            "merge",
            task,
            "recall",
            deps=[folder / "similarity.json", new, start],
            params=section_keys(params, "recall", *MERGE_KEYS),
            outs=[S.chain_dir(params, "recall", task) / "model"],
        ),
    ]


def render(params: Params) -> str:
    entries = {s.name: s.entry(params.root) for s in plan(params)}
    entries["report"]["metrics"] = [{"metrics.json": {"cache": False}}]  # every report table's numbers
    header = (
        "# Generated by `recall pipeline` from params.yaml: edit params.yaml, then run `recall pipeline`.\n"
        "# One stage per (stage, method, step); every command runs one stage as a Prefect flow tracked in\n"
        "# MLflow (flows/stage.py); the library functions live in recall/pipeline/stages.py.\n"
        f"{KEY_PREFIX}{shape_key(params)}\n"
    )
    return header + yaml.safe_dump({"stages": entries}, sort_keys=False, width=120)


def dvc_yaml(params: Params) -> Path:
    return params.root / "dvc.yaml"


def write(params: Params) -> Path:
    with atomic_file(dvc_yaml(params)) as fh:
        fh.write(render(params))
    return dvc_yaml(params)


def check_current(params: Params) -> None:
    """Refuse to run a stage of a dvc.yaml written for another shape of params.yaml."""
    path = dvc_yaml(params)
    lines = path.read_text().splitlines() if path.is_file() else []
    key = next((line[len(KEY_PREFIX) :] for line in lines if line.startswith(KEY_PREFIX)), None)
    if key != shape_key(params):
        raise RecallError(
            f"{path} was not written for the scenario, sequence and methods of params.yaml; run "
            "`recall pipeline` to write it again, then `dvc repro`"
        )


def find(params: Params, name: str) -> Stage:
    for stage in plan(params):
        if stage.name == name:
            return stage
    raise RecallError(f"no stage {name!r} in the pipeline of params.yaml; `dvc stage list` shows them")
