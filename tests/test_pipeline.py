"""The pipeline end to end on a tiny model: dvc repro -> Prefect stage flows -> MLflow, real tools."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import helpers
import mlflow
import numpy as np
import pytest
import yaml
from conftest import ROOT, SHIPPED_PARAMS
from helpers import tiny_model
from test_core import independent_representations
from test_merge import tensors
from transformers import AutoTokenizer

from recall.cli import main
from recall.data import read_examples, render
from recall.errors import RecallError
from recall.pipeline.fingerprint import fingerprint
from recall.pipeline.params import load_params

BIN = Path(sys.executable).parent
EXAMPLES = ROOT / "examples" / "tasks"


def tiny_params(**changes) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["model"] = "tiny"
    params["data"].update(train_size=16, test_size=3)
    params["sequence"] = params["sequence"][:2]
    params["finetune"].update(max_steps=2, batch_size=2, max_length=512)
    params["recall"].update(samples=8, typical=3, max_length=512)
    params["evaluate"].update(limit=2, max_new_tokens=8)
    params["methods"] = {"recall": {}, "sft": {}, "average": {}}
    del params["promote"]  # its defaults: the recall chain is gated where it runs (a test may set it)
    params.update(changes)
    return params


def write_params(folder: Path, params: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(scenario="parallel"), "unknown scenario 'parallel'"),
        (dict(sequence=[]), "sequence in params.yaml is empty"),
        (dict(sequence=[{"task": "nope", "after": "base"}]), "unknown task"),
        (
            dict(sequence=[{"task": "gen_sentiment", "after": "base"}, {"task": "gen_squad", "after": "base"}]),
            "needs after: gen_sentiment",
        ),
        (dict(methods={"magic": {}}), "method 'magic' cannot run in the pipeline"),
        (dict(methods={"ties": {}}), "density"),
        (dict(methods={"ties": {"density": 2}}), "density"),
        (dict(methods={}), "non-empty mapping"),
        (dict(methods={"ewc": {"lambda": 0}}), "lambda > 0"),
        (dict(methods={"ewc": {"gamma": 1}}), "unknown parameter 'gamma'"),
        (
            dict(
                methods={"recall": {}, "ewc": {}},
                scenario="single",
                sequence=[{"task": "gen_sentiment", "after": "base"}],
            ),
            "needs scenario: sequential",
        ),
        (dict(scenario="multi", sequence=[{"task": "gen_sentiment", "after": "base"}]), "method sft makes no merged"),
        (dict(baselines=["average"]), "`baselines` became `methods`"),
        (dict(promote={"method": "ties"}), "promote.method 'ties' is not a compared method"),
        (dict(promote={"notify": "ops"}), "promote.notify must name a Prefect notification block"),
        (dict(promote={"tolerance": -1}), "promote.tolerance must be >= 0 points"),
        (dict(evaluate={"limit": 2, "batch_size": 2, "mode": {"mcq": "vote"}}), "evaluate.mode"),
    ],
)
def test_invalid_params_fail_before_any_stage(tmp_path, change, message):
    with pytest.raises(RecallError, match=message):
        load_params(write_params(tmp_path, tiny_params(**change)))


def test_negative_sigma_is_rejected(tmp_path):
    params = tiny_params()
    params["recall"]["sigma"] = -1
    with pytest.raises(RecallError, match="sigma must be > 0"):
        load_params(write_params(tmp_path, params))


@pytest.mark.parametrize(("which", "middle"), [("all", ["a", "b", "c"]), ("seen", ["a", "b"]), ("new", ["b"])])
def test_evaluate_tasks_picks_what_each_step_scores(tmp_path, which, middle):
    sequence = [
        {"task": t, "after": a}
        for t, a in [
            ("gen_sentiment", "base"),
            ("gen_translation", "gen_sentiment"),
            ("gen_knowledge", "gen_translation"),
        ]
    ]
    names = dict(zip("abc", (s["task"] for s in sequence)))
    params = load_params(
        write_params(tmp_path, tiny_params(sequence=sequence, evaluate={"limit": 2, "batch_size": 2, "tasks": which}))
    )
    assert params.eval_tasks("gen_translation") == [names[k] for k in middle]
    assert params.eval_tasks("gen_knowledge") == list(names.values())  # the last step scores every task


@pytest.mark.parametrize("params", SHIPPED_PARAMS)
def test_shipped_params_are_valid_and_their_dvc_yaml_is_current(params):
    assert [s.task for s in load_params(ROOT / params).steps]
    assert main(["pipeline", str(ROOT / params), "--check"]) == 0  # in-process: the same command, no start-up


def test_each_method_is_its_own_chain(tmp_path):
    """Step k of a method starts from that method's step k-1; only the first fine-tune is shared."""
    from flows.continual import producers
    from recall.pipeline import layout, plan

    sequence = [
        {"task": "gen_sentiment", "after": "base"},
        {"task": "gen_translation", "after": "gen_sentiment"},
        {"task": "gen_knowledge", "after": "gen_translation"},
    ]
    methods = {"recall": {}, "sft": {}, "ewc": {}, "ties": {"density": 0.5}}
    promote = {"method": "recall", "tolerance": 2.0}  # as params.yaml writes it: a DVC param of the gates
    params = load_params(write_params(tmp_path, tiny_params(sequence=sequence, methods=methods, promote=promote)))
    chains = tmp_path / "data" / "chains"
    for m in methods:
        assert layout.start_model(params, m, "gen_translation") == layout.handed_on(params, m, "gen_sentiment")
        assert layout.start_model(params, m, "gen_knowledge") == layout.handed_on(params, m, "gen_translation")
        assert layout.new_model(params, m, "gen_sentiment") == tmp_path / "data" / "experts" / "gen_sentiment"
    assert layout.handed_on(params, "sft", "gen_translation") == chains / "sft" / "gen_translation" / "sft"
    assert layout.handed_on(params, "ties", "gen_translation") == chains / "ties" / "gen_translation" / "model"
    dag = {s.name: s for s in plan.plan(params)}
    assert chains / "ties" / "gen_sentiment" / "model" in dag["finetune-ties-gen_translation"].deps
    assert dag["finetune-ewc-gen_knowledge"].params == ["finetune", "methods.ewc"]
    assert tmp_path / "data" / "tasks" / "gen_translation" in dag["finetune-ewc-gen_knowledge"].deps
    assert dag["merge-ties-gen_knowledge"].params == ["methods.ties"]
    # RECALL's settings are read by RECALL's stages only
    tasks = [step["task"] for step in sequence]
    readers = {n for n, s in dag.items() if any(p.startswith("recall") for p in s.params)}
    assert readers == {f"{stage}-{t}" for stage in ("features", "typical", "similarity", "merge-recall") for t in tasks}
    assert "finetune-sft-gen_sentiment" not in dag and "finetune-gen_sentiment" in dag
    # the served chain (promote.method, recall by default) has a gate after each step; it reads the earlier
    # gates' decisions (whose step holds the champion), and the report reads every gate's
    gates = [n for n in dag if n.startswith("gate-")]
    assert gates == [f"gate-{t}" for t in tasks]
    assert [layout.gate_metrics(params, t) for t in tasks[:2]] == [
        d for d in dag["gate-gen_knowledge"].deps if d.name == "metrics.json"
    ]
    assert (
        dag["gate-gen_knowledge"].params == ["evaluate", "promote.tolerance"]
        and "gate-gen_translation" in producers(list(dag.values()))["gate-gen_knowledge"]
    )
    assert layout.gate_metrics(params, "gen_knowledge") in dag["report"].deps


