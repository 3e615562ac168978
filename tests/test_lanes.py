"""benchmarks/protocol/lanes.py: a protocol suite's chains split between one-thread lanes (no stage runs)."""

import os
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import yaml
from test_pipeline import tiny_params, write_params

from recall.pipeline import plan
from recall.pipeline.params import load_params

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "protocol"))
import cost  # noqa: E402
import lanes  # noqa: E402

A, B, C = "gen_sentiment", "gen_translation", "gen_knowledge"


@pytest.fixture
def suite(tmp_path):
    """Two orders x two seeds; SeqFT at both seeds, RECALL, its paper-sigma chain and the average at seed 0."""
    given = tiny_params(
        sequence=[{"task": A, "after": "base"}, {"task": B, "after": A}, {"task": C, "after": B}],
        orders=[[A, B, C], [A, C, B]],
        seeds=[0, 1],
        methods={
            "sft": {},
            "recall": {"seeds": [0]},
            "recall_paper": {"method": "recall", "sigma": 1.0, "seeds": [0]},
            "average": {"seeds": [0]},
        },
    )
    return load_params(write_params(tmp_path, given))


def folders(tmp_path, n=2):
    out = [tmp_path / f"lane{k}" for k in range(1, n + 1)]
    for folder in out:
        folder.mkdir()
    return out


