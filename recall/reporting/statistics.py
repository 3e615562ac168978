"""Paired bootstrap over test examples: how sure a score, or a difference of scores, is (pure functions).

Every model of a report is scored on the same test examples (same index = same example). A replicate
draws, per task, n example indices with replacement and rescores every evaluation on those same
indices through the task's `aggregate`, so differences between models (and between the steps of a
sequence) are paired: the example-to-example variation they share cancels.

Scores live in arrays whose last two axes are (evaluation, task): `scores` (E, T) on all examples, and
`draws` (B, E, T) on B resamples, NaN where an evaluation has no per-example records for a task. A
`Statistic` maps such an array to its values over the leading axes, so one function gives the estimate
from `scores` and B replicates from `draws`; a statistic touching a NaN has no interval.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from recall.errors import RecallError
from recall.tasks.base import Task
from recall.tasks.registry import get_task

Records = Sequence[Mapping[str, Any]]  # one examples/<task>.jsonl: a record per test example, in order
Statistic = Callable[[np.ndarray], np.ndarray]  # scores (..., evaluation, task) -> values (...)
REPLICATES = 1000
LEVEL = 0.95


class Interval(NamedTuple):
    """A statistic's estimate on all examples and its bootstrap percentile interval (None: no records)."""

    low: float | None
    estimate: float
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly on one side of 0: a difference, not noise."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def text(self, difference: bool = False) -> str:
        """The interval as tables print it, estimate then [low, high], at two decimals. A difference is signed
        and marked "*" or "no difference"; a marked one gets the decimals (up to 6) that keep its bound
        nearest 0 from reading 0.00."""
        sign = "+" if difference else ""
        if self.low is None or self.high is None:
            return f"{self.estimate:{sign}.2f} [n/a]"
        digits, near = 2, min(abs(self.low), abs(self.high))
        while difference and self.excludes_zero and digits < 6 and round(near, digits) == 0:
            digits += 1
        text = f"{self.estimate:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"
        return f"{text} {'*' if self.excludes_zero else 'no difference'}" if difference else text


def resample(task: str, n: int, replicates: int = REPLICATES, seed: int = 0) -> np.ndarray:
    """(replicates, n) example indices drawn with replacement. Seeded by the task's name too, so a task
    gets the same draws whichever other tasks or models the report holds."""
    if n < 1 or replicates < 1:
        raise RecallError(
            f"bootstrap of task {task!r} needs examples and replicates, got n={n}, replicates={replicates}"
        )
    rng = np.random.default_rng([seed, zlib.crc32(task.encode())])
    return rng.integers(0, n, size=(replicates, n))


def _mean_decomposable(task: Task) -> bool:
    # The base class's aggregate is the mean of `score`; tasks with corpus metrics (BLEU) override it.
    return type(task).aggregate is Task.aggregate


def task_draws(task: str, evaluations: Sequence[Records], indices: np.ndarray) -> np.ndarray:
    """(replicates, len(evaluations)): the task's primary metric of each evaluation on each resample.

    Mean metrics are one matrix product of the resample counts with the score columns; identical
    columns share one product so that identical results give bit-identical draws. Other metrics call
    the task's `aggregate` on each resampled list of records."""
    scorer = get_task(task)
    if not _mean_decomposable(scorer):
        return np.array([[scorer.aggregate([records[i] for i in row]) for records in evaluations] for row in indices])
    replicates, n = indices.shape
    counts = np.bincount((indices + n * np.arange(replicates)[:, None]).ravel(), minlength=replicates * n)
    scores = [np.array([float(r["score"]) for r in records]) for records in evaluations]
    column: dict[bytes, int] = {}  # identical score vectors share one column of the product
    for vector in scores:
        column.setdefault(vector.tobytes(), len(column))
    unique = np.frombuffer(b"".join(column), dtype=np.float64).reshape(len(column), n)
    means = counts.reshape(replicates, n) @ unique.T / n
    return means[:, [column[vector.tobytes()] for vector in scores]]


def example_counts(evaluations: Sequence[Mapping[str, Records]], tasks: Sequence[str]) -> dict[str, int | None]:
    """Examples scored per task (None: no evaluation has records for it). Pairing needs every
    evaluation to have scored the same examples, so differing counts are an error."""
    counts: dict[str, int | None] = {}
    for task in tasks:
        sizes = {len(e[task]) for e in evaluations if task in e}
        if len(sizes) > 1:
            raise RecallError(
                f"task {task!r} was scored on different numbers of examples ({sorted(sizes)}) across "
                f"the evaluations; a paired comparison needs the same test examples for every model"
            )
        counts[task] = sizes.pop() if sizes else None
    return counts


