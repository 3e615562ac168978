"""The OpenCompass evaluator for every registered task: scoring is the task's own `score`.

OpenCompass imports this class by name from the generated config, so answer extraction and metrics
live in one place (`recall.tasks`) whether a task is scored here or anywhere else.
"""

from __future__ import annotations

from opencompass.openicl.icl_evaluator import BaseEvaluator

from recall.tasks.base import get_task


class TaskEvaluator(BaseEvaluator):
    """Scores predictions with `get_task(task).score`; every metric is on a 0-100 scale."""

    def __init__(self, task: str, pred_postprocessor: dict | None = None) -> None:
        super().__init__(pred_postprocessor=pred_postprocessor)
        self.task = task

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return get_task(self.task).score(list(predictions), list(references))
