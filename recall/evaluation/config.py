"""The OpenCompass config of one evaluation: jsonl custom datasets per task and one chat model.

Every prompt is the task's instruction as a single user turn, rendered by the model's own chat
template (the same rendering `recall.data.chat_prompt` gives fine-tuning). A task is inferred in
one of two modes:
- "gen": answered greedily (OpenCompass's GenInferencer renders the turn itself), scored by
  `TaskEvaluator`; a second dataset scores the reference's likelihood alone for the `nll` metric;
- "ppl": each of the task's choices scored by likelihood after the prompt, which recall renders,
  the most likely one chosen (`AnswerPPLInferencer`), scored by `ChoiceEvaluator`, `nll` included.
"""

from __future__ import annotations

import hashlib
import json
import pprint
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recall.atomic import atomic_file
from recall.data import chat_prompt
from recall.tasks.base import Example

# Longest reply worth generating per task format: room for a short chat lead-in before a label or
# letter, a SQuAD span, or a full French sentence. Generation stops earlier at the end-of-turn token.
MAX_NEW_TOKENS = {"classification": 16, "mcq": 16, "extractive_qa": 48, "translation": 128}

# A user turn and the assistant's reply, nothing else: OpenCompass's default chat template also has a
# SYSTEM role that it merges into the user turn with a stray trailing newline.
META_TEMPLATE = dict(
    round=[dict(role="HUMAN", api_role="HUMAN"), dict(role="BOT", api_role="BOT", generate=True)]
)


@dataclass(frozen=True)
class DatasetSpec:
    task: str
    kind: str  # "gen": generated replies; "ppl": choices ranked by likelihood; "nll": the reference's likelihood
    abbr: str  # OpenCompass's name for the dataset: file names under predictions/ and results/
    path: Path  # jsonl with `prompt`, `chat_prompt` and `answer` fields (`write_dataset`)
    max_out_len: int | None = None  # "gen" only
    choices: tuple[str, ...] = ()  # "ppl" only


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    abbr: str
    batch_size: int
    max_seq_len: int | None  # longest prompt in tokens; None lets OpenCompass read the model config
    gpu: bool
    dtype: str  # "float32", "bfloat16" or "float16"


class _Name:
    """A bare Python name in the rendered config (a class imported at its top)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


IMPORTS = """\
from opencompass.datasets import JsonlDataset
from opencompass.openicl.icl_inferencer import GenInferencer
from opencompass.openicl.icl_prompt_template import PromptTemplate
from opencompass.openicl.icl_retriever import ZeroRetriever

from recall.evaluation.evaluator import AnswerNLLEvaluator, ChoiceEvaluator, TaskEvaluator
from recall.evaluation.inferencer import AnswerPPLInferencer
from recall.evaluation.model import ChatModel
"""


def write_dataset(examples: Sequence[Example], tokenizer, path: Path) -> None:
    """One line per example: the instruction (`prompt`; OpenCompass renders it for generation), the
    same rendered by the model's chat template (`chat_prompt`; scored as is by likelihood), `answer`."""
    with atomic_file(path) as fh:
        for example in examples:
            rendered = chat_prompt(tokenizer, example.prompt)
            row = {"prompt": example.prompt, "chat_prompt": rendered, "answer": example.answer}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def dataset_abbr(task: str, kind: str, path: Path, setting: str = "") -> str:
    """Task, kind and a hash of the examples and the inference setting (reply length, choices):
    OpenCompass reuses predictions only for the very same inputs, in the same mode."""
    digest = hashlib.sha256(path.read_bytes() + f"\n{kind}\n{setting}".encode()).hexdigest()
    return f"{task}-{kind}-{digest[:8]}"


def dataset_specs(task: str, mode: str, path: Path, max_out_len: int, choices: Sequence[str]) -> list[DatasetSpec]:
    """The datasets one task needs in `mode`: its scored one first, then (gen) the reference's likelihood."""
    if mode == "ppl":
        abbr = dataset_abbr(task, "ppl", path, json.dumps(list(choices)))
        return [DatasetSpec(task, "ppl", abbr, path, choices=tuple(choices))]
    return [
        DatasetSpec(task, "gen", dataset_abbr(task, "gen", path, str(max_out_len)), path, max_out_len=max_out_len),
        DatasetSpec(task, "nll", dataset_abbr(task, "nll", path), path),
    ]


def model_abbr(model: Path) -> str:
    """Folder name + hash of every file's name, size and modification time.

    A retrained or re-merged model (rewritten files) therefore gets a new name and never inherits
    the predictions OpenCompass cached for an earlier variant in the same work dir.
    """
    digest = hashlib.sha256()
    for file in sorted(p for p in model.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(model)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"{model.name}-{digest.hexdigest()[:8]}"


def dataset_config(spec: DatasetSpec) -> dict:
    if spec.kind == "gen":
        column = "prompt"
        template: str | dict = dict(round=[dict(role="HUMAN", prompt="{prompt}")])
        inferencer = dict(type=_Name("GenInferencer"), max_out_len=spec.max_out_len)
        evaluator = "TaskEvaluator"
    else:
        # The likelihood inferencer reads the rendered prompt as is; OpenCompass only requires a template.
        column, template = "chat_prompt", "{chat_prompt}"
        inferencer = dict(type=_Name("AnswerPPLInferencer"))
        if spec.kind == "ppl":
            inferencer["candidates"] = list(spec.choices)
        evaluator = "ChoiceEvaluator" if spec.kind == "ppl" else "AnswerNLLEvaluator"
    return dict(
        abbr=spec.abbr,
        type=_Name("JsonlDataset"),
        path=str(spec.path),
        reader_cfg=dict(input_columns=[column], output_column="answer"),
        infer_cfg=dict(
            prompt_template=dict(type=_Name("PromptTemplate"), template=template),
            retriever=dict(type=_Name("ZeroRetriever")),
            inferencer=inferencer,
        ),
        eval_cfg=dict(evaluator=dict(type=_Name(evaluator), task=spec.task)),
    )


def model_config(spec: ModelSpec) -> dict:
    config = dict(
        type=_Name("ChatModel"),
        abbr=spec.abbr,
        path=str(spec.path),
        # OpenCompass's defaults are fp16 and device_map "auto": always say both explicitly.
        model_kwargs=dict(torch_dtype=spec.dtype, device_map="auto" if spec.gpu else "cpu"),
        meta_template=META_TEMPLATE,
        generation_kwargs=dict(do_sample=False),  # greedy
        batch_size=spec.batch_size,
        run_cfg=dict(num_gpus=1 if spec.gpu else 0),
    )
    if spec.max_seq_len is not None:
        config["max_seq_len"] = spec.max_seq_len
    return config


def render_config(model: ModelSpec, datasets: Sequence[DatasetSpec]) -> str:
    """The config file's Python source."""
    body = {"models": [model_config(model)], "datasets": [dataset_config(d) for d in datasets]}
    return IMPORTS + "".join(f"\n{name} = {pprint.pformat(value, width=100)}\n" for name, value in body.items())