def score_draws(
    evaluations: Sequence[Mapping[str, Records]], tasks: Sequence[str], replicates: int = REPLICATES, seed: int = 0
) -> np.ndarray:
    """(replicates, E, T): every evaluation's primary score of every task on the same resamples of the
    task's examples; NaN where an evaluation has no records for a task."""
    draws = np.full((replicates, len(evaluations), len(tasks)), np.nan)
    for t, (task, n) in enumerate(example_counts(evaluations, tasks).items()):
        if n is None:
            continue
        rows = [e for e, records in enumerate(evaluations) if task in records]
        draws[:, rows, t] = task_draws(task, [evaluations[e][task] for e in rows], resample(task, n, replicates, seed))
    return draws


def full_scores(evaluations: Sequence[Mapping[str, Records]], tasks: Sequence[str]) -> np.ndarray:
    """(E, T): each evaluation's primary score of each task on all its records; NaN without records."""
    return np.array(
        [[get_task(task).aggregate(e[task]) if task in e else np.nan for task in tasks] for e in evaluations]
    ).reshape(len(evaluations), len(tasks))


def mean_score(evaluation: int, columns: Sequence[int]) -> Statistic:
    """An evaluation's mean primary score over some tasks: "Avg from all tasks", the unseen-task
    average (the columns not fine-tuned on), or a sequence's final average (its last step)."""
    cols = list(columns)
    return lambda s: s[..., evaluation, cols].mean(axis=-1)


def mean_of(statistics: Sequence[Statistic]) -> Statistic:
    """The mean of several statistics, e.g. a method's average over its fine-tuning tasks."""
    return lambda s: np.mean([stat(s) for stat in statistics], axis=0)


def backward_transfer(steps: Sequence[int], learned: Sequence[int]) -> Statistic:
    """BWT = mean over j < T-1 of R[T-1][j] - R[j][j] (as `recall.reporting.metrics.backward_transfer`), where
    `steps[t]` is the evaluation after step t and `learned[t]` the column of the task it learned."""
    if len(steps) < 2 or len(learned) != len(steps):
        raise RecallError(
            f"backward transfer needs at least 2 steps with one learned task each, "
            f"got {len(steps)} steps and {len(learned)} tasks"
        )
    last, before, cols = steps[-1], list(steps[:-1]), list(learned[:-1])
    return lambda s: (s[..., last, cols] - s[..., before, cols]).mean(axis=-1)


def difference(a: Statistic, b: Statistic) -> Statistic:
    """a - b on the same resample: the paired difference."""
    return lambda s: a(s) - b(s)


def interval(statistic: Statistic, scores: np.ndarray, draws: np.ndarray, level: float = LEVEL) -> Interval:
    """The statistic on all examples, and the central `level` percentile interval of its replicates
    (no bounds when a replicate is NaN: some evaluation it needs has no per-example records)."""
    estimate = float(statistic(scores))
    values = statistic(draws)
    if np.isnan(values).any():
        return Interval(None, estimate, None)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), estimate, float(high))


def forgetting(steps: Sequence[int], learned: Sequence[int]) -> Statistic:
    """Mean forgetting = mean over j < T-1 of (max over t < T-1 of R[t][j]) - R[T-1][j] (as
    `recall.reporting.metrics.forgetting`); steps that did not score task j are left out of the max."""
    if len(steps) < 2 or len(learned) != len(steps):
        raise RecallError(f"forgetting needs at least 2 steps with one learned task each, got {len(steps)}")
    last, before, cols = steps[-1], list(steps[:-1]), list(learned[:-1])

    def statistic(s: np.ndarray) -> np.ndarray:
        earlier = s[..., before, :][..., cols]  # (..., steps before the last, tasks learned before it)
        best = np.fmax.reduce(np.moveaxis(earlier, -2, 0), axis=0)  # a step without the task is NaN: skipped
        return (best - s[..., last, cols]).mean(axis=-1)

    return statistic


def two_level(
    runs: Sequence[tuple[float, np.ndarray]], replicates: int = REPLICATES, seed: int = 0, level: float = LEVEL
) -> Interval:
    """The mean of a per-run statistic over runs, with a two-level bootstrap interval.

    `runs` holds each run's (estimate, its B example-resample replicates). A replicate draws the runs
    with replacement (training variance: order and seed), then for each drawn run one of its example
    resamples (test-sample variance), and averages. The draws depend only on the number of runs, B and
    `seed`, so every statistic over the same runs uses the same draws: differences are paired."""
    if not runs:
        raise RecallError("a two-level interval needs at least one run")
    estimates = np.array([estimate for estimate, _ in runs], dtype=float)
    draws = np.stack([np.asarray(d, dtype=float) for _, d in runs])  # (K, B)
    if np.isnan(draws).any():
        return Interval(None, float(estimates.mean()), None)
    k, b = draws.shape
    rng = np.random.default_rng([seed, k, b])
    values = draws[rng.integers(0, k, (replicates, k)), rng.integers(0, b, (replicates, k))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return Interval(float(low), float(estimates.mean()), float(high))
