"""The task formats, and the one engine that turns JSONL rows into Examples by a task's spec.

A task is a name, a `TaskSpec` (the fields of a task.yaml: format, metric, a template or ready
`prompt`/`response` fields, the answer field, labels, options) and where its rows live: the Hugging
Face hub, the generated suite, or a folder of its own. The built-in tasks (`recall.tasks.catalog`)
are specs too, so any task can be printed as a task.yaml to copy (`recall tasks show NAME`).

Each format is a class that knows how a row's answer becomes a reference and how a reply is scored:
- classification   a closed label set: accuracy of the label a reply names
- multiple_choice  lettered options per example (A, B, ...): accuracy of the letter a reply names
- qa               a free answer: normalised exact match and token F1 (SQuAD's)
- generation       free text: BLEU, ROUGE-L and exact match
A spec's `metric` picks which of its format's metrics is the primary one (listed first).
"""

from __future__ import annotations

import dataclasses
import os
import re
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, ClassVar

from recall.data import Example, iter_jsonl
from recall.errors import RecallError
from recall.settings import Settings, setting
from recall.tasks import scoring
from recall.tasks.base import Task, TaskSpec

SPLITS = ("train", "test")
TASK_FILE = "task.yaml"
# "{field}", "{nested.field}" or "{list_field.0}"; any other brace is literal text.
PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*(?:\.\w+)*)\}")
OPTIONS = "options"  # the placeholder a multiple-choice template shows its lettered options with