def record(folder: Path, names) -> None:
    """A dvc.lock recording these stages, as far as lanes.py reads one."""
    stages = {name: {"cmd": f"python -m flows.stage {name}"} for name in names}
    (folder / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


def matching(globs, names):
    return [n for n in names if any(fnmatchcase(n, g) for g in globs)]


def test_every_chain_lands_in_one_lane_and_the_lanes_globs_match_each_labelled_stage_once(suite, tmp_path):
    p = lanes.lane_plan(suite, folders(tmp_path))
    names = [s.name for s in plan.plan(suite)]
    placed = [c.name for lane in p.lanes for c in lane.chains]
    runs = {0: ["o1-s0", "o2-s0"], 1: ["o1-s1", "o2-s1"]}
    chained = [
        f"{label}-{run}"
        for label, seeds in (("sft", [0, 1]), ("recall", [0]), ("recall_paper", [0]), ("average", [0]))
        for seed in seeds
        for run in runs[seed]
    ]
    assert sorted(placed) == sorted([*chained, "rest"])  # a chain in each of its runs
    labelled = [s.name for s in plan.plan(suite) if s.method is not None]
    matched = [n for lane in p.lanes for n in matching(lane.globs, names)]
    assert sorted(n for n in matched if n in labelled) == sorted(labelled)  # each exactly once
    assert sorted(set(matched) - set(labelled)) == ["evaluate"]  # the base's evaluation: no chain needs it
    assert all(lane.seconds > 0 for lane in p.lanes)  # the generated tasks priced at the measured mean


def test_every_stage_but_the_report_is_priced_once(suite, tmp_path):
    stages = plan.plan(suite)
    p = lanes.lane_plan(suite, folders(tmp_path), seconds=lambda s: 1.0)
    pending = [*p.first, *(n for lane in p.lanes for n in lane.pending)]
    assert sorted(pending) == sorted(s.name for s in stages if s.name != "report")
    assert p.first_seconds + sum(lane.seconds for lane in p.lanes) == len(stages) - 1
    # what runs first is what chains of both lanes need: base, data and each run's first-step expert
    assert set(p.first) >= {"base", "data", f"finetune-{A}-o1-s0"}
    for name in p.first:
        assert all(any(name in c.needs for c in lane.chains) for lane in p.lanes)


def test_a_chain_recorded_in_a_lanes_lock_costs_nothing(suite, tmp_path):
    here, there = folders(tmp_path)
    sft1 = next(
        c for c in lanes.chains(suite, plan.plan(suite), lanes.inputs(plan.plan(suite))) if c.name == "sft-o2-s1"
    )
    record(there, sft1.needs)  # every stage it needs, finished in the other lane
    p = lanes.lane_plan(suite, [here, there], seconds=lambda s: 1.0)
    chain = next(c for lane in p.lanes for c in lane.chains if c.name == "sft-o2-s1")
    assert (chain.pending, chain.seconds) == ((), 0.0)
    assert p.finished == len(sft1.needs) and not set(p.first) & set(sft1.needs)
    others = [c for lane in p.lanes for c in lane.chains if c.name != "sft-o2-s1"]
    assert all(c.seconds > 0 for c in others)


def one(*costs: float) -> tuple[list[list[str]], dict[str, float]]:
    """Items of one stage each, at these costs."""
    return [[f"s{i}"] for i in range(len(costs))], {f"s{i}": c for i, c in enumerate(costs)}


def test_a_stage_several_chains_need_counts_in_the_first_and_placement_balances():
    chain = lambda name, needs: lanes.Chain(name, (name,), (name,), tuple(needs))  # noqa: E731
    seconds = {"expert": 1.0, "a1": 5.0, "a2": 0.0, "b1": 3.0, "c1": 3.0, "d1": 5.0}
    priced = lanes.price(
        [chain("a", ["expert", "a1", "a2"]), chain("b", ["expert", "b1"]), chain("c", ["c1"])], set(), seconds
    )
    assert [(c.pending, c.seconds) for c in priced] == [(("expert", "a1", "a2"), 6.0), (("b1",), 3.0), (("c1",), 3.0)]
    assert lanes.place(*one(1.0, 5.0, 4.0), 2) == [[1], [0, 2]]  # costliest first: 5 | 4, then 1 to the lighter
    assert lanes.place(*one(6.0, 3.0, 3.0), 3) == [[0], [1], [2]]
    assert lanes.place(*one(0.0, 0.0), 2) == [[0], [1]]  # finished chains spread too
    assert lanes.place(*one(6.0, 3.0, 3.0), 2, pinned={2: 0}) == [[1, 2], [0]]  # a pinned chain stays in its lane
    # two runs sharing a prefix (expert, a1: 6 s) and a third run: the two together, 6 + 3 + 3 = 12 | 5,
    # not the prefix first and one in each lane, 6 + max(3 + 5, 3) = 14 (where one by one lands)
    runs = [["expert", "a1", "b1"], ["expert", "a1", "c1"], ["d1"]]
    assert sorted(lanes.place(runs, seconds, 2)) == [[0, 1], [2]]
    assert lanes.makespan({0: 0, 1: 0, 2: 1}, runs, seconds, 2) == 12.0
    assert lanes.makespan({0: 0, 1: 1, 2: 0}, runs, seconds, 2) == 14.0
    # a short prefix and long runs: the prefix first and one in each, 1 + max(10 + 1, 10) = 12, not 21 | 1
    long = {"expert": 1.0, "a1": 0.0, "b1": 10.0, "c1": 10.0, "d1": 1.0}
    where = {i: lane for lane, placed in enumerate(lanes.place(runs, long, 2)) for i in placed}
    assert where[0] != where[1] and lanes.makespan(where, runs, long, 2) == 12.0


def test_a_chain_with_a_killed_stages_files_in_a_lane_stays_there(suite, tmp_path):
    here, there = folders(tmp_path)
    before = lanes.lane_plan(suite, [here, there])
    moved = next(c for c in before.lanes[0].chains if c.name != "rest")
    stage = next(s for s in plan.plan(suite) if s.name == moved.stages[1])
    for out in stage.outs:  # a killed run of the stage left files in the other lane
        (there / os.path.relpath(out, suite.root)).mkdir(parents=True)
    after = lanes.lane_plan(suite, [here, there])
    assert moved.name in [c.name for c in after.lanes[1].chains]


def test_the_label_glob_matches_its_chain_only_else_the_names_are_listed(suite):
    stages = plan.plan(suite)
    names = [s.name for s in stages]
    by_name = {c.name: c for c in lanes.chains(suite, stages, lanes.inputs(stages))}
    assert by_name["recall-o1-s0"].globs == ("*-recall-*-o1-s0",)
    assert matching(["*-recall-*-o1-s0"], names) == list(by_name["recall-o1-s0"].stages)  # no recall_paper stage
    assert by_name["recall_paper-o2-s0"].globs == ("*-recall_paper-*-o2-s0",)
    # a task named like a label (`recall-y`): `*-recall-*-o1-s0` would match SeqFT's step on it, so the names
    own = ["finetune-recall-x-o1-s0", "merge-recall-x-o1-s0"]
    assert lanes.chain_globs("recall", "o1-s0", own, [*own, "finetune-sft-recall-y-o1-s0"]) == tuple(own)
    names = ["finetune-sft-x-o1-s1", "finetune-sft-x-o1-s10", "finetune-sft-x-o11-s1"]
    assert lanes.chain_globs("sft", "o1-s1", names[:1], names) == ("*-sft-*-o1-s1",)


def test_unmeasured_tasks_are_priced_at_the_measured_mean(suite):
    assert cost.unmeasured(suite) == sorted([A, B, C, *suite.sections.evaluate.unseen])
    assert cost.measured(cost.TRAIN_TOKENS, "yelp") == 235.9
    assert cost.measured(cost.TRAIN_TOKENS, A) == sum(cost.TRAIN_TOKENS.values()) / len(cost.TRAIN_TOKENS)
    assert cost.unmeasured(load_params(ROOT / "benchmarks/protocol/standard/params.yaml")) == []


def test_the_paper_suite_is_priced_per_format_with_its_replies():
    paper = load_params(ROOT / "benchmarks/protocol/paper/params.yaml")
    assert cost.unmeasured(paper) == []
    limits = cost.limits(paper)  # evaluate.limit per format: 200 labels, 100 QA and translations
    assert limits == {"sst2": 200, "squad_v2": 100, "iwslt2017_en_fr": 100, "agnews": 200, "dbpedia": 200}
    assert cost.limits(paper, 7) == dict.fromkeys(limits, 7)
    prompts = 100 * cost.TEST_TOKENS["iwslt2017_en_fr"] / cost.SCORE_TOK_S
    replies = 100 * 128 * cost.GEN_S_PER_TOKEN  # a translation's reply: up to 128 tokens
    assert cost.scoring_seconds(paper, "iwslt2017_en_fr", 100) == pytest.approx(prompts + replies)
    assert cost.scoring_seconds(paper, "sst2", 200) == pytest.approx(200 * cost.TEST_TOKENS["sst2"] / cost.SCORE_TOK_S)


def test_the_standard_suites_plan_and_lanes_sh(tmp_path, capsys):
    lines = tmp_path / "plan.tsv"
    assert lanes.main([str(ROOT / "benchmarks/protocol/standard"), "--lanes", "2", "--shell", str(lines)]) == 0
    assert "lane   pending  hours  chains" in capsys.readouterr().out
    rows = [line.split("\t") for line in lines.read_text().splitlines()]
    assert [r[:3] for r in rows[1:]] == [["lane", "1", str(ROOT)], ["lane", "2", f"{ROOT}-lane2"]]
    globs = [g for r in rows[1:] for g in r[3:]]
    assert {f"*-recall-*-o{k}-s0" for k in (1, 2, 3)} <= set(globs) and "*-recall_paper-*-o3-s0" in globs
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks/protocol/lanes.sh")], check=True)