def test_the_multi_scenario_runs_the_experts_and_their_merges_at_once_only(tmp_path):
    """Table 2 needs no per-expert merge or evaluation (table 1, scenario single, has them)."""
    from recall.pipeline import layout, plan, stages

    sequence = [{"task": t, "after": "base"} for t in ("gen_sentiment", "gen_knowledge")]
    params = tiny_params(scenario="multi", sequence=sequence, methods={"recall": {}, "average": {}})
    loaded = load_params(write_params(tmp_path, params))
    dag = {s.name: s for s in plan.plan(loaded)}
    per_task = [f"{stage}-{t['task']}" for t in sequence for stage in ("finetune", "features", "typical")]
    assert list(dag) == ["base", "data", *per_task, "similarity", "multi-recall", "multi-average", "report"]
    # the similarities are their own stage: a new temperature reruns the merge, not 25 feature extractions
    assert "recall.sigma" in dag["similarity"].params and "recall.temperature" not in dag["similarity"].params
    assert "recall.temperature" in dag["multi-recall"].params and "recall.sigma" not in dag["multi-recall"].params
    assert layout.multi_similarity_path(loaded) in dag["multi-recall"].deps
    assert dag["report"].deps == [layout.multi_dir(loaded, m) for m in ("recall", "average")]
    assert set(stages.report_spec(loaded, tmp_path / "data")) == {"tasks", "multi"}


def test_a_stale_dvc_yaml_is_refused(tmp_path):
    from recall.pipeline import plan

    write_params(tmp_path, tiny_params())
    plan.write(load_params(tmp_path / "params.yaml"))
    params = load_params(write_params(tmp_path, tiny_params(methods={"recall": {}, "sft": {}, "magmax": {}})))
    with pytest.raises(RecallError, match="run `recall pipeline`"):
        plan.check_current(params)


