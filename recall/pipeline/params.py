"""params.yaml: the run, parsed once into typed, frozen sections and checked as a whole before any
stage does work.

Each section is a settings dataclass (`recall.pipeline.sections`, validated by pydantic through
`recall.settings`): its fields are the keys it takes, with their types, defaults and rules, and a key
that is not a field is an error naming its path. What no section
can check alone (folders, task names, the order of the sequence, the methods) is checked after.
`recall params check`, `recall pipeline` and every stage all load params.yaml with `load_params`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from recall.errors import RecallError, read_text
from recall.evaluation.pipeline import check_backend, resolve_modes
from recall.merge.methods import METHODS, Method
from recall.pipeline import layout
from recall.pipeline.sections import (  # noqa: F401  (the sections are params.yaml's; importers find them here too)
    BASE_STEP,
    CHAIN_LABEL,
    EVAL_MODES,
    REGISTRY_MODES,
    SCENARIOS,
    BaseSection,
    DataSection,
    EvaluateSection,
    MultiSection,
    PromoteSection,
    RecallSection,
    Sections,
    Step,
    TrackingSection,
)
from recall.settings import reject_unknown
from recall.tasks.base import Task
from recall.tasks.formats import TASK_FILE
from recall.tasks.registry import declare_in, get_task
from recall.training.config import EWC_LAMBDA, FinetuneConfig

# Compared methods that train rather than merge: their model after a step is the fine-tune itself.
TRAINING_METHODS = {"sft": {}, "ewc": {"lambda": EWC_LAMBDA, "samples": FinetuneConfig.ewc_samples}}
SEEDS_KEY = "seeds"  # methods.<m>.seeds: the protocol's training seeds this method's chains run with
METHOD_KEY = "method"  # methods.<label>.method: the registered method a chain label runs (default: the label)


@dataclass(frozen=True)
class Run:
    """One (order, seed) of a protocol: every method's chain over `tasks`, fine-tuned with `seed`."""

    order: int  # 1-based, as params.yaml lists the orders
    seed: int
    tasks: tuple[str, ...]

    @property
    def label(self) -> str:
        """Its part of stage names and folders (data/runs/<label>/)."""
        return layout.run_label(self.order, self.seed)


