"""A protocol: several task orders x training seeds as independent chains, sharing identical work."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import tiny_params, write_params

from recall.errors import RecallError
from recall.pipeline import layout, plan, stages, table
from recall.pipeline.params import load_params
from recall.reporting import metrics
from recall.reporting import statistics as paired
from recall.reporting.protocol import pairs_markdown, write_protocol

A, B, C = "gen_sentiment", "gen_translation", "gen_knowledge"
K = C
U = "gen_reading"  # scored, never learned
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
    assert len(dag) == 4 + seed0 + seed1  # base, data, the base's evaluation, report
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
    # unseen tasks: the data stage copies them, the base and every last step score them
    seen = protocol(tmp_path, evaluate={"limit": 2, "batch_size": 2, "unseen": [U]})
    dag = {s.name: s for s in plan.plan(seen)}
    for name in ("evaluate", "evaluate-sft-gen_knowledge-o1-s0", "evaluate-recall-gen_sentiment-o3-s1"):
        assert tmp_path / "data" / "tasks" / U in dag[name].deps
    assert tmp_path / "data" / "tasks" / U not in dag["evaluate-sft-gen_translation-o1-s0"].deps
    # no two stages write the same output
    outs = [o for s in dag.values() for o in s.outs]
    assert len(outs) == len(set(outs))


def test_adding_a_seed_or_an_order_only_adds_stages(tmp_path):
    ewc = {"lambda": 100, "samples": 8}
    small = protocol(tmp_path, orders=[[A, B, C], [A, C, B]], seeds=[0, 1], methods={"ewc": {**ewc, "seeds": [0]}})
    big = protocol(
        tmp_path, orders=[[A, B, C], [A, C, B], [C, B, A]], seeds=[0, 1], methods={"ewc": {**ewc, "seeds": [0, 1]}}
    )
    before = {s.name: s for s in plan.plan(small) if s.name != "report"}
    after = {s.name: s for s in plan.plan(big)}
    assert before.items() <= after.items()
    assert len(after) > len(before) + 1
    # the fine-tunes read the method's parameters, not its seeds: a seed added there reruns nothing
    assert before["finetune-ewc-gen_translation-o1-s0"].params == [
        "finetune",
        "methods.ewc.lambda",
        "methods.ewc.samples",
    ]


def test_the_run_params_seed_the_fine_tune_and_keep_the_runs_methods(tmp_path):
    params = protocol(tmp_path)
    run = params.select("o3-s1")
    assert [s.task for s in run.steps] == [C, B, A] and run.sections.finetune.seed == 1
    assert list(run.methods) == ["recall", "sft"] and params.methods["average"] == {}
    assert layout.handed_on(run, "sft", B) == tmp_path / "data" / "runs" / "o3-s1" / "chains" / "sft" / B / "sft"


def test_random_orders_are_distinct_and_a_larger_n_keeps_the_first(tmp_path):
    three = protocol(tmp_path, orders={"random": 3, "seed": 7}).orders
    five = protocol(tmp_path, orders={"random": 5, "seed": 7}).orders
    assert five[:3] == three and len(set(five)) == 5 and all(sorted(o) == sorted([A, B, C]) for o in five)
    params = protocol(tmp_path, orders={"random": 3, "seed": 7})
    assert all(params.select(r.label).runs == params.runs for r in params.runs)  # every run sees the same runs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(orders=[[A, B]]), r"orders\[0\] must be an order of the sequence's tasks"),
        (dict(orders=[[A, B, C], [A, B, C]]), "lists an order twice"),
        (dict(orders={"random": 7, "seed": 0}), "more orders than the 6"),
        (dict(seeds=[0, 0]), "lists a seed twice"),
        (dict(methods={"sft": {"seeds": [2]}}), r"methods.sft.seeds \[2\] are not among seeds"),
        (dict(methods={"sft": {"seeds": 1}}), "must list training seeds"),
        (dict(evaluate={"limit": 2, "batch_size": 2, "unseen": [A]}), "a task of the sequence"),
    ],
)
def test_bad_orders_and_seeds_are_refused(tmp_path, change, message):
    with pytest.raises(RecallError, match=message):
        protocol(tmp_path, **change)


# -- statistics over runs, on hand-made records ------------------------------------------------------


def test_two_level_interval_of_runs_without_test_noise_is_the_bootstrap_of_their_means():
    # Two runs scoring 0 and 10 on every example resample: a replicate's mean is 0, 5 or 10 with
    # probabilities 1/4, 1/2, 1/4, so the 2.5th and 97.5th percentiles are 0 and 10.
    iv = paired.two_level([(0.0, np.zeros(50)), (10.0, np.full(50, 10.0))], replicates=4000)
    assert (iv.low, iv.estimate, iv.high) == (0.0, 5.0, 10.0)


def test_two_level_interval_of_identical_runs_shrinks_with_their_number():
    # K identical runs whose example resamples are N(0, 1): a replicate averages K independent draws,
    # so the interval is about +-1.96 / sqrt(K).
    rng = np.random.default_rng(1)
    for k in (1, 4, 16):
        runs = [(0.0, rng.standard_normal(4000)) for _ in range(k)]
        iv = paired.two_level(runs, replicates=8000)
        assert iv.high == pytest.approx(1.96 / k**0.5, rel=0.1) and iv.low == pytest.approx(-1.96 / k**0.5, rel=0.1)


def test_forgetting_statistic_matches_the_metric():
    matrix = np.array([[60.0, 10, 5], [40, 70, 8], [30, 50, 90]])
    statistic = paired.forgetting([0, 1, 2], [0, 1, 2])
    assert statistic(matrix) == pytest.approx(np.mean(metrics.forgetting(matrix.tolist())))
    matrix[1, 0] = np.nan  # a step that did not score task 0 is left out of its max
    assert statistic(matrix) == pytest.approx(((60 - 30) + (70 - 50)) / 2)


def write_eval(folder: Path, scores: dict[str, list[float]]) -> str:
    """An evaluation folder: metrics.json with each task's accuracy and examples/<task>.jsonl."""
    (folder / "examples").mkdir(parents=True)
    for task, values in scores.items():
        lines = [json.dumps({"score": v, "reference": f"r{i}"}) for i, v in enumerate(values)]
        (folder / "examples" / f"{task}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "metrics.json").write_text(json.dumps({t: {"accuracy": float(np.mean(v))} for t, v in scores.items()}))
    return str(folder.relative_to(folder.parents[2]) / "metrics.json")


def hand_made(tmp_path, twin: bool) -> dict:
    """Two orders of A, B, one seed. Each step's model scores 90% on the task it just learned; on the
    earlier task sft keeps 50%, average 70%; `twin` is sft's very records, or its own at 70%."""
    rng = np.random.default_rng(0)
    spec = {"tasks": [A, C], "unseen": [U], "runs": [], "bootstrap": {"replicates": 400, "seed": 0}}
    for label, order in (("o1-s0", [A, C]), ("o2-s0", [C, A])):
        methods: dict[str, list[str]] = {}
        for m in ("sft", "twin", "average"):
            steps = []
            for k in range(2):
                kept = 0.5 if m == "sft" else 0.7
                held = order[: k + 1] + ([U] if k == 1 else [])  # the last step also scores the unseen task
                scores = {
                    t: (100.0 * (rng.random(40) < (0.9 if j == k else kept))).tolist() for j, t in enumerate(held)
                }
                if m == "twin" and twin:
                    scores = json.loads((tmp_path / label / "sft" / str(k) / "scores.json").read_text())
                steps.append(write_eval(tmp_path / label / m / str(k), scores))
                (tmp_path / label / m / str(k) / "scores.json").write_text(json.dumps(scores))
            methods[m] = steps
        spec["runs"].append({"label": label, "order": order, "seed": 0, "methods": methods})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return spec


def test_the_interval_of_identical_methods_is_zero(tmp_path):
    hand_made(tmp_path, twin=True)
    write_protocol(tmp_path / "spec.json", tmp_path / "out")
    twin = json.loads((tmp_path / "out" / "protocol.json").read_text())["methods"]["twin"]
    for name in ("final_avg", "bwt", "forgetting", "unseen_avg"):
        assert twin["diff_vs_sft"][name] == [0.0, 0.0, 0.0]
    assert twin["wins_vs_sft"] == 0
    assert json.loads((tmp_path / "out" / "protocol.json").read_text())["pairs"]["sft"]["twin"] == [0.0, 0.0, 0.0]


def test_protocol_statistics_match_hand_computation(tmp_path):
    spec = hand_made(tmp_path, twin=False)
    write_protocol(tmp_path / "spec.json", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert summary["orders"] == [[A, C], [C, A]] and summary["n_test"] == {A: 40, C: 40, U: 40}
    final, bwt, unseen, right_after = {}, {}, {}, {}
    for run in spec["runs"]:
        for m, steps in run["methods"].items():
            rows = [json.loads((tmp_path / s).read_text()) for s in steps]
            first, second = run["order"]
            final.setdefault(m, []).append((rows[1][first]["accuracy"] + rows[1][second]["accuracy"]) / 2)
            bwt.setdefault(m, []).append(rows[1][first]["accuracy"] - rows[0][first]["accuracy"])
            unseen.setdefault(m, []).append(rows[1][U]["accuracy"])
            if m == "sft":  # each task right after SeqFT learned it: mean and least over the runs
                for k, t in enumerate(run["order"]):
                    right_after.setdefault(t, []).append(rows[k][t]["accuracy"])
    for t, scores in right_after.items():
        assert summary["learned"][t][1] == pytest.approx(np.mean(scores), abs=1e-3)
        assert summary["learned_least"][t] == pytest.approx(min(scores), abs=1e-3)
        assert summary["learned_least"][t] < summary["learned"][t][1]  # the two runs differ: a least, not a mean
    for m, entry in summary["methods"].items():
        assert entry["runs"] == 2
        assert entry["final_avg"] == pytest.approx(np.mean(final[m]), abs=1e-3)
        assert entry["bwt"] == pytest.approx(np.mean(bwt[m]), abs=1e-3)
        assert entry["forgetting"] == pytest.approx(-np.mean(bwt[m]), abs=1e-3)
        assert entry["unseen_avg"] == pytest.approx(np.mean(unseen[m]), abs=1e-3)
        low, high = entry["final_avg_ci95"]
        assert low < entry["final_avg"] < high
        per_run = [entry["per_run"][r]["final_avg"] for r in ("o1-s0", "o2-s0")]
        assert per_run == pytest.approx(final[m], abs=1e-3)
        assert entry["order_sensitivity"]["range"] == pytest.approx(abs(final[m][0] - final[m][1]), abs=1e-3)
    twin = summary["methods"]["twin"]
    expected = [a - b for a, b in zip(final["twin"], final["sft"])]
    assert list(twin["per_run_diff_vs_sft"].values()) == pytest.approx(expected, abs=1e-3)
    assert twin["wins_vs_sft"] == sum(d > 0 for d in expected)
    assert twin["diff_vs_sft"]["final_avg"][1] == pytest.approx(np.mean(expected), abs=1e-3)
    # every pair, the earlier-listed minus the later; the report lists what each method beats and trails
    assert set(summary["pairs"]) == {"sft", "twin"} and set(summary["pairs"]["sft"]) == {"twin", "average"}
    gap = [a - b for a, b in zip(final["sft"], final["average"])]
    low, estimate, high = summary["pairs"]["sft"]["average"]
    assert estimate == pytest.approx(np.mean(gap), abs=1e-3) and low < estimate < high
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| average | – | – |" in report  # two runs of 40 examples: no pair's interval excludes 0
    assert (tmp_path / "out" / "protocol.png").is_file() and "| twin | 2 |" in report


def test_the_pairs_table_lists_what_each_method_beats_and_trails():
    pairs = {"a": {"b": [1.0, 2.0, 3.0], "c": [-1.0, 0.5, 2.0]}, "b": {"c": [-5.0, -3.0, -1.0]}}
    rows = [line for line in pairs_markdown(pairs, ["a", "b", "c"]) if line.startswith("| ") and "Beats" not in line]
    assert rows == [
        "| a | b +2.00 [+1.00, +3.00] * | – |",
        "| b | – | a -2.00 [-3.00, -1.00] *, c -3.00 [-5.00, -1.00] * |",
        "| c | b +3.00 [+1.00, +5.00] * | – |",
    ]


def test_chains_that_share_no_run_are_not_compared(tmp_path):
    """`methods.<label>.seeds` may leave two chains no run in common: each is still reported, compared
    with the chains it shares runs with."""
    spec = hand_made(tmp_path, twin=False)
    del spec["runs"][0]["methods"]["average"], spec["runs"][1]["methods"]["twin"]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    write_protocol(tmp_path / "spec.json", tmp_path / "out")
    methods = json.loads((tmp_path / "out" / "protocol.json").read_text())["methods"]
    assert methods["twin"]["runs"] == methods["average"]["runs"] == 1
    assert "diff_vs_average" not in methods["twin"] and methods["twin"]["best_other"] == "sft"
    assert methods["average"]["best_other"] == "sft" and "diff_vs_sft" in methods["average"]


def write_similarity(folder: Path, layers: np.ndarray) -> str:
    """A RECALL step's similarity.json: each layer's similarity of [the start model, the new model] to the new one."""
    folder.mkdir(parents=True)
    record = {"models": ["start", "new"], "reference": "new", "layers": layers.tolist()}
    (folder / "similarity.json").write_text(json.dumps(record))
    return str(folder.relative_to(folder.parents[2]) / "similarity.json")


def test_the_report_shows_the_weight_recalls_merges_gave_the_newest_model(tmp_path):
    """Each step's weights recomputed from its similarities with the chain's temperature: the newest model's
    weight per layer is exp(1/T) / (exp(s/T) + exp(1/T)) (softmax by hand here); a step that runs share
    (its one similarity.json) counts once in the pooled numbers; chains without similarities get no entry."""
    spec = hand_made(tmp_path, twin=False)
    rng = np.random.default_rng(1)
    temperature, shared, expected, columns = 0.05, None, {}, {}
    for run in spec["runs"]:
        paths = []
        for k, task in enumerate(run["order"]):
            if k == 1 and shared is not None:
                paths.append(shared)  # the second run's second step is the first run's (as in a shared prefix)
                expected[run["label"]][task] = expected["o1-s0"][spec["runs"][0]["order"][1]]
                continue
            layers = np.column_stack([rng.uniform(0.8, 1.0, 3), np.ones(3)])  # 3 layer groups, [start, new]
            paths.append(write_similarity(tmp_path / run["label"] / "recall" / str(k), layers))
            e = np.exp(layers / temperature)
            w = e / e.sum(axis=1, keepdims=True)
            columns[paths[-1]] = w[:, 1]
            expected.setdefault(run["label"], {})[task] = {
                "mean": w[:, 1].mean(),
                "min": w[:, 1].min(),
                "max": w[:, 1].max(),
                "deviation": np.abs(w - 0.5).max(),
            }
        shared = shared or paths[1]
        run["similarity"] = {"recall": paths}
    spec["weighted"] = {"recall": {"method": "recall", "settings": {"temperature": temperature, "calibrate": "none"}}}
    (tmp_path / "spec.json").write_text(json.dumps(stages.weigh(spec, tmp_path)))  # as the report stage does
    write_protocol(tmp_path / "spec.json", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert set(summary["weights"]) == {"recall"}  # sft, twin, average: no similarities, no entry
    recall = summary["weights"]["recall"]
    assert set(recall["runs"]) == {"o1-s0", "o2-s0"}
    for label, steps in expected.items():
        assert list(recall["runs"][label]) == list(steps)
        for task, numbers in steps.items():
            assert recall["runs"][label][task] == pytest.approx(numbers, abs=1e-4)
    pooled = np.concatenate(list(columns.values()))  # three distinct merges, the shared one once
    assert len(columns) == 3
    assert recall["pooled"] == pytest.approx(
        {"mean": pooled.mean(), "min": pooled.min(), "max": pooled.max()}, abs=1e-4
    )
    report = (tmp_path / "out" / "report.md").read_text()
    assert "0.5 everywhere is the plain average" in report
    o1 = list(expected["o1-s0"].values())
    cell = f"{np.mean([s['mean'] for s in o1]):.3f} [{min(s['min'] for s in o1):.3f}, {max(s['max'] for s in o1):.3f}]"
    assert f"| recall | {cell} |" in report
    # a spec without similarities (the other tests') has no weights
    for run in spec["runs"]:
        del run["weights"]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    write_protocol(tmp_path / "spec.json", tmp_path / "out")
    assert "weights" not in json.loads((tmp_path / "out" / "protocol.json").read_text())


def test_the_protocol_report_reads_every_runs_similarities_and_no_merged_model(tmp_path):
    """The chains whose method's weight source is RECALL's (whatever their label) give the report stage
    each run's similarity.json per step, the same files the spec names, with each chain's settings."""
    params = protocol(
        tmp_path,
        methods={
            "recall": {},
            "sft": {},
            "average": {},
            "sharp": {"method": "recall", "temperature": 0.5, "seeds": [0]},
        },
    )
    report = next(s for s in plan.plan(params) if s.name == "report")
    spec_dir = layout.report_spec_path(params).parent
    spec = stages.protocol_spec(params, spec_dir)
    assert spec["weighted"] == {
        "recall": {"method": "recall", "settings": {"temperature": 1.0, "calibrate": "none"}},
        "sharp": {"method": "recall", "settings": {"temperature": 0.5, "calibrate": "none"}},
    }
    named = {spec_dir / p for r in spec["runs"] for paths in r["similarity"].values() for p in paths}
    read = {p for p in report.deps if p.name == "similarity.json"}
    assert named == read and len(read) == len([p for p in report.deps if p.name == "similarity.json"])
    runs = tmp_path / "data" / "runs"
    assert runs / "o2-s0" / "chains" / "sharp" / B / "similarity.json" in read
    assert runs / "o1-s1" / "chains" / "recall" / B / "similarity.json" in read
    assert not any(p.name == "model" for p in report.deps)
    by_run = {r["label"]: r.get("similarity", {}) for r in spec["runs"]}
    assert set(by_run["o1-s0"]) == {"recall", "sharp"} and set(by_run["o1-s1"]) == {"recall"}  # sharp: seed 0
    assert by_run["o2-s0"]["recall"][0] == by_run["o1-s0"]["recall"][0]  # the shared first step's


@pytest.mark.slow
def test_a_tiny_protocol_runs_stage_by_stage_into_protocol_json(tmp_path):
    """Every stage of a two-order, two-seed protocol on a tiny model, in plan order, as DVC would run them."""
    from helpers import tiny_model

    tiny_model(tmp_path / "tiny", layers=2)
    params = protocol(
        tmp_path,
        sequence=[{"task": A, "after": "base"}, {"task": K, "after": A}],
        orders=[[A, K], [K, A]],
        methods={"sft": {}, "recall": {"seeds": [0]}},
        evaluate={"limit": 2, "batch_size": 2, "max_new_tokens": 8, "unseen": [U]},
    )
    for stage in plan.plan(params):
        table.run(params.select(stage.run) if stage.run else params, stage.stage, stage.task, stage.method)
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["runs"] == ["o1-s0", "o1-s1", "o2-s0", "o2-s1"]
    assert summary["methods"]["sft"]["runs"] == 4 and summary["methods"]["recall"]["runs"] == 2
    final = json.loads(
        (tmp_path / "data" / "runs" / "o2-s1" / "chains" / "sft" / A / "eval" / "metrics.json").read_text()
    )
    expected = np.mean([next(iter(final[t].values())) for t in (A, K)])
    assert summary["methods"]["sft"]["per_run"]["o2-s1"]["final_avg"] == pytest.approx(expected, abs=1e-3)
    base = json.loads((tmp_path / "data" / "base" / "eval" / "metrics.json").read_text())
    assert summary["learned"][A][0] == pytest.approx(next(iter(base[A].values())), abs=1e-3)
    assert summary["methods"]["sft"]["per_run"]["o2-s1"]["unseen_avg"] == pytest.approx(next(iter(final[U].values())))
    # order 2's second step starts from its own first: the fine-tune's start model says so
    started = json.loads(
        (tmp_path / "data" / "runs" / "o2-s0" / "chains" / "recall" / A / "sft" / "train_metrics.json").read_text()
    )
    assert Path(started["base"]) == tmp_path / "data" / "runs" / "o2-s0" / "chains" / "recall" / K / "model"
    # the weights the report recomputes from similarities are the ones the merge wrote beside its model
    merged = json.loads(
        (tmp_path / "data" / "runs" / "o2-s0" / "chains" / "recall" / A / "model" / "merge_weights.json").read_text()
    )
    newest = np.array(merged["layers"])[:, -1]  # [start model, the step's fine-tune]
    reported = summary["weights"]["recall"]["runs"]["o2-s0"][A]
    assert [reported["mean"], reported["min"], reported["max"]] == pytest.approx(
        [newest.mean(), newest.min(), newest.max()], abs=1e-4
    )


def test_a_stage_command_names_its_run(tmp_path, capsys):
    from flows import stage as flow

    params = protocol(tmp_path)
    plan.write(params)
    args = ["finetune", "--method", "sft", "--step", B, "--params", str(tmp_path / "params.yaml")]
    assert plan.find(params, plan.stage_name("finetune", B, "sft", "o1-s1")).outs == [
        tmp_path / "data" / "runs" / "o1-s1" / "chains" / "sft" / B / "sft"
    ]
    assert flow.main([*args, "--run", "o4-s0"]) == 2  # refused before Prefect starts: there is no order 4
    assert "no stage 'finetune-sft-gen_translation-o4-s0'" in capsys.readouterr().err
