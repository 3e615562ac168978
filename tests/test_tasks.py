"""Tasks: registry, appendix-C prompts, loaders over the real data subsets, scoring, generated suite, CLI."""

import json
import math
from pathlib import Path

import pytest
import sacrebleu
from conftest import SHARED_DATA

from recall.cli import main
from recall.data import read_examples
from recall.errors import RecallError
from recall.tasks import get_task, list_tasks
from recall.tasks.export import export_task
from recall.tasks.generated import GENERATORS, TOWN_FACTS, generate_rows, generate_suite
from recall.tasks.scoring import (
    corpus_bleu,
    extract_choice,
    extract_label,
    normalize_text,
    qa_match,
    sentence_bleu,
)

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data (real dataset subsets) absent")

PAPER_TASKS = ("sst2", "squad_v2", "medmcqa", "race", "iwslt2017_en_fr")
GEN_TASKS = ("gen_sentiment", "gen_squad", "gen_knowledge", "gen_reading", "gen_translation")


def write_rows(root: Path, task: str, split: str, rows: list) -> Path:
    path = root / task / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# ---------------------------------------------------------------- registry
def test_registry_lists_every_task_with_format_and_primary_metric():
    tasks = {t.name: t for t in list_tasks()}
    assert set(tasks) == set(PAPER_TASKS + GEN_TASKS)
    expected = {
        "classification": ("accuracy",),
        "qa": ("exact_match", "f1"),
        "multiple_choice": ("accuracy",),
        "generation": ("bleu", "rouge_l", "exact_match"),
    }
    for paper, gen in zip(PAPER_TASKS, GEN_TASKS):
        assert tasks[paper].format == tasks[gen].format
        assert tasks[paper].metrics == expected[tasks[paper].format]
    assert tasks["sst2"].source == "stanfordnlp/sst2"
    assert tasks["iwslt2017_en_fr"].source == "IWSLT/iwslt2017 (iwslt2017-en-fr)"
    assert get_task("race") is tasks["race"]


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(RecallError, match="unknown task 'sst3'.*sst2.*gen_translation"):
        get_task("sst3")


# ---------------------------------------------------------------- appendix C prompts (paper Table 6)
TABLE6 = {
    "sst2": (
        {
            "sentence": "the characters in swimfan seem motivated by nothing short of dull, brain-deadening hangover. ",
            "label": 0,
        },
        "Statement: the characters in swimfan seem motivated by nothing short of dull, brain-deadening hangover. "
        "What’s sentiment should the above sentence be? OPTIONS: - negative.- positive. Answer:",
        "negative",
    ),
    "squad_v2": (
        {
            "context": "Unpopulated boards are usually bare-board tested for ... "
            "the appropriate contact points and only on these.",
            "question": "What’s an absent connection that needs to be linked up on an unpopulated board called?",
            "answers": [{"text": "An open", "answer_start": 0}],
            "is_impossible": False,
        },
        "Unpopulated boards are usually bare-board tested for ... the appropriate contact points and only on these. "
        "According to the above passage, answer the following question. If it is impossible to answer according to "
        "the passage, answer ‘impossible to answer’: Question:What’s an absent connection that needs to be linked up "
        "on an unpopulated board called?",
        "An open",
    ),
    "medmcqa": (
        {
            "question": "Which of the following metabolic reactions require vitamin B12 but not folate?",
            "opa": "Conversion of malonic acid to succinic acid",
            "opb": "Conversion of homocysteine to methionine",
            "opc": "Conversion of serine to glycine",
            "opd": "Thymidylate synthesis",
            "cop": 0,
        },
        "Question: Which of the following metabolic reactions require vitamin B12 but not folate? Options: "
        "A: Conversion of malonic acid to succinic acid B: Conversion of homocysteine to methionine "
        "C: Conversion of serine to glycine D: Thymidylate synthesis Choose an correct answer from A/B/C/D.Answer:",
        "A",
    ),
    "race": (
        {
            "article": "Tired of all the pushing in supermarkets? Angry at wasting ... claim it to be.",
            "question": "The author agrees with the fact that ...",
            "options": ["w", "x", "y", "z"],
            "answer": "D",
        },
        # Table 6 elides the options ("..."); they follow the question in MedMCQA's layout.
        "Read the article, and answer the question by replying A, B, C or D. Article: Tired of all the pushing in "
        "supermarkets? Angry at wasting ... claim it to be. Q:The author agrees with the fact that ... "
        "Options: A: w B: x C: y D: z",
        "D",
    ),
    "iwslt2017_en_fr": (  # Table 6 gives no IWSLT example; ours follows its style
        {"translation": {"en": "Thank you so much.", "fr": "Merci beaucoup."}},
        "Translate the following sentence from English to French. Sentence: Thank you so much. French:",
        "Merci beaucoup.",
    ),
}