@dataclass(frozen=True)
class Params:
    sections: Sections
    root: Path  # params.yaml's folder, where its relative paths start
    raw: dict  # params.yaml as written: `key` hashes it; `written` gives its sections for MLflow and DVC
    run: Run | None = None  # a protocol's run these params stand for (`for_run`): its order, seed and methods

    @property
    def steps(self) -> list[Step]:
        return list(self.sections.sequence)

    def step(self, task: str) -> Step:
        for s in self.steps:
            if s.task == task:
                return s
        raise RecallError(f"step {task!r} is not in the sequence of params.yaml")

    @property
    def data_dir(self) -> Path:
        """Where every stage reads task data: the data stage's output."""
        return layout.data_dir(self.root)

    @property
    def task_roots(self) -> list[Path]:
        """The folders whose `<task>/task.yaml` declares a task of the sequence: incoming/ (new tasks
        of the scheduled flow), the `tasks` folder, the data.source folder."""
        source = self.sections.data.source
        named = [self.sections.tasks, None if source == "generated" else source]
        return [layout.incoming(self.root), *(self.root / n for n in named if n)]

    def declaring_folder(self, task: str) -> Path | None:
        """The folder whose task.yaml declares `task` (the first of `task_roots`), or None for a built-in one."""
        return next((root / task for root in self.task_roots if (root / task / TASK_FILE).is_file()), None)

    def find_task(self, name: str) -> Task:
        """The task `name`: declared in a folder of `task_roots` (two different declarations are an
        error), else a built-in one."""
        for root in self.task_roots:
            declare_in(root, name)
        return get_task(name)

    @property
    def methods(self) -> dict[str, dict]:
        """Compared chain (its label, `methods.<label>`) -> its parameters (`{}`: defaults), in the order
        params.yaml lists them; a run's params keep the chains that train with its seed. What runs a
        chain is `method_of` its label."""
        return {
            name: {k: v for k, v in (given or {}).items() if k not in (SEEDS_KEY, METHOD_KEY)}
            for name, given in self.sections.methods.items()
            if self.run is None or self.run.seed in self.method_seeds(name)
        }

    def method_of(self, label: str | None) -> str | None:
        """The registered method a compared chain runs: its `methods.<label>.method`, else the label
        itself (`ties: {...}`); None stays None (a stage of no chain)."""
        given = self.sections.methods.get(label) if label is not None else None
        return given.get(METHOD_KEY, label) if isinstance(given, dict) else label

    def registered(self, label: str | None) -> Method | None:
        """The merge method a compared chain runs (None for a training method)."""
        return METHODS.get(self.method_of(label))

    def overrides(self, label: str) -> dict:
        """The settings of its weight source's section (RECALL's `recall`) that a chain sets in its own
        `methods.<label>` (`recall_paper: {method: recall, sigma: 1.0}`): its stages read those there."""
        method = self.registered(label)
        if method is None or method.source.section is None:
            return {}
        return {k: v for k, v in self.methods[label].items() if k not in method.params}

    def method_seeds(self, method: str) -> tuple[int, ...]:
        """The training seeds a method's chains run with: its `seeds` among the protocol's, else all of them."""
        given = self.sections.methods[method] or {}
        return tuple(given.get(SEEDS_KEY, self.seeds))

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.sections.seeds or (self.sections.finetune.seed,)

    @property
    def orders(self) -> list[tuple[str, ...]]:
        """The task orders: as listed, or `random` distinct permutations of the sequence drawn from `seed`."""
        orders, tasks = self.sections.orders, tuple(s.task for s in self.steps)
        if not isinstance(orders, dict):
            return list(orders or [tasks])
        tasks = tuple(sorted(tasks))  # a run's params list its own order as the sequence: draw from one list
        rng, drawn = random.Random(orders["seed"]), []
        while len(drawn) < orders["random"]:  # appending draws keeps the earlier orders: a larger n only adds
            if (order := tuple(rng.sample(tasks, len(tasks)))) not in drawn:
                drawn.append(order)
        return drawn

    @property
    def protocol(self) -> bool:
        """Whether these params name task orders or training seeds: runs of a benchmark protocol."""
        return self.sections.orders is not None or self.sections.seeds is not None

    @property
    def runs(self) -> list[Run]:
        """Every (order, seed) of a protocol, order by order; none without `orders` or `seeds`."""
        if not self.protocol:
            return []
        return [Run(i, seed, order) for i, order in enumerate(self.orders, 1) for seed in self.seeds]

    def for_run(self, run: Run) -> Params:
        """These params as the run sees them: its order as the sequence, its seed as finetune.seed."""
        steps = tuple(Step(t, a) for t, a in zip(run.tasks, (BASE_STEP, *run.tasks)))
        sections = dataclasses.replace(
            self.sections,
            sequence=steps,
            finetune=dataclasses.replace(self.sections.finetune, seed=run.seed),
        )
        return dataclasses.replace(self, sections=sections, run=run)

    def select(self, label: str) -> Params:
        """The params of the run `label` (e.g. o2-s1)."""
        for run in self.runs:
            if run.label == label:
                return self.for_run(run)
        raise RecallError(f"no run {label!r} in params.yaml; its runs: {', '.join(r.label for r in self.runs)}")

    def owner(self, task: str) -> Run | None:
        """The run whose folders and stages hold this run's step `task`: the first run with the same seed
        and the same tasks up to `task`, whose work is identical (every order's first fine-tune of a seed
        whose order starts alike, say). None outside a protocol."""
        if self.run is None:
            return None
        prefix = self.run.tasks[: self.run.tasks.index(task) + 1]
        return next(r for r in self.runs if r.seed == self.run.seed and r.tasks[: len(prefix)] == prefix)

    def trains(self, method: str | None) -> bool:
        """Whether a compared chain trains rather than merges: its model after a step is the fine-tune."""
        return self.method_of(method) in TRAINING_METHODS

    def kernel_params(self, method: str) -> dict:
        """A merge chain's kernel parameters as params.yaml gives them (`methods.<label>`)."""
        return {k: v for k, v in self.methods[method].items() if k in self.registered(method).params}

    def weight_settings(self, method: str):
        """The settings of a merge chain's weight source: its own section (RECALL's `recall`) with the
        keys the chain overrides, or the keys of `methods.<label>` that are not kernel parameters; None
        for a source without settings."""
        source = self.registered(method).source
        if source.section is not None:
            section = getattr(self.sections, source.section)
            return dataclasses.replace(section, **self.overrides(method)) if self.overrides(method) else section
        given = {k: v for k, v in self.methods[method].items() if k not in self.registered(method).params}
        return source.settings_from(given)

    @property
    def merge_methods(self) -> list[str]:
        """The compared chains that produce a merged model (RECALL and the merge baselines)."""
        return [m for m in self.methods if not self.trains(m)]

    def ewc(self, label: str = "ewc") -> dict:
        """An EWC chain's settings: its `methods.<label>` over the defaults."""
        return {**TRAINING_METHODS["ewc"], **self.methods.get(label, {})}

    def eval_tasks(self, task: str) -> list[str]:
        """The tasks scored after a step: every task of the sequence (`evaluate.tasks: all`), or, in a
        sequential run's cheaper settings, those learned so far (`seen`) or only the task just learned
        (`new`); every task, and `evaluate.unseen`, after the last step. Final average and BWT need no more."""
        names = [s.task for s in self.steps]
        which = self.sections.evaluate.tasks
        if task == names[-1]:
            return [*names, *self.sections.evaluate.unseen]
        if which == "all":
            return names
        return names[: names.index(task) + 1] if which == "seen" else [task]

    def eval_limits(self) -> dict[str, int | None]:
        """Task -> test examples scored: `evaluate.limit` is one number, or one per task format."""
        limit = self.sections.evaluate.limit
        names = [*(s.task for s in self.steps), *self.sections.evaluate.unseen]
        formats = {t: self.find_task(t).format for t in names}
        return {t: limit.get(f) if isinstance(limit, dict) else limit for t, f in formats.items()}

    @property
    def eval_modes(self) -> dict[str, str]:
        """Task format -> evaluation mode ("ppl": option log-likelihood, "gen": generation)."""
        return dict(self.sections.evaluate.mode or {})

    @property
    def sequential(self) -> bool:
        return self.sections.scenario == "sequential"

    @property
    def gated(self) -> str | None:
        """The method whose chain the gate follows (`promote.method`), or None: no gate outside the
        sequential scenario, in a protocol's runs (a benchmark, nothing served), or when that method is
        not compared."""
        method = self.sections.promote.method
        return method if self.sequential and not self.protocol and method in self.methods else None

    @property
    def with_base(self) -> bool:
        """Multi scenario: merge the base model with the experts (or the experts alone)."""
        return self.sections.multi.with_base

    def written(self, section: str) -> dict:
        """A section as params.yaml writes it, only the keys it sets: what MLflow logs, and the keys a
        DVC params dependency may name (DVC fails on a key the file lacks)."""
        return dict(self.raw.get(section) or {})

    @property
    def key(self) -> str:
        """Identifies the run: the same params give the same MLflow parent run."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True).encode()).hexdigest()[:12]


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of a repeated key; DVC (ruamel) refuses the file. Refuse it first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (DVC refuses the file; keep one)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    """The params file at `path`, parsed and checked as a whole."""
    path = Path(path)
    if not path.is_file():
        raise RecallError(f"{path} not found; run from the project folder that holds params.yaml")
    try:
        raw = yaml.load(read_text(path), Loader=UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise RecallError(f"{path} is not valid YAML: {err}") from None
    return parse(raw or {}, path)


def parse(raw: dict, path: Path) -> Params:
    """`raw`, the YAML of the params file at `path`, as Params; every error names the file and the key."""
    try:
        if isinstance(raw, dict) and "baselines" in raw:
            raise RecallError(
                "`baselines` became `methods` (a mapping, each method its own chain), "
                "e.g. methods: {recall: {}, sft: {}, ties: {density: 0.5}}"
            )
        params = Params(Sections.from_mapping(raw), path.resolve().parent, raw)
        validate(params)
    except RecallError as err:
        raise RecallError(f"{path}: {err}") from None
    return params


def add_steps(path: Path, tasks: list[str]) -> Params:
    """Append `tasks` to the sequence of the params file at `path`, each after the step before it
    (sequential) or the base; the result is checked before the file is rewritten (without its comments)."""
    params = load_params(path)
    raw = copy.deepcopy(params.raw)
    for task in tasks:
        after = raw["sequence"][-1]["task"] if params.sequential else BASE_STEP
        raw["sequence"].append({"task": task, "after": after})
    added = parse(raw, path)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return added


def validate(params: Params) -> None:
    """What no section can check alone: the folders named, the sequence's tasks and order, the methods."""
    sections = params.sections
    source = sections.data.source
    if source != "generated" and not (params.root / source).is_dir():
        raise RecallError(f"data.source {source} is not a folder; give 'generated' or a data folder")
    if sections.tasks is not None and not (params.root / sections.tasks).is_dir():
        raise RecallError(
            f"tasks: {sections.tasks!r} is not a folder; give the folder holding your "
            f"<task>/{TASK_FILE} folders, or leave `tasks` out"
        )
    seen = [BASE_STEP]
    for i, step in enumerate(params.steps):
        params.find_task(step.task)  # a bad task folder or an unknown task: an error naming it
        if step.task in seen:
            raise RecallError(f"task {step.task!r} appears twice in the sequence; each step needs its own task")
        expected = seen[-1] if params.sequential else BASE_STEP
        if step.after != expected:
            raise RecallError(
                f"sequence[{i}] ({step.task}) has after: {step.after}, but a {sections.scenario} run "
                f"needs after: {expected}"
            )
        seen.append(step.task)
    for task in sections.evaluate.unseen:
        params.find_task(task)
        if task in seen:
            raise RecallError(f"evaluate.unseen lists {task!r}, a task of the sequence; list tasks it never learns")
    if sections.evaluate.backend != "hf":  # its package and GPU are checked by the evaluation, where it runs
        modes = resolve_modes(sections.evaluate.mode)
        formats = {s.task: params.find_task(s.task).format for s in params.steps}
        try:
            check_backend(sections.evaluate.backend, {t: f for t, f in formats.items() if modes[f] == "ppl"}, False)
        except RecallError as err:
            raise RecallError(f"evaluate.backend: {err}") from None
    validate_methods(params)
    promote = params.written("promote")
    if "method" in promote and params.gated is None and params.sequential and not params.protocol:
        raise RecallError(
            f"promote.method {promote['method']!r} is not a compared method; name one of "
            f"{', '.join(params.methods)} (its chain's models are gated and served)"
        )
    validate_runs(params)


