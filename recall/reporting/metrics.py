"""Continual-learning metrics over the evaluations of a sequence of models (pure functions).

Notation: a task sequence 0..T-1 is learned one task per step; after step t the model is evaluated
on every task, giving the accuracy matrix R[t][j] = primary score (0-100) of task j after step t.
Columns are ordered so that task j is the one learned at step j; further columns (tasks never
learned in this sequence) may follow and count as unseen throughout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import fmean

from recall.errors import RecallError

Metrics = Mapping[str, Mapping[str, float]]  # a metrics.json: {task: {metric: score}}


def primary_score(metrics: Metrics, task: str) -> float:
    """The task's primary score: the first metric listed (`recall evaluate` lists the task's primary
    metric first, e.g. accuracy, exact_match, or BLEU for translation)."""
    if task not in metrics or not metrics[task]:
        raise RecallError(f"no score for task {task!r} in these metrics (tasks present: {', '.join(metrics)})")
    return float(next(iter(metrics[task].values())))


def accuracy_matrix(evaluations: Sequence[Metrics], tasks: Sequence[str]) -> list[list[float | None]]:
    """R[t][j]: primary score of tasks[j] in evaluations[t] (the model after step t); None where step t
    did not score task j (a sequence evaluated on the tasks seen so far)."""
    return [[primary_score(metrics, task) if task in metrics else None for task in tasks] for metrics in evaluations]


def average(row: Sequence[float | None]) -> float | None:
    """Mean over all tasks: the paper's "Avg from all tasks" / "Average" columns; None when a task
    was not scored (an average over fewer tasks would not compare with the others)."""
    return None if None in row else fmean(row)


def unseen_average(scores: Mapping[str, float], seen: Sequence[str]) -> float | None:
    """The paper's "Avg from unseen tasks": the mean score over the evaluated tasks the model was
    not fine-tuned on.

    `scores` maps every evaluated task to its primary score; `seen` lists the tasks whose training
    data went into the model (table 1: the single fine-tuning dataset, so the mean is over the other
    four; step t of a sequence: the tasks of steps 0..t). None when every task was seen.
    Check against table 1 (SST-2, "SFT only"): (31.68 + 13.28 + 44.71 + 32.32) / 4 = 30.50.
    """
    unseen = [score for task, score in scores.items() if task not in seen]
    return fmean(unseen) if unseen else None


def _check_sequence(matrix: Sequence[Sequence[float]]) -> int:
    """T, the number of steps, after checking R is at least T x T."""
    steps = len(matrix)
    if steps < 2:
        raise RecallError(f"backward transfer and forgetting need at least 2 steps, got {steps}")
    if any(len(row) < steps for row in matrix):
        raise RecallError(f"each of the {steps} steps needs scores for at least the {steps} tasks learned")
    return steps


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float:
    """BWT = mean over j < T-1 of (R[T-1][j] - R[j][j]): how the final model's score on each earlier
    task differs from its score right after learning it (negative = forgetting)."""
    last = _check_sequence(matrix) - 1
    return fmean(matrix[last][j] - matrix[j][j] for j in range(last))


def forgetting(matrix: Sequence[Sequence[float]]) -> list[float]:
    """f_j = max over t < T-1 of R[t][j], minus R[T-1][j], for each task j < T-1: the drop from the
    best score any earlier model reached on task j to the final model's score."""
    last = _check_sequence(matrix) - 1
    return [max(matrix[t][j] for t in range(last) if matrix[t][j] is not None) - matrix[last][j] for j in range(last)]
