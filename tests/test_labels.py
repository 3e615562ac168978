"""Chain labels: one method at several settings in one params file (`recall_paper: {method: recall,
sigma: 1.0}`), each setting its own chain with its own stages, folders and params dependencies."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT
from test_pipeline import tiny_params, write_params
from test_tracking import store  # noqa: F401 (fixture)

from recall.cli import main
from recall.errors import RecallError
from recall.pipeline import plan, table
from recall.pipeline.params import load_params

A, B, C = "gen_sentiment", "gen_translation", "gen_knowledge"
SEQUENCE = [{"task": A, "after": "base"}, {"task": B, "after": A}, {"task": C, "after": B}]
PAPER = {"method": "recall", "sigma": 1.0, "seeds": [0]}


def protocol(folder: Path, **methods) -> dict:
    """A sequential protocol (two orders, two seeds) comparing RECALL with `methods`."""
    return tiny_params(
        sequence=SEQUENCE,
        orders=[[A, B, C], [C, B, A]],
        seeds=[0, 1],
        methods={"recall": {}, "sft": {}, **methods},
    )


def dag_of(folder: Path, raw: dict) -> dict:
    return {s.name: s for s in plan.plan(load_params(write_params(folder, raw)))}


def value(raw: dict, key: str):
    """A params key's value as DVC reads a params dependency: a dotted path into the file (a section's
    name: the whole section)."""
    for part in key.split("."):
        raw = raw[part]
    return raw


def test_a_label_is_its_methods_chain_with_its_own_fine_tunes_similarities_and_merges(tmp_path):
    raw = protocol(tmp_path, recall_paper=PAPER)
    dag = dag_of(tmp_path, raw)
    runs = tmp_path / "data" / "runs"
    for run in ("o1-s0", "o2-s0"):
        first, second = ((A, B), (C, B))[run == "o2-s0"]
        for stage in ("features", "typical", "similarity", "merge", "evaluate"):
            assert f"{stage}-recall_paper-{second}-{run}" in dag and f"{stage}-recall_paper-{first}-{run}" in dag
        assert f"finetune-recall_paper-{second}-{run}" in dag  # its own fine-tune after the shared first step
        own = runs / run / "chains" / "recall_paper" / second
        similarity = dag[f"similarity-recall_paper-{second}-{run}"]
        assert similarity.outs == [own / "similarity.json"]
        assert similarity.deps == [
            own / "typical.json",
            own / "probe.jsonl",
            own / "features.npy",
            own / "sft",  # the chain's own fine-tune ...
            runs / run / "chains" / "recall_paper" / first / "model",  # ... and its own previous merge
        ]
        assert similarity.entry(tmp_path)["cmd"] == (
            f"python -m flows.stage similarity --method recall_paper --step {second} --run {run}"
        )
        assert own / "similarity.json" in dag[f"merge-recall_paper-{second}-{run}"].deps
        # its similarity reads its own sigma; RECALL's reads the `recall` section's
        assert "methods.recall_paper.sigma" in similarity.params and "recall.sigma" not in similarity.params
        default = dag[f"similarity-{second}-{run}"]
        assert "recall.sigma" in default.params and default.outs == [
            runs / run / "chains" / "recall" / second / "similarity.json"
        ]
    assert not [n for n in dag if "recall_paper" in n and n.endswith("-s1")]  # seeds: [0]
    # two independent chains: neither reads the other's folders
    for name, stage in dag.items():
        other = "recall" if "recall_paper" in name else "recall_paper"
        assert not [p for p in stage.deps if f"/chains/{other}/" in str(p)] or name == "report", name
    outs = [o for s in dag.values() for o in s.outs]
    assert len(outs) == len(set(outs))
    # only its similarities name its sigma
    readers = {n for n, s in dag.items() if any(p.startswith("methods.recall_paper") for p in s.params)}
    assert readers == {n for n in dag if n.startswith("similarity-recall_paper-")}


def test_changing_a_labels_sigma_reruns_only_its_chain(tmp_path):
    """DVC reruns a stage whose params dependencies read other values, then every stage reading its outputs."""
    before = protocol(tmp_path, recall_paper=PAPER)
    after = copy.deepcopy(before)
    after["methods"]["recall_paper"]["sigma"] = 0.5
    dag = dag_of(tmp_path, before)
    assert dag_of(tmp_path, after).keys() == dag.keys()
    assert plan.render(load_params(write_params(tmp_path, after))) == plan.render(
        load_params(write_params(tmp_path, before))
    )
    changed = {n for n, s in dag.items() if any(value(before, k) != value(after, k) for k in s.params)}
    assert changed == {n for n in dag if n.startswith("similarity-recall_paper-")}
    stale, outs = set(changed), {o: n for n, s in dag.items() for o in s.outs}
    for name, stage in dag.items():  # plan order: a stage after those whose outputs it reads
        if any(outs.get(d) in stale for d in stage.deps):
            stale.add(name)
    assert stale - {"report"} and all("recall_paper" in n for n in stale - {"report"})
    # and the `recall` section's sigma reruns RECALL's chain, not this one
    section = copy.deepcopy(before)
    section["recall"]["sigma"] = 0.5
    changed = {n for n, s in dag.items() if any(value(before, k) != value(section, k) for k in s.params)}
    assert changed and all("recall_paper" not in n and n.startswith("similarity-") for n in changed)


def test_adding_a_label_adds_stages_and_changes_no_existing_one(tmp_path):
    before = dag_of(tmp_path, protocol(tmp_path))
    after = dag_of(tmp_path, protocol(tmp_path, recall_paper=PAPER))
    assert {n: s for n, s in before.items() if n != "report"}.items() <= after.items()
    assert set(after) - set(before) == {n for n in after if "recall_paper" in n}


def test_a_label_of_a_baseline_or_a_training_method_runs_that_method(tmp_path):
    methods = {"ties_half": {"method": "ties", "density": 0.5}, "ewc_strong": {"method": "ewc", "lambda": 5000}}
    params = load_params(write_params(tmp_path, tiny_params(sequence=SEQUENCE, methods={"sft": {}, **methods})))
    dag = {s.name: s for s in plan.plan(params)}
    assert params.method_of("ties_half") == "ties" and params.kernel_params("ties_half") == {"density": 0.5}
    assert dag["merge-ties_half-gen_translation"].params == ["methods.ties_half"]
    assert params.trains("ewc_strong") and params.ewc("ewc_strong")["lambda"] == 5000
    ewc = dag["finetune-ewc_strong-gen_knowledge"]
    assert ewc.params == ["finetune", "methods.ewc_strong"] and tmp_path / "data" / "tasks" / B in ewc.deps
    assert "merge-ewc_strong-gen_translation" not in dag


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        (
            {"Recall-Paper": {"method": "recall"}},
            r"methods\.Recall-Paper: a chain label .* rename it, e\.g\. recall_paper",
        ),
        ({"recall_paper": {"method": "recal"}}, r"methods\.recall_paper\.method: unknown method 'recal'; choose from"),
        ({"ties": {"method": "recall"}}, r"methods\.ties: ties is a registered method's name, but this chain runs"),
        ({"magic": {}}, r"method 'magic' cannot run in the pipeline; .* e\.g\. magic: \{method: recall"),
        ({"recall_paper": {"method": "recall", "sigmaa": 1.0}}, r"unknown parameter 'sigmaa' \(did you mean 'sigma'"),
        ({"recall_paper": {"method": "recall", "sigma": -1}}, r"methods\.recall_paper\.sigma must be > 0"),
        ({"ties_half": {"method": "ties"}}, r"methods\.ties_half: --method ties needs --density"),
    ],
)
def test_a_bad_label_or_method_fails_with_one_line(tmp_path, capsys, methods, message):
    path = write_params(tmp_path, tiny_params(sequence=SEQUENCE, methods={"sft": {}, **methods}))
    with pytest.raises(RecallError, match=message):
        load_params(path)
    assert main(["params", "check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: " in err


def test_the_multi_scenario_refuses_a_second_recall_setting(tmp_path):
    experts = [{"task": t, "after": "base"} for t in (A, C)]
    for methods in ({"recall": {}, "recall_paper": {"method": "recall", "sigma": 1.0}}, {"recall": {"sigma": 1.0}}):
        with pytest.raises(RecallError, match=r"the multi scenario measures recall's similarities once.*sequential"):
            load_params(write_params(tmp_path, tiny_params(scenario="multi", sequence=experts, methods=methods)))
    single = [{"task": A, "after": "base"}]
    paper = {k: v for k, v in PAPER.items() if k != "seeds"}  # seeds: a protocol's, which is sequential
    params = tiny_params(scenario="single", sequence=single, methods={"recall": {}, "recall_paper": paper})
    assert "similarity-recall_paper-gen_sentiment" in dag_of(tmp_path, params)


def test_the_schema_takes_a_label_with_its_method_and_refuses_a_bad_label(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "params.schema.json").read_text()))
    raw = protocol(tmp_path, recall_paper=PAPER)
    assert not list(schema.iter_errors(raw))
    raw["methods"]["Recall-Paper"] = {"method": "recall"}
    assert "Recall-Paper" in next(schema.iter_errors(raw)).message


def test_a_labels_similarity_and_merge_use_its_sigma(tmp_path, store):  # noqa: F811
    """The real stage functions on a tiny model: RECALL's and recall_paper's first step. recall_paper's
    similarity is eq. 1 at sigma 1.0, recomputed here from the models' hidden states; RECALL's (the
    median heuristic) is not; the merge's weights are its softmax; MLflow records each one's sigma."""
    import mlflow
    from helpers import tiny_model
    from test_core import independent_representations
    from transformers import AutoTokenizer

    from recall.data import read_examples, render

    tiny_model(tmp_path / "tiny", layers=2)
    params = tiny_params(methods={"recall": {}, "recall_paper": {"method": "recall", "sigma": 1.0}})
    params["recall"].update(typical=8)  # every probe sample typical (samples: 8)
    loaded = load_params(write_params(tmp_path, params))
    assert loaded.sections.recall.sigma == "median"
    for stage in plan.plan(loaded):  # the first step's, up to recall_paper's merge; not RECALL's merge
        first = stage.task == A and stage.stage not in ("evaluate", "gate") and stage.method != "recall"
        if first or stage.stage in ("base", "data"):
            table.run(loaded, stage.stage, stage.task, stage.method)

    data = tmp_path / "data"
    own, default = data / "chains" / "recall_paper" / A, data / "chains" / "recall" / A
    record = json.loads((own / "similarity.json").read_text())
    assert [Path(m) for m in record["models"]] == [data / "base" / "model", data / "experts" / A]
    tokenizer = AutoTokenizer.from_pretrained(data / "base" / "model")
    texts = [render(tokenizer, r) for r in read_examples(own / "probe.jsonl")]
    ref, *reps = (independent_representations(m, texts) for m in (data / "experts" / A, *record["models"]))
    sim = np.array([[np.mean(np.exp(-((ref[:, i] - r[:, i]) ** 2).sum(-1) / 2)) for r in reps] for i in range(3)])
    np.testing.assert_allclose(record["layers"], sim, rtol=1e-4)
    assert not np.allclose(json.loads((default / "similarity.json").read_text())["layers"], sim, rtol=1e-2)
    weights = yaml.safe_load((own / "model" / "merge_weights.json").read_text())
    np.testing.assert_allclose(weights["layers"], np.exp(sim) / np.exp(sim).sum(1, keepdims=True), rtol=1e-4)
    assert weights["chain"] == "recall_paper" and weights["method"] == "recall"
    assert not (default / "model").exists()  # RECALL's merge was not run: nothing shared but the expert
    for method, sigma in ((None, "median"), ("recall_paper", "1.0")):
        with mlflow.start_run() as run:
            table.log_stage(loaded, "similarity", A, method, run.info.run_id)
        logged = mlflow.MlflowClient().get_run(run.info.run_id).data.params
        assert logged["recall.sigma"] == sigma and logged.get("recall_paper.method") == (method and "recall")