def dvc(project: Path, env: dict, *args: str) -> str:
    proc = subprocess.run([BIN / "dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not in the stage worker" not in proc.stderr, proc.stderr[-3000:]  # a worker in `env` served every stage
    return proc.stdout


def dvc_project(project: Path, prefect_server: dict, mlflow_db: Path) -> dict:
    """`project` as a git + DVC repository with an empty MLflow store (its schema already migrated,
    which its first stage would otherwise spend seconds on); the environment its commands run in."""
    shutil.copy(mlflow_db, project / "mlflow.db")
    env = {
        **prefect_server,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        **{
            f"GIT_{who}_{what}": value
            for who in ("AUTHOR", "COMMITTER")
            for what, value in (("NAME", "recall tests"), ("EMAIL", "tests@recall.invalid"))
        },
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc(project, env, "init", "-q")
    return env


@pytest.mark.xdist_group("repro")
def test_dvc_repro_runs_the_sequence_end_to_end(tmp_path, prefect_server, empty_mlflow_db):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(ROOT / "incoming", project / "incoming")
    tiny_model(project / "tiny", layers=2)
    write_params(project, tiny_params())
    env = dvc_project(project, prefect_server, empty_mlflow_db)
    with helpers.stage_worker(env) as (_, env):  # as scripts/run.sh runs it: each stage forked from a warm worker
        sequence_end_to_end(project, env)


def sequence_end_to_end(project: Path, env: dict) -> None:
    subprocess.run([BIN / "recall", "pipeline"], cwd=project, env=env, check=True)

    dvc(project, env, "repro")
    chains = project / "data" / "chains"
    for task in ("gen_sentiment", "gen_translation"):
        for method in ("recall", "sft", "average"):
            metrics = yaml.safe_load((chains / method / task / "eval" / "metrics.json").read_text())
            assert set(metrics) == {"gen_sentiment", "gen_translation"}

    # Each chain's step 2 starts from its own step 1: the fine-tune's base, the merge's inputs.
    def started(m: str) -> str:
        return yaml.safe_load((chains / m / "gen_translation" / "sft" / "train_metrics.json").read_text())["base"]

    assert Path(started("recall")) == chains / "recall" / "gen_sentiment" / "model"
    assert Path(started("average")) == chains / "average" / "gen_sentiment" / "model"
    assert Path(started("sft")) == project / "data" / "experts" / "gen_sentiment"
    merged = yaml.safe_load((chains / "average" / "gen_translation" / "model" / "merge_weights.json").read_text())
    assert [Path(m) for m in merged["models"]] == [
        chains / "average" / "gen_sentiment" / "model",
        chains / "average" / "gen_translation" / "sft",
    ]
    report = (project / "reports" / "report.md").read_text()
    assert "Table 7" in report and (project / "reports" / "forgetting.png").stat().st_size > 1000
    # the gate after each step of the served chain (recall): its decision in DVC metrics and the report
    first = json.loads((project / "gates" / "gen_sentiment" / "metrics.json").read_text())
    assert first["champion"] == "data/base/model" and set(first["tasks"]) == {"gen_sentiment"}
    gate = json.loads((project / "gates" / "gen_translation" / "metrics.json").read_text())
    assert gate["champion_step"] == ("gen_sentiment" if first["promoted"] else "base")
    assert set(gate["tasks"]) == {"gen_sentiment", "gen_translation"} and gate["tasks"]["gen_translation"]["new"]
    assert f"- gen_translation: **{gate['decision']}**" in report

    # Nothing changed: nothing reruns. A variant with one RECALL param changed: only RECALL's chain
    # from its first merge on reruns.
    assert "Data and pipelines are up to date" in dvc(project, env, "repro")
    metrics = json.loads(dvc(project, env, "metrics", "show", "--json"))
    assert "Final average" in str(metrics) and "BWT" in str(metrics)
    assert "gates/gen_translation/metrics.json" in str(metrics) and "promoted" in str(metrics)
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "default run"], cwd=project, env=env, check=True)
    out = dvc(project, env, "exp", "run", "-S", "recall.temperature=0.5", "--name", "cooler")
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {
        "merge-recall-gen_sentiment",
        "evaluate-recall-gen_sentiment",
        "finetune-recall-gen_translation",
        "features-gen_translation",
        "typical-gen_translation",
        "similarity-gen_translation",
        "merge-recall-gen_translation",
        "evaluate-recall-gen_translation",
        "gate-gen_sentiment",
        "gate-gen_translation",
        "report",
    }, ran
    assert "cooler" in dvc(project, env, "exp", "list", "--name-only")
    assert yaml.safe_load((project / "params.yaml").read_text())["recall"]["temperature"] == 0.5

    # MLflow: a sequence run, its step runs, stage runs; metrics per step; registered merges with lineage tags.
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("recall")
    runs = client.search_runs([exp.experiment_id], max_results=500)
    levels = {r.data.tags["recall.level"] for r in runs}
    assert levels == {"sequence", "step", "stage"}
    assert all(r.info.status == "FINISHED" for r in runs)
    # the default run's sequence (the experiment's params make another one, holding only what reran)
    sequence = min((r for r in runs if r.data.tags["recall.level"] == "sequence"), key=lambda r: r.info.start_time)
    for method in ("recall", "sft", "average"):
        history = client.get_metric_history(sequence.info.run_id, f"{method}.gen_sentiment.accuracy")
        assert sorted({m.step for m in history}) == [1, 2]
    assert {"recall/gen_translation", "sft/gen_translation"} <= {r.data.tags.get("recall.step") for r in runs}
    versions = client.search_model_versions("name='recall-merged'")
    assert {v.tags["chain"] for v in versions} == {"recall", "average"}
    latest = max((v for v in versions if v.tags["chain"] == "recall"), key=lambda v: int(v.version))
    assert latest.source.startswith("models:/") and latest.tags["method"] == "recall"  # a copy in MLflow's store
    assert {"parents", "weights_sha256", "data_sha256", "git_commit", "dvc_stage", "folder"} <= set(latest.tags)
    assert Path(latest.tags["folder"]).is_dir()  # the DVC output it was made from, for `recall lineage`

    # the gate tagged every version of the served chain; the last one holds champion or challenger
    gated = json.loads((project / "gates" / "gen_translation" / "metrics.json").read_text())
    assert latest.tags["gate"] == gated["decision"] and latest.tags["gate.reason"] == gated["reason"]
    assert all("gate" not in v.tags for v in versions if v.tags["chain"] == "average")
    alias = "champion" if gated["promoted"] else "challenger"
    assert str(client.get_registered_model("recall-merged").aliases[alias]) == str(latest.version)

    lineage = subprocess.run(
        [BIN / "recall", "lineage", f"models:/recall-merged@{alias}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (
        "merged (recall, recall chain)" in lineage
        and "fine-tuned on gen_translation" in lineage
        and "base model" in lineage
    )

    # `recall gate`: the base model against the last step's model (its evaluation reused, the base's made)
    def gate_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([BIN / "recall", "gate", *args], cwd=project, env=env, capture_output=True, text=True)

    last = "data/chains/recall/gen_translation/model"
    proc = gate_cli("--candidate", "data/base/model", "--champion", last)
    assert proc.returncode == (0 if "promoted:" in proc.stdout else 1), proc.stderr[-2000:]
    assert "| gen_translation (new) |" in proc.stdout and "Traceback" not in proc.stderr
    same = gate_cli("--candidate", f"models:/recall-merged/{latest.version}", "--champion", last)
    assert same.returncode == 0 and "no change" in same.stdout
    missing = gate_cli("--candidate", "nowhere/model")
    assert missing.returncode == 2 and "nowhere/model is neither a model folder" in missing.stderr


def test_a_failing_stage_is_marked_failed_in_mlflow(tmp_path, prefect_server, empty_mlflow_db):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(empty_mlflow_db, project / "mlflow.db")
    write_params(project, tiny_params())  # no base model built and no task data: the stage must fail
    from recall.pipeline import plan

    plan.write(load_params(project / "params.yaml"))
    env = {**prefect_server, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.stage", "features", "--step", "gen_sentiment"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("recall").experiment_id], "tags.`recall.level` = 'stage'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_the_data_stage_refuses_training_prompts_longer_than_finetune_max_length(tmp_path):
    """A task whose prompts cannot be trained on stops the run at its data stage, before any fine-tune,
    naming the params key to raise; the stage reads that key, so raising it reruns the check."""
    from recall.pipeline import layout, plan, stages

    project = tmp_path / "project"
    project.mkdir()
    tiny_model(project / "tiny", layers=2)
    params = tiny_params()
    params["finetune"]["max_length"] = 24
    loaded = load_params(write_params(project, params))
    data = next(s for s in plan.plan(loaded) if s.name == "data")
    assert "finetune.max_length" in data.params and layout.base_model(loaded) in data.deps
    stages.base(loaded)
    with pytest.raises(RecallError, match=r"training prompts do not fit finetune.max_length 24 .*raise finetune"):
        stages.data(loaded)
    params["finetune"]["max_length"] = 512
    stages.data(load_params(write_params(project, params)))  # the same data passes at a length that fits


def test_multi_scenario_merges_every_expert(tmp_path, monkeypatch):
    """Stage functions alone (no DVC): experts from the base, then one merge with averaged reference rows."""
    from recall.pipeline import stages, table

    project = tmp_path / "project"
    project.mkdir()
    tiny_model(project / "tiny", layers=2)
    params = tiny_params(scenario="multi", methods={"recall": {}}, multi={"with_base": True})
    params["sequence"] = [{"task": "gen_sentiment", "after": "base"}, {"task": "gen_knowledge", "after": "base"}]
    params["recall"].update(typical=8, sigma=1.0)  # every probe sample typical: eq. 1 recomputable below
    loaded = load_params(write_params(project, params))
    stages.base(loaded)
    stages.data(loaded)
    for task in ("gen_sentiment", "gen_knowledge"):
        for stage in (stages.finetune_step, stages.features, stages.typical):
            stage(loaded, task)
    similarity = table.run(loaded, "similarity")  # the multi scenario's: no step
    record = json.loads(similarity.read_text())
    json.dump({**record, "models": record["models"][::-1]}, similarity.open("w"))
    with pytest.raises(RecallError, match="measured other models than this merge"):
        stages.multi(loaded, "recall")
    json.dump(record, similarity.open("w"))
    out = stages.multi(loaded, "recall")

    record = yaml.safe_load((out / "model" / "merge_weights.json").read_text())
    data = project / "data"
    assert [Path(m) for m in record["models"]] == [
        data / "base" / "model",
        data / "experts" / "gen_sentiment",
        data / "experts" / "gen_knowledge",
    ]
    # Each expert the reference on its own task's probe samples (eq. 1 from the models' hidden states,
    # recomputed here); the weights the mean of the rows' softmaxes.
    tokenizer, models, rows = AutoTokenizer.from_pretrained(data / "base" / "model"), record["models"], []
    for task in ("gen_sentiment", "gen_knowledge"):
        texts = [render(tokenizer, r) for r in read_examples(data / "chains" / "recall" / task / "probe.jsonl")]
        ref, *reps = (independent_representations(m, texts) for m in (data / "experts" / task, *models))
        sim = np.array([[np.mean(np.exp(-((ref[:, i] - r[:, i]) ** 2).sum(-1) / 2)) for r in reps] for i in range(3)])
        rows.append(np.exp(sim) / np.exp(sim).sum(1, keepdims=True))
    np.testing.assert_allclose(record["layers"], np.mean(rows, axis=0), rtol=1e-4)
    metrics = yaml.safe_load((out / "eval" / "metrics.json").read_text())
    assert set(metrics) == {"gen_sentiment", "gen_knowledge"}
    assert stages.report_spec(loaded, project / "data")["multi"][0]["setting"] == "with base model"


def test_ewc_ties_magmax_and_task_arithmetic_chains_run_both_steps(tmp_path):
    """Stage functions alone (no DVC): each method's chain through both steps of a sequence, up to the
    model each step hands on (the evaluate stage scores that model the same way for every method, as
    the dvc repro test shows). Every merge equals its method's rule recomputed here (numpy, float32
    task vectors as the models store them), and EWC's second fine-tune is penalised towards the first task."""
    from test_baselines import magmax_reference, ties_reference

    from recall.pipeline import plan, table

    project = tmp_path / "project"
    project.mkdir()
    tiny_model(project / "tiny", layers=2)
    methods = {"ewc": {"lambda": 100.0, "samples": 4}, "ties": {"density": 0.5}, "magmax": {}, "task_arithmetic": {}}
    loaded = load_params(write_params(project, tiny_params(methods=methods)))
    for stage in plan.plan(loaded):
        if stage.stage not in ("evaluate", "report"):
            table.run(loaded, stage.stage, stage.task, stage.method)

    chains, base = project / "data" / "chains", tensors(project / "data" / "base" / "model")
    rules = {
        "task_arithmetic": lambda thetas, b: b + sum(t - b for t in thetas),
        "ties": lambda thetas, b: ties_reference(thetas, b, [1.0, 1.0], density=0.5, keep_ties=True),
        "magmax": lambda thetas, b: magmax_reference(thetas, b),
    }
    for method, rule in rules.items():
        for task, first in (("gen_sentiment", project / "data" / "base" / "model"), ("gen_translation", None)):
            first = first or chains / method / "gen_sentiment" / "model"
            second = project / "data" / "experts" / task if task == "gen_sentiment" else chains / method / task / "sft"
            record = json.loads((chains / method / task / "model" / "merge_weights.json").read_text())
            assert record["method"] == method and [Path(m) for m in record["models"]] == [first, second]
            inputs, merged = [tensors(first), tensors(second)], tensors(chains / method / task / "model")
            for name, value in merged.items():
                expected = rule([t[name].numpy() for t in inputs], base[name].numpy())
                np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=f"{method} {name}")

    trained = json.loads((chains / "ewc" / "gen_translation" / "sft" / "train_metrics.json").read_text())
    assert Path(trained["base"]) == project / "data" / "experts" / "gen_sentiment"  # the chain's step-1 model
    assert trained["ewc"]["from"] == "gen_sentiment" and trained["ewc"]["samples"] == 4
    assert any(s.get("ewc_penalty", 0) > 0 for s in trained["steps"])


def test_lm_cocktail_and_fisher_chains_run_from_their_weight_sources_stages(tmp_path):
    """Stage functions alone (no DVC): methods whose weights need evidence other than RECALL's get their
    weight source's stages before each merge (LM-Cocktail the models' losses, Fisher merging each model's
    Fisher), read as their settings say; the merge's weights follow from that evidence."""
    from recall.pipeline import plan, table

    project = tmp_path / "project"
    project.mkdir()
    tiny_model(project / "tiny", layers=2)
    methods = {"lm_cocktail": {"examples": 2, "temperature": 2.0}, "fisher": {"examples": 2, "floor": 1e-8}}
    loaded = load_params(write_params(project, tiny_params(methods=methods)))
    dag = {s.name: s for s in plan.plan(loaded)}
    chains = project / "data" / "chains"
    losses = dag["losses-lm_cocktail-gen_translation"]
    assert losses.outs == [chains / "lm_cocktail" / "gen_translation" / "losses.json"]
    assert losses.params == ["methods.lm_cocktail.examples", "methods.lm_cocktail.temperature"]
    assert losses.outs[0] in dag["merge-lm_cocktail-gen_translation"].deps
    assert dag["fisher-fisher-gen_translation"].outs[0] in dag["merge-fisher-gen_translation"].deps
    assert "similarity-gen_translation" not in dag  # no RECALL: none of its stages
    for stage in plan.plan(loaded):
        if stage.stage not in ("evaluate", "report"):
            table.run(loaded, stage.stage, stage.task, stage.method)

    step = chains / "lm_cocktail" / "gen_translation"
    measured = json.loads((step / "losses.json").read_text())["cocktail"]["losses"]
    record = json.loads((step / "model" / "merge_weights.json").read_text())
    expected = np.exp(-np.array(measured) / 2.0) / np.exp(-np.array(measured) / 2.0).sum()
    np.testing.assert_allclose(record["layers"], np.tile(expected, (len(record["layers"]), 1)), rtol=1e-6)
    assert record["cocktail"]["n_examples"] == 2 and record["chain"] == "lm_cocktail"
    record = json.loads((chains / "fisher" / "gen_translation" / "model" / "merge_weights.json").read_text())
    assert record["params"] == {"floor": 1e-8} and len(record["fisher"]) == 2
    assert record["settings"] == {"examples": 2, "max_length": 512}

    multi = tiny_params(scenario="multi", methods=methods)
    multi["sequence"] = [{"task": "gen_sentiment", "after": "base"}, {"task": "gen_knowledge", "after": "base"}]
    dag = {s.name: s for s in plan.plan(load_params(write_params(project, multi)))}
    evidence = project / "data" / "multi" / "evidence"
    assert evidence / "lm_cocktail" / "losses.json" in dag["multi-lm_cocktail"].deps
    assert dag["fisher-fisher"].outs == [evidence / "fisher" / "fisher"]


def test_the_scheduled_flow_adopts_incoming_task_data_into_every_chain(tmp_path):
    """A registered task dropped into incoming/ is appended to the sequence, and dvc.yaml gets its
    stages in every method's chain, in an order that respects their dependencies."""
    from flows.continual import adopt_incoming, stage_names

    write_params(tmp_path, tiny_params())
    (tmp_path / "incoming" / "gen_knowledge").mkdir(parents=True)
    (tmp_path / "incoming" / "gen_knowledge" / "train.jsonl").write_text("{}\n")
    assert adopt_incoming(tmp_path) == (["gen_knowledge"], {})
    assert load_params(tmp_path / "params.yaml").step("gen_knowledge").after == "gen_translation"
    names = stage_names(str(tmp_path / "params.yaml"))
    for method in ("recall", "sft", "average"):
        assert names.index(f"finetune-{method}-gen_translation") < names.index(f"finetune-{method}-gen_knowledge")
    assert names[-1] == "report" and "finetune-recall-gen_knowledge" in (tmp_path / "dvc.yaml").read_text()
    assert adopt_incoming(tmp_path) == ([], {})  # already in the sequence


def webhook_block(api: str, name: str) -> list[dict]:
    """A Prefect custom-webhook notification block `name`, saved on the server at `api`, posting to a
    local HTTP server; returns the list its JSON bodies are appended to."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    block = CustomWebhookNotificationBlock(
        name="recall",
        url=f"http://127.0.0.1:{server.server_address[1]}/hook",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
        allow_private_urls=True,  # the test's server is on localhost
    )
    with temporary_settings({PREFECT_API_URL: api}):
        block.save(name, overwrite=True)
    return received


def flow_run_state(api: str, project: str):
    """The final state of the continual flow's run on `project`, read back from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["recall-continual-learning"])))
    [run] = [r for r in runs if r.parameters.get("project") == project]
    return run.state


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, prefect_server, empty_mlflow_db) -> dict:
    """The scheduled flow, run once for the module with the sequential runner (the tests below check
    different things of it): a base model without a chat template; a sequence of one task declared in
    the `tasks` folder, two chains (sft, ewc: their second steps are independent), two task folders
    dropped into incoming/, one of them broken; the sft chain is gated, its refusals notified to a
    webhook block (a local HTTP server; `received` collects what it got).
    The run is moved to `sequential/` after its fingerprint is taken, so that a run of the same
    project by another runner can use its path ("pristine" is the project before any run)."""
    root = tmp_path_factory.mktemp("scheduled")
    pristine, project = root / "pristine", root / "project"
    shutil.copytree(EXAMPLES / "tickets", pristine / "mytasks" / "tickets")
    shutil.copytree(EXAMPLES / "quiz", pristine / "incoming" / "quiz")
    shutil.copytree(EXAMPLES / "faq", pristine / "incoming" / "broken")
    (pristine / "incoming" / "broken" / "task.yaml").write_text("format: qa\nmetric: bleu\n")
    tiny_model(pristine / "tiny", layers=2, chat=False)
    sequence = [{"task": "tickets", "after": "base"}]
    promote = {"method": "sft", "notify": "custom-webhook/recall-gate"}
    methods = {"sft": {}, "ewc": {}}
    write_params(pristine, tiny_params(tasks="mytasks", sequence=sequence, methods=methods, promote=promote))
    env = dvc_project(pristine, prefect_server, empty_mlflow_db)
    received = webhook_block(env["PREFECT_API_URL"], "recall-gate")
    shutil.copytree(pristine, project)
    logs = run_flow(project, env)
    from recall.tasks import registry

    registered = dict(registry._REGISTRY)
    expected = fingerprint(project)  # reads the project's params: its declared tasks must not outlive the module
    registry._REGISTRY.clear()
    registry._REGISTRY.update(registered)
    return {
        "env": env,
        "pristine": pristine,
        "project": project,
        "run": project.rename(root / "sequential"),
        "logs": logs,
        "fingerprint": expected,
        "received": received,
    }


@pytest.mark.xdist_group("scheduled")  # one worker builds the module fixture once
def test_the_scheduled_flow_learns_declared_tasks_and_leaves_a_bad_folder(scheduled):
    """The real flow (Prefect, then DVC stage by stage, MLflow) on a base model without a chat
    template: the sequence's task is declared in the `tasks` folder; a task folder dropped into
    incoming/ is checked, appended and learned; one that fails its checks stays where it is, is
    logged and recorded as a FAILED MLflow run, and the others run. The served chain (sft) is gated
    after each step; a refusal reaches the notification block in promote.notify and the flow run's
    state message."""
    project, logs, env, received = scheduled["run"], scheduled["logs"], scheduled["env"], scheduled["received"]
    assert "incoming/broken left out" in logs and "task.yaml:2: field 'metric'" in logs
    assert (project / "incoming" / "broken" / "task.yaml").is_file()  # left where it was
    sequence = yaml.safe_load((project / "params.yaml").read_text())["sequence"]
    assert sequence == [{"task": "tickets", "after": "base"}, {"task": "quiz", "after": "tickets"}]
    assert (project / "data" / "tasks" / "quiz" / "task.yaml").read_text() == (
        EXAMPLES / "quiz" / "task.yaml"
    ).read_text()
    folder = project / "data" / "chains" / "sft" / "quiz" / "eval"
    assert set(json.loads((folder / "metrics.json").read_text())) == {"tickets", "quiz"}
    assert json.loads((folder / "evaluation.json").read_text())["rendering"] == "plain"
    trained = json.loads((project / "data" / "chains" / "sft" / "quiz" / "sft" / "train_metrics.json").read_text())
    assert trained["task"] == "quiz" and trained["rendering"] == "plain"
    assert (project / "reports" / "report.md").is_file()

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("recall").experiment_id], max_results=500)
    [rejected] = [r for r in runs if r.data.tags["recall.level"] == "rejected"]
    assert rejected.info.status == "FAILED" and rejected.data.tags["recall.input"] == "incoming/broken"
    assert "field 'metric'" in rejected.data.tags["error"]
    assert {r.info.status for r in runs if r is not rejected} == {"FINISHED"}

    decisions = {t: json.loads((project / "gates" / t / "metrics.json").read_text()) for t in ("tickets", "quiz")}
    refused = [t for t, d in decisions.items() if not d["promoted"]]
    assert refused, decisions  # tiny random models learn nothing the gate can see
    [note] = received
    ran_in = scheduled["run"].parent / "project"  # where the flow ran, before the run was moved
    assert note["subject"] == f"recall: {', '.join(refused)} refused in {ran_in}"
    assert all(f"step {t} refused by the gate: {decisions[t]['reason']}" in note["body"] for t in refused)
    assert f"recall: {', '.join(refused)} refused" in logs
    state = flow_run_state(env["PREFECT_API_URL"], str(ran_in))
    assert state.type.value == "COMPLETED" and state.message == note["body"]


