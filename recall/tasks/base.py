"""The task interface: a task turns raw dataset rows into instruction prompts + reference answers
and scores a model's replies against those answers.

Evaluation (OpenCompass), fine-tuning and data export all code against this interface only. A task
is described by a `TaskSpec`, the fields of a task.yaml (`recall.tasks.formats` reads and checks them);
the registry of known tasks is `recall.tasks.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recall.data import Example
from recall.errors import RecallError

__all__ = ["Example", "Task", "TaskSpec"]


@dataclass(frozen=True)
class TaskSpec:
    """What a task is, in task.yaml's terms."""

    format: str
    template: str | None = None  # "{field}" placeholders; None: every row holds a ready `prompt`
    answer: str = "response"  # the field holding the reference answer
    metric: str | None = None  # the primary metric; None: the format's first
    labels: tuple[tuple[Any, str], ...] = ()  # classification: (value in the data, label word)
    options: str | tuple[str, ...] | None = None  # multiple choice: a field holding a list, or one field per option

    def as_dict(self) -> dict:
        """The spec as a task.yaml holds it; `parse_spec` reads it back to an equal spec."""
        out: dict[str, Any] = {"format": self.format}
        if self.metric:
            out["metric"] = self.metric
        if self.template is not None:
            out["template"] = self.template
        out["answer"] = self.answer
        if self.labels:
            plain = all(value == word for value, word in self.labels)
            out["labels"] = [word for _, word in self.labels] if plain else dict(self.labels)
        if self.options is not None:
            out["options"] = self.options if isinstance(self.options, str) else list(self.options)
        return out


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
