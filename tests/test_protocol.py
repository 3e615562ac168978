"""A protocol: several task orders x training seeds as independent chains, sharing identical work."""

import pytest
from test_pipeline import tiny_params, write_params

from recall.errors import RecallError
from recall.pipeline import plan, stages
from recall.pipeline.params import load_params

A, B, C = "gen_sentiment", "gen_translation", "gen_knowledge"
SEQUENCE = [{"task": A, "after": "base"}, {"task": B, "after": A}, {"task": C, "after": B}]


def protocol(tmp_path, **changes):
    given = dict(
        sequence=SEQUENCE,
        orders=[[A, B, C], [A, C, B], [C, B, A]],
        seeds=[0, 1],
        methods={"recall": {}, "sft": {}, "average": {"seeds": [0]}},
    )
    return load_params(write_params(tmp_path, tiny_params(**{**given, **changes})))


def test_two_orders_and_two_seeds_make_independent_chains_sharing_identical_steps(tmp_path):
    params = protocol(tmp_path)
    dag = {s.name: s for s in plan.plan(params)}
    runs = tmp_path / "data" / "runs"
    # A step is identified by its seed and the tasks up to it: per seed the orders ABC, ACB, CBA have the
    # steps A, AB, ABC, AC, ACB, C, CB, CBA; the first of each order (A, C) is one expert for every method.
    # Per step: recall 4 stages (features, typical, similarity, merge), average 1 merge; each method
    # evaluates; a later step fine-tunes per method. average runs with seed 0 only.
    seed0 = 2 * (1 + 5 + 1 + 2) + 6 * (6 + 2 + 3)
    seed1 = 2 * (1 + 5 + 1) + 6 * (6 + 2)
    assert len(dag) == 3 + seed0 + seed1
    assert {"finetune-gen_sentiment-o1-s0", "finetune-gen_knowledge-o3-s0", "finetune-gen_sentiment-o1-s1"} <= set(dag)
    assert "finetune-gen_sentiment-o2-s0" not in dag  # order 2 starts like order 1: the same fine-tune
    assert "evaluate-sft-gen_sentiment-o1-s0" in dag and "evaluate-sft-gen_sentiment-o2-s0" not in dag
    assert "evaluate-average-gen_knowledge-o1-s1" not in dag and "evaluate-average-gen_knowledge-o1-s0" in dag
    # order 2's second step starts from order 1's first (shared) and is its own run's from there on
    step = dag["finetune-sft-gen_knowledge-o2-s0"]
    assert runs / "o1-s0" / "experts" / A in step.deps
    assert step.outs == [runs / "o2-s0" / "chains" / "sft" / C / "sft"]
    assert dag["finetune-sft-gen_translation-o2-s0"].deps[-1] == runs / "o2-s0" / "chains" / "sft" / C / "sft"
    assert dag["finetune-sft-gen_translation-o1-s1"].deps[-1] == runs / "o1-s1" / "experts" / A
    assert dag["merge-recall-gen_translation-o3-s1"].deps[-1] == runs / "o3-s1" / "chains" / "recall" / C / "model"
    entry = dag["evaluate-recall-gen_sentiment-o3-s0"].entry(tmp_path)
    assert entry["cmd"] == "python -m flows.stage evaluate --method recall --step gen_sentiment --run o3-s0"
    # no two stages write the same output
    outs = [o for s in dag.values() for o in s.outs]
    assert len(outs) == len(set(outs))


def test_adding_a_seed_or_an_order_only_adds_stages(tmp_path):
    small = protocol(tmp_path, orders=[[A, B, C], [A, C, B]], seeds=[0])
    big = protocol(tmp_path, orders=[[A, B, C], [A, C, B], [C, B, A]], seeds=[0, 1])
    before = {s.name: s for s in plan.plan(small) if s.name != "report"}
    after = {s.name: s for s in plan.plan(big)}
    assert before.items() <= after.items()
    assert len(after) > len(before) + 1


def test_the_run_params_seed_the_fine_tune_and_keep_the_runs_methods(tmp_path):
    params = protocol(tmp_path)
    run = params.select("o3-s1")
    assert [s.task for s in run.steps] == [C, B, A] and run.sections.finetune.seed == 1
    assert list(run.methods) == ["recall", "sft"] and params.methods["average"] == {}
    assert stages.handed_on(run, "sft", B) == tmp_path / "data" / "runs" / "o3-s1" / "chains" / "sft" / B / "sft"


def test_random_orders_are_distinct_and_a_larger_n_keeps_the_first(tmp_path):
    three = protocol(tmp_path, orders={"random": 3, "seed": 7}).orders
    five = protocol(tmp_path, orders={"random": 5, "seed": 7}).orders
    assert five[:3] == three and len(set(five)) == 5 and all(sorted(o) == sorted([A, B, C]) for o in five)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(orders=[[A, B]]), r"orders\[0\] must be an order of the sequence's tasks"),
        (dict(orders=[[A, B, C], [A, B, C]]), "lists an order twice"),
        (dict(orders={"random": 7, "seed": 0}), "more orders than the 6"),
        (dict(seeds=[0, 0]), "lists a seed twice"),
        (dict(methods={"sft": {"seeds": [2]}}), r"methods.sft.seeds \[2\] are not among seeds"),
        (dict(methods={"sft": {"seeds": 1}}), "must list training seeds"),
    ],
)
def test_bad_orders_and_seeds_are_refused(tmp_path, change, message):
    with pytest.raises(RecallError, match=message):
        protocol(tmp_path, **change)
