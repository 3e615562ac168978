"""The promotion gate's decision on hand-made per-example records (accuracy: 100 right, 0 wrong)."""

from __future__ import annotations

import math

import pytest

from recall.errors import RecallError
from recall.gate import decide

OLD, NEW = "gen_sentiment", "gen_knowledge"


def records(right: int, n: int, flip: int = 0) -> list[dict]:
    """n examples, the first `right` correct; `flip` of the correct ones (from the first) made wrong."""
    return [{"index": i, "score": 100.0 if flip <= i < right else 0.0} for i in range(n)]


def test_a_candidate_that_learned_the_new_task_and_kept_the_old_one_is_promoted():
    champion = {OLD: records(80, 200), NEW: records(50, 200)}
    candidate = {OLD: records(80, 200, flip=1), NEW: records(150, 200)}  # one old example lost: noise
    decision = decide(candidate, champion, [OLD, NEW], NEW)
    assert decision.promoted and decision.failures == []
    old, new = decision.tasks
    assert old.difference.estimate == pytest.approx(-0.5) and new.difference.estimate == pytest.approx(50.0)
    assert new.difference.low > 0 and old.n == new.n == 200
    assert decision.record()["decision"] == "promoted" and decision.record()["promoted"] == 1


def test_forgetting_an_earlier_task_beyond_the_tolerance_is_refused_and_named():
    # 100 of 1000 examples lost: d = -10 points, whose 95% interval is about -10 +- 1.86 (binomial standard
    # error 100 * sqrt(0.1 * 0.9 / 1000) = 0.95): wholly below -7, not wholly below -9.5
    champion = {OLD: records(900, 1000), NEW: records(0, 1000)}
    candidate = {OLD: records(900, 1000, flip=100), NEW: records(500, 1000)}
    refused = decide(candidate, champion, [OLD, NEW], NEW, tolerance=7.0)
    assert not refused.promoted and [t.task for t in refused.failures] == [OLD]
    low, estimate, high = refused.tasks[0].difference
    assert estimate == pytest.approx(-10.0) and -12.5 < low < high < -7.5
    assert refused.reason.startswith("worse on gen_sentiment: -10.00 points [-1") and refused.record()["promoted"] == 0
    assert decide(candidate, champion, [OLD, NEW], NEW, tolerance=9.5).promoted  # within the tolerance


def test_a_drop_that_is_not_significant_passes_whatever_its_size():
    champion = {OLD: records(6, 10), NEW: records(0, 10)}
    candidate = {OLD: records(6, 10, flip=1), NEW: records(10, 10)}  # -10 points on 10 examples: noise
    decision = decide(candidate, champion, [OLD, NEW], NEW)
    assert decision.tasks[0].difference.estimate == pytest.approx(-10.0) and decision.tasks[0].difference.high >= -2
    assert decision.promoted


def test_a_candidate_that_did_not_learn_the_new_task_is_refused():
    same = {OLD: records(50, 100), NEW: records(30, 100)}
    decision = decide(dict(same), same, [OLD, NEW], NEW)
    assert not decision.promoted and [t.task for t in decision.failures] == [NEW]
    assert decision.reason == "did not learn gen_knowledge: +0.00 points [+0.00, +0.00] vs the champion"


def test_the_first_step_is_promoted_when_it_beats_the_base_on_its_task():
    base = {OLD: records(10, 50)}
    assert decide({OLD: records(40, 50)}, base, [OLD], OLD).promoted
    assert not decide({OLD: records(5, 50)}, base, [OLD], OLD).promoted


def test_a_task_without_records_fails_and_bad_inputs_are_named():
    decision = decide({OLD: records(5, 5)}, {}, [OLD], OLD)
    assert not decision.promoted and math.isnan(decision.tasks[0].difference.estimate)
    assert decision.record()["tasks"][OLD]["difference"] is None  # JSON has no NaN
    with pytest.raises(RecallError, match="same test examples"):
        decide({OLD: records(5, 5)}, {OLD: records(5, 6)}, [OLD], OLD)
    with pytest.raises(RecallError, match="not among the tasks"):
        decide({}, {}, [OLD], NEW)
    with pytest.raises(RecallError, match="tolerance must be >= 0"):
        decide({}, {}, [OLD], OLD, tolerance=-1)