@pytest.mark.parametrize("paper_task,gen_task", list(zip(PAPER_TASKS, GEN_TASKS)))
def test_prompts_match_paper_table6_for_hub_and_generated_tasks(tmp_path, paper_task, gen_task):
    row, prompt, answer = TABLE6[paper_task]
    for name in (paper_task, gen_task):  # the generated twin reads the same fields the same way
        root = write_rows(tmp_path, name, "train", [row])
        [example] = get_task(name).load("train", root)
        assert (example.prompt, example.answer) == (prompt, answer)


def test_squad_unanswerable_and_hub_style_answers(tmp_path):
    rows = [
        {"context": "Paris is in France.", "question": "Where is Rome?", "answers": [], "is_impossible": True},
        {
            "context": "Paris is in France.",
            "question": "Where is Paris?",
            "answers": {"text": ["France", "in France"], "answer_start": [12, 9]},
        },  # HF hub layout
    ]
    examples = get_task("squad_v2").load("test", write_rows(tmp_path, "squad_v2", "test", rows))
    assert [e.answer for e in examples] == ["impossible to answer", "France"]


# ---------------------------------------------------------------- the real data subsets
@needs_shared_data
@pytest.mark.parametrize("name", PAPER_TASKS)
def test_real_subsets_load_with_valid_answers(name):
    task = get_task(name)
    test = task.load("test", SHARED_DATA)
    train = task.load("train", SHARED_DATA, limit=40)
    assert len(test) == 300 and len(train) == 40
    answers = [e.answer for e in test]
    if task.format == "classification":
        assert set(answers) == {"negative", "positive"}
    elif task.format == "multiple_choice":
        assert set(answers) == {"A", "B", "C", "D"}
        assert all(" A: " in e.prompt and " D: " in e.prompt for e in test)
    elif task.format == "qa":
        assert 0 < answers.count("impossible to answer") < len(answers)
        assert all(e.answer in e.prompt for e in test if e.answer != "impossible to answer")
    else:
        assert all(a.strip() for a in answers) and any("é" in a or "à" in a for a in answers)
    # a perfect reply scores 100 on every metric, a constant wrong reply does not
    assert task.score(answers, answers) == {m: pytest.approx(100.0) for m in task.metrics}
    assert task.score(["zzz"] * len(answers), answers)[task.metrics[0]] < 50


# ---------------------------------------------------------------- load errors
def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(RecallError, match=r"sst2/train.jsonl does not exist.*--data-dir"):
        get_task("sst2").load("train", tmp_path)


def test_missing_field_names_file_line_and_field(tmp_path):
    root = write_rows(
        tmp_path,
        "medmcqa",
        "test",
        [
            {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 1},
            {"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d"},
        ],
    )
    with pytest.raises(RecallError, match=r"medmcqa/test.jsonl:2: missing field 'cop'"):
        get_task("medmcqa").load("test", root)


def test_bad_values_are_rejected(tmp_path):
    cases = {
        "sst2": ({"sentence": "fine", "label": 7}, "label"),
        "race": ({"article": "a", "question": "q", "options": ["1", "2", "3", "4"], "answer": "E"}, "answer"),
        "race_options": ({"article": "a", "question": "q", "options": ["1", "2"], "answer": "A"}, "options"),
        "iwslt2017_en_fr": ({"translation": {"en": "hi", "fr": ""}}, "fr"),
    }
    for key, (row, field) in cases.items():
        name = key.split("_options")[0]
        root = write_rows(tmp_path / key, name, "train", [row])
        with pytest.raises(RecallError, match=rf"train.jsonl:1: .*{name} row.*{field}"):
            get_task(name).load("train", root)