def validate_runs(params: Params) -> None:
    """Orders are permutations of the sequence's tasks, seeds distinct, a method's seeds among them."""
    sections, tasks = params.sections, sorted(s.task for s in params.steps)
    if params.protocol and not params.sequential:
        raise RecallError("orders and seeds make runs of a sequence; they need scenario: sequential")
    if isinstance(sections.orders, dict):
        if set(sections.orders) != {"random", "seed"} or sections.orders["random"] < 1:
            raise RecallError(
                f"orders must list task orders or be {{random: n, seed: s}} with n >= 1, got {sections.orders}"
            )
        if sections.orders["random"] > (count := math.factorial(len(tasks))):
            raise RecallError(f"orders.random asks for more orders than the {count} of the sequence's tasks")
    elif sections.orders is not None:
        for i, order in enumerate(sections.orders):
            if sorted(order) != tasks:
                raise RecallError(
                    f"orders[{i}] must be an order of the sequence's tasks ({', '.join(tasks)}), got {list(order)}"
                )
        if len(set(sections.orders)) != len(sections.orders):
            raise RecallError("orders lists an order twice; each run needs its own order")
    if len(set(params.seeds)) != len(params.seeds):
        raise RecallError(f"seeds lists a seed twice: {list(params.seeds)}")
    for name in sections.methods:
        extra = set(params.method_seeds(name)) - set(params.seeds)
        if extra:
            raise RecallError(
                f"methods.{name}.seeds {sorted(extra)} are not among seeds {list(params.seeds)}; add them there"
            )


