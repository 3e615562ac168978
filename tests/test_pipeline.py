"""The pipeline end to end on a tiny model: dvc repro -> Prefect stage flows -> MLflow, real tools."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from recall.errors import RecallError
from recall.pipeline.params import load_params
from recall.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny_params(**changes) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"]["model"] = "tiny"
    params["data"].update(train_size=16, test_size=3)
    params["sequence"] = params["sequence"][:2]
    params["finetune"].update(max_steps=2, batch_size=2, max_length=512)
    params["recall"].update(samples=8, typical=3, max_length=512)
    params["evaluate"].update(limit=2, max_new_tokens=8)
    params["baselines"] = ["average"]
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
        (dict(sequence=[{"task": "gen_sentiment", "after": "base"}, {"task": "gen_squad", "after": "base"}]),
         "needs after: gen_sentiment"),
        (dict(baselines=["magic"]), "baseline 'magic' cannot run here"),
        (dict(baselines=["ties"]), "density"),
        (dict(baselines=[{"ties": {"density": 2}}]), "density"),
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


def test_shipped_params_are_valid():
    assert [s.task for s in load_params(ROOT / "params.yaml").steps]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """One Prefect server for all stage processes, as scripts/run.sh starts it."""
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    proc = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/health")
            break
        except OSError:
            time.sleep(0.5)
    yield {**env, "PREFECT_API_URL": url}
    proc.terminate()
    proc.wait(30)


def dvc(project: Path, env: dict, *args: str) -> str:
    proc = subprocess.run([BIN / "dvc", *args], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_dvc_repro_runs_the_sequence_end_to_end(tmp_path, prefect_server):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "incoming"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, project / name)
    tiny_model(project / "tiny", layers=2)
    write_params(project, tiny_params())
    env = {**prefect_server, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           **{f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER")
              for what, value in (("NAME", "recall tests"), ("EMAIL", "tests@recall.invalid"))}}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc(project, env, "init", "-q")

    dvc(project, env, "repro")
    steps = project / "data" / "steps"
    for task in ("gen_sentiment", "gen_translation"):
        for variant in ("recall", "sft", "average"):
            metrics = yaml.safe_load((steps / task / "eval" / variant / "metrics.json").read_text())
            assert set(metrics) == {"gen_sentiment", "gen_translation"}
        assert (steps / task / "model" / "merge_weights.json").is_file()
    report = (project / "reports" / "report.md").read_text()
    assert "Table 7" in report and (project / "reports" / "forgetting.png").stat().st_size > 1000

    # Nothing changed: nothing reruns. A variant with one RECALL param changed: only what reads it reruns.
    assert "Data and pipelines are up to date" in dvc(project, env, "repro")
    metrics = json.loads(dvc(project, env, "metrics", "show", "--json"))
    assert "Final average" in str(metrics) and "BWT" in str(metrics)
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "default run"], cwd=project, env=env, check=True)
    out = dvc(project, env, "exp", "run", "-S", "recall.temperature=0.5", "--name", "cooler")
    # Step 0 reruns from its merge on; step 1 learns from step 0's new model, so it reruns whole.
    for stage in ("merge@0", "evaluate@0", "finetune@1", "merge@1"):
        assert f"Running stage '{stage}'" in out, stage
    for stage in ("base", "data", "finetune@0", "features@0", "typical@0", "similarity@0"):
        assert f"Running stage '{stage}'" not in out, stage
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
    sequence = [r for r in runs if r.data.tags["recall.level"] == "sequence"][0]
    history = client.get_metric_history(sequence.info.run_id, "recall.gen_sentiment.accuracy")
    assert sorted({m.step for m in history}) == [1, 2]
    versions = client.search_model_versions("name='recall-merged'")
    assert len(versions) >= 2
    latest = max(versions, key=lambda v: int(v.version))
    assert Path(latest.source).is_dir() and latest.tags["method"] == "recall"
    assert {"parents", "weights_sha256", "data_sha256", "git_commit", "dvc_stage"} <= set(latest.tags)

    lineage = subprocess.run([BIN / "recall", "lineage", f"recall-merged/{latest.version}"], cwd=project,
                             env=env, capture_output=True, text=True, check=True).stdout
    assert "merged (recall)" in lineage and "fine-tuned on gen_translation" in lineage and "base model" in lineage


def test_a_failing_stage_is_marked_failed_in_mlflow(tmp_path, prefect_server):
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, tiny_params())  # no base model built and no task data: the stage must fail
    env = {**prefect_server, "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "flows.stage", "features", "--step", "gen_sentiment"], cwd=project,
                          env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("recall").experiment_id], "tags.`recall.level` = 'stage'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_multi_scenario_merges_every_expert(tmp_path, monkeypatch):
    """Stage functions alone (no DVC): experts from the base, then one merge with averaged reference rows."""
    import numpy as np

    from recall.pipeline import stages

    project = tmp_path / "project"
    project.mkdir()
    tiny_model(project / "tiny", layers=2)
    params = tiny_params(scenario="multi", baselines=[], multi={"with_base": True})
    params["sequence"] = [{"task": "gen_sentiment", "after": "base"}, {"task": "gen_knowledge", "after": "base"}]
    loaded = load_params(write_params(project, params))
    stages.base(loaded)
    stages.data(loaded)
    for task in ("gen_sentiment", "gen_knowledge"):
        for stage in (stages.finetune_step, stages.features, stages.typical):
            stage(loaded, task)
    out = stages.multi(loaded)

    record = yaml.safe_load((out / "model" / "merge_weights.json").read_text())
    assert [Path(m).parent.name for m in record["models"]] == ["base", "gen_sentiment", "gen_knowledge"]
    rows = [np.exp(np.array(r["similarity"])) / np.exp(np.array(r["similarity"])).sum(1, keepdims=True)
            for r in record["references"]]
    np.testing.assert_allclose(record["layers"], np.mean(rows, axis=0), rtol=1e-6)
    metrics = yaml.safe_load((out / "eval" / "recall" / "metrics.json").read_text())
    assert set(metrics) == {"gen_sentiment", "gen_knowledge"}
    assert stages.report_spec(loaded, project / "data")["multi"][0]["setting"] == "with base model"