def test_empty_split_unknown_split_and_bad_limit(tmp_path):
    root = write_rows(tmp_path, "sst2", "train", [])
    with pytest.raises(RecallError, match="no train examples"):
        get_task("sst2").load("train", root)
    with pytest.raises(RecallError, match="unknown split 'dev'"):
        get_task("sst2").load("dev", root)
    with pytest.raises(RecallError, match="limit must be a positive"):
        get_task("sst2").load("train", root, limit=0)


def test_generated_task_without_data_dir_says_how_to_generate():
    with pytest.raises(RecallError, match="recall tasks generate"):
        get_task("gen_squad").load("train")


def test_hub_unreachable_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too; the hub is never contacted
    with pytest.raises(RecallError, match=r"could not load stanfordnlp/sst2.*--data-dir"):
        get_task("sst2").load("test", None, limit=2)


# ---------------------------------------------------------------- scoring
@pytest.mark.parametrize(
    "reply,letter",
    [
        ("B", "B"),
        ("(C)", "C"),
        ("D.", "D"),
        ("A: Conversion of malonic acid", "A"),
        ("The answer is B: Conversion of homocysteine to methionine", "B"),
        ("Answer: D", "D"),
        ("I think the correct option is (c) no, C", "C"),
        ("A good choice here is C.", "C"),  # "A" as an article is not option A
        ("Based on the article, the answer would be A.", "A"),
        ("D'Angelo says B", "B"),
        ("I'd say none of them", None),
        ("", None),
    ],
)
def test_extract_choice(reply, letter):
    assert extract_choice(reply) == letter


@pytest.mark.parametrize(
    "reply,label",
    [
        ("negative", "negative"),
        ("Positive.", "positive"),
        ("The sentiment of the sentence is positive.", "positive"),
        ("This review is clearly negative, not positive.", "negative"),
        ("It is hard to say.", None),
        ("nonpositive", None),
    ],
)
def test_extract_label(reply, label):
    assert extract_label(reply, ("negative", "positive")) == label


def test_squad_exact_match_normalisation_and_unanswerable():
    assert normalize_text("  The  Eiffel-Tower!! ") == "eiffel tower"
    assert qa_match("The answer is: An open.", "An open")
    assert qa_match("the Open", "an open")
    assert not qa_match("An open circuit", "An open")
    assert qa_match("It is impossible to answer according to the passage.", "impossible to answer")
    assert not qa_match("France", "impossible to answer")
    assert not qa_match("impossible to answer", "France")
    scores = get_task("squad_v2").score(
        ["France", "impossible to answer", "Spain", "the river Seine"],
        ["France", "impossible to answer", "Italy", "Seine river"],
    )
    assert scores == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(75.0)}  # F1: the word overlap


def test_generation_scores_rouge_l_and_a_chosen_primary_metric():
    from recall.tasks.formats import TaskSpec, make_task

    refs = ["the cat sat on the mat", "a dog"]
    task = make_task("replies", TaskSpec("generation", "{q}", answer="a", metric="rouge_l"))
    assert task.metrics == ("rouge_l", "bleu", "exact_match")
    scores = task.score(["the cat sat on a mat", "a dog"], refs)
    assert scores["rouge_l"] == pytest.approx((100 * 2 * 5 / 12 + 100) / 2) and scores["exact_match"] == 50.0
    records = task.records(["the cat sat on a mat", "a dog"], refs)
    assert "bleu_stats" not in records[0] and task.aggregate(records) == pytest.approx(scores["rouge_l"])


def test_bleu_and_translation_scores():
    refs = ["Le chat mange la pomme.", "Le chien voit la maison."]
    assert corpus_bleu(refs, refs) == 100.0
    partial = corpus_bleu(["Le chat mange la pomme rouge.", "Un chien regarde une maison."], refs)
    assert 0 < partial < 100
    scores = get_task("iwslt2017_en_fr").score(["le chat mange la pomme", "Le chien."], refs)
    assert scores["exact_match"] == 50.0 and 0 < scores["bleu"] < 100


