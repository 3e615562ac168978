"""`recall evaluate`: input checks before OpenCompass starts, the generated OpenCompass config,
result collection, and one real OpenCompass run on a tiny random model (plus a forced failure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recall.cli import main
from recall.errors import RecallError
from recall.evaluation import evaluate, pipeline
from recall.evaluation.config import DatasetSpec, ModelSpec, dataset_abbr, model_abbr, render_config, write_dataset
from recall.evaluation.results import read_metrics
from recall.tasks.base import Example, get_task
from recall.tasks.generated import generate_suite
from recall.testing import tiny_model

TASKS = ["gen_sentiment", "gen_squad"]
PAPER_TASKS = ["sst2", "squad_v2", "medmcqa", "race", "iwslt2017_en_fr"]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    generate_suite(out, train=1, test=4)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def no_opencompass(monkeypatch):
    """Fail the test if OpenCompass would be started."""
    def refuse(*args):
        raise AssertionError("OpenCompass must not start on bad input")
    monkeypatch.setattr(pipeline, "run_opencompass", refuse)


def test_real_opencompass_run_and_forced_failure(model: Path, suite: Path, tmp_path: Path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--tasks", ",".join(TASKS), "--data-dir", str(suite),
                 "--limit", "3", "--batch-size", "2", "--out", str(out)]) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == TASKS
    for task in TASKS:
        assert list(metrics[task]) == list(get_task(task).metrics)
        assert all(0.0 <= v <= 100.0 for v in metrics[task].values())
    abbr = model_abbr(model)
    predictions = sorted((out / "opencompass" / "predictions" / abbr).glob("*.json"))
    assert [p.name.split("-")[0] for p in predictions] == ["gen_sentiment", "gen_squad"]
    first = json.loads(predictions[0].read_text())["0"]
    assert set(first) >= {"origin_prompt", "prediction", "gold"}
    assert first["origin_prompt"][0]["prompt"] == get_task("gen_sentiment").load("test", suite, 1)[0].prompt
    assert len(list((out / "opencompass" / "results" / abbr).glob("*.json"))) == 2
    assert list((out / "opencompass" / "summary").glob("summary_*.md"))
    assert (out / "opencompass.log").stat().st_size > 0

    broken = tmp_path / "broken"
    broken.mkdir()
    for file in model.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RecallError, match=r"no result for task\(s\) gen_sentiment.*see the log .*opencompass.log"):
        evaluate(broken, ["gen_sentiment"], out, data_dir=suite, limit=2)
    assert not (out / "metrics.json").exists()  # the earlier, complete-looking one is gone too


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (real dataset subsets) absent")
def test_paper_tasks_wiring_scores_gold_answers_100(model, tmp_path, monkeypatch):
    """The five real tasks through config, datasets, TaskEvaluator and result files, with OpenCompass
    replaced by a stand-in that 'predicts' each gold answer: every metric must be 100."""
    from mmengine.config import Config

    from recall.evaluation.evaluator import TaskEvaluator

    def gold_opencompass(config, work_dir, log):
        log.write_text("")
        cfg = Config.fromfile(str(config))
        for dataset in cfg.datasets:
            answers = [json.loads(line)["answer"] for line in Path(dataset.path).read_text().splitlines()]
            result = TaskEvaluator(task=dataset.eval_cfg.evaluator.task).score(answers, answers)
            path = work_dir / "results" / cfg.models[0].abbr / f"{dataset.abbr}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result))
        return 0
    monkeypatch.setattr(pipeline, "run_opencompass", gold_opencompass)
    metrics = evaluate(model, PAPER_TASKS, tmp_path / "out", data_dir=SHARED_DATA, limit=5)
    assert list(metrics) == PAPER_TASKS
    assert list(metrics["iwslt2017_en_fr"]) == ["bleu", "exact_match"]  # primary metric first
    assert all(v == pytest.approx(100.0) for scores in metrics.values() for v in scores.values())
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    config = (tmp_path / "out" / "opencompass_config.py").read_text()
    assert "max_out_len': 128" in config and "max_out_len': 48" in config  # translation, extractive QA


@pytest.mark.parametrize("tasks, kwargs, message", [
    (["gen_sentiment", "nope"], {}, "unknown task 'nope'"),
    (["gen_sentiment", "gen_sentiment"], {}, "given more than once"),
    ([], {}, "no tasks given"),
    (["gen_sentiment"], {"data_dir": "/nonexistent"}, "gen_sentiment/test.jsonl"),
    (["gen_sentiment"], {"batch_size": 0}, "--batch-size must be at least 1"),
    (["gen_sentiment"], {"max_new_tokens": 0}, "--max-new-tokens must be at least 1"),
])
def test_bad_input_fails_before_opencompass(model, suite, tmp_path, no_opencompass, tasks, kwargs, message):
    kwargs.setdefault("data_dir", suite)
    with pytest.raises(RecallError, match=message):
        evaluate(model, tasks, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_context_too_short_for_replies(suite, tmp_path, no_opencompass):
    short = tiny_model(tmp_path / "short", max_position_embeddings=64)
    with pytest.raises(RecallError, match="context of 64 tokens, too short for replies of up to 64"):
        evaluate(short, ["gen_sentiment"], tmp_path / "out", data_dir=suite, max_new_tokens=64)


def test_bad_model_folders(model, suite, tmp_path, no_opencompass):
    with pytest.raises(RecallError, match="not a model folder"):
        evaluate(tmp_path / "missing", ["gen_sentiment"], tmp_path / "out", data_dir=suite)
    plain = tmp_path / "plain"
    plain.mkdir()
    for file in model.iterdir():
        if file.name != "chat_template.jinja":
            (plain / file.name).write_bytes(file.read_bytes())
    with pytest.raises(RecallError, match="no chat template"):
        evaluate(plain, ["gen_sentiment"], tmp_path / "out", data_dir=suite)


def test_empty_test_split(model, tmp_path, no_opencompass):
    (tmp_path / "data" / "gen_sentiment").mkdir(parents=True)
    (tmp_path / "data" / "gen_sentiment" / "test.jsonl").write_text("\n")
    with pytest.raises(RecallError, match="no test examples"):
        evaluate(model, ["gen_sentiment"], tmp_path / "out", data_dir=tmp_path / "data")


def test_crash_leaves_no_metrics(model, suite, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # from an earlier run

    def crash(config, work_dir, log):
        log.write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
        return 1
    monkeypatch.setattr(pipeline, "run_opencompass", crash)
    with pytest.raises(RecallError, match="gen_sentiment: OpenCompass exited with status 1: RuntimeError: CUDA out of memory"):
        evaluate(model, ["gen_sentiment"], out, data_dir=suite, limit=1)
    assert not (out / "metrics.json").exists()
    assert (out / "data" / "gen_sentiment.jsonl").read_text().count("\n") == 1


def test_config_is_a_valid_opencompass_config(tmp_path):
    from mmengine.config import Config
    from opencompass.openicl.icl_evaluator import BaseEvaluator

    from recall.evaluation.evaluator import TaskEvaluator

    data = tmp_path / "gen_sentiment.jsonl"
    write_dataset([Example("Is {this} good?", "positive")], data)
    spec = DatasetSpec("gen_sentiment", "gen_sentiment-x", data, 16)
    path = tmp_path / "config.py"
    path.write_text(render_config(ModelSpec(tmp_path, "m-1", 4, 100, False, "float32"), [spec]))
    config = Config.fromfile(str(path))
    model, dataset = config.models[0], config.datasets[0]
    assert model.model_kwargs == {"torch_dtype": "float32", "device_map": "cpu"}
    assert model.run_cfg == {"num_gpus": 0} and model.generation_kwargs == {"do_sample": False}
    assert dataset.infer_cfg.inferencer.max_out_len == 16
    evaluator = dataset.eval_cfg.evaluator
    assert evaluator.type is TaskEvaluator and issubclass(TaskEvaluator, BaseEvaluator)
    scores = TaskEvaluator(task="gen_sentiment").score(["It is positive.", "negative"], ["positive", "positive"])
    assert scores == {"accuracy": 50.0}


def test_abbrs_change_with_inputs(model, tmp_path):
    data = tmp_path / "d.jsonl"
    write_dataset([Example("p", "a")], data)
    first = dataset_abbr("t", data, 16)
    assert dataset_abbr("t", data, 32) != first
    write_dataset([Example("p", "b")], data)
    assert dataset_abbr("t", data, 16) != first

    copy = tmp_path / "tiny"
    copy.mkdir()
    for file in model.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    before = model_abbr(copy)
    assert before.startswith("tiny-")
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes() + b" ")
    assert model_abbr(copy) != before


def test_result_errors_name_the_task(tmp_path):
    spec = DatasetSpec("gen_sentiment", "gen_sentiment-x", tmp_path / "d.jsonl", 16)
    log = tmp_path / "opencompass.log"
    metrics = {"gen_sentiment": ("accuracy",)}
    with pytest.raises(RecallError, match=r"no result for task\(s\) gen_sentiment; see the log"):
        read_metrics(tmp_path, "m", [spec], metrics, log)
    result = tmp_path / "results" / "m" / "gen_sentiment-x.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({"error": "preds and refrs have different length"}))
    with pytest.raises(RecallError, match="could not score task gen_sentiment: preds and refrs"):
        read_metrics(tmp_path, "m", [spec], metrics, log)
    result.write_text(json.dumps({"accuracy": 25.0, "details": {}}))
    assert read_metrics(tmp_path, "m", [spec], metrics, log) == {"gen_sentiment": {"accuracy": 25.0}}