def validate_methods(params: Params) -> None:
    usable = [*TRAINING_METHODS, *sorted(METHODS)]
    for name, given in params.sections.methods.items():
        path = f"methods.{name}"
        if given is not None and not isinstance(given, dict):
            raise RecallError(f"{path} must be a mapping of parameters ({{}} for the defaults), got {given!r}")
        validate_label(name, given or {}, usable)
        seeds = (given or {}).get(SEEDS_KEY, ())
        if not (isinstance(seeds, list) and seeds and all(isinstance(x, int) for x in seeds)) and seeds != ():
            raise RecallError(f"{path}.seeds must list training seeds, e.g. seeds: [0, 1], got {seeds!r}")
        given = {k: v for k, v in (given or {}).items() if k not in (SEEDS_KEY, METHOD_KEY)}
        method = params.method_of(name)
        if method in TRAINING_METHODS:
            reject_unknown(given or {}, TRAINING_METHODS[method], path, "parameter")
        else:
            validate_merge_method(params, name, given, path)
    for label in (m for m in params.methods if params.method_of(m) == "ewc"):
        ewc = params.ewc(label)
        if not (isinstance(ewc["lambda"], (int, float)) and ewc["lambda"] > 0) or not (
            isinstance(ewc["samples"], int) and ewc["samples"] > 0
        ):
            raise RecallError(f"methods.{label} needs lambda > 0 and samples >= 1, got {ewc}")
        if not params.sequential:
            raise RecallError(
                "method ewc anchors a fine-tune to the previous task's model, so it needs "
                "scenario: sequential; drop it from methods for a single or multi run"
            )
    trained = [m for m in params.methods if params.trains(m)]
    if trained and params.sections.scenario == "multi":
        raise RecallError(
            f"method {', '.join(trained)} makes no merged model, and the multi scenario compares merges of "
            "every expert at once (table 2); drop it from methods, or compare each expert with its merges "
            "in scenario: single (table 1)"
        )


