"""The promotion gate: does a candidate model replace the champion? (a pure decision over scored examples)

Inputs: the per-example records (`examples/<task>.jsonl` of an evaluation) of the candidate and of the
champion on the same test examples of each task, the task the candidate has just learned, and a
tolerance in points (0-100 scale of the task's primary metric). Per task, d = candidate - champion
with its 95% paired-bootstrap interval [low, high] (`recall.reporting.statistics`, as in the report).

The rule, for a candidate that learned task `new`:

- it has *forgotten* an earlier task when high < -tolerance: the whole interval lies below
  -tolerance, so it is worse than the champion there, and by more than the tolerance, beyond doubt;
- it has *learned* `new` when low > 0: better than the champion there, the interval excluding 0;
- promoted when it has learned `new` and forgotten nothing; refused otherwise, the reason naming every
  failing task and its difference.

On a sequence's first step the champion is the base model: the step is promoted when it beats the base
on its task. A task without records on either side has no interval and fails the rule (the decision
needs evidence).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recall.errors import RecallError
from recall.reporting import statistics as paired
from recall.reporting.statistics import Interval, Records

TOLERANCE = 2.0  # points


@dataclass(frozen=True)
class TaskDifference:
    task: str
    candidate: float  # primary score on all examples
    champion: float
    difference: Interval  # candidate - champion, paired
    n: int | None  # test examples compared
    new: bool  # the task the candidate has just learned
    passed: bool

    def verdict(self, tolerance: float) -> str:
        if self.passed:
            return "learned" if self.new else "kept"
        if self.new:
            return "not learned"
        return f"forgot (beyond -{tolerance:g})"


@dataclass(frozen=True)
class Decision:
    new_task: str
    tolerance: float
    tasks: tuple[TaskDifference, ...]

    @property
    def promoted(self) -> bool:
        return all(t.passed for t in self.tasks)

    @property
    def failures(self) -> list[TaskDifference]:
        return [t for t in self.tasks if not t.passed]

    @property
    def reason(self) -> str:
        if self.promoted:
            return f"learned {self.new_task} and kept every earlier task within {self.tolerance:g} points"
        parts = []
        for t in self.failures:
            what = f"did not learn {t.task}" if t.new else f"worse on {t.task}"
            parts.append(f"{what}: {_points(t.difference)} vs the champion")
        return "; ".join(parts)

    def table(self) -> str:
        """The per-task differences as printed by `recall gate` and written into the report."""
        lines = [
            "| Task | Candidate | Champion | Candidate - champion (95% CI) | n | Verdict |",
            "|---|---|---|---|---|---|",
        ]
        for t in self.tasks:
            name = f"{t.task} (new)" if t.new else t.task
            lines.append(
                f"| {name} | {t.candidate:.2f} | {t.champion:.2f} | {t.difference.text(difference=True)} "
                f"| {t.n or 'n/a'} | {t.verdict(self.tolerance)} |"
            )
        return "\n".join(lines)

    def record(self) -> dict:
        """The decision as the gate stage's metrics.json and MLflow hold it (numbers DVC can compare)."""
        return {
            "decision": "promoted" if self.promoted else "refused",
            "promoted": int(self.promoted),
            "reason": self.reason,
            "new_task": self.new_task,
            "tolerance": self.tolerance,
            "rule": "refused if, on an earlier task, the 95% interval of candidate - champion lies wholly "
            "below -tolerance, or if, on the new task, its low bound is not above 0",
            "tasks": {t.task: _numbers(t) for t in self.tasks},
        }


def _points(iv: Interval) -> str:
    """A difference in the reason's words: estimate and its interval, or why there is none."""
    if iv.low is None or iv.high is None:
        return "no per-example records to compare"
    return f"{iv.estimate:+.2f} points [{iv.low:+.2f}, {iv.high:+.2f}]"


def _numbers(t: TaskDifference) -> dict:
    """A task's row of the record; NaN (no records) as null, which JSON has."""
    low, estimate, high = t.difference
    row = {"candidate": t.candidate, "champion": t.champion, "difference": estimate, "low": low, "high": high}
    row = {k: None if v is None or math.isnan(v) else v for k, v in row.items()}
    return {**row, "n": t.n, "new": t.new, "passed": t.passed}


def decide(
    candidate: Mapping[str, Records],
    champion: Mapping[str, Records],
    tasks: Sequence[str],
    new_task: str,
    tolerance: float = TOLERANCE,
    replicates: int = paired.REPLICATES,
    seed: int = 0,
) -> Decision:
    """The gate's decision on `tasks` (every task learned so far, `new_task` among them)."""
    if new_task not in tasks:
        raise RecallError(f"the new task {new_task!r} is not among the tasks compared ({', '.join(tasks)})")
    if tolerance < 0:
        raise RecallError(f"promote.tolerance must be >= 0 points, got {tolerance}")
    evaluations = [candidate, champion]
    tasks = list(tasks)
    n = paired.example_counts(evaluations, tasks)
    scores = paired.full_scores(evaluations, tasks)
    draws = paired.score_draws(evaluations, tasks, replicates, seed)
    out = []
    for t, task in enumerate(tasks):
        diff = paired.interval(paired.difference(paired.mean_score(0, [t]), paired.mean_score(1, [t])), scores, draws)
        if np.isnan(diff.estimate):  # a side without records: no evidence either way
            diff = Interval(None, float("nan"), None)
        new = task == new_task
        if diff.low is None or diff.high is None:
            passed = False
        else:
            passed = diff.low > 0 if new else diff.high >= -tolerance
        out.append(TaskDifference(task, float(scores[0, t]), float(scores[1, t]), diff, n[task], new, passed))
    return Decision(new_task, tolerance, tuple(out))
