"""Tasks declared in data (a folder with task.yaml, train.jsonl, test.jsonl): the shipped examples,
every bad definition failing before any work with its file, line and field, and one task of each
format through fine-tune, merge and a real OpenCompass evaluation on a tiny model without a chat
template (the plain rendering)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import tiny_model, tiny_tokenizer

from recall.cli import main
from recall.data import chat_prompt, rendering
from recall.errors import RecallError
from recall.tasks import get_task, list_tasks
from recall.tasks.formats import parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "tasks"
FORMATS = {"tickets": "classification", "quiz": "multiple_choice", "faq": "qa", "replies": "generation"}
TICKETS = (
    'format: classification\ntemplate: "Ticket: {subject}\\n{body}\\nQueue:"\n'
    "answer: category\nlabels: [billing, outage]\n"
)


def task_folder(root: Path, name: str, spec: str, train: list[dict], test: list[dict] | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "task.yaml").write_text(spec)
    for split, rows in (("train", train), ("test", train if test is None else test)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def ticket(subject: str = "Charged twice", body: str = "Billed two times.", category: str = "billing") -> dict:
    return {"subject": subject, "body": body, "category": category}


# ---------------------------------------------------------------- the shipped examples
def test_example_tasks_are_listed_with_their_source_and_load(capsys):
    assert main(["tasks", "--data-dir", str(EXAMPLES)]) == 0
    listing = capsys.readouterr().out
    for name, fmt in FORMATS.items():
        task = get_task(name)
        assert task.format == fmt and task.source == str(EXAMPLES / name / "task.yaml")
        assert f"{name}  " in listing and str(EXAMPLES / name / "task.yaml") in listing
        assert task.load("train") and task.load("test", EXAMPLES)
    assert get_task("replies").metrics == ("rouge_l", "bleu", "exact_match")
    [example] = get_task("tickets").load("test", limit=1)
    assert (example.prompt, example.answer) == (
        "Ticket: Price increase\nWhy did my monthly price go up?\nQueue:",
        "billing",
    )
    assert example.choices == ("billing", "outage", "account")  # the label words, not the data's codes
    quiz = get_task("quiz").load("test")
    assert [e.choices for e in quiz[:2]] == [("A", "B", "C"), ("A", "B", "C", "D")]  # each question its options
    assert quiz[0].answer == "B" and "Options: A: 10 MB B: 100 MB C: 1 GB\nAnswer:" in quiz[0].prompt


@pytest.mark.parametrize("name", ["sst2", "race", "iwslt2017_en_fr", "tickets"])
def test_any_task_shows_as_a_task_yaml_that_reads_back(name, capsys):
    """A built-in task's spec is a task.yaml like any other: copy it, edit it."""
    assert main(["tasks", "show", name, "--data-dir", str(EXAMPLES)]) == 0
    shown = capsys.readouterr().out
    assert parse_spec(yaml.safe_load(shown)) == get_task(name).spec


