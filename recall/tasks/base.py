"""The task interface: a task turns raw dataset rows into instruction prompts + reference answers
and scores a model's replies against those answers.

Evaluation (OpenCompass), fine-tuning and data export all code against this interface only.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from recall.errors import RecallError


@dataclass(frozen=True)
class Example:
    prompt: str  # instruction in the paper's appendix-C QA format
    answer: str  # reference answer (label word, letter, answer text or "impossible to answer", French sentence)


class Task(ABC):
    name: str  # e.g. "sst2"
    source: str  # hub dataset id and config, e.g. "stanfordnlp/sst2"
    format: str  # "classification" | "extractive_qa" | "mcq" | "translation"
    metrics: tuple[str, ...]  # primary first: ("accuracy",), ("exact_match",), ("bleu", "exact_match")

    @abstractmethod
    def load(self, split: str, data_dir: Path | None = None, limit: int | None = None) -> list[Example]:
        """Examples of `split` ("train" or "test") from `data_dir/<name>/<split>.jsonl`, or from the hub
        when `data_dir` is None. Raises RecallError on missing files, bad rows or an empty split."""

    @abstractmethod
    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """Every metric of `metrics` on a 0-100 scale; predictions may be verbose chat replies."""


_REGISTRY: dict[str, Task] = {}
# Importing this module registers the built-in tasks; done lazily so `base` has no import cycle.
_CATALOG = "recall.tasks.catalog"


def register(task: Task) -> Task:
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is registered twice")
    _REGISTRY[task.name] = task
    return task


def list_tasks() -> list[Task]:
    importlib.import_module(_CATALOG)
    return list(_REGISTRY.values())


def get_task(name: str) -> Task:
    importlib.import_module(_CATALOG)
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise RecallError(f"unknown task {name!r}; known tasks: {known} (see `recall tasks list`)") from None
