"""The pipeline's artifact layout: every folder and file a stage writes, and the stages' names. Every
other module (the stages, the plan, params.py, the benchmarks) asks here.

    data/tasks/<task>/{train,test}.jsonl          data stage
    data/base/model/                              base stage
    data/base/eval/                               a protocol's base model on every task
    data/experts/<task>/                          the base fine-tuned on <task>, shared by every chain
                                                  (each step of single/multi, a sequence's first step;
                                                  runs of one project share them through DVC's cache)
    data/chains/<method>/<task>/sft/              sequential: the method's previous model fine-tuned on <task>
    data/chains/<method>/<task>/...               the evidence of the method's weight source, e.g. RECALL's
                                                  probe.jsonl, features.npy, typical.json, similarity.json;
                                                  LM-Cocktail's losses.json; Fisher merging's fisher/
    data/chains/<method>/<task>/model/            merge: the previous model and the new one, by <method>
    data/chains/<method>/<task>/eval/             the model the step hands on, on every task
    data/runs/<run>/{experts,chains}/...          a protocol's run (order, seed), e.g. o2-s1: as above;
                                                  a step is kept by the first run that makes it
    data/gate/<task>/                             gate (sequential): what it had to evaluate to compare the
                                                  step's model of promote.method's chain with the champion
    data/multi/similarity.json                    multi scenario: every model's similarity to each expert
    data/multi/evidence/<method>/                 multi scenario: the evidence of other weight sources
    data/multi/<method>/{model,eval}/             multi scenario: every expert merged at once (table 2)
    incoming/<task>/                              new task data the scheduled flow drops (read by data)
    reports/, report_spec.json                    report: tables, plots; metrics.json at the top
    gates/<task>/metrics.json                     gate: its decision (recall.gate), in git like metrics.json

`sft` and `ewc` hand on their fine-tune itself (no `model/`). <method> is a compared chain's label
(params.yaml `methods.<label>`): a registered method's name, or a label with `method:` naming it.

Stage names: `<stage>-<method>-<task>` (e.g. `finetune-recall-gen_sentiment`), `<stage>-<task>` for a
step's stages of no one chain (the shared experts, RECALL's weight inputs, the gate; a chain labelled
other than its method has RECALL's as its own, `similarity-recall_paper-<task>`), `multi-<method>`,
then `base`, `data`, `report`, and in the multi scenario `similarity`. A protocol's stages of a run
have its label appended: `finetune-recall-amazon-o1-s0`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

BASE_STEP = "base"  # a step's `after` when it starts from the base model
INCOMING = "incoming"
METRICS_FILE = "metrics.json"


class Project(Protocol):
    """What the layout reads of `recall.pipeline.params.Params` (not imported: params.py asks here)."""

    root: Path
    sections: Any

    @property
    def steps(self) -> list: ...

    @property
    def with_base(self) -> bool: ...

    def step(self, task: str) -> Any: ...

    def owner(self, task: str) -> Any: ...

    def trains(self, method: str | None) -> bool: ...


def stage_name(stage: str, task: str | None = None, method: str | None = None, run: str | None = None) -> str:
    return "-".join(part for part in (stage, method, task, run) if part)


def run_label(order: int, seed: int) -> str:
    """A protocol run's part of stage names and folders (data/runs/<label>/)."""
    return f"o{order}-s{seed}"


def tasks(params: Project) -> list[str]:
    return [s.task for s in params.steps]


def scored_tasks(params: Project) -> list[str]:
    """The sequence's tasks, then those only scored (`evaluate.unseen`)."""
    return [*tasks(params), *params.sections.evaluate.unseen]


def data_root(params: Project) -> Path:
    return params.root / "data"


def data_dir(root: Path) -> Path:
    """Where every stage reads task data (the data stage's output), in the project at `root`."""
    return root / "data" / "tasks"


def incoming(root: Path) -> Path:
    """Where the scheduled flow drops new tasks' data: incoming/<task>/."""
    return root / INCOMING


def base_model(params: Project) -> Path:
    return data_root(params) / "base" / "model"


def base_eval(params: Project) -> Path:
    """A protocol's base model on every task: what each task's learning is measured against."""
    return data_root(params) / "base" / "eval"


def scope(params: Project, task: str) -> Path:
    """Where a step's chain folders and expert live: data/, or in a protocol the folder of the run that
    owns the step (`Params.owner`), data/runs/<run>/, so runs doing the same work share it."""
    owner = params.owner(task)
    return data_root(params) if owner is None else data_root(params) / "runs" / owner.label


def chain_dir(params: Project, method: str, task: str) -> Path:
    """A method's step: its fine-tune, its weight source's evidence, its merge and evaluation."""
    return scope(params, task) / "chains" / method / task


def shared_expert(params: Project, task: str) -> bool:
    """Whether every chain's fine-tune on `task` is the same one: it starts from the base (every step
    of a single or multi run; the first step of a sequence, where EWC has nothing to anchor to yet)."""
    return params.step(task).after == BASE_STEP


def new_model(params: Project, method: str | None, task: str) -> Path:
    """The model fine-tuned on `task` that a method's step starts its merge from."""
    if shared_expert(params, task):
        return scope(params, task) / "experts" / task
    return chain_dir(params, method, task) / "sft"


def merged_model(params: Project, method: str, task: str) -> Path:
    return chain_dir(params, method, task) / "model"


def evaluation(params: Project, method: str, task: str) -> Path:
    return chain_dir(params, method, task) / "eval"


def handed_on(params: Project, method: str, task: str) -> Path:
    """The model a method's chain holds after `task`: its fine-tune for training methods, else its merge."""
    return new_model(params, method, task) if params.trains(method) else merged_model(params, method, task)


def start_model(params: Project, method: str | None, task: str) -> Path:
    """The model a method's step starts from: the base, or the chain's model after `after`."""
    after = params.step(task).after
    return base_model(params) if after == BASE_STEP else handed_on(params, method, after)


def gate_dir(params: Project, task: str) -> Path:
    return data_root(params) / "gate" / task


def gate_metrics(params: Project, task: str) -> Path:
    """The gate's decision: DVC metrics may not sit in an output folder, and data/ is git-ignored."""
    return params.root / "gates" / task / METRICS_FILE


def multi_dir(params: Project, method: str) -> Path:
    return data_root(params) / "multi" / method


def multi_similarity_path(params: Project) -> Path:
    return data_root(params) / "multi" / "similarity.json"


def multi_evidence(params: Project, method: str) -> Path:
    """Multi scenario: the evidence of a weight source that is not RECALL's (losses, Fisher folders)."""
    return data_root(params) / "multi" / "evidence" / method


def multi_models(params: Project, method: str) -> list[str]:
    """The models the multi scenario merges, in order: the base (with `multi.with_base`), then the experts."""
    return ([str(base_model(params))] if params.with_base else []) + [
        str(new_model(params, method, t)) for t in tasks(params)
    ]


def reports(params: Project) -> Path:
    return params.root / "reports"


def report_spec_path(params: Project) -> Path:
    return data_root(params) / "report_spec.json"


def top_metrics(params: Project) -> Path:
    """The run's metrics at the top (DVC metrics may not sit inside an output folder)."""
    return params.root / METRICS_FILE


def dvc_yaml(params: Project) -> Path:
    return params.root / "dvc.yaml"
