"""The paired bootstrap on synthetic per-example records: exact zeros for identical results, clear
differences found, one-example differences not, BWT replicates equal to BWT worked by hand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from recall.data import Example
from recall.errors import RecallError
from recall.reporting import report
from recall.reporting import statistics as paired
from recall.reporting.metrics import backward_transfer
from recall.tasks.base import Task

TASKS = ["gen_sentiment", "gen_knowledge"]  # mean-decomposable: accuracy


def records(correct: Sequence[bool]) -> list[dict]:
    return [
        {"index": i, "score": 100.0 if ok else 0.0, "nll": 0.5, "prediction": "p", "reference": f"r{i}"}
        for i, ok in enumerate(correct)
    ]


def correct(n: int, right: int, seed: int = 0) -> list[bool]:
    """n examples of which `right` are correct, in a shuffled order."""
    flags = np.arange(n) < right
    np.random.default_rng(seed).shuffle(flags)
    return flags.tolist()


def evaluation(*per_task: Sequence[bool]) -> dict[str, list[dict]]:
    return {task: records(flags) for task, flags in zip(TASKS, per_task)}


def bootstrap(evaluations, replicates: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return paired.full_scores(evaluations, TASKS), paired.score_draws(evaluations, TASKS, replicates, seed)


def test_identical_results_differ_by_exactly_zero():
    same = evaluation(correct(300, 170, 1), correct(300, 90, 2))
    scores, draws = bootstrap([same, evaluation(correct(300, 200, 3), correct(300, 100, 4)), dict(same)])
    diff = paired.difference(paired.mean_score(2, [0, 1]), paired.mean_score(0, [0, 1]))
    assert paired.interval(diff, scores, draws) == (0.0, 0.0, 0.0)
    assert not paired.interval(diff, scores, draws).excludes_zero
    # also for BWT: sequences 0 -> 1 and 2 -> 1 hold the same results
    bwt = paired.difference(paired.backward_transfer([0, 1], [0, 1]), paired.backward_transfer([2, 1], [0, 1]))
    assert paired.interval(bwt, scores, draws) == (0.0, 0.0, 0.0)


def test_a_clearly_better_method_is_a_difference():
    scores, draws = bootstrap(
        [evaluation(correct(200, 180), correct(200, 180, 1)), evaluation(correct(200, 20), correct(200, 20, 1))]
    )
    diff = paired.interval(paired.difference(paired.mean_score(0, [0, 1]), paired.mean_score(1, [0, 1])), scores, draws)
    assert diff.estimate == pytest.approx(80.0)
    assert diff.excludes_zero and 70 < diff.low < diff.estimate < diff.high < 90


def test_one_example_of_200_is_no_difference():
    flags = correct(200, 120)
    better = list(flags)
    better[flags.index(False)] = True
    scores, draws = bootstrap([evaluation(better, flags), evaluation(flags, flags)])
    diff = paired.interval(paired.difference(paired.mean_score(0, [0]), paired.mean_score(1, [0])), scores, draws)
    assert diff.estimate == pytest.approx(0.5)
    assert diff.low <= 0 <= diff.high and not diff.excludes_zero
    # unpaired, each model's own interval is about +-7 points wide
    own = paired.interval(paired.mean_score(0, [0]), scores, draws)
    assert own.high - own.low > 10


def test_a_marked_difference_never_prints_as_zero():
    # table 1's RECALL against its RACE expert: a few BLEU n-grams, an interval wholly above 0
    tiny = paired.Interval(0.00002, 0.0006, 0.0045)
    assert tiny.text(difference=True) == "+0.00060 [+0.00002, +0.00450] *"
    assert paired.Interval(-1.0, 0.5, 2.0).text(difference=True) == "+0.50 [-1.00, +2.00] no difference"
    assert paired.Interval(0.0, 0.0, 0.0).text(difference=True) == "+0.00 [+0.00, +0.00] no difference"
    assert paired.Interval(12.3456, 23.19, 24.46).text() == "23.19 [12.35, 24.46]"
    assert paired.Interval(None, 1.5, None).text(difference=True) == "+1.50 [n/a]"
    # metrics.json keeps significant digits, so the stored bound still excludes 0
    assert report._rounded(0.00002) == 0.00002 and report._rounded(28.40123456) == 28.4012


def test_bwt_replicates_match_bwt_by_hand():
    tasks = [*TASKS, "gen_reading"]  # learned at steps 0, 1, 2
    steps = [
        {task: records(correct(50, right, seed)) for seed, (task, right) in enumerate(zip(tasks, rights))}
        for rights in ([40, 10, 5], [30, 45, 10], [25, 35, 45])
    ]
    scores, draws = paired.full_scores(steps, tasks), paired.score_draws(steps, tasks, replicates=50, seed=7)
    stat = paired.backward_transfer([0, 1, 2], [0, 1, 2])
    # by hand: ((R[2][0] - R[0][0]) + (R[2][1] - R[1][1])) / 2 = ((50 - 80) + (70 - 90)) / 2 = -25
    assert paired.interval(stat, scores, draws).estimate == pytest.approx(-25.0)
    indices = {task: paired.resample(task, 50, 50, 7) for task in tasks}
    for b in range(50):  # each replicate: R rebuilt from the resampled records, then recall.reporting.metrics' BWT
        R = [[np.mean([step[task][i]["score"] for i in indices[task][b]]) for task in tasks] for step in steps]
        assert stat(draws[b]) == pytest.approx(backward_transfer(R))


def test_draws_recompute_aggregate_on_the_same_resample():
    evaluations = [evaluation(correct(40, 25, s), correct(40, 10, s + 1)) for s in range(3)]
    draws = paired.score_draws(evaluations, TASKS, replicates=20, seed=3)
    for t, task in enumerate(TASKS):
        for b, row in enumerate(paired.resample(task, 40, 20, 3)):
            for e, ev in enumerate(evaluations):
                assert draws[b, e, t] == pytest.approx(sum(ev[task][i]["score"] for i in row) / 40)


def test_deterministic_by_seed_and_per_task():
    evaluations = [evaluation(correct(30, 12), correct(30, 20))]
    first = paired.score_draws(evaluations, TASKS, replicates=100, seed=0)
    assert np.array_equal(first, paired.score_draws(evaluations, TASKS, replicates=100, seed=0))
    assert not np.array_equal(first, paired.score_draws(evaluations, TASKS, replicates=100, seed=1))
    # a task's draws do not depend on which other tasks are bootstrapped with it
    alone = paired.score_draws([{"gen_knowledge": evaluations[0]["gen_knowledge"]}], ["gen_knowledge"], 100, 0)
    assert np.array_equal(alone[:, :, 0], first[:, :, 1])


class Median(Task):
    """A task whose metric is not a mean, to exercise the per-replicate `aggregate` path."""

    name, source, format, metrics = "median", "test", "classification", ("median",)

    def load(self, split, data_dir=None, limit=None) -> list[Example]:
        raise NotImplementedError

    def score(self, predictions, references) -> dict[str, float]:
        raise NotImplementedError

    def aggregate(self, records) -> float:
        return float(np.median([r["score"] for r in records]))


def test_other_metrics_call_aggregate_per_resample(monkeypatch):
    monkeypatch.setattr(paired, "get_task", lambda name: Median())
    values = [{"median": [{"score": float(s)} for s in np.random.default_rng(e).uniform(0, 100, 25)]} for e in range(2)]
    draws = paired.score_draws(values, ["median"], replicates=30, seed=0)
    for b, row in enumerate(paired.resample("median", 25, 30, 0)):
        assert draws[b, 1, 0] == np.median([values[1]["median"][i]["score"] for i in row])


def test_missing_records_have_no_interval():
    evaluations = [evaluation(correct(20, 10), correct(20, 5)), {}]  # the second: an older run
    scores = np.array([[50.0, 25.0], [60.0, 30.0]])
    draws = paired.score_draws(evaluations, TASKS, replicates=10)
    assert paired.interval(paired.mean_score(1, [0, 1]), scores, draws) == (None, 45.0, None)
    assert paired.interval(paired.mean_score(0, [0, 1]), scores, draws).low is not None
    assert paired.example_counts(evaluations, [*TASKS, "gen_squad"]) == {
        "gen_sentiment": 20,
        "gen_knowledge": 20,
        "gen_squad": None,
    }


def test_unpaired_inputs_fail_clearly():
    with pytest.raises(RecallError, match="different numbers of examples .*same test examples"):
        paired.score_draws([evaluation(correct(20, 5)), evaluation(correct(21, 5))], TASKS[:1])
    with pytest.raises(RecallError, match="at least 2 steps"):
        paired.backward_transfer([0], [0])
