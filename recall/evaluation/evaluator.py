"""OpenCompass evaluators for every task: scoring is the task's own `score` and `records`.

OpenCompass imports these classes by name from the generated config, so answer extraction and metrics
live in one place (`recall.tasks`) whether a task is scored here or anywhere else. The config gives
each task's spec (`definition`), from which the task is rebuilt here: a task declared in a folder
needs no registry in OpenCompass's process. Each returns, besides
its metrics, `details`: one dict per example, which OpenCompass writes into the dataset's result file
(`recall.evaluation.results` turns them into `examples/<task>.jsonl`). OpenCompass passes `score` the
prediction-file fields its signature names, which is how the likelihood evaluators get `answer_nll`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import fmean

from opencompass.openicl.icl_evaluator import BaseEvaluator

from recall.errors import RecallError
from recall.tasks.base import Task
from recall.tasks.formats import make_task, parse_spec


def task_details(scorer: Task, predictions: list[str], references: list[str]) -> dict:
    """The task's metrics, and per example its record plus the prediction and the reference."""
    records = scorer.records(predictions, references)
    details = [
        {**record, "prediction": prediction, "reference": reference}
        for record, prediction, reference in zip(records, predictions, references, strict=True)
    ]
    return {**scorer.score(predictions, references), "details": details}


def reference_nll(task: str, references: Sequence[str], answer_nll: Sequence[Mapping[str, float]]) -> list[float]:
    """Each example's mean NLL per token of its reference answer."""
    missing = [r for r, scores in zip(references, answer_nll, strict=True) if r not in scores]
    if missing:
        raise RecallError(
            f"task {task}: reference answer {missing[0]!r} is not among the scored candidates; every "
            "reference of a likelihood-scored task must be one of its choices"
        )
    return [float(scores[r]) for r, scores in zip(references, answer_nll)]


class _TaskEvaluatorBase(BaseEvaluator):
    def __init__(self, task: str, pred_postprocessor: dict | None = None) -> None:
        super().__init__(pred_postprocessor=pred_postprocessor)
        self.task = task


class TaskEvaluator(_TaskEvaluatorBase):
    """Generated replies: the task's metrics (0-100) and per-example details."""

    def __init__(self, task: str, definition: Mapping, pred_postprocessor: dict | None = None) -> None:
        super().__init__(task, pred_postprocessor)
        self.scorer = make_task(task, parse_spec(definition))

    def score(self, predictions: list[str], references: list[str]) -> dict:
        return task_details(self.scorer, list(predictions), list(references))


class ChoiceEvaluator(TaskEvaluator):
    """Answers chosen by likelihood (`AnswerPPLInferencer` with candidates): the task's metrics, then
    `nll`, the mean over examples of the reference's mean NLL per token; both per example in details."""

    def score(self, predictions: list[str], references: list[str], answer_nll: list[dict]) -> dict:  # type: ignore[override]
        result = task_details(self.scorer, list(predictions), list(references))
        nll = reference_nll(self.task, references, answer_nll)
        for detail, value in zip(result["details"], nll):
            detail["nll"] = value
        return {**result, "nll": fmean(nll)}


class AnswerNLLEvaluator(_TaskEvaluatorBase):
    """The reference's likelihood alone (`AnswerPPLInferencer` without candidates): `nll` and per example."""

    def score(self, references: list[str], answer_nll: list[dict]) -> dict:
        nll = reference_nll(self.task, references, answer_nll)
        return {"nll": fmean(nll), "details": [{"nll": value} for value in nll]}