def test_declared_tasks_come_from_the_tasks_folder_or_data_source_with_their_spec(tmp_path):
    """Stage functions alone: the data stage copies a declared task's task.yaml beside its data; the
    `tasks` folder and data.source's task folders are the data stage's dependencies; one name
    declared twice differently is refused."""
    from recall.pipeline import plan, stages

    shutil.copytree(EXAMPLES / "tickets", tmp_path / "source" / "tickets")
    shutil.copytree(EXAMPLES / "quiz", tmp_path / "mytasks" / "quiz")
    sequence = [{"task": "tickets", "after": "base"}, {"task": "quiz", "after": "tickets"}]
    params = load_params(
        write_params(
            tmp_path,
            tiny_params(tasks="mytasks", sequence=sequence, data={"source": "source", "train_size": 5, "test_size": 2}),
        )
    )
    assert [params.find_task(t).format for t in ("tickets", "quiz")] == ["classification", "multiple_choice"]
    data = plan.find(params, "data")
    assert tmp_path / "mytasks" in data.deps and data.params == ["data", "tasks", "finetune.max_length"]
    assert tmp_path / "source" / "tickets" in data.deps  # new files in data.source rerun the data stage
    tiny_model(tmp_path / "tiny", layers=2)
    stages.base(params)  # its tokenizer checks the training prompts' lengths
    stages.data(params)
    for task in ("tickets", "quiz"):
        copy = tmp_path / "data" / "tasks" / task
        assert (copy / "task.yaml").read_text() == (EXAMPLES / task / "task.yaml").read_text()
        assert len((copy / "train.jsonl").read_text().splitlines()) == 5
    shutil.copytree(EXAMPLES / "faq", tmp_path / "source" / "quiz", dirs_exist_ok=True)  # another task named quiz
    with pytest.raises(
        RecallError,
        match=r"two different tasks are named 'quiz': .*mytasks/quiz/task.yaml and "
        r".*source/quiz/task.yaml",
    ):
        load_params(tmp_path / "params.yaml")