def reference_bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU as Papineni et al. define it (clipped 1-4-gram precisions summed over the corpus,
    geometric mean, brevity penalty) on whitespace tokens: for texts without punctuation, where no
    count is zero, this is what any BLEU implementation must give."""
    matches, totals, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for prediction, reference in zip(predictions, references):
        hyp, ref = prediction.split(), reference.split()
        hyp_len, ref_len = hyp_len + len(hyp), ref_len + len(ref)
        for n in range(1, 5):
            grams = [tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1)]
            ref_grams = [tuple(ref[i : i + n]) for i in range(len(ref) - n + 1)]
            matches[n - 1] += sum(min(grams.count(g), ref_grams.count(g)) for g in set(grams))
            totals[n - 1] += len(grams)
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * brevity * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


def test_bleu_agrees_with_the_definition_and_with_sacrebleu():
    predictions = ["le petit chat noir mange la pomme rouge", "le chien voit la grande maison blanche ce matin"]
    references = ["le petit chat noir mange une pomme rouge", "le chien voit la grande maison ce matin"]
    expected = reference_bleu(predictions, references)
    assert 20 < expected < 90
    assert corpus_bleu(predictions, references) == pytest.approx(expected, abs=1e-6)
    task = get_task("iwslt2017_en_fr")
    assert task.score(predictions, references)["bleu"] == pytest.approx(expected, abs=1e-6)
    # Texts with punctuation, casing and zero counts: sacrebleu's own corpus and sentence scores, and any
    # subset's corpus score from the per-example statistics the examples/ records keep.
    predictions = ["Le chat mange la pomme rouge.", "Un chien regarde une maison.", "Bonjour!", "La voiture."]
    references = ["Le chat mange la pomme.", "Le chien voit la maison.", "Bonjour !", "La voiture est rouge."]
    records = task.records(predictions, references)
    for subset in ([0, 1, 2, 3], [0, 2], [1], [3, 1]):
        theirs = sacrebleu.corpus_bleu([predictions[i] for i in subset], [[references[i] for i in subset]]).score
        assert task.aggregate([records[i] for i in subset]) == pytest.approx(theirs, abs=1e-6)
    for prediction, reference in zip(predictions, references):
        assert sentence_bleu(prediction, reference) == pytest.approx(
            sacrebleu.sentence_bleu(prediction, [reference]).score, abs=1e-6
        )


def test_task_scores_verbose_correct_replies():
    assert get_task("medmcqa").score(["The answer is B: homocysteine", "C"], ["B", "D"]) == {"accuracy": 50.0}
    assert get_task("sst2").score(["I would say this is positive.", "negative"], ["positive", "negative"]) == {
        "accuracy": 100.0
    }
    with pytest.raises(RecallError, match="2 predictions for 1 references"):
        get_task("race").score(["A", "B"], ["A"])


# ---------------------------------------------------------------- generated suite
def test_generated_suite_is_deterministic_and_seed_dependent(tmp_path):
    generate_suite(tmp_path / "a", seed=0, train=40, test=10)
    generate_suite(tmp_path / "b", seed=0, train=40, test=10)
    generate_suite(tmp_path / "c", seed=1, train=40, test=10)
    for name in GENERATORS:
        for split in ("train", "test"):
            a, b, c = ((tmp_path / d / name / f"{split}.jsonl").read_bytes() for d in "abc")
            assert a == b
            assert a != c
    suite = json.loads((tmp_path / "a" / "suite.json").read_text())
    assert suite["seed"] == 0 and suite["tasks"] == list(GENERATORS)


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return generate_suite(tmp_path_factory.mktemp("suite"), seed=0, train=300, test=60)["gen_sentiment"].parent


@pytest.mark.parametrize("name", GEN_TASKS)
def test_generated_tasks_load_with_disjoint_splits_and_balanced_answers(suite, name):
    task = get_task(name)
    train, test = task.load("train", suite), task.load("test", suite)
    assert (len(train), len(test)) == (300, 60)
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert len({e.prompt for e in train}) == 300
    answers = [e.answer for e in train]
    if task.format == "multiple_choice":
        assert all(answers.count(letter) > 40 for letter in "ABCD")
    if task.format == "classification":
        assert 100 < answers.count("positive") < 200
    if task.format == "qa":
        unanswerable = answers.count("impossible to answer")
        assert 60 < unanswerable < 150
        assert all(e.answer in e.prompt.split(" According to")[0] for e in train if e.answer != "impossible to answer")
    if task.format == "generation":
        assert all(e.answer.endswith(".") and e.answer[0].isupper() for e in train)
    assert task.score(answers, answers)[task.metrics[0]] == pytest.approx(100.0)


def test_generated_translation_grammar(suite):
    pairs = [json.loads(line)["translation"] for line in (suite / "gen_translation" / "train.jsonl").open()]
    by_en = {p["en"]: p["fr"] for p in pairs}
    # Each rule as (does the English have it, what the French must then hold); every rule must be exercised.
    rules = {
        "elision": (lambda en: en.startswith("The bird "), lambda fr: fr.startswith("L'oiseau ")),
        "colour after a feminine noun": (lambda en: " the red apple" in en, lambda fr: " la pomme rouge" in fr),
        "size before a feminine noun": (
            lambda en: en.startswith("The small girl "),
            lambda fr: fr.startswith("La petite fille "),
        ),
        "negation": (lambda en: " does not " in en, lambda fr: " pas " in fr and (" ne " in fr or " n'" in fr)),
    }
    for rule, (applies, holds) in rules.items():
        checked = [fr for en, fr in by_en.items() if applies(en)]
        assert len(checked) >= 3, f"{rule}: only {len(checked)} sentences in the suite"
        assert all(holds(fr) for fr in checked), rule


def test_generated_squad_labels_follow_the_passage():
    """A question about the passage's own town is unanswerable exactly when its fact sentence is
    missing (seed 1 draws, among 3000 rows, an "other town" whose name equals the passage's)."""
    rows = generate_rows("gen_squad", 1, {"train": 3000})["train"]
    checked = 0
    for row in rows:
        for sentence, question in TOWN_FACTS.values():
            if row["question"] == question.format(town=row["title"]):
                stated = sentence.replace("{town}", row["title"]).split("{")[0].strip()  # "It was founded in"
                assert row["is_impossible"] == (stated not in row["context"]), row
                checked += 1
    assert checked > 1500


def test_generated_reading_decoy_is_a_wrong_option(suite):
    rows = [json.loads(line) for line in (suite / "gen_reading" / "train.jsonl").open()]
    for row in rows:
        correct = row["options"]["ABCD".index(row["answer"])]
        assert len(set(row["options"])) == 4
        assert correct in row["article"]


def test_generate_refuses_bad_sizes(tmp_path):
    with pytest.raises(RecallError, match="must be positive"):
        generate_suite(tmp_path, train=0)


# ---------------------------------------------------------------- export and CLI
def test_export_writes_prompt_response_records(suite, tmp_path):
    out = tmp_path / "knowledge.jsonl"
    assert export_task("gen_knowledge", "test", out, suite, limit=7) == 7
    records = read_examples(out)
    expected = get_task("gen_knowledge").load("test", suite, limit=7)
    assert [(r.prompt, r.answer) for r in records] == [(e.prompt, e.answer) for e in expected]


def test_cli_list_generate_export(tmp_path, capsys):
    assert main(["tasks"]) == 0
    listing = capsys.readouterr().out
    for name in PAPER_TASKS + GEN_TASKS:
        assert name in listing
    assert "stanfordnlp/sst2" in listing and "bleu, rouge_l, exact_match" in listing
    assert main(["tasks", "generate", "--out", str(tmp_path / "d"), "--seed", "3", "--train", "5", "--test", "2"]) == 0
    assert len((tmp_path / "d" / "gen_reading" / "train.jsonl").read_text().splitlines()) == 5
    out = tmp_path / "e.jsonl"
    assert (
        main(
            [
                "tasks",
                "export",
                "--task",
                "gen_squad",
                "--split",
                "test",
                "--data-dir",
                str(tmp_path / "d"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(read_examples(out)) == 2
    assert main(["tasks", "export", "--task", "nope", "--out", str(out)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