class SpecError(ValueError):
    """A bad field of a task spec; `field` names it, so task.yaml errors can give its line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class TaskFile(Settings):
    """task.yaml as a user writes it, for its JSON schema; `parse_spec` reads and checks it (an error
    names the line of the bad field) into a TaskSpec."""

    format: str = setting(help="classification, multiple_choice, qa or generation")
    metric: str | None = setting(None, help="the primary metric; default the format's first")
    template: str | None = setting(
        None, help="the prompt, with {field} placeholders filled from each row; default each row's `prompt`"
    )
    answer: str = setting(TaskSpec.answer, help="the field holding the reference answer")
    labels: tuple[str, ...] | dict[str | int, str] | None = setting(
        None, help="classification: the label words, or a mapping of values in the data to label words"
    )
    options: str | tuple[str, ...] | None = setting(
        None, help="multiple_choice: a field holding a list of options, or one field per option"
    )


SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(TaskFile))
NEEDS = {"classification": "labels", "multiple_choice": "options"}  # the field a format needs, only it has


def parse_spec(raw: Mapping[str, Any]) -> TaskSpec:
    """A checked TaskSpec from task.yaml's fields; raises SpecError naming the bad field."""
    unknown = [key for key in raw if key not in SPEC_FIELDS]
    if unknown:
        raise SpecError(str(unknown[0]), f"unknown field {unknown[0]!r}; a task spec has {', '.join(SPEC_FIELDS)}")
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise SpecError("format", f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    cls = FORMATS[fmt]
    metric = raw.get("metric")
    if metric is not None and metric not in cls.all_metrics:
        raise SpecError(
            "metric", f"unknown metric {metric!r} for format {fmt}; use one of {', '.join(cls.all_metrics)}"
        )
    for owner, key in NEEDS.items():
        if key in raw and fmt != owner:
            raise SpecError(key, f"only a {owner} task has {key!r}; this one's format is {fmt}")
        if key not in raw and fmt == owner:
            raise SpecError("format", f"a {owner} task needs {key!r}")
    template = raw.get("template")
    if template is not None:
        if not isinstance(template, str) or not PLACEHOLDER.search(template):
            raise SpecError("template", "template must be text with {field} placeholders, e.g. 'Ticket: {subject}'")
        if fmt == "multiple_choice" and f"{{{OPTIONS}}}" not in template:
            raise SpecError("template", f"a multiple_choice template shows the lettered options with {{{OPTIONS}}}")
        if "answer" not in raw:
            raise SpecError("template", "a template needs `answer`, the field holding the reference answer")
    answer = raw.get("answer", TaskFile.answer)
    if not isinstance(answer, str) or not PLACEHOLDER.fullmatch(f"{{{answer}}}"):
        raise SpecError("answer", f"answer must be a field name, got {answer!r}")
    return TaskSpec(
        fmt,
        template,
        answer,
        metric,
        _labels(raw["labels"]) if "labels" in raw else (),
        _option_fields(raw["options"]) if "options" in raw else None,
    )


def _labels(raw: Any) -> tuple[tuple[Any, str], ...]:
    """A list of label words, or a mapping of data value -> label word."""
    pairs = list(raw.items()) if isinstance(raw, Mapping) else [(w, w) for w in raw] if isinstance(raw, list) else []
    if len(pairs) < 2:
        raise SpecError("labels", "labels must list at least 2 labels, or map values in the data to label words")
    words = [word.strip() if isinstance(word, str) else word for _, word in pairs]
    if not all(isinstance(word, str) and word for word in words) or len(set(words)) != len(words):
        raise SpecError("labels", f"label words must be distinct non-empty strings, got {words}")
    if not all(isinstance(value, (str, int)) for value, _ in pairs):
        raise SpecError("labels", "the data values labels map must be strings or integers")
    return tuple((value.strip() if isinstance(value, str) else value, word) for (value, _), word in zip(pairs, words))


def _option_fields(raw: Any) -> str | tuple[str, ...]:
    def is_field(name: Any) -> bool:
        return isinstance(name, str) and PLACEHOLDER.fullmatch(f"{{{name}}}") is not None

    if is_field(raw):
        return raw
    if isinstance(raw, list) and 2 <= len(raw) <= len(scoring.LETTERS) and all(map(is_field, raw)):
        return tuple(raw)
    raise SpecError(
        "options",
        f"options must name a field holding a list of options, or list 2 to 26 fields of one option each; got {raw!r}",
    )


def field(row: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path ("translation.en", "options.0"); KeyError naming the path if absent."""
    value: Any = row
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(path)
    return value


def text(row: Mapping[str, Any], path: str) -> str:
    """The non-empty string (or number) at `path`, stripped."""
    return as_text(field(row, path), path)


def as_text(value: Any, path: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {path!r} must be a non-empty string, got {value!r}")
    return value.strip()


def options_text(options: Sequence[str]) -> str:
    """ "A: first B: second C: third D: fourth", as in the paper's Table 6 MedMCQA row."""
    return " ".join(f"{letter}: {option}" for letter, option in zip(scoring.LETTERS, options))


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
    """Rows -> Examples by the spec, and scoring by per-example values; a subclass per format."""

    name: str
    spec: TaskSpec
    hub: HubSource | None = None  # where the built-in paper tasks live
    folder: Path | None = None  # a declared task's folder (task.yaml, train.jsonl, test.jsonl)
    all_metrics: ClassVar[tuple[str, ...]]  # every metric the format computes, its default primary first
    ranked: ClassVar[bool] = False  # answers from a closed set, which evaluation can rank by likelihood
    mode: ClassVar[str] = "gen"  # how evaluation infers it by default: ppl (its choices ranked) or gen (replies)
    # the longest reply worth generating: room for a short chat lead-in before a label or letter, a SQuAD
    # span, or a full sentence (generation stops earlier at the end-of-turn token)
    reply_tokens: ClassVar[int]
    filled: ClassVar[tuple[str, ...]] = ()  # template placeholders the format fills itself, not a row

    @property
    def source(self) -> str:  # type: ignore[override]
        if self.folder is not None:
            return str(self.folder / TASK_FILE)
        return str(self.hub) if self.hub else "generated (recall tasks generate)"

    @property
    def metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        primary = self.spec.metric or self.all_metrics[0]
        return (primary, *(m for m in self.all_metrics if m != primary))

    @property
    def required(self) -> list[str]:
        """The fields every row must have."""
        shown = PLACEHOLDER.findall(self.spec.template) if self.spec.template is not None else ["prompt"]
        fields = [f for f in shown if f not in self.filled]
        options = [self.spec.options] if isinstance(self.spec.options, str) else list(self.spec.options or ())
        return list(dict.fromkeys([*fields, self.spec.answer, *options]))

    @abstractmethod
    def reference(self, value: Any, row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        """(reference answer, the example's choices or ()) from the answer field's `value`; ValueError
        naming the field when it is not a valid answer."""

    @abstractmethod
    def per_example(self, metric: str, prediction: str, reference: str) -> float:
        """`metric` (0-100) of one reply."""

    def placeholders(self, row: Mapping[str, Any]) -> dict[str, str]:
        """Template values that are not a row's fields."""
        return {}

    def example(self, row: Mapping[str, Any]) -> Example:
        """One row -> one Example; KeyError naming a missing field, ValueError/TypeError on a bad value."""
        if self.spec.template is None:
            prompt = text(row, "prompt")
        else:
            values = self.placeholders(row)
            prompt = PLACEHOLDER.sub(lambda m: values[m[1]] if m[1] in values else text(row, m[1]), self.spec.template)
        answer, choices = self.reference(field(row, self.spec.answer), row)
        return Example(prompt, answer, choices)

    def load(self, split: str, data_dir: Path | None = None, limit: int | None = None) -> list[Example]:
        if split not in SPLITS:
            raise RecallError(f"unknown split {split!r} for task {self.name}; use one of: {', '.join(SPLITS)}")
        if limit is not None and limit < 1:
            raise RecallError(f"limit must be a positive number of examples, got {limit}")
        if data_dir is not None or self.folder is not None:
            path = self._local_path(split, Path(data_dir) if data_dir is not None else None)
            rows, origin = ((f"{path}:{lineno}", row) for lineno, row in iter_jsonl(path)), str(path)
        else:
            rows, origin = self._hub_rows(split), str(self.hub)
        examples = []
        for where, row in rows:
            if limit is not None and len(examples) >= limit:
                break
            try:
                examples.append(self.example(row))
            except KeyError as err:
                raise RecallError(
                    f"{where}: missing field {err.args[0]!r}; a {self.name} row needs the fields "
                    f"{', '.join(self.required)}{self._spec_note()}"
                ) from None
            except (ValueError, TypeError, IndexError) as err:
                raise RecallError(f"{where}: bad {self.name} row: {err}{self._spec_note()}") from None
        if not examples:
            raise RecallError(f"{origin}: task {self.name} has no {split} examples; the split must not be empty")
        return examples

    def _spec_note(self) -> str:
        return f" (as {self.folder / TASK_FILE} says)" if self.folder is not None else ""

    def _local_path(self, split: str, data_dir: Path | None) -> Path:
        path = (data_dir / self.name if data_dir is not None else self.folder) / f"{split}.jsonl"
        if not path.is_file() and data_dir is None:
            raise RecallError(f"{path} does not exist; a task's folder holds {TASK_FILE}, train.jsonl and test.jsonl")
        if not path.is_file():
            raise RecallError(
                f"{path} does not exist; --data-dir must hold {self.name}/{split}.jsonl "
                "(`recall tasks generate --out DIR` writes that layout for the generated tasks)"
            )
        return path

    def _hub_rows(self, split: str) -> Iterator[tuple[str, dict]]:
        if self.hub is None:
            raise RecallError(
                f"task {self.name} is generated locally: run `recall tasks generate --out DIR` and pass --data-dir DIR"
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

    def score(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        scoring.check_lengths(predictions, references)
        return {metric: self.corpus(metric, predictions, references) for metric in self.metrics}

    def corpus(self, metric: str, predictions: list[str], references: list[str]) -> float:
        """`metric` over a set of replies: the mean of the per-example values (BLEU overrides this)."""
        return fmean(self.per_example(metric, p, r) for p, r in zip(predictions, references))

    def records(self, predictions: list[str], references: list[str]) -> list[dict]:
        scoring.check_lengths(predictions, references)
        return [{"score": self.per_example(self.metrics[0], p, r)} for p, r in zip(predictions, references)]


class ClassificationTask(JsonlTask):
    """The answer field holds one of `labels` (or a value they map to a label word)."""

    format = "classification"
    all_metrics = ("accuracy",)
    ranked = True
    mode = "ppl"
    reply_tokens = 16

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(word for _, word in self.spec.labels)

    def reference(self, value: Any, row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        key = value.strip() if isinstance(value, str) else value
        for data_value, word in self.spec.labels:
            if data_value == key and isinstance(data_value, bool) == isinstance(key, bool):
                return word, self.choices
        known = ", ".join(str(v) for v, _ in self.spec.labels)
        raise ValueError(f"field {self.spec.answer!r}: {value!r} is not one of the labels ({known})")

    def per_example(self, metric: str, prediction: str, reference: str) -> float:
        return 100.0 * (scoring.extract_label(prediction, self.choices) == reference)


class MultipleChoiceTask(JsonlTask):
    """Each row has its options; the answer field holds the right one's letter, 0-based index or
    text, and the reference is its letter. The prompt shows the options lettered as {options}."""

    format = "multiple_choice"
    all_metrics = ("accuracy",)
    ranked = True
    mode = "ppl"
    reply_tokens = 16
    filled = (OPTIONS,)

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        """Every letter an answer may be: one per option field, else A-Z (each example has its own)."""
        count = len(scoring.LETTERS) if isinstance(self.spec.options, str) else len(self.spec.options or ())
        return tuple(scoring.LETTERS[:count])

    def options(self, row: Mapping[str, Any]) -> list[str]:
        if not isinstance(self.spec.options, str):
            return [text(row, f) for f in self.spec.options or ()]
        options = field(row, self.spec.options)
        if not isinstance(options, list) or not 2 <= len(options) <= len(scoring.LETTERS):
            raise ValueError(f"field {self.spec.options!r} must be a list of 2 to 26 options, got {options!r}")
        return [as_text(option, f"{self.spec.options}.{i}") for i, option in enumerate(options)]

    def placeholders(self, row: Mapping[str, Any]) -> dict[str, str]:
        return {OPTIONS: options_text(self.options(row))}

    def reference(self, value: Any, row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        options = self.options(row)
        letters = tuple(scoring.LETTERS[: len(options)])
        given = value.strip() if isinstance(value, str) else value
        if given in letters:
            return given, letters
        if isinstance(given, int) and not isinstance(given, bool) and 0 <= given < len(options):
            return letters[given], letters
        if given in options:
            return letters[options.index(given)], letters
        raise ValueError(
            f"field {self.spec.answer!r}: {value!r} is not one of the options; give its letter "
            f"({'/'.join(letters)}), its 0-based index or its text"
        )

    def per_example(self, metric: str, prediction: str, reference: str) -> float:
        return 100.0 * (scoring.extract_choice(prediction, self.choices) == reference)


class QATask(JsonlTask):
    """A free answer: a string, or SQuAD's answers (a list of texts or {"text"} objects, or
    {"text": [...]}), the first being the reference; none means "impossible to answer"."""

    format = "qa"
    all_metrics = ("exact_match", "f1")
    reply_tokens = 48

    def reference(self, value: Any, row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        texts = value["text"] if isinstance(value, Mapping) else value if isinstance(value, list) else [value]
        if not texts:
            return scoring.UNANSWERABLE, ()
        first = texts[0]["text"] if isinstance(texts[0], Mapping) else texts[0]
        return as_text(first, self.spec.answer), ()

    def per_example(self, metric: str, prediction: str, reference: str) -> float:
        if metric == "f1":
            return scoring.qa_f1(prediction, reference)
        return 100.0 * scoring.qa_match(prediction, reference)


class GenerationTask(JsonlTask):
    """Free text, e.g. a translation or a support reply."""

    format = "generation"
    all_metrics = ("bleu", "rouge_l", "exact_match")
    reply_tokens = 128

    def reference(self, value: Any, row: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        return as_text(value, self.spec.answer), ()

    def per_example(self, metric: str, prediction: str, reference: str) -> float:
        if metric == "bleu":
            return scoring.sentence_bleu(prediction, reference)
        if metric == "rouge_l":
            return scoring.rouge_l(prediction, reference)
        return 100.0 * scoring.text_match(prediction, reference)

    def corpus(self, metric: str, predictions: list[str], references: list[str]) -> float:
        if metric == "bleu":
            return scoring.corpus_bleu(predictions, references)
        return super().corpus(metric, predictions, references)

    def records(self, predictions: list[str], references: list[str]) -> list[dict]:
        """With BLEU primary, each sentence's `bleu_stats` too, for corpus BLEU of any subset."""
        records = super().records(predictions, references)
        if self.metrics[0] == "bleu":
            for record, p, r in zip(records, predictions, references):
                record["bleu_stats"] = scoring.bleu_stats(p, r)
        return records

    def aggregate(self, records: Sequence[Mapping]) -> float:
        """BLEU is not a mean of sentence scores: corpus BLEU of the records' summed statistics."""
        if self.metrics[0] != "bleu":
            return super().aggregate(records)
        if not records:
            raise RecallError(f"task {self.name}: no per-example records to aggregate")
        return scoring.bleu_from_stats([r["bleu_stats"] for r in records])


FORMATS: dict[str, type[JsonlTask]] = {
    cls.format: cls for cls in (ClassificationTask, MultipleChoiceTask, QATask, GenerationTask)
}


def make_task(name: str, spec: TaskSpec, hub: HubSource | None = None, folder: Path | None = None) -> JsonlTask:
    return FORMATS[spec.format](name, spec, hub, folder)


def task_schema() -> dict:
    """The JSON schema of a task.yaml (`recall params schema --task`; schemas/task.schema.json): its fields,
    the formats, and per format its metrics and the field it needs (labels or options)."""
    schema = {k: v for k, v in TaskFile.schema().items() if k != "title"}
    schema["properties"]["format"]["enum"] = list(FORMATS)
    schema["allOf"] = [
        {
            "if": {"properties": {"format": {"const": name}}, "required": ["format"]},
            "then": {
                "properties": {"metric": {"enum": [*cls.all_metrics, None]}},
                **({"required": [need]} if (need := NEEDS.get(name)) else {}),
            },
        }
        for name, cls in FORMATS.items()
    ]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "recall task.yaml",
        "description": "A task declared in a folder beside its train.jsonl and test.jsonl (README: your own tasks).",
        **schema,
    }