def run_flow(project: Path, env: dict, *args: str, kill_stage: str | None = None) -> str:
    """The continual flow in its own process; with `kill_stage`, the first process of that stage is
    killed (SIGKILL) as soon as it starts. Returns the flow's log."""
    import psutil

    log = project.parent / f"{project.name}-flow.log"  # a file, not a pipe: nothing blocks while we watch
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.continual", "--project", str(project), *args, "run"],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    while kill_stage and proc.poll() is None:
        stage = f"flows.stage {kill_stage}"
        running = psutil.process_iter(["cmdline", "cwd"])  # this project's stages only: never another job's
        victims = [p for p in running if p.info["cwd"] == str(project) and stage in " ".join(p.info["cmdline"] or [])]
        if victims:
            victims[0].kill()
            break
        time.sleep(0.05)
    proc.wait(timeout=900)
    logs = log.read_text()
    assert proc.returncode == 0, logs[-4000:]
    return logs


STAGE_TASK_SPANS = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    runs = client.read_task_runs(limit=200)  # the API's most; the module's two flows make ~40
print(json.dumps([(r.start_time.timestamp(), r.end_time.timestamp()) for r in runs
                  if r.name.startswith("dvc_stage") and r.start_time and r.end_time]))
"""


def stage_task_spans(env: dict) -> list[tuple[float, float]]:
    """(start, end) of every finished `dvc_stage` task run on the Prefect server of `env`."""
    proc = subprocess.run([sys.executable, "-c", STAGE_TASK_SPANS], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [tuple(span) for span in json.loads(proc.stdout.strip().splitlines()[-1])]


@pytest.mark.xdist_group("scheduled")  # one worker builds the module fixture once
def test_the_dask_runner_runs_independent_stages_at_once_and_makes_the_same_artifacts(scheduled):
    """The scheduled project on a local Dask cluster of 2 worker processes: independent stages overlap
    in time (Prefect's task runs, each a stage's whole `dvc repro --single-item`: the sequential runner's
    on the same server never overlap), a stage process killed mid-stage is retried by Prefect, and the
    artifacts equal the sequential runner's (same project path, same seeds)."""
    project = scheduled["project"]
    shutil.copytree(scheduled["pristine"], project)
    logs = run_flow(project, scheduled["env"], "--runner", "dask", "--workers", "2", kill_stage="evaluate")

    assert "Retry 1/2" in logs  # the killed stage, rerun by Prefect
    assert any(k.endswith("adapter_model.safetensors") for k in scheduled["fingerprint"])
    assert fingerprint(project) == scheduled["fingerprint"]
    spans = sorted(stage_task_spans(scheduled["env"]))
    ends = np.maximum.accumulate([end for _, end in spans])
    assert any(start < ends[i] for i, (start, _) in enumerate(spans[1:])), spans  # a stage began before another ended


