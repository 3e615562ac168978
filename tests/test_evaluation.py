"""`recall evaluate`: input checks before OpenCompass starts, the generated OpenCompass config,
result collection, per-example records, and one real OpenCompass run on a tiny random model (plus a
forced failure) whose likelihoods are checked against the model run directly."""

from __future__ import annotations

import ast
import inspect
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA
from helpers import tiny_model, tiny_tokenizer

from recall.atomic import MARKER
from recall.cli import main
from recall.data import Example, chat_prompt
from recall.errors import RecallError
from recall.evaluation import compat, evaluate, pipeline, runner
from recall.evaluation.config import (
    DatasetSpec,
    ModelSpec,
    dataset_abbr,
    dataset_specs,
    model_abbr,
    render_config,
    write_dataset,
)
from recall.evaluation.results import read_results, task_outcome
from recall.tasks import get_task, scoring
from recall.tasks.generated import generate_suite

TASKS = ["gen_sentiment", "gen_knowledge", "gen_squad"]  # likelihood (two label sets) and generation
PAPER_TASKS = ["sst2", "squad_v2", "medmcqa", "race", "iwslt2017_en_fr"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("suite")
    generate_suite(out, train=1, test=4)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("models") / "tiny")


class NotStarted:
    """Stands in for the OpenCompass child `evaluate` starts ahead (`runner.OpenCompass`), starting nothing."""

    def __init__(self, threads=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def stand_in(monkeypatch, run) -> None:
    """OpenCompass replaced by `run(config, work_dir, log, threads=None, started=None)`; no child starts."""
    monkeypatch.setattr(pipeline, "OpenCompass", NotStarted)
    monkeypatch.setattr(pipeline, "run_opencompass", run)


@pytest.fixture
def no_opencompass(monkeypatch):
    """Fail the test if OpenCompass would be run."""

    def refuse(*args, **kwargs):
        raise AssertionError("OpenCompass must not run on bad input")

    stand_in(monkeypatch, refuse)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def answer_logprob(lm, tokenizer, prompt: str, answer: str) -> tuple[float, int]:
    """Sum of the log-probabilities of the answer's tokens right after the chat-rendered prompt, and
    their number: plain transformers, one unpadded sequence."""
    context = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    target = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logprobs = torch.log_softmax(lm(ids).logits[0, :-1].float(), dim=-1)
    picked = logprobs[torch.arange(len(context) - 1, ids.shape[1] - 1), torch.tensor(target)]
    return picked.sum().item(), len(target)


def test_real_opencompass_run_and_forced_failure(model: Path, suite: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "eval"
    # Batches of 3 mix examples of different lengths: likelihoods must not depend on the padding.
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--tasks",
                ",".join(TASKS),
                "--data-dir",
                str(suite),
                "--limit",
                "3",
                "--batch-size",
                "3",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == TASKS
    examples = {task: get_task(task).load("test", suite, 3) for task in TASKS}
    records = {task: read_jsonl(out / "examples" / f"{task}.jsonl") for task in TASKS}
    for task in TASKS:
        scorer = get_task(task)
        assert list(metrics[task]) == [*scorer.metrics, "nll"]  # the primary metric stays first
        assert all(0.0 <= metrics[task][m] <= 100.0 for m in scorer.metrics)
        assert [r["index"] for r in records[task]] == [0, 1, 2]
        assert [r["reference"] for r in records[task]] == [e.answer for e in examples[task]]
        assert scorer.aggregate(records[task]) == pytest.approx(metrics[task][scorer.metrics[0]])
        assert sum(r["nll"] for r in records[task]) / 3 == pytest.approx(metrics[task]["nll"])

    # Every likelihood against the model run directly: PPL picks the most likely choice per token
    # (here every label has as many tokens as the others, so also the highest total log-probability),
    # and nll is the reference's mean negative log-probability per token, in both modes.
    lm, tokenizer = AutoModelForCausalLM.from_pretrained(model), AutoTokenizer.from_pretrained(model)
    for task in TASKS:
        choices = get_task(task).choices
        for example, record in zip(examples[task], records[task]):
            total, n = answer_logprob(lm, tokenizer, example.prompt, example.answer)
            assert record["nll"] == pytest.approx(-total / n, rel=1e-4)
            if choices:
                logprobs = {c: answer_logprob(lm, tokenizer, example.prompt, c) for c in choices}
                per_token = {c: total / n for c, (total, n) in logprobs.items()}
                assert per_token[record["prediction"]] == pytest.approx(max(per_token.values()), abs=1e-5)

    abbr = model_abbr(model)
    predictions = {p.name.rsplit("-", 1)[0]: p for p in (out / "opencompass" / "predictions" / abbr).glob("*.json")}
    assert sorted(predictions) == ["gen_knowledge-ppl", "gen_sentiment-ppl", "gen_squad-gen", "gen_squad-nll"]
    generated = json.loads(predictions["gen_squad-gen"].read_text())["0"]
    assert generated["origin_prompt"] == chat_prompt(tokenizer, examples["gen_squad"][0].prompt)  # as recall renders it
    ranked = json.loads(predictions["gen_sentiment-ppl"].read_text())["0"]
    assert ranked["origin_prompt"] == chat_prompt(tokenizer, examples["gen_sentiment"][0].prompt)
    assert list(ranked["answer_nll"]) == ["negative", "positive"]
    assert len(list((out / "opencompass" / "results" / abbr).glob("*.json"))) == 4
    log = (out / "opencompass.log").read_text()
    assert "Partitioned into 1 tasks." in log and "Partitioned into 4 tasks." in log  # inference, evaluations
    assert "LEAN_PACKAGES" not in log  # OpenCompass's packages were not imported whole (`lean_opencompass`)

    broken = tmp_path / "broken"
    broken.mkdir()
    for file in model.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RecallError, match=r"no result for task\(s\) gen_sentiment.*see the log .*opencompass.log"):
        evaluate(broken, ["gen_sentiment"], out, data_dir=suite, limit=2)
    assert not (out / "metrics.json").exists()  # the earlier, complete-looking one is gone too
    assert not (out / "examples").exists()


def test_lean_opencompass_matches_the_installed_layout():
    """`compat.LEAN_PACKAGES` describes the installed OpenCompass: its release, and for every name a
    class defined in the module named and exported by the package's __init__ from that module (what a
    whole import would give). Read from the sources: importing them here would cost what the list saves.
    A new OpenCompass release fails here first: check the list against it, then raise LEAN_VERSION."""
    import opencompass

    assert opencompass.__version__ == compat.LEAN_VERSION, "OpenCompass changed: check compat.LEAN_PACKAGES"
    root = Path(opencompass.__file__).parent
    for package, names in compat.LEAN_PACKAGES.items():
        folder = root.joinpath(*package.split(".")[1:])
        exports = ast.parse((folder / "__init__.py").read_text())
        for name, module in names.items():
            source = ast.parse((folder / f"{module}.py").read_text())
            assert name in {n.name for n in source.body if isinstance(n, ast.ClassDef)}, (package, module, name)
            assert any(
                isinstance(n, ast.ImportFrom)
                and n.level == 1
                and n.module == module
                and any(a.name in (name, "*") for a in n.names)
                for n in exports.body
            ), f"{package}/__init__.py does not export {name} from .{module}"


def test_lean_import_gives_listed_names_alone_and_anything_else_whole(tmp_path, monkeypatch):
    """On a package laid out like OpenCompass's (an __init__ importing every module): a listed name
    imports its own module only; any other name runs the packages' __init__, subpackages first, with
    a warning, and every name is then the object a plain import gives."""
    root = tmp_path / "leanpkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("from .sub import *\nfrom .light import Light\nfrom .heavy import Heavy\n")
    (root / "light.py").write_text("class Light: ...\n")
    (root / "heavy.py").write_text("class Heavy: ...\n")
    (root / "sub" / "__init__.py").write_text("from .one import *\nfrom .two import Two\n")
    (root / "sub" / "one.py").write_text("class One: ...\n")
    (root / "sub" / "two.py").write_text("class Two: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    lean = {"leanpkg": {"Light": "light"}, "leanpkg.sub": {"One": "one"}}
    monkeypatch.setattr(compat, "LEAN_PACKAGES", lean)
    monkeypatch.setattr(compat, "whole_imports", [])
    for name in ["leanpkg", "leanpkg.sub", "leanpkg.light", "leanpkg.heavy", "leanpkg.sub.one", "leanpkg.sub.two"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    compat._register("leanpkg", lean["leanpkg"])  # parents first, as `lean_opencompass` does
    compat._register("leanpkg.sub", lean["leanpkg.sub"])
    import leanpkg
    from leanpkg.sub import One

    assert leanpkg.Light.__module__ == "leanpkg.light" and One.__module__ == "leanpkg.sub.one"
    assert "leanpkg.heavy" not in sys.modules and "leanpkg.sub.two" not in sys.modules and not compat.whole_imports
    light = leanpkg.Light
    with pytest.warns(UserWarning, match="leanpkg.Heavy is not in recall's LEAN_PACKAGES"):
        heavy = leanpkg.Heavy
    assert compat.whole_imports == ["leanpkg.sub", "leanpkg"]  # subpackages first
    assert heavy is sys.modules["leanpkg.heavy"].Heavy and leanpkg.Light is light
    assert leanpkg.One is One and leanpkg.Two is sys.modules["leanpkg.sub.two"].Two  # the star import complete


def test_an_opencompass_child_closed_unused_stops():
    """The child started ahead (`runner.OpenCompass`) is stopped when closed without a config."""
    child = runner.OpenCompass(threads=1)
    process = child._child
    child.close()
    assert process.returncode is not None
    child.close()  # twice is harmless


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # rotary and absolute position embeddings
def test_answer_nll_matches_one_forward_per_answer(tmp_path, family):
    """`ChatModel.get_answer_nll` (each prompt run once, answers of several tokens continued from its
    cache) against a plain unpadded forward per (prompt, answer): one batch with prompts of different
    lengths, one of them cut to the context, and answers of one and of several tokens."""
    from recall.evaluation.compat import restore_batch_encode_plus

    restore_batch_encode_plus()
    from recall.evaluation.model import ChatModel

    context = 64
    chat = ChatModel(
        path=str(tiny_model(tmp_path / family, family=family)),
        max_seq_len=context,
        model_kwargs=dict(torch_dtype="float32", device_map="cpu"),
    )
    tokenizer = chat.tokenizer

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompts = [
        chat_prompt(tokenizer, text)
        for text in ["Good?", "Question: What is the capital of France? Answer:", "The movie was great. " * 12]
    ]
    candidates = [["A", "B", "Paris"], ["Paris", "impossible to answer", "A"], ["positive", "negative"]]
    lengths = {len(encode(answer)) for group in candidates for answer in group}
    assert 1 in lengths and len(lengths) >= 3
    assert len(encode(prompts[2])) > context and len({len(encode(p)) for p in prompts}) == 3

    nll = chat.get_answer_nll(prompts, candidates)
    assert [len(values) for values in nll] == [3, 3, 2]
    for prompt, group, values in zip(prompts, candidates, nll):
        answers = [encode(answer) for answer in group]
        kept = encode(prompt)[-(context - max(map(len, answers))) :]  # room for the longest answer
        for answer, value in zip(answers, values):
            ids = torch.tensor([kept + answer])
            with torch.no_grad():
                logprobs = torch.log_softmax(chat.model(ids).logits[0, :-1].float(), dim=-1)
            picked = logprobs[torch.arange(len(kept) - 1, ids.shape[1] - 1), torch.tensor(answer)]
            assert value == pytest.approx(-picked.mean().item(), rel=1e-4)


def fake_opencompass(predict):
    """A stand-in for `run_opencompass` without a model: each dataset of the generated config gets the
    predictions `predict(answers, choices)` (choices: each example's candidates for the likelihood
    inferencer, if any) and is scored by its configured evaluator through OpenCompass's own
    `evaluate`, the result written where OpenCompass writes it, details included."""
    from mmengine.config import Config
    from opencompass.utils import build_dataset_from_cfg

    def run(config, work_dir, log, threads=None, started=None):
        log.write_text("")
        cfg = Config.fromfile(str(config))
        for dataset in cfg.datasets:
            test_set = build_dataset_from_cfg(dataset).test
            answers = list(test_set["answer"])
            column = dataset.infer_cfg.inferencer.get("candidates")
            choices = list(test_set[column]) if column else None
            predictions = predict(answers, choices)
            answer_nll = [
                {c: float(c != p) for c in (choices[i] if choices else [a])}
                for i, (p, a) in enumerate(zip(predictions, answers))
            ]
            evaluator_cfg = dict(dataset.eval_cfg.evaluator)
            evaluator = evaluator_cfg.pop("type")(**evaluator_cfg)
            given = {"predictions": predictions, "references": answers, "answer_nll": answer_nll}
            wanted = inspect.signature(evaluator.score).parameters  # as OpenCompass picks them
            result = evaluator.evaluate(1, 1, test_set, **{k: given[k] for k in wanted})
            path = work_dir / "results" / cfg.models[0].abbr / f"{dataset.abbr}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result))
        return 0

    return run


def half_wrong(answers: list[str], choices: list[list[str]] | None) -> list[str]:
    """The gold answer for even examples; another choice, or the answer short of its last word, for odd ones."""

    def wrong(i: int, answer: str) -> str:
        return next(c for c in choices[i] if c != answer) if choices else answer.rsplit(" ", 1)[0]

    return [a if i % 2 == 0 else wrong(i, a) for i, a in enumerate(answers)]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (real dataset subsets) absent")
def test_paper_tasks_wiring_and_per_example_records(model, tmp_path, monkeypatch):
    """The five real tasks through config, datasets, evaluators, result files and examples/, with
    OpenCompass replaced by a stand-in that 'predicts' the gold answer for even examples: those score
    full marks, and each task's aggregate of its records reproduces metrics.json."""
    stand_in(monkeypatch, fake_opencompass(half_wrong))
    out = tmp_path / "out"
    metrics = evaluate(model, PAPER_TASKS, out, data_dir=SHARED_DATA, limit=6)
    assert list(metrics) == PAPER_TASKS
    assert list(metrics["iwslt2017_en_fr"]) == ["bleu", "rouge_l", "exact_match", "nll"]  # primary metric first
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for task in PAPER_TASKS:
        scorer, records = get_task(task), read_jsonl(out / "examples" / f"{task}.jsonl")
        assert [r["index"] for r in records] == list(range(6))
        assert [r["reference"] for r in records] == [e.answer for e in scorer.load("test", SHARED_DATA, 6)]
        assert all(r["score"] == pytest.approx(100.0) and r["prediction"] == r["reference"] for r in records[::2])
        assert scorer.aggregate(records) == pytest.approx(metrics[task][scorer.metrics[0]], abs=1e-9)
    translation = read_jsonl(out / "examples" / "iwslt2017_en_fr.jsonl")
    assert all(len(r["bleu_stats"]) == 10 for r in translation)
    assert 0 < metrics["iwslt2017_en_fr"]["bleu"] < 100
    subset = translation[1:4]  # any subset's corpus BLEU, from the statistics alone
    expected = scoring.corpus_bleu([r["prediction"] for r in subset], [r["reference"] for r in subset])
    assert get_task("iwslt2017_en_fr").aggregate(subset) == pytest.approx(expected, abs=1e-9)
    config = (out / "opencompass_config.py").read_text()
    assert "max_out_len': 128" in config and "max_out_len': 48" in config  # translation, extractive QA


def test_modes_choose_inference_and_predictions_reuse(model, suite, tmp_path, monkeypatch):
    """`--mode classification=gen` generates sentiment replies (and scores the reference's likelihood
    apart); MCQ stays PPL; the mode is in the dataset names, so cached predictions never cross modes."""
    # Replies alternate "negative", "positive": the generation dataset's accuracy and the likelihood
    # dataset's NLL (the fake charges 1 per answer other than the reply) follow from the test answers alone.
    replies = ["negative", "positive"]
    stand_in(monkeypatch, fake_opencompass(lambda answers, choices: replies[: len(answers)]))
    out = tmp_path / "out"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--tasks",
                "gen_sentiment,gen_knowledge",
                "--data-dir",
                str(suite),
                "--limit",
                "2",
                "--mode",
                "classification=gen",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from mmengine.config import Config

    datasets = Config.fromfile(str(out / "opencompass_config.py")).datasets
    kinds = {d.abbr.rsplit("-", 1)[0]: d.infer_cfg.inferencer.type.__name__ for d in datasets}
    assert kinds == {
        "gen_sentiment-gen": "GenInferencer",
        "gen_sentiment-nll": "AnswerPPLInferencer",
        "gen_knowledge-ppl": "AnswerPPLInferencer",
    }
    right = [r == e.answer for r, e in zip(replies, get_task("gen_sentiment").load("test", suite, 2))]
    assert right == [False, True]  # one right, one wrong: neither metric can come out right by default
    assert json.loads((out / "metrics.json").read_text())["gen_sentiment"] == {"accuracy": 50.0, "nll": 0.5}

    evaluate(model, ["gen_sentiment"], out, data_dir=suite, limit=2)  # the default: PPL
    ppl = Config.fromfile(str(out / "opencompass_config.py")).datasets
    assert [d.abbr.rsplit("-", 1)[0] for d in ppl] == ["gen_sentiment-ppl"]
    assert ppl[0].infer_cfg.inferencer.candidates == "choices"
    assert read_jsonl(out / "data" / "gen_sentiment.jsonl")[0]["choices"] == ["negative", "positive"]
    assert not {d.abbr for d in ppl} & {d.abbr for d in datasets}


@pytest.mark.parametrize(
    "tasks, kwargs, message",
    [
        (["gen_sentiment", "nope"], {}, "unknown task 'nope'"),
        (["gen_sentiment", "gen_sentiment"], {}, "given more than once"),
        ([], {}, "no tasks given"),
        (["gen_sentiment"], {"data_dir": "/nonexistent"}, "gen_sentiment/test.jsonl"),
        (["gen_sentiment"], {"batch_size": 0}, "--batch-size must be at least 1"),
        (["gen_sentiment"], {"max_new_tokens": 0}, "--max-new-tokens must be at least 1"),
        (["gen_sentiment"], {"threads": 0}, "--threads must be at least 1"),
        (["gen_squad"], {"modes": {"qa": "ppl"}}, "format qa cannot be scored by likelihood"),
        (["gen_translation"], {"modes": {"generation": "ppl"}}, "format generation cannot be scored by likelihood"),
        (["gen_sentiment"], {"modes": {"classification": "beam"}}, "mode 'beam' for format classification"),
        (["gen_sentiment"], {"modes": {"sentiment": "gen"}}, "unknown task format 'sentiment'"),
    ],
)
def test_bad_input_fails_before_opencompass(model, suite, tmp_path, no_opencompass, tasks, kwargs, message):
    kwargs.setdefault("data_dir", suite)
    with pytest.raises(RecallError, match=message):
        evaluate(model, tasks, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli_mode_syntax(model, tmp_path, capsys, no_opencompass):
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                "--model",
                str(model),
                "--tasks",
                "gen_sentiment",
                "--out",
                str(tmp_path),
                "--mode",
                "classification",
            ]
        )
    assert "expected FORMAT=MODE" in capsys.readouterr().err


def test_context_too_short_for_replies(suite, tmp_path, no_opencompass):
    short = tiny_model(tmp_path / "short", max_position_embeddings=64)
    with pytest.raises(RecallError, match="context of 64 tokens, too short for replies of up to 64"):
        evaluate(short, ["gen_squad"], tmp_path / "out", data_dir=suite, max_new_tokens=64)


def test_bad_model_folders(suite, tmp_path, no_opencompass):
    with pytest.raises(RecallError, match="not a model folder"):
        evaluate(tmp_path / "missing", ["gen_sentiment"], tmp_path / "out", data_dir=suite)


def test_empty_test_split(model, tmp_path, no_opencompass):
    (tmp_path / "data" / "gen_sentiment").mkdir(parents=True)
    (tmp_path / "data" / "gen_sentiment" / "test.jsonl").write_text("\n")
    with pytest.raises(RecallError, match="no test examples"):
        evaluate(model, ["gen_sentiment"], tmp_path / "out", data_dir=tmp_path / "data")


def test_crash_leaves_no_metrics(model, suite, tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "examples").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")  # from an earlier run
    (out / MARKER).touch()
    (out / "examples" / "gen_sentiment.jsonl").write_text('{"index": 0, "score": 100.0}\n')

    def crash(config, work_dir, log, threads=None, started=None):
        log.write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
        return 1

    stand_in(monkeypatch, crash)
    with pytest.raises(
        RecallError, match="gen_sentiment: OpenCompass exited with status 1: RuntimeError: CUDA out of memory"
    ):
        evaluate(model, ["gen_sentiment"], out, data_dir=suite, limit=1)
    assert not (out / "metrics.json").exists()
    assert not (out / "examples").exists()
    assert (out / "data" / "gen_sentiment.jsonl").read_text().count("\n") == 1


def test_config_is_a_valid_opencompass_config(tmp_path):
    from mmengine.config import Config
    from opencompass.openicl.icl_evaluator import BaseEvaluator

    from recall.evaluation.evaluator import ChoiceEvaluator, TaskEvaluator
    from recall.evaluation.inferencer import AnswerPPLInferencer
    from recall.evaluation.model import ChatModel

    data = tmp_path / "gen_sentiment.jsonl"
    write_dataset([Example("Is {this} good?", "positive", ("negative", "positive"))], tiny_tokenizer(), data)
    row = json.loads(data.read_text())
    assert row == {
        "prompt": "Is {this} good?",
        "answer": "positive",
        "choices": ["negative", "positive"],
        "rendered": "<|im_start|>user\nIs {this} good?<|im_end|>\n<|im_start|>assistant\n",
    }
    definition = get_task("gen_sentiment").spec.as_dict()
    specs = [
        *dataset_specs("gen_sentiment", "gen", data, 16, definition),
        *dataset_specs("gen_sentiment", "ppl", data, 16, definition),
    ]
    path = tmp_path / "config.py"
    path.write_text(render_config(ModelSpec(tmp_path, "m-1", 4, 100, False, "float32"), specs))
    config = Config.fromfile(str(path))
    model = config.models[0]
    assert model.type is ChatModel
    assert model.model_kwargs == {"torch_dtype": "float32", "device_map": "cpu", "trust_remote_code": False}
    # OpenCompass turns remote code on unless told, and reads the config itself without a max_seq_len.
    assert model.tokenizer_kwargs == {"trust_remote_code": False} and model.max_seq_len == 100
    assert model.run_cfg == {"num_gpus": 0} and model.generation_kwargs == {"do_sample": False}
    generated, reference, ranked = config.datasets
    assert generated.infer_cfg.inferencer.max_out_len == 16
    assert generated.reader_cfg.input_columns == ["rendered"]
    assert reference.infer_cfg.inferencer.type is AnswerPPLInferencer
    assert "candidates" not in reference.infer_cfg.inferencer  # the reference alone
    assert ranked.infer_cfg.inferencer.candidates == "choices"
    assert ranked.reader_cfg.input_columns == ["rendered"]
    assert generated.eval_cfg.evaluator.type is TaskEvaluator and issubclass(TaskEvaluator, BaseEvaluator)
    assert ranked.eval_cfg.evaluator.type is ChoiceEvaluator
    scores = TaskEvaluator(task="gen_sentiment", definition=definition).score(
        ["It is positive.", "negative"], ["positive", "positive"]
    )
    assert scores["accuracy"] == 50.0
    assert [d["score"] for d in scores["details"]] == [100.0, 0.0]
    answer_nll = [{"negative": 2.0, "positive": 1.0}, {"negative": 1.0, "positive": 3.0}]
    scores = ChoiceEvaluator(task="gen_sentiment", definition=definition).score(
        ["positive", "negative"], ["positive", "positive"], answer_nll
    )
    assert (scores["accuracy"], scores["nll"]) == (50.0, 2.0)
    assert [d["nll"] for d in scores["details"]] == [1.0, 3.0]


def test_abbrs_change_with_inputs(model, tmp_path):
    data = tmp_path / "d.jsonl"
    write_dataset([Example("p", "a")], tiny_tokenizer(), data)
    first = dataset_abbr("t", "gen", data, "16")
    assert first.startswith("t-gen-")
    assert dataset_abbr("t", "gen", data, "32") != first
    assert dataset_abbr("t", "ppl", data, "16").startswith("t-ppl-")
    write_dataset([Example("p", "b")], tiny_tokenizer(), data)
    assert dataset_abbr("t", "gen", data, "16") != first

    copy = tmp_path / "tiny"
    copy.mkdir()
    for file in model.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    before = model_abbr(copy)
    assert before.startswith("tiny-")
    weights = copy / "model.safetensors"
    os.utime(weights, (0, 0))  # what `dvc checkout` does: same bytes, new times
    assert model_abbr(copy) == before
    weights.write_bytes(weights.read_bytes() + b" ")
    assert model_abbr(copy) != before


def test_result_errors_name_the_task(tmp_path):
    task = get_task("gen_sentiment")
    spec = DatasetSpec("gen_sentiment", "ppl", "gen_sentiment-ppl-x", tmp_path / "d.jsonl", task.spec.as_dict())
    log = tmp_path / "opencompass.log"
    with pytest.raises(RecallError, match=r"no result for task\(s\) gen_sentiment; see the log"):
        read_results(tmp_path, "m", [spec], log)
    result = tmp_path / "results" / "m" / "gen_sentiment-ppl-x.json"
    result.parent.mkdir(parents=True)
    result.write_text(json.dumps({"error": "preds and refrs have different length"}))
    with pytest.raises(RecallError, match="could not score task gen_sentiment: preds and refrs"):
        read_results(tmp_path, "m", [spec], log)

    def outcome(result: dict, examples: int = 1):
        return task_outcome(task, [spec], {spec.abbr: result}, examples, "see there")

    # OpenCompass's layout: each field a list over replicas, beside the example's abbr.
    detail = {
        "example_abbr": "x_0",
        "score": [100.0],
        "prediction": ["positive"],
        "reference": ["positive"],
        "nll": [0.5],
    }
    with pytest.raises(RecallError, match="result of task gen_sentiment lacks metric.s. nll; see there"):
        outcome({"accuracy": 100.0, "details": [detail]})
    with pytest.raises(RecallError, match="has 1 per-example details for 2 test examples"):
        outcome({"accuracy": 100.0, "nll": 0.5, "details": [detail]}, examples=2)
    metrics, records = outcome({"nll": 0.5, "accuracy": 100.0, "details": [detail]})
    assert list(metrics) == ["accuracy", "nll"]
    assert records == [{"index": 0, "score": 100.0, "nll": 0.5, "prediction": "positive", "reference": "positive"}]


# ---------------------------------------------------------------- vLLM / LMDeploy backends (configs only: no GPU here)
def test_vllm_and_lmdeploy_configs_name_their_opencompass_models(tmp_path, monkeypatch):
    from mmengine.config import Config
    from opencompass.models import TurboMindModelwithChatTemplate, VLLMwithChatTemplate

    from recall.evaluation.model import VERBATIM, TurboMindChatModel, VLLMChatModel

    data = tmp_path / "gen_squad.jsonl"
    write_dataset([Example("Who?", "Ann")], tiny_tokenizer(), data)
    specs = dataset_specs("gen_squad", "gen", data, 48, get_task("gen_squad").spec.as_dict(), likelihood=False)
    assert [s.kind for s in specs] == ["gen"]  # no likelihood dataset: these backends score none
    expected = {
        "vllm": (VLLMChatModel, VLLMwithChatTemplate, "model_kwargs"),
        "lmdeploy": (TurboMindChatModel, TurboMindModelwithChatTemplate, "engine_config"),
    }
    for backend, (cls, parent, kwargs) in expected.items():
        path = tmp_path / f"{backend}.py"
        path.write_text(render_config(ModelSpec(tmp_path, f"m-1-{backend}", 4, 100, True, "bfloat16", backend), specs))
        model = Config.fromfile(str(path)).models[0]
        assert model.type is cls and issubclass(cls, parent)
        assert model.path == str(tmp_path) and model.abbr == f"m-1-{backend}"
        assert model[kwargs]["dtype"] == "bfloat16" and model.batch_size == 4
        assert model.run_cfg == {"num_gpus": 1}

    # Each reads the rendered prompt verbatim (the OpenCompass model itself is not built: no package, no GPU).
    def loads_only_a_tokenizer(self, *args, **kwargs):
        self.tokenizer = tiny_tokenizer()

    for cls, parent, _ in expected.values():
        monkeypatch.setattr(parent, "__init__", loads_only_a_tokenizer)
        tokenizer = cls(path=str(tmp_path)).tokenizer
        assert tokenizer.chat_template == VERBATIM
        rendered = chat_prompt(tokenizer, "Who?")
        assert tokenizer.apply_chat_template([{"role": "user", "content": rendered}], tokenize=False) == rendered
    assert model_abbr(tmp_path, "vllm") == model_abbr(tmp_path) + "-vllm"


@pytest.mark.parametrize("backend", ["vllm", "lmdeploy"])
def test_a_backend_that_cannot_run_fails_before_opencompass(model, suite, tmp_path, no_opencompass, backend):
    out = tmp_path / "out"
    with pytest.raises(RecallError, match=r"unknown evaluation backend 'tgi'; choose one of hf, vllm, lmdeploy"):
        evaluate(model, ["gen_squad"], out, data_dir=suite, backend="tgi")
    with pytest.raises(
        RecallError,
        match=rf"backend {backend} only generates .*gen_sentiment \(classification\) in mode ppl; set mode gen for "
        r"classification .*--mode classification=gen\), or use backend hf",
    ):
        evaluate(model, ["gen_sentiment", "gen_squad"], out, data_dir=suite, backend=backend)
    gen = {"modes": {"classification": "gen"}, "data_dir": suite, "backend": backend}
    with pytest.raises(RecallError, match=rf"needs the {backend} package, which is not installed: pip install"):
        evaluate(model, ["gen_sentiment", "gen_squad"], out, **gen)
    assert not out.exists()


def test_a_gpu_backend_without_a_gpu_fails_before_opencompass(model, suite, tmp_path, no_opencompass, monkeypatch):
    monkeypatch.setattr(pipeline.importlib.util, "find_spec", lambda name: object())  # as if vllm were installed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RecallError, match="backend vllm runs on a CUDA GPU and none is visible here"):
        evaluate(model, ["gen_squad"], tmp_path / "out", data_dir=suite, backend="vllm")
    assert not (tmp_path / "out").exists()


def test_generated_tasks_without_likelihood_have_no_nll(tmp_path):
    task = get_task("gen_squad")
    spec = DatasetSpec("gen_squad", "gen", "gen_squad-gen-x", tmp_path / "d.jsonl", task.spec.as_dict(), 48)
    detail = {"example_abbr": "x_0", "score": [100.0], "prediction": ["Ann"], "reference": ["Ann"]}
    result = {m: 100.0 for m in task.metrics} | {"details": [detail]}
    metrics, records = task_outcome(task, [spec], {spec.abbr: result}, 1, "see there")
    assert list(metrics) == list(task.metrics)
    assert records == [{"index": 0, "score": 100.0, "nll": None, "prediction": "Ann", "reference": "Ann"}]