# ---------------------------------------------------------------- bad definitions fail first
@pytest.mark.parametrize(
    ("spec", "where", "message"),
    [
        (
            "format: clasification\n",
            "task.yaml:1: field 'format'",
            "unknown format 'clasification'; use one of classification, multiple_choice, qa, generation",
        ),
        ("format: qa\n\nmetric: bleu\n", "task.yaml:3: field 'metric'", "unknown metric 'bleu' for format qa"),
        (TICKETS + "lables: [a, b]\n", "task.yaml:5: field 'lables'", "unknown field 'lables'"),
        (
            "format: multiple_choice\ntemplate: 'Q: {question}'\nanswer: answer\noptions: choices\n",
            "task.yaml:2: field 'template'",
            r"shows the lettered options with \{options\}",
        ),
        (
            "format: classification\ntemplate: 'Ticket: {subject}'\nlabels: [a, b]\n",
            "task.yaml:2: field 'template'",
            "needs `answer`",
        ),
        ("format: qa\nlabels: [a, b]\n", "task.yaml:2: field 'labels'", "only a classification task has 'labels'"),
        ("format: classification\nanswer: category\nlabels: [billing]\n", "task.yaml:3: field 'labels'", "at least 2"),
        ("format: qa\nmetric: f1: x\n", "task.yaml:2", "not valid YAML: mapping values are not allowed here"),
    ],
)
def test_a_bad_spec_names_file_line_and_field(tmp_path, make_model, capsys, spec, where, message):
    task_folder(tmp_path, "tickets", spec, [ticket()])
    with pytest.raises(RecallError, match=rf"{tmp_path / 'tickets' / where}: .*{message}"):
        get_task("tickets", tmp_path)
    # and on the command line, before any weights are loaded
    assert (
        main(
            [
                "finetune",
                "--base",
                str(make_model("base")),
                "--task",
                "tickets",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert where in capsys.readouterr().err and not (tmp_path / "out").exists()


QUIZ = 'format: multiple_choice\ntemplate: "{question} {options}"\nanswer: answer\noptions: choices\n'


@pytest.mark.parametrize(
    ("spec", "train", "test", "where", "message"),
    [
        (
            TICKETS,
            [ticket(), {"subject": "Site down", "category": "outage"}],
            None,
            "train.jsonl:2",
            "missing field 'body'",
        ),  # a placeholder of the template the data lacks
        (
            TICKETS,
            [ticket(), ticket(category="refund")],
            None,
            "train.jsonl:2",
            r"field 'category': 'refund' is not one of the labels \(billing, outage\)",
        ),
        (
            QUIZ,
            [{"question": "q", "choices": ["a", "b"], "answer": "b"}],
            [
                {"question": "q", "choices": ["a", "b"], "answer": 1},
                {"question": "q", "choices": ["a", "b"], "answer": "c"},
            ],
            "test.jsonl:2",
            "field 'answer': 'c' is not one of the options; give its letter .A/B.",
        ),
        (
            QUIZ,
            [{"question": "q", "choices": ["a"], "answer": "a"}],
            None,
            "train.jsonl:1",
            "field 'choices' must be a list of 2 to 26 options",
        ),
        (TICKETS, [ticket()], [], "test.jsonl", "has no test examples; the split must not be empty"),
    ],
)
def test_bad_data_names_file_line_and_field(tmp_path, spec, train, test, where, message):
    task_folder(tmp_path, "tickets", spec, train, test)
    with pytest.raises(RecallError, match=rf"{tmp_path / 'tickets' / where}: .*{message}"):
        get_task("tickets", tmp_path)


def test_two_different_tasks_of_one_name_are_refused(tmp_path):
    first = task_folder(tmp_path / "a", "tickets", TICKETS, [ticket()])
    second = task_folder(tmp_path / "b", "tickets", TICKETS.replace("Queue:", "Category:"), [ticket()])
    get_task("tickets", tmp_path / "a")
    with pytest.raises(
        RecallError,
        match=rf"two different tasks are named 'tickets': {first}/task.yaml and "
        rf"{second}/task.yaml",
    ):
        get_task("tickets", tmp_path / "b")
    shutil.copytree(first, tmp_path / "c" / "tickets")  # the same task copied (a pipeline's data) is the same task
    assert get_task("tickets", tmp_path / "c").source == str(first / "task.yaml")
    task_folder(tmp_path, "sst2", TICKETS, [ticket()])
    with pytest.raises(RecallError, match="two different tasks are named 'sst2': stanfordnlp/sst2 and"):
        list_tasks(tmp_path)


# ---------------------------------------------------------------- the plain rendering
def test_plain_rendering_without_a_chat_template_keeps_the_tokenizers_own_start():
    from tokenizers import processors

    chat, plain = tiny_tokenizer(), tiny_tokenizer(chat=False)
    assert (rendering(chat), rendering(plain)) == ("chat", "plain")
    assert chat_prompt(chat, "Q?") == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    assert chat_prompt(plain, "Q?") == "Q?\n"  # GPT-2 style: no special token before a text
    plain._tokenizer.post_processor = processors.TemplateProcessing(  # Llama style: BOS before every text
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", plain.bos_token_id)]
    )
    assert chat_prompt(plain, "Q?") == "<|endoftext|>Q?\n"
    assert plain(chat_prompt(plain, "Q?"), add_special_tokens=False)["input_ids"] == plain("Q?\n")["input_ids"]


# ---------------------------------------------------------------- every format, end to end
def test_declared_tasks_finetune_merge_and_evaluate_on_a_model_without_chat_template(tmp_path):
    base = tiny_model(tmp_path / "base", chat=False)
    experts, probes = [], []
    for name in FORMATS:
        expert, probe = tmp_path / f"expert-{name}", tmp_path / f"{name}.jsonl"
        assert (
            main(
                [
                    "finetune",
                    "--base",
                    str(base),
                    "--task",
                    name,
                    "--data-dir",
                    str(EXAMPLES),
                    "--out",
                    str(expert),
                    "--max-steps",
                    "2",
                    "--batch-size",
                    "4",
                    "--checkpoint-every",
                    "0",
                ]
            )
            == 0
        )
        assert json.loads((expert / "train_metrics.json").read_text())["rendering"] == "plain"
        assert main(["tasks", "export", "--task", name, "--data-dir", str(EXAMPLES), "--out", str(probe)]) == 0
        experts.append(str(expert))
        probes.append(str(probe))
    merged = tmp_path / "merged"
    assert (
        main(
            [
                "merge",
                "--method",
                "recall",
                "--models",
                str(base),
                *experts,
                "--experts",
                *experts,
                "--data",
                *probes,
                "--typical",
                "3",
                "--out",
                str(merged),
            ]
        )
        == 0
    )

    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(merged),
                "--tasks",
                ",".join(FORMATS),
                "--data-dir",
                str(EXAMPLES),
                "--max-new-tokens",
                "8",
                "--threads",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert {name: list(m) for name, m in metrics.items()} == {
        "tickets": ["accuracy", "nll"],
        "quiz": ["accuracy", "nll"],
        "faq": ["f1", "exact_match", "nll"],
        "replies": ["rouge_l", "bleu", "exact_match", "nll"],
    }
    run = json.loads((out / "evaluation.json").read_text())
    assert run["rendering"] == "plain"
    assert run["modes"] == {"tickets": "ppl", "quiz": "ppl", "faq": "gen", "replies": "gen"}
    for name in FORMATS:
        task, records = get_task(name), [json.loads(line) for line in (out / "examples" / f"{name}.jsonl").open()]
        assert [r["reference"] for r in records] == [e.answer for e in task.load("test")]
        assert task.aggregate(records) == pytest.approx(metrics[name][task.metrics[0]])
        rows = [json.loads(line) for line in (out / "data" / f"{name}.jsonl").open()]
        assert all(row["rendered"] == row["prompt"] + "\n" for row in rows)  # the plain rendering
    predictions = {
        p.name.split("-")[0]: json.loads(p.read_text())
        for p in (out / "opencompass" / "predictions").rglob("*.json")
        if "-nll-" not in p.name
    }
    assert [list(p["answer_nll"]) for p in predictions["quiz"].values()] == [
        ["A", "B", "C"],
        ["A", "B", "C", "D"],
        ["A", "B", "C"],
        ["A", "B", "C", "D"],
    ]  # each question its letters
    assert list(predictions["tickets"]["0"]["answer_nll"]) == ["billing", "outage", "account"]
    assert predictions["replies"]["0"]["origin_prompt"] == "Customer: The page is very slow.\nAgent reply:\n"
