"""The task interface: a task turns raw dataset rows into instruction prompts + reference answers
and scores a model's replies against those answers.

Evaluation (OpenCompass), fine-tuning and data export all code against this interface only. The
registry holds the built-in tasks and those declared in data: a folder `<name>/` with `task.yaml`,
`train.jsonl` and `test.jsonl` (`recall.tasks.declared`), found under a task data folder by name.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recall.errors import RecallError

if TYPE_CHECKING:
    from recall.tasks.formats import TaskSpec


@dataclass(frozen=True)
class Example:
    prompt: str  # instruction in the paper's appendix-C QA format
    answer: str  # reference answer (label word, letter, answer text or "impossible to answer", French sentence)
    choices: tuple[str, ...] = ()  # the answers it can have, when a closed set: label words, its option letters


class Task(ABC):
    name: str  # e.g. "sst2"
    spec: TaskSpec  # what the task is, in a task.yaml's terms: enough to score it anywhere
    source: str  # hub dataset id and config ("stanfordnlp/sst2"), or a declared task's task.yaml
    format: str  # "classification" | "multiple_choice" | "qa" | "generation"
    metrics: tuple[str, ...]  # primary first: ("accuracy",), ("exact_match", "f1"), ("bleu", "rouge_l", "exact_match")
    # The closed set of answers of label and letter tasks, e.g. ("negative", "positive") or A-D: every
    # answer is one of them, so they can be ranked by likelihood. Empty for free-text tasks.
    choices: tuple[str, ...] = ()

    @abstractmethod
    def load(self, split: str, data_dir: Path | None = None, limit: int | None = None) -> list[Example]:
        """Examples of `split` ("train" or "test") from `data_dir/<name>/<split>.jsonl`, or from the hub
        when `data_dir` is None. Raises RecallError on missing files, bad rows or an empty split."""

    @abstractmethod
    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Every metric of `metrics` on a 0-100 scale; predictions may be verbose chat replies."""

    def records(self, predictions: list[str], references: list[str]) -> list[dict]:
        """One record per example, in order: its `score` (0-100), what it contributes to the primary
        metric, plus whatever `aggregate` needs. Default: the primary metric of the example alone."""
        primary = self.metrics[0]
        return [{"score": self.score([p], [r])[primary]} for p, r in zip(predictions, references, strict=True)]

    def aggregate(self, records: Sequence[Mapping]) -> float:
        """The primary metric (0-100) of a sample of per-example records (`examples/<task>.jsonl`
        lines), so that a bootstrap can resample examples. Mean-decomposable metrics average each
        record's `score`; corpus-level metrics (BLEU) override this."""
        if not records:
            raise RecallError(f"task {self.name}: no per-example records to aggregate")
        return sum(float(r["score"]) for r in records) / len(records)


_REGISTRY: dict[str, Task] = {}
# Imported lazily so that `base` has no import cycle: the catalog registers the built-in tasks on
# import, and `declared` reads task folders.
_CATALOG = "recall.tasks.catalog"
_DECLARED = "recall.tasks.declared"


def register(task: Task) -> Task:
    """Add `task`, or return the registered task of that name if it is the same task (a task folder
    read again, or its copy in a pipeline's data); two different tasks of one name are an error."""
    known = _REGISTRY.setdefault(task.name, task)
    if known is not task and (type(known), getattr(known, "spec", None)) != (type(task), getattr(task, "spec", None)):
        raise RecallError(
            f"two different tasks are named {task.name!r}: {known.source} and {task.source}; "
            "rename one of the task folders"
        )
    return known


def registered(name: str) -> Task | None:
    return _REGISTRY.get(name)


def list_tasks(data_dir: str | os.PathLike | None = None) -> list[Task]:
    """Every task: the built-in ones, and those declared in `data_dir`."""
    importlib.import_module(_CATALOG)
    if data_dir is not None:
        importlib.import_module(_DECLARED).declare_all(Path(data_dir))
    return list(_REGISTRY.values())


def get_task(name: str, data_dir: str | os.PathLike | None = None) -> Task:
    """The task `name`, declared by `data_dir/<name>/task.yaml` if that exists, else registered."""
    importlib.import_module(_CATALOG)
    if data_dir is not None:
        importlib.import_module(_DECLARED).declare_in(Path(data_dir), name)
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise RecallError(
            f"unknown task {name!r}; known tasks: {known} (see `recall tasks list`). A task of your own is a "
            "folder <name>/ holding task.yaml, train.jsonl and test.jsonl in the data folder (see the README)"
        ) from None
