"""The OpenCompass config of one evaluation: a jsonl custom dataset per task and one chat model.

Each dataset's prompt is the task's instruction as a single user turn, rendered by the model's own
chat template (the same rendering `recall.data.chat_prompt` gives fine-tuning), answered greedily
and scored by `recall.evaluation.evaluator.TaskEvaluator`.
"""

from __future__ import annotations

import hashlib
import json
import pprint
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recall.atomic import atomic_file
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
    abbr: str  # OpenCompass's name for the dataset: file names under predictions/ and results/
    path: Path  # jsonl with `prompt` and `answer` fields
    max_out_len: int


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
from opencompass.models import HuggingFacewithChatTemplate
from opencompass.openicl.icl_inferencer import GenInferencer
from opencompass.openicl.icl_prompt_template import PromptTemplate
from opencompass.openicl.icl_retriever import ZeroRetriever

from recall.evaluation.evaluator import TaskEvaluator
"""


def write_dataset(examples: Sequence[Example], path: Path) -> None:
    """One `{"prompt", "answer"}` line per example."""
    with atomic_file(path) as fh:
        for example in examples:
            fh.write(json.dumps({"prompt": example.prompt, "answer": example.answer}, ensure_ascii=False) + "\n")


def dataset_abbr(task: str, path: Path, max_out_len: int) -> str:
    """Task name + hash of the examples and reply length: predictions are reused only for the same inputs."""
    digest = hashlib.sha256(path.read_bytes() + f"\n{max_out_len}".encode()).hexdigest()
    return f"{task}-{digest[:8]}"


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
    return dict(
        abbr=spec.abbr,
        type=_Name("JsonlDataset"),
        path=str(spec.path),
        reader_cfg=dict(input_columns=["prompt"], output_column="answer"),
        infer_cfg=dict(
            prompt_template=dict(
                type=_Name("PromptTemplate"), template=dict(round=[dict(role="HUMAN", prompt="{prompt}")])
            ),
            retriever=dict(type=_Name("ZeroRetriever")),
            inferencer=dict(type=_Name("GenInferencer"), max_out_len=spec.max_out_len),
        ),
        eval_cfg=dict(evaluator=dict(type=_Name("TaskEvaluator"), task=spec.task)),
    )


def model_config(spec: ModelSpec) -> dict:
    config = dict(
        type=_Name("HuggingFacewithChatTemplate"),
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
