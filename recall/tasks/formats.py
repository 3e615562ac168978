"""The five task formats. Each class reads rows with the Hugging Face hub's field names, from
`data_dir/<task>/<split>.jsonl` or from the hub itself, and turns a row into an Example.

A hub dataset and a generated task of the same format share a class: only name and source differ.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from recall.data import iter_jsonl
from recall.errors import RecallError
from recall.tasks import prompts, scoring
from recall.tasks.base import Example, Task

SPLITS = ("train", "test")
SENTIMENT_LABELS = ("negative", "positive")  # index = the dataset's integer label


@dataclass(frozen=True)
class HubSource:
    """Where a task lives on the Hugging Face hub; `test_split` is the labelled split we test on."""

    path: str
    config: str | None = None
    test_split: str = "validation"

    def __str__(self) -> str:
        return f"{self.path} ({self.config})" if self.config else self.path


@dataclass(frozen=True)
class JsonlTask(Task):
    """Shared loading and validation; subclasses say which fields a row needs and what it means."""

    name: str
    hub: HubSource | None = None  # None: generated locally by `recall tasks generate`
    required: ClassVar[tuple[str, ...]]

    @property
    def source(self) -> str:  # type: ignore[override]
        return str(self.hub) if self.hub else "generated (recall tasks generate)"

    @abstractmethod
    def example(self, row: Mapping[str, Any]) -> Example:
        """One row -> one Example; raises ValueError/TypeError on a bad value."""

    def load(self, split: str, data_dir: Path | None = None, limit: int | None = None) -> list[Example]:
        if split not in SPLITS:
            raise RecallError(f"unknown split {split!r} for task {self.name}; use one of: {', '.join(SPLITS)}")
        if limit is not None and limit < 1:
            raise RecallError(f"limit must be a positive number of examples, got {limit}")
        rows = self._local_rows(split, Path(data_dir)) if data_dir is not None else self._hub_rows(split)
        examples = []
        for where, row in rows:
            if limit is not None and len(examples) >= limit:
                break
            missing = [f for f in self.required if f not in row]
            if missing:
                raise RecallError(
                    f"{where}: missing field {missing[0]!r}; a {self.name} row needs the fields "
                    f"{', '.join(self.required)}"
                )
            try:
                examples.append(self.example(row))
            except (ValueError, TypeError, KeyError, IndexError) as err:
                raise RecallError(f"{where}: bad {self.name} row: {err}") from None
        if not examples:
            raise RecallError(f"task {self.name} has no {split} examples; the split must not be empty")
        return examples

    def _local_rows(self, split: str, data_dir: Path) -> Iterator[tuple[str, dict]]:
        path = data_dir / self.name / f"{split}.jsonl"
        if not path.is_file():
            raise RecallError(
                f"{path} does not exist; --data-dir must hold {self.name}/{split}.jsonl "
                "(`recall tasks generate --out DIR` writes that layout for the generated tasks)"
            )
        for lineno, row in iter_jsonl(path):
            yield f"{path}:{lineno}", row

    def _hub_rows(self, split: str) -> Iterator[tuple[str, dict]]:
        if self.hub is None:
            raise RecallError(
                f"task {self.name} is generated locally: run `recall tasks generate --out DIR` "
                "and pass --data-dir DIR"
            )
        hub_split = self.hub.test_split if split == "test" else "train"
        try:
            import datasets  # optional: only this path needs it
        except ImportError:
            raise RecallError(
                f"loading {self.name} from the hub needs the `datasets` package; install it, or pass "
                f"--data-dir DIR holding {self.name}/{split}.jsonl"
            ) from None
        try:
            rows = datasets.load_dataset(self.hub.path, self.hub.config, split=hub_split)
        except Exception as err:  # network, auth and missing-dataset errors all mean the same to a user
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise RecallError(
                f"could not load {self.hub} split {hub_split!r} from the Hugging Face hub{offline}: "
                f"{type(err).__name__}: {err}. Without hub access pass --data-dir DIR holding "
                f"{self.name}/{split}.jsonl"
            ) from None
        for index, row in enumerate(rows):
            yield f"{self.hub}[{hub_split}] row {index}", dict(row)


def _choice(value: Any) -> str:
    if value not in tuple(scoring.CHOICES):
        raise ValueError(f"answer must be one of the letters {'/'.join(scoring.CHOICES)}, got {value!r}")
    return value


def _index(value: Any, size: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise ValueError(f"field {field!r} must be an integer from 0 to {size - 1}, got {value!r}")
    return value


def _text(row: Mapping[str, Any], field: str) -> str:
    value = row[field]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {field!r} must be a non-empty string, got {value!r}")
    return value


class SentimentTask(JsonlTask):
    """SST-2 style: `sentence`, integer `label` (0 negative, 1 positive) -> label word."""

    format = "classification"
    metrics = ("accuracy",)
    choices = SENTIMENT_LABELS
    required = ("sentence", "label")

    def example(self, row: Mapping[str, Any]) -> Example:
        label = SENTIMENT_LABELS[_index(row["label"], len(SENTIMENT_LABELS), "label")]
        return Example(prompts.sentiment_prompt(_text(row, "sentence")), label)

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return {"accuracy": scoring.label_accuracy(predictions, references, SENTIMENT_LABELS)}


class ExtractiveQATask(JsonlTask):
    """SQuAD 2.0 style: `context`, `question`, `answers` -> first answer text, or "impossible to
    answer" when there is none. `answers` may be a list of {"text": ...} (SQuAD files) or the hub's
    {"text": [...], "answer_start": [...]}."""

    format = "extractive_qa"
    metrics = ("exact_match",)
    required = ("context", "question", "answers")

    def example(self, row: Mapping[str, Any]) -> Example:
        answers = row["answers"]
        texts = answers["text"] if isinstance(answers, Mapping) else [a["text"] for a in answers]
        answer = scoring.UNANSWERABLE if row.get("is_impossible") or not texts else texts[0]
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"answer text must be a non-empty string, got {answer!r}")
        return Example(prompts.extractive_qa_prompt(_text(row, "context"), _text(row, "question")), answer)

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return {"exact_match": scoring.exact_match(predictions, references)}


class MCQTask(JsonlTask):
    """Four options, the answer is a letter A-D extracted from the reply."""

    format = "mcq"
    metrics = ("accuracy",)
    choices = tuple(scoring.CHOICES)

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return {"accuracy": scoring.choice_accuracy(predictions, references)}


class KnowledgeMCQTask(MCQTask):
    """MedMCQA style: `question`, `opa`..`opd`, 0-based `cop`."""

    required = ("question", "opa", "opb", "opc", "opd", "cop")

    def example(self, row: Mapping[str, Any]) -> Example:
        options = [_text(row, f) for f in ("opa", "opb", "opc", "opd")]
        answer = scoring.CHOICES[_index(row["cop"], 4, "cop")]
        return Example(prompts.knowledge_mcq_prompt(_text(row, "question"), options), answer)


class ReadingMCQTask(MCQTask):
    """RACE style: `article`, `question`, `options` (4 strings), `answer` letter."""

    required = ("article", "question", "options", "answer")

    def example(self, row: Mapping[str, Any]) -> Example:
        options = row["options"]
        if not isinstance(options, list) or len(options) != 4 or not all(isinstance(o, str) for o in options):
            raise ValueError(f"field 'options' must be a list of 4 strings, got {options!r}")
        prompt = prompts.reading_mcq_prompt(_text(row, "article"), _text(row, "question"), options)
        return Example(prompt, _choice(row["answer"]))


class TranslationTask(JsonlTask):
    """IWSLT 2017 style: `translation` = {"en": ..., "fr": ...} -> the French sentence."""

    format = "translation"
    metrics = ("bleu", "exact_match")
    required = ("translation",)

    def example(self, row: Mapping[str, Any]) -> Example:
        pair = row["translation"]
        if not isinstance(pair, Mapping):
            raise ValueError(f"field 'translation' must be an object with 'en' and 'fr', got {pair!r}")
        return Example(prompts.translation_prompt(_text(pair, "en")), _text(pair, "fr").strip())

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        return {
            "bleu": scoring.corpus_bleu(predictions, references),
            "exact_match": scoring.translation_exact_match(predictions, references),
        }

    def records(self, predictions: list[str], references: list[str]) -> list[dict]:
        """Sentence BLEU as each `score`, and the sentence's `bleu_stats` for corpus BLEU of any subset."""
        scoring.check_lengths(predictions, references)
        return [
            {"score": scoring.sentence_bleu(p, r), "bleu_stats": scoring.bleu_stats(p, r)}
            for p, r in zip(predictions, references)
        ]

    def aggregate(self, records: Sequence[Mapping]) -> float:
        """Corpus BLEU of the records: BLEU is not a mean of sentence scores, so their statistics are summed."""
        if not records:
            raise RecallError(f"task {self.name}: no per-example records to aggregate")
        return scoring.bleu_from_stats([r["bleu_stats"] for r in records])
