"""params.yaml: the run, validated as a whole before any stage does work."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from recall.errors import RecallError
from recall.finetune import FinetuneConfig
from recall.merge.methods import METHODS
from recall.recall_weights import RecallSettings
from recall.tasks.base import get_task

SCENARIOS = ("sequential", "single", "multi")
BASE_STEP = "base"


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

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(**self.raw["finetune"])

    def recall_settings(self) -> RecallSettings:
        cfg = dict(self.raw["recall"])
        cfg.pop("samples")
        return RecallSettings(**cfg)

    @property
    def baselines(self) -> dict[str, dict]:
        """Baseline method -> its kernel parameters. Items are a name or {name: {param: value}}."""
        out = {}
        for item in self.raw["baselines"]:
            name, given = (item, {}) if isinstance(item, str) else next(iter(item.items()))
            out[name] = dict(given or {})
        return out

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
    _require(raw, "base", "data", "scenario", "sequence", "finetune", "recall", "baselines", "evaluate")
    if raw["scenario"] not in SCENARIOS:
        raise RecallError(f"unknown scenario {raw['scenario']!r}; choose one of {', '.join(SCENARIOS)}")
    sequence = raw["sequence"]
    if not sequence:
        raise RecallError("the sequence in params.yaml is empty; list at least one {task, after} step")
    seen = [BASE_STEP]
    for i, step in enumerate(sequence):
        if not isinstance(step, dict) or set(step) != {"task", "after"}:
            raise RecallError(f"sequence item {i + 1} must be a mapping with exactly 'task' and 'after', got {step!r}")
        get_task(step["task"])  # unknown task: an error listing the known ones
        if step["task"] in seen:
            raise RecallError(f"task {step['task']!r} appears twice in the sequence; each step needs its own task")
        expected = seen[-1] if raw["scenario"] == "sequential" else BASE_STEP
        if step["after"] != expected:
            raise RecallError(
                f"sequence item {i + 1} ({step['task']}) has after: {step['after']}, but a {raw['scenario']} run "
                f"needs after: {expected}"
            )
        seen.append(step["task"])
    usable = sorted(m for m, spec in METHODS.items() if spec.weights == "given" and not spec.needs_fisher)
    for item in raw["baselines"]:
        if not isinstance(item, str) and not (isinstance(item, dict) and len(item) == 1):
            raise RecallError(f"baseline {item!r} must be a method name or {{method: {{param: value}}}}")
    for method, given in params.baselines.items():
        if method not in usable:
            raise RecallError(f"baseline {method!r} cannot run here; choose from {', '.join(usable)}")
        METHODS[method].resolve(given)  # a missing or out-of-range parameter names its flag
    recall_cfg = raw["recall"]
    if recall_cfg.get("samples", 0) < 1:
        raise RecallError("recall.samples (task examples used for representations) must be >= 1")
    try:
        params.finetune_config().validate()
        params.recall_settings().validate()
    except TypeError as err:
        raise RecallError(f"params.yaml: {err}; check the finetune and recall sections") from None
    if raw["scenario"] == "multi" and not isinstance(raw.get("multi", {}).get("with_base", True), bool):
        raise RecallError("multi.with_base must be true or false")
    if raw["data"]["source"] != "generated" and not (params.root / raw["data"]["source"]).is_dir():
        raise RecallError(f"data.source {raw['data']['source']} is not a folder; give 'generated' or a data folder")
