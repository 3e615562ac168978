"""The DVC pipeline of a params file: one stage per (stage, method, step), with exact dependencies.

The DAG's shape depends on the params (scenario, sequence, compared methods): a method's step
depends on *its own* previous model, a merge on its weight source's evidence, the multi merges on
every expert. DVC's `foreach`/`matrix` cannot vary dependencies per item, so `recall pipeline` writes
dvc.yaml from params.yaml. Everything else a stage reads is a params dependency, so `dvc exp run -S`
of a setting reruns exactly the stages that read it. dvc.yaml records the key of the shape it was
written for; a stage refuses to run when params.yaml has another shape.

The stages, their dependencies, outputs and params keys are `recall.pipeline.table.TABLE`'s; this
module places them (`plan`) and writes dvc.yaml. Stage names and paths: `recall.pipeline.layout`.
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
from recall.pipeline.layout import dvc_yaml, stage_name, tasks
from recall.pipeline.params import Params
from recall.pipeline.stages import source_of
from recall.pipeline.table import TABLE, StageDef

KEY_PREFIX = "# plan key: "
__all__ = ["Stage", "check_current", "find", "plan", "render", "shape_key", "stage_name", "write"]


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
    if labelled := {m: params.method_of(m) for m in params.methods if params.method_of(m) != m}:
        shape["labels"] = labelled  # chains labelled other than their method (absent from earlier keys)
    if params.runs:
        shape["runs"] = [[r.label, *r.tasks] for r in params.runs]
        shape["seeds"] = {m: params.method_seeds(m) for m in params.methods}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def instance(d: StageDef, params: Params, task: str | None = None, method: str | None = None) -> Stage:
    """The stage `d` placed at (task, method): its name and command carry what its `keys` name."""
    t, m = (task if "task" in d.keys else None), (method if "method" in d.keys else None)
    return Stage(
        stage_name(d.name, t, m),
        d.name,
        t,
        m,
        deps=d.deps(params, task, method),
        params=d.params(params, task, method),
        outs=d.outs(params, task, method),
        metrics=d.metrics(params, task, method),
    )


def placed(params: Params, at: str, task: str | None = None, method: str | None = None) -> list[Stage]:
    """The table's stages placed `at` ("start", "expert", "chain", "multi", "end") that apply here."""
    return [instance(d, params, task, method) for d in TABLE if d.at == at and d.when(params, task, method)]


def plan(params: Params) -> list[Stage]:
    """Every stage of the params' pipeline, each after the stages whose outputs it reads."""
    if params.runs and params.run is None:
        return protocol_plan(params)
    out = placed(params, "start")
    for t in tasks(params):
        out += step_stages(params, t)
    if params.sections.scenario == "multi":
        out += multi_stages(params)
    return [*out, *ending(params, out)]


def step_stages(params: Params, task: str) -> list[Stage]:
    """A step's stages: the expert the chains share (if it has one), then every method's chain step; in
    the multi scenario (table 2 merges the experts at once: no merge per step) the expert stages of the
    weight sources compared instead."""
    out = placed(params, "expert", task)
    if params.sections.scenario != "multi":
        return out + [s for m in params.methods for s in chain_stages(params, task, m)]
    for d in TABLE:
        users = [m for m in params.merge_methods if d.name in source_of(params, m).expert_stages]
        if d.at is None and d.keys == ("task",) and users:
            out.append(instance(d, params, task, users[0]))
    return out


def chain_stages(params: Params, task: str, method: str) -> list[Stage]:
    """A method's step: its fine-tune, the stages of its weight source's evidence, its merge, the
    evaluation of what it hands on, and the gate of the served chain."""
    source = source_of(params, method)
    needed = source.step_stages if source else ()
    return [
        instance(d, params, task, method)
        for d in TABLE
        if (d.at == "chain" or (d.at is None and "task" in d.keys and d.name in needed))
        and d.when(params, task, method)
    ]


def multi_stages(params: Params) -> list[Stage]:
    """The multi scenario's: the evidence of every weight source compared (once, or per method), then
    each merge method's merge of every expert."""
    out = []
    for d in (d for d in TABLE if d.at is None and "task" not in d.keys):
        users = [m for m in params.merge_methods if d.name in source_of(params, m).multi_stages]
        if users:
            out += [instance(d, params, None, m) for m in (users if "method" in d.keys else users[:1])]
    return out + [s for m in params.merge_methods for s in placed(params, "multi", None, m)]


def ending(params: Params, earlier: list[Stage]) -> list[Stage]:
    """The stages placed last, each reading what its `reads` takes of the stages before it."""
    out = []
    for stage, d in ((instance(d, params), d) for d in TABLE if d.at == "end"):
        stage.deps = [*stage.deps, *(d.reads(params, earlier) if d.reads else [])]
        out.append(stage)
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
    base_evaluation = next(instance(d, params) for d in TABLE if d.name == "evaluate" and d.keys == ())
    steps = [*chains.values(), base_evaluation]
    return [*shared, *steps, *ending(params, steps)]


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
