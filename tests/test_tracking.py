"""Registered merged models are real MLflow transformers models: they load from the registry alone."""

import shutil

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from recall import tracking
from recall.errors import RecallError
from recall.lineage import resolve_model

LINEAGE = {"parents": '["a", "b"]', "method": "recall", "chain": "recall", "dvc_stage": "merge-recall-t"}


@pytest.fixture
def store(tmp_path, monkeypatch, empty_mlflow_db):
    """A fresh sqlite tracking store; its artifact store (./mlruns) lands in tmp_path too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it for subprocesses
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking.tracking_uri(tmp_path))
    mlflow.set_experiment("registry")
    yield tmp_path
    mlflow.set_tracking_uri(before)


def test_a_registered_model_loads_from_the_registry_after_its_folder_is_gone(store, make_model):
    folder = make_model("merged", layers=2)
    (folder / "README.md").write_text("---\ntags: [merge, recall]\n---\n# Merged model (recall)\n")
    original = load_file(folder / "model.safetensors")
    with mlflow.start_run() as run:
        version = tracking.register_model(folder, LINEAGE, "recall chain: merge after step t")
    registered = mlflow.MlflowClient().get_model_version(tracking.REGISTERED_MODEL, version)
    assert registered.tags == {**LINEAGE, "folder": str(folder.resolve())}
    assert registered.run_id == run.info.run_id and registered.source.startswith("models:/")
    assert registered.description == "recall chain: merge after step t"
    assert resolve_model(f"{tracking.REGISTERED_MODEL}/{version}") == folder.resolve()

    shutil.rmtree(folder)
    loaded = mlflow.transformers.load_model(f"models:/{tracking.REGISTERED_MODEL}/{version}", return_type="components")
    weights = loaded["model"].state_dict()
    assert original.keys() == weights.keys()
    assert all(torch.equal(original[k], weights[k]) for k in original)
    assert loaded["task"] == "text-generation" and loaded["tokenizer"].chat_template


def test_registering_needs_an_active_run_and_a_model_folder(store, make_model, tmp_path):
    with pytest.raises(RecallError, match="active MLflow run"):
        tracking.register_model(make_model("m"), LINEAGE, "")
    with mlflow.start_run(), pytest.raises(RecallError, match="no config.json"):
        tracking.register_model(tmp_path, LINEAGE, "")


def test_a_referenced_version_points_at_its_folder_and_copies_nothing(store, make_model):
    folder = make_model("merged", layers=2)
    with mlflow.start_run():
        version = tracking.register_model(folder, LINEAGE, "recall chain: merge after step t", copy=False)
    registered = mlflow.MlflowClient().get_model_version(tracking.REGISTERED_MODEL, version)
    assert registered.source == str(folder.resolve()) == registered.tags["folder"]
    assert registered.description == "recall chain: merge after step t"
    assert resolve_model(f"models:/{tracking.REGISTERED_MODEL}/{version}") == folder.resolve()
    assert [p for p in store.rglob("*.safetensors") if folder not in p.parents] == []  # no copy anywhere


def versions(*folders, copy=False) -> list[str]:
    with mlflow.start_run():
        return [tracking.register_model(f, LINEAGE, f"step {i}", copy=copy) for i, f in enumerate(folders)]


def test_the_gate_moves_the_champion_alias_and_a_forgetting_candidate_leaves_it(store, make_model):
    from recall.gate import decide

    first, forgetful, better = (make_model(name, layers=2) for name in ("first", "forgetful", "better"))
    v1, v2, v3 = versions(first, forgetful, better)
    client = mlflow.MlflowClient()
    alias = lambda name: str(client.get_registered_model(tracking.REGISTERED_MODEL).aliases.get(name))  # noqa: E731
    assert tracking.record_gate(first, True, "learned t") == v1 and alias("champion") == v1

    # the candidate lost 60 of the champion's 80 right answers on the earlier task: refused, the alias stays
    old = [{"score": 100.0 if i < 80 else 0.0} for i in range(100)]
    lost = [{"score": 100.0 if 60 <= i < 80 else 0.0} for i in range(100)]
    new = [{"score": 100.0 if i < 90 else 0.0} for i in range(100)]
    decision = decide(
        {"gen_sentiment": lost, "gen_knowledge": new},
        {"gen_sentiment": old, "gen_knowledge": lost},
        ["gen_sentiment", "gen_knowledge"],
        "gen_knowledge",
    )
    assert not decision.promoted
    assert tracking.record_gate(forgetful, decision.promoted, decision.reason) == v2
    assert alias("champion") == v1 and alias("challenger") == v2
    refused = client.get_model_version(tracking.REGISTERED_MODEL, v2).tags
    assert refused["gate"] == "refused" and refused["gate.reason"].startswith("worse on gen_sentiment: -60.00 points")
    assert "champion.replaced" not in client.get_model_version(tracking.REGISTERED_MODEL, v1).tags

    tracking.record_gate(better, True, "learned u")
    assert alias("champion") == v3 and resolve_model(f"models:/{tracking.REGISTERED_MODEL}@champion") == better
    replaced = client.get_model_version(tracking.REGISTERED_MODEL, v1).tags["champion.replaced"]
    assert replaced.endswith(f"by version {v3}") and replaced[:4].isdigit()
    assert client.get_model_version(tracking.REGISTERED_MODEL, v3).tags["gate"] == "promoted"


def test_a_gate_without_a_registered_version_or_alias_is_one_clear_error(store, make_model):
    with pytest.raises(RecallError, match="no version of recall-merged was registered from"):
        tracking.record_gate(make_model("never"), True, "")
    versions(make_model("one"))
    with pytest.raises(RecallError, match="alias champion not found"):
        resolve_model("models:/recall-merged@champion")
    with pytest.raises(RecallError, match="NAME@ALIAS"):
        resolve_model("models:/recall-merged@")


def test_the_champion_loads_through_mlflow_transformers_and_generates(store, make_model):
    folder = make_model("merged", layers=2)
    [version] = versions(folder, copy=True)
    tracking.record_gate(folder, True, "learned t")
    shutil.rmtree(folder)  # served from MLflow's store alone
    generator = mlflow.transformers.load_model(f"models:/{tracking.REGISTERED_MODEL}@champion")
    out = generator("The cat", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert out.startswith("The cat") and len(out) > len("The cat")
    version_of_alias = mlflow.MlflowClient().get_model_version_by_alias(tracking.REGISTERED_MODEL, "champion")
    assert str(version_of_alias.version) == version


def test_with_a_referenced_registry_the_champion_is_its_dvc_folder(store, make_model):
    folder = make_model("merged", layers=2)
    versions(folder, copy=False)
    tracking.record_gate(folder, True, "learned t")
    champion = mlflow.MlflowClient().get_model_version_by_alias(tracking.REGISTERED_MODEL, "champion")
    assert champion.source == str(folder.resolve()) == str(resolve_model("recall-merged@champion"))
