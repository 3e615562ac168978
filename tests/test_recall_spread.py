"""RECALL's weight spread (merge_weights.json, MLflow, the near-uniform warning) and the calibrated rule."""

import json
import logging

import mlflow
import numpy as np
import pytest
from helpers import run_cli
from test_pipeline import tiny_params, write_params
from test_tracking import store  # noqa: F401 (fixture)

from recall.merge.engine import spread_record
from recall.merge.methods import METHODS, resolve_weights
from recall.models import describe
from recall.pipeline.params import load_params
from recall.weights.rows import calibrated


def test_zscore_centres_each_layer_and_scales_by_the_spread_of_the_differences():
    sim = np.array([[0.9, 0.5], [0.2, 0.6], [0.4, 0.4]])
    # differences from each layer's mean: +-0.2, -+0.2, 0; their root mean square over all six: sqrt(0.16 / 6)
    expected = np.array([[1, -1], [-1, 1], [0, 0]]) * 0.2 / np.sqrt(0.16 / 6)
    np.testing.assert_allclose(calibrated(sim, "zscore"), expected)
    np.testing.assert_allclose(calibrated(sim, "none"), sim)
    # unit-free: the same weights whatever the metric's scale and offset
    np.testing.assert_allclose(calibrated(3.0 * sim + 7.0, "zscore"), expected)
    np.testing.assert_allclose(calibrated(np.full((2, 3), 0.4), "zscore"), 0.0)  # no differences: uniform


def test_calibrated_weights_leave_the_uniform_where_the_papers_stay_near_it(make_model):
    infos = [describe(make_model(n)) for n in ("a", "b")]  # 2 layers: 3 layer groups
    sim = np.array([[0.50, 0.56], [0.50, 0.53], [0.50, 0.50]])  # RBF similarities as measured: close together
    paper = resolve_weights(METHODS["recall"], infos, similarities=[sim])
    z = calibrated(sim, "zscore")
    calib = resolve_weights(METHODS["recall"], infos, similarities=[sim], calibrate="zscore", temperature=2.0)
    np.testing.assert_allclose(calib, np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True))
    assert np.abs(paper - 0.5).max() < 0.02 and np.abs(calib - 0.5).max() > 0.25


def test_spread_is_each_layers_range_and_entropy_and_near_uniform_merges_warn(caplog):
    weights = np.array([[0.5, 0.5], [0.2, 0.8], [0.7, 0.3]])
    with caplog.at_level(logging.WARNING):
        record = spread_record(METHODS["recall"], weights)
    np.testing.assert_allclose(record["spread"]["range"], [0.0, 0.6, 0.4])
    np.testing.assert_allclose(
        record["spread"]["entropy"],
        [np.log(2), -(0.2 * np.log(0.2) + 0.8 * np.log(0.8)), -(0.7 * np.log(0.7) + 0.3 * np.log(0.3))],
    )
    assert record["spread"]["uniform_entropy"] == pytest.approx(np.log(2))
    assert record["near_uniform"] is None and not caplog.records

    with caplog.at_level(logging.WARNING):
        record = spread_record(METHODS["recall"], np.array([[0.52, 0.48], [0.46, 0.54], [0.5, 0.5]]))
    assert record["near_uniform"] == pytest.approx(0.04)
    assert "within 0.05 of uniform (1/2) in every layer" in caplog.text
    assert spread_record(METHODS["average"], weights) == {}  # weights the user chose: nothing to report


def test_a_recall_merge_records_its_spread_and_mlflow_logs_it(store, make_model, task_data, tmp_path):  # noqa: F811
    from recall.pipeline import tracked

    models = [make_model(n, seed=s) for n, s in (("a", 1), ("b", 2))]
    out = tmp_path / "out"
    args = ["--models", *models, "--data", task_data, "--typical", 4, "--calibrate", "zscore", "--out", out]
    assert run_cli("merge", "--method", "recall", *args) == 0
    record = json.loads((out / "merge_weights.json").read_text())
    layers = np.array(record["layers"])
    np.testing.assert_allclose(record["spread"]["range"], layers.max(1) - layers.min(1))
    assert record["settings"]["calibrate"] == "zscore"
    z = calibrated(np.array(record["references"][0]["similarity"]), "zscore")
    np.testing.assert_allclose(layers, np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-6)

    params = load_params(write_params(tmp_path, tiny_params()))
    with mlflow.start_run() as run:
        tracked.register_merge(params, out, [], "merge-recall-t", "recall chain: merge after step t")
    client = mlflow.MlflowClient()
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "weights.range"))
    np.testing.assert_allclose([v for _, v in logged], record["spread"]["range"])
    assert [s for s, _ in logged] == list(range(len(layers)))
    near = "true" if record["near_uniform"] is not None else "false"
    assert client.get_run(run.info.run_id).data.tags["weights.near_uniform"] == near


def test_the_report_prints_each_merges_spread(tmp_path):
    from recall.reporting.report import write_report

    for name, layers in (("near", [[0.48, 0.52], [0.54, 0.46]]), ("far", [[0.2, 0.8], [0.5, 0.5]])):
        record = {"method": "recall", "models": ["a", "b"], "layers": layers, "tensor_groups": {}}
        record |= spread_record(METHODS["recall"], np.array(layers))
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    (tmp_path / "spec.yaml").write_text("merge_weights: [near.json, far.json]\n")
    text = write_report(tmp_path / "spec.yaml", tmp_path / "out").read_text()
    near, far = text.split("far.json")
    assert "largest minus smallest weight: 0.040 0.080; entropy (nats, uniform 0.693): 0.692 0.690." in near
    assert "Every weight is within 0.040 of uniform: nearly the plain average." in near
    assert "largest minus smallest weight: 0.600 0.000; entropy (nats, uniform 0.693): 0.500 0.693." in far
    assert "nearly the plain average" not in far