@pytest.mark.parametrize("in_worker", [False, True], ids=["own-process", "stage-worker"])
def test_a_cancelled_stage_stops_at_once_keeps_nothing_partial_and_resumes(tmp_path, prefect_server, in_worker):
    """SIGTERM (Prefect cancelling a flow run, a scheduler's limit) to a real stage process mid-fine-tune,
    which runs the stage itself or in a warm stage worker's child (the signal forwarded to it)."""
    from recall.pipeline import layout, plan, stages
    from recall.training.finetune import checkpoint_folder

    project = tmp_path / "project"
    project.mkdir()
    tiny_model(project / "tiny", layers=2)
    params = tiny_params()
    params["finetune"].update(max_steps=60, checkpoint_every=2)
    loaded = load_params(write_params(project, params))
    plan.write(loaded)
    stages.base(loaded)
    stages.data(loaded)
    out = layout.new_model(loaded, None, "gen_sentiment")
    state = checkpoint_folder(out) / "state.pt"
    env = {**prefect_server, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with helpers.stage_worker(env) if in_worker else nullcontext((None, env)) as (_, env):
        cancel_and_resume(project, env, out, state)


def cancel_and_resume(project: Path, env: dict, out: Path, state: Path) -> None:
    from recall.training.finetune import checkpoint_folder

    command = [sys.executable, "-m", "flows.stage", "finetune", "--step", "gen_sentiment"]
    proc = subprocess.Popen(command, cwd=project, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not state.is_file() or torch_step(state) < 4:  # a checkpoint replaced by a later one
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    at_signal = torch_step(state)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    stderr = proc.communicate(timeout=60)[1]
    stopped = time.monotonic() - sent
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    # Training stops at once (at most the checkpoint being written lands); the exit itself waits for
    # Prefect and MLflow to report the crash and flush (about 5 s on a busy 2-core machine).
    assert stopped < 15, f"took {stopped:.1f} s to exit"
    kept = torch_step(state)
    assert at_signal <= kept <= at_signal + 2 < 60
    assert stderr.strip().splitlines()[-1].startswith("recall stage finetune: cancelled (SIGTERM)")
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))  # nothing partial

    rerun = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming gen_sentiment from step {kept} of 60" in rerun.stderr
    assert (out / "model.safetensors").is_file() and not checkpoint_folder(out).exists()


def torch_step(state: Path) -> int:
    import torch

    try:
        return torch.load(state, weights_only=True)["step"]
    except (RuntimeError, EOFError, FileNotFoundError):  # caught mid-replace
        return 0