def validate_label(label: str, given: dict, usable: list[str]) -> None:
    """A chain's label (`methods.<label>`): a registered method's name, or any stage-name part with
    `method:` naming the method it runs; it is part of stage names and folders (`chains/<label>/`)."""
    if METHOD_KEY not in given:
        if label not in usable:
            raise RecallError(
                f"method {label!r} cannot run in the pipeline; choose from {', '.join(usable)}, or give the "
                f"chain the method it runs, e.g. {label}: {{method: recall, sigma: 1.0}}"
            )
        return
    method = given[METHOD_KEY]
    if not isinstance(method, str) or method not in usable:
        raise RecallError(f"methods.{label}.method: unknown method {method!r}; choose from {', '.join(usable)}")
    if not CHAIN_LABEL.fullmatch(str(label)):
        raise RecallError(
            f"methods.{label}: a chain label is part of stage names (joined with '-') and folders, so it takes "
            f"lowercase letters, digits and underscores only; rename it, e.g. "
            f"{re.sub(r'[^a-z0-9_]+', '_', str(label).lower()).strip('_') or method}"
        )
    if label in usable and label != method:
        raise RecallError(
            f"methods.{label}: {label} is a registered method's name, but this chain runs method: {method}; "
            f"give it another label, e.g. {method}_{label}"
        )


def validate_merge_method(params: Params, label: str, given: dict, path: str) -> None:
    """A merge chain's `methods.<label>`: its kernel parameters, and the settings of its weight source:
    beside them, or, for a source with a section of its own (RECALL's `recall`), keys of that section
    the chain sets for itself (the multi scenario measures that source once: none there)."""
    method = params.registered(label)
    source, settings = method.source, method.source.settings()
    section = getattr(params.sections, source.section) if source.section is not None else None
    own = [f.name for f in dataclasses.fields(section if section is not None else settings)] if settings else []
    reject_unknown(given, [*method.params, *own], path, "parameter")
    try:
        method.resolve({k: v for k, v in given.items() if k in method.params})  # a missing or bad one names its flag
    except RecallError as err:
        raise RecallError(f"{path}: {err}") from None
    mine = {k: v for k, v in given.items() if k in own and k not in method.params}
    if section is None:
        if settings:
            source.settings_from(mine, path)
        return
    if mine:
        dataclasses.replace(section, **mine).validate(path)
    if params.sections.scenario == "multi" and (mine or label != method.name):
        raise RecallError(
            f"{path}: the multi scenario measures {method.name}'s similarities once, with the `{source.section}` "
            f"section's settings, for one chain named {method.name}; set them in `{source.section}` and name the "
            f"chain {method.name}: {{}}, or compare settings in scenario: sequential or single"
        )
