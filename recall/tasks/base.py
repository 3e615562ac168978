"""The task interface: a task turns raw dataset rows into instruction prompts + reference answers
and scores a model's replies against those answers.

Evaluation (OpenCompass), fine-tuning and data export all code against this interface only.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
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
