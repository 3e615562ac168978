"""Continual-learning metrics on hand-worked matrices and on the paper's own numbers."""

from __future__ import annotations

import pytest

from recall.errors import RecallError
from recall.reporting.metrics import (
    accuracy_matrix,
    average,
    backward_transfer,
    forgetting,
    primary_score,
    unseen_average,
)

# Worked by hand. Tasks A, B, C learned at steps 0, 1, 2. A peaks after step 1 (not right after it
# was learned) and B scores higher before it is learned than after, so forgetting != -BWT terms.
R = [
    [80.0, 70.0, 5.0],
    [90.0, 60.0, 20.0],
    [50.0, 40.0, 90.0],
]
# BWT = ((50 - 80) + (40 - 60)) / 2 = -25
# f_A = max(80, 90) - 50 = 40 ; f_B = max(70, 60) - 40 = 30

# Paper table 7, LoRA SFT rows; columns in sequence order SST-2, SQuAD2.0, MedMCQA, IWSLT2017, RACE.
TABLE7_LORA = [
    [95.76, 31.68, 32.32, 13.28, 44.71],
    [94.38, 87.42, 16.88, 25.06, 58.15],
    [88.3, 74.89, 42.62, 19.29, 68.38],
    [76.38, 75.71, 42.39, 45.29, 58.73],
    [14.79, 68.05, 39.8, 34.85, 86.24],
]


def test_hand_worked_matrix():
    assert backward_transfer(R) == pytest.approx(-25.0)
    assert forgetting(R) == pytest.approx([40.0, 30.0])


def test_paper_table7_lora_sft():
    # (14.79-95.76) + (68.05-87.42) + (39.8-42.62) + (34.85-45.29) = -113.6, over 4 tasks
    assert backward_transfer(TABLE7_LORA) == pytest.approx(-28.4)
    assert forgetting(TABLE7_LORA) == pytest.approx([80.97, 19.37, 2.82, 10.44])
    # the "Average" column of table 7
    assert [round(average(row), 3) for row in TABLE7_LORA] == [43.55, 56.378, 58.696, 59.7, 48.746]


def test_unseen_average_matches_table1():
    # Table 1, fine-tuned on SST-2, "SFT only": avg over the other four tasks is printed as 30.50
    scores = {"sst2": 95.76, "squad_v2": 31.68, "iwslt": 13.28, "race": 44.71, "medmcqa": 32.32}
    assert unseen_average(scores, ["sst2"]) == pytest.approx(30.4975)
    assert average(list(scores.values())) == pytest.approx(43.55)
    assert unseen_average(scores, list(scores)) is None


def test_accuracy_matrix_uses_the_primary_metric():
    evaluations = [
        {"a": {"accuracy": 10.0}, "t": {"bleu": 20.0, "exact_match": 1.0}},
        {"a": {"accuracy": 30.0}, "t": {"bleu": 40.0, "exact_match": 2.0}},
    ]
    assert accuracy_matrix(evaluations, ["a", "t"]) == [[10.0, 20.0], [30.0, 40.0]]
    assert primary_score(evaluations[0], "t") == 20.0


def test_errors_name_the_problem():
    with pytest.raises(RecallError, match="no score for task 'b'"):
        primary_score({"a": {"accuracy": 1.0}}, "b")
    with pytest.raises(RecallError, match="at least 2 steps"):
        backward_transfer([[1.0, 2.0]])
    with pytest.raises(RecallError, match="at least the 3 tasks"):
        forgetting([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
