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
