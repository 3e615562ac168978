"""params.yaml: the run, validated as a whole before any stage does work."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from recall.errors import RecallError
from recall.training.finetune import FinetuneConfig
from recall.merge.methods import METHODS
from recall.weights.representations import RecallSettings
from recall.tasks.base import Task, get_task
from recall.tasks.declared import declare_in
from recall.tasks.formats import FORMATS, TASK_FILE

SCENARIOS = ("sequential", "single", "multi")
BASE_STEP = "base"
# Compared methods that train rather than merge: their model after a step is the fine-tune itself.
TRAINING_METHODS = {"sft": {}, "ewc": {"lambda": 1000.0, "samples": 64}}
MERGE_SOURCES = ("given",)  # registry methods the pipeline can run: weights need no extra input
EVAL_MODES = ("ppl", "gen")


@dataclass(frozen=True)
class Step:
    task: str
    after: str  # the step whose model this one starts from ("base" for the base model)


@dataclass(frozen=True)
class Params:
    raw: dict
    root: Path

    @property
    def steps(self) -> list[Step]:
        return [Step(s["task"], s["after"]) for s in self.raw["sequence"]]

    def step(self, task: str) -> Step:
        for s in self.steps:
            if s.task == task:
                return s
        raise RecallError(f"step {task!r} is not in the sequence of params.yaml")

    @property
    def data_dir(self) -> Path:
        """Where every stage reads task data: the data stage's output."""
        return self.root / "data" / "tasks"

    @property
    def task_roots(self) -> list[Path]:
        """The folders whose `<task>/task.yaml` declares a task of the sequence: incoming/ (new tasks
        of the scheduled flow), the `tasks` folder, the data.source folder."""
        named = [self.raw.get("tasks"), None if self.raw["data"]["source"] == "generated" else self.raw["data"]["source"]]
        return [self.root / "incoming", *(self.root / n for n in named if n)]

    def declaring_folder(self, task: str) -> Path | None:
        """The folder whose task.yaml declares `task` (the first of `task_roots`), or None for a built-in one."""
        return next((root / task for root in self.task_roots if (root / task / TASK_FILE).is_file()), None)

    def find_task(self, name: str) -> Task:
        """The task `name`: declared in a folder of `task_roots` (two different declarations are an
        error), else a built-in one."""
        for root in self.task_roots:
            declare_in(root, name)
        return get_task(name)

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(**self.raw["finetune"])

    def recall_settings(self) -> RecallSettings:
        cfg = dict(self.raw["recall"])
        cfg.pop("samples")
        return RecallSettings(**cfg)

    @property
    def methods(self) -> dict[str, dict]:
        """Compared method -> its parameters (`{}`: defaults), in the order params.yaml lists them."""
        return {name: dict(given or {}) for name, given in self.raw["methods"].items()}

    @property
    def merge_methods(self) -> list[str]:
        """The compared methods that produce a merged model (RECALL and the merge baselines)."""
        return [m for m in self.methods if m not in TRAINING_METHODS]

    def ewc(self) -> dict:
        return {**TRAINING_METHODS["ewc"], **self.methods.get("ewc", {})}

    def eval_tasks(self, task: str) -> list[str]:
        """The tasks scored after a step: every task of the sequence (`evaluate.tasks: all`), or, in a
        sequential run's cheaper settings, those learned so far (`seen`) or only the task just learned
        (`new`); every task after the last step. Final average and BWT need no more than `new` gives."""
        names = [s.task for s in self.steps]
        which = self.raw["evaluate"].get("tasks", "all")
        if which == "all" or task == names[-1]:
            return names
        return names[: names.index(task) + 1] if which == "seen" else [task]

    def eval_limits(self) -> dict[str, int | None]:
        """Task -> test examples scored: `evaluate.limit` is one number, or one per task format."""
        limit = self.raw["evaluate"].get("limit")
        formats = {s.task: self.find_task(s.task).format for s in self.steps}
        return {t: limit.get(f) if isinstance(limit, dict) else limit for t, f in formats.items()}

    @property
    def eval_modes(self) -> dict[str, str]:
        """Task format -> evaluation mode ("ppl": option log-likelihood, "gen": generation)."""
        return dict(self.raw["evaluate"].get("mode") or {})

    @property
    def sequential(self) -> bool:
        return self.raw["scenario"] == "sequential"

    @property
    def with_base(self) -> bool:
        """Multi scenario: merge the base model with the experts (or the experts alone)."""
        return self.raw.get("multi", {}).get("with_base", True)

    @property
    def key(self) -> str:
        """Identifies the run: the same params give the same MLflow parent run."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:12]


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise RecallError(f"{path} not found; run from the project folder that holds params.yaml")
    raw = yaml.safe_load(path.read_text()) or {}
    params = Params(raw, path.resolve().parent)
    validate(params)
    return params


def _require(raw: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in raw]
    if missing:
        raise RecallError(f"params.yaml lacks {', '.join(missing)}; see the README for a complete example")


def validate(params: Params) -> None:
    """Every problem with params.yaml, named with its fix, before any stage runs."""
    raw = params.raw
    _require(raw, "base", "data", "scenario", "sequence", "methods", "finetune", "recall", "evaluate")
    if "baselines" in raw:
        raise RecallError("params.yaml: `baselines` became `methods` (a mapping, each method its own chain), "
                          "e.g. methods: {recall: {}, sft: {}, ties: {density: 0.5}}")
    if raw["scenario"] not in SCENARIOS:
        raise RecallError(f"unknown scenario {raw['scenario']!r}; choose one of {', '.join(SCENARIOS)}")
    if raw["data"]["source"] != "generated" and not (params.root / raw["data"]["source"]).is_dir():
        raise RecallError(f"data.source {raw['data']['source']} is not a folder; give 'generated' or a data folder")
    if "tasks" in raw and not (isinstance(raw["tasks"], str) and (params.root / raw["tasks"]).is_dir()):
        raise RecallError(f"tasks: {raw['tasks']!r} is not a folder; give the folder holding your <task>/{TASK_FILE} "
                          "folders, or leave `tasks` out")
    sequence = raw["sequence"]
    if not sequence:
        raise RecallError("the sequence in params.yaml is empty; list at least one {task, after} step")
    seen = [BASE_STEP]
    for i, step in enumerate(sequence):
        if not isinstance(step, dict) or set(step) != {"task", "after"}:
            raise RecallError(f"sequence item {i + 1} must be a mapping with exactly 'task' and 'after', got {step!r}")
        params.find_task(step["task"])  # a bad task folder or an unknown task: an error naming it
        if step["task"] in seen:
            raise RecallError(f"task {step['task']!r} appears twice in the sequence; each step needs its own task")
        expected = seen[-1] if raw["scenario"] == "sequential" else BASE_STEP
        if step["after"] != expected:
            raise RecallError(
                f"sequence item {i + 1} ({step['task']}) has after: {step['after']}, but a {raw['scenario']} run "
                f"needs after: {expected}"
            )
        seen.append(step["task"])
    validate_methods(params)
    validate_modes(raw["evaluate"].get("mode"))
    if raw["evaluate"].get("tasks", "all") not in ("all", "seen", "new"):
        raise RecallError(f"evaluate.tasks must be all, seen or new, got {raw['evaluate']['tasks']!r}")
    limit = raw["evaluate"].get("limit")
    limits = limit.values() if isinstance(limit, dict) else [limit]
    if not all(n is None or (isinstance(n, int) and n >= 1) for n in limits) or \
            (isinstance(limit, dict) and not set(limit) <= set(FORMATS)):
        raise RecallError(f"evaluate.limit must be a number of test examples >= 1 (or null for all), or one per "
                          f"task format ({', '.join(FORMATS)}), e.g. {{classification: 200, generation: 100}}; "
                          f"got {limit!r}")
    recall_cfg = raw["recall"]
    if recall_cfg.get("samples", 0) < 1:
        raise RecallError("recall.samples (task examples used for representations) must be >= 1")
    try:
        params.finetune_config().validate()
        params.recall_settings().validate()
    except TypeError as err:
        raise RecallError(f"params.yaml: {err}; check the finetune and recall sections") from None
    if not isinstance(params.with_base, bool):
        raise RecallError("multi.with_base must be true or false")


def validate_methods(params: Params) -> None:
    methods = params.raw["methods"]
    if not isinstance(methods, dict) or not methods:
        raise RecallError("methods must be a non-empty mapping of method -> parameters, "
                          "e.g. methods: {recall: {}, sft: {}}")
    merges = sorted(m for m, spec in METHODS.items() if spec.weights in MERGE_SOURCES and not spec.needs_fisher)
    usable = ["recall", *TRAINING_METHODS, *merges]
    for name, given in methods.items():
        if given is not None and not isinstance(given, dict):
            raise RecallError(f"methods.{name} must be a mapping of parameters ({{}} for the defaults), got {given!r}")
        if name == "recall":
            if given:
                raise RecallError("methods.recall takes no parameters here; RECALL's settings are the `recall` section")
        elif name in TRAINING_METHODS:
            if extra := sorted(set(given or {}) - set(TRAINING_METHODS[name])):
                raise RecallError(f"methods.{name}: unknown parameter {extra[0]!r}; "
                                  f"known: {', '.join(TRAINING_METHODS[name]) or 'none'}")
        elif name in merges:
            METHODS[name].resolve(given or {})  # a missing or out-of-range parameter names its flag
        else:
            raise RecallError(f"method {name!r} cannot run in the pipeline; choose from {', '.join(usable)}")
    if "ewc" in methods:
        ewc = params.ewc()
        if not ewc["lambda"] > 0 or not (isinstance(ewc["samples"], int) and ewc["samples"] > 0):
            raise RecallError(f"methods.ewc needs lambda > 0 and samples >= 1, got {ewc}")
        if params.raw["scenario"] != "sequential":
            raise RecallError("method ewc anchors a fine-tune to the previous task's model, so it needs "
                              "scenario: sequential; drop it from methods for a single or multi run")


def validate_modes(modes) -> None:
    if modes is None:
        return
    if not isinstance(modes, dict) or any(v not in EVAL_MODES for v in modes.values()) or not set(modes) <= set(FORMATS):
        raise RecallError(f"evaluate.mode must map task formats ({', '.join(FORMATS)}) to one of "
                          f"{', '.join(EVAL_MODES)}, e.g. {{classification: ppl, multiple_choice: ppl}}; got {modes!r}")
