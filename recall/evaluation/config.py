"""The OpenCompass config of one evaluation: jsonl custom datasets per task and one model.

Every prompt is rendered by recall as fine-tuning renders it (`recall.data.chat_prompt`: a user
turn of the model's chat template, or the plain prompt for a model without one), and the model
reads it verbatim. A task is inferred in one of two modes:
- "gen": answered greedily (OpenCompass's GenInferencer), scored by `TaskEvaluator`; a second
  dataset scores the reference's likelihood alone for the `nll` metric;
- "ppl": each of the example's choices (label words, its option letters) scored by likelihood after
  the prompt, the most likely one chosen (`AnswerPPLInferencer`), scored by `ChoiceEvaluator`, `nll`
  included.
The evaluators rebuild each task from its spec, which the config carries, so a task declared in a
folder needs nothing else in OpenCompass's process.

The model runs on one of three backends (`BACKENDS`): `hf`, transformers in OpenCompass's process
(the default, on the CPU or a GPU), or, on a CUDA GPU only, OpenCompass's vLLM or LMDeploy
(TurboMind) chat models. Those two only generate: OpenCompass's chat classes for them have no
likelihood method, and recall's answer likelihood (`ChatModel.get_answer_nll`) exists for `hf` only,
so with them no task runs in mode "ppl" and generated tasks get no `nll`. The vLLM and LMDeploy
configs were written and checked here, never run: this project's machine has no GPU.
"""

from __future__ import annotations

import hashlib
import json
import pprint
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recall.atomic import atomic_file
from recall.data import Example, chat_prompt
from recall.hashing import sha256_tree
from recall.tasks.formats import FORMATS

# Longest reply worth generating per task format (each format declares its own).
MAX_NEW_TOKENS = {name: cls.reply_tokens for name, cls in FORMATS.items()}


def reply_length(fmt: str, max_new_tokens: int | None = None) -> int:
    """A generated reply's length on a format: `max_new_tokens` where given (evaluate.max_new_tokens), else
    the format's own."""
    return max_new_tokens or MAX_NEW_TOKENS[fmt]


@dataclass(frozen=True)
class DatasetSpec:
    task: str
    kind: str  # "gen": generated replies; "ppl": choices ranked by likelihood; "nll": the reference's likelihood
    abbr: str  # OpenCompass's name for the dataset: file names under predictions/ and results/
    path: Path  # jsonl with `prompt`, `rendered`, `answer` (and `choices`) fields (`write_dataset`)
    definition: Mapping[str, Any]  # the task's spec (`TaskSpec.as_dict`), for the evaluators
    max_out_len: int | None = None  # "gen" only


@dataclass(frozen=True)
class Backend:
    """How OpenCompass runs the model: `model_class` (in `recall.evaluation.model`), the package it
    needs beyond OpenCompass, whether it needs a CUDA GPU and whether it scores likelihoods."""

    model_class: str
    package: str | None = None
    gpu_only: bool = False
    likelihood: bool = True


DEFAULT_BACKEND = "hf"  # of `recall evaluate`, `evaluate()` and params.yaml's evaluate.backend
BATCH_SIZE = 8  # sequences per forward pass of `recall evaluate` and `evaluate()`
BACKENDS = {
    "hf": Backend("ChatModel"),
    "vllm": Backend("VLLMChatModel", "vllm", gpu_only=True, likelihood=False),
    "lmdeploy": Backend("TurboMindChatModel", "lmdeploy", gpu_only=True, likelihood=False),
}


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    abbr: str
    batch_size: int
    max_seq_len: int  # longest prompt in tokens (given: else OpenCompass reads the config with remote code on)
    gpu: bool
    dtype: str  # "float32", "bfloat16" or "float16"
    backend: str = "hf"  # a key of BACKENDS
    trust_remote_code: bool = False  # the user's opt-in (`recall.models.trusted`); OpenCompass defaults to True


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
from recall.evaluation.model import {model_class}
"""


def write_dataset(examples: Sequence[Example], tokenizer, path: Path) -> None:
    """One line per example: the instruction (`prompt`), the same as the model sees it (`rendered`,
    what OpenCompass reads), `answer`, and for label tasks the `choices` likelihood ranks."""
    with atomic_file(path) as fh:
        for example in examples:
            row = {
                "prompt": example.prompt,
                "rendered": chat_prompt(tokenizer, example.prompt),
                "answer": example.answer,
            }
            if example.choices:
                row["choices"] = list(example.choices)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def dataset_abbr(task: str, kind: str, path: Path, setting: str = "") -> str:
    """Task, kind and a hash of the examples (their choices included) and the inference setting (reply
    length): OpenCompass reuses predictions only for the very same inputs, in the same mode."""
    digest = hashlib.sha256(path.read_bytes() + f"\n{kind}\n{setting}".encode()).hexdigest()
    return f"{task}-{kind}-{digest[:8]}"


def dataset_specs(
    task: str, mode: str, path: Path, max_out_len: int, definition: Mapping[str, Any], likelihood: bool = True
) -> list[DatasetSpec]:
    """The datasets one task needs in `mode`: its scored one first, then (gen) the reference's likelihood,
    unless the backend scores no `likelihood`."""
    if mode == "ppl":
        return [DatasetSpec(task, "ppl", dataset_abbr(task, "ppl", path), path, definition)]
    abbr = dataset_abbr(task, "gen", path, str(max_out_len))
    generated = DatasetSpec(task, "gen", abbr, path, definition, max_out_len)
    if not likelihood:
        return [generated]
    return [generated, DatasetSpec(task, "nll", dataset_abbr(task, "nll", path), path, definition)]


def model_abbr(model: Path, backend: str = "hf") -> str:
    """Folder name + hash of every file's name and bytes (+ the backend, but hf's).

    A retrained or re-merged model (new bytes) therefore gets a new name and never inherits the
    predictions OpenCompass cached for an earlier variant in the same work dir; nor does one backend
    reuse another's. Bytes, not file times: a `dvc checkout` that restores the same model keeps its
    name, so an interrupted evaluation resumes (hashing costs ~1 s per GB, once per evaluation).
    """
    return f"{model.name}-{sha256_tree(model)[:8]}" + ("" if backend == "hf" else f"-{backend}")


def dataset_config(spec: DatasetSpec) -> dict:
    # The rendered prompt is the template: a plain string, which OpenCompass passes on unchanged (the
    # likelihood inferencer even reads the column directly).
    if spec.kind == "gen":
        inferencer = dict(type=_Name("GenInferencer"), max_out_len=spec.max_out_len)
        evaluator = dict(type=_Name("TaskEvaluator"), task=spec.task, definition=dict(spec.definition))
    elif spec.kind == "ppl":
        inferencer = dict(type=_Name("AnswerPPLInferencer"), candidates="choices")
        evaluator = dict(type=_Name("ChoiceEvaluator"), task=spec.task, definition=dict(spec.definition))
    else:
        inferencer = dict(type=_Name("AnswerPPLInferencer"))
        evaluator = dict(type=_Name("AnswerNLLEvaluator"), task=spec.task)
    return dict(
        abbr=spec.abbr,
        type=_Name("JsonlDataset"),
        path=str(spec.path),
        reader_cfg=dict(input_columns=["rendered"], output_column="answer"),
        infer_cfg=dict(
            prompt_template=dict(type=_Name("PromptTemplate"), template="{rendered}"),
            retriever=dict(type=_Name("ZeroRetriever")),
            inferencer=inferencer,
        ),
        eval_cfg=dict(evaluator=evaluator),
    )


def model_config(spec: ModelSpec) -> dict:
    if spec.backend == "vllm":
        # vllm.LLM's arguments; the context is read from the model's config (prompts are not cut to fit).
        return dict(
            type=_Name(BACKENDS["vllm"].model_class),
            abbr=spec.abbr,
            path=str(spec.path),
            model_kwargs=dict(
                dtype=spec.dtype, tensor_parallel_size=1, seed=0, trust_remote_code=spec.trust_remote_code
            ),
            generation_kwargs=dict(temperature=0),  # greedy
            batch_size=spec.batch_size,
            run_cfg=dict(num_gpus=1),
        )
    if spec.backend == "lmdeploy":
        # TurbomindEngineConfig's fields (OpenCompass drops those a version lacks); greedy by default.
        return dict(
            type=_Name(BACKENDS["lmdeploy"].model_class),
            abbr=spec.abbr,
            path=str(spec.path),
            backend="turbomind",
            engine_config=dict(dtype=spec.dtype, max_batch_size=spec.batch_size, tp=1),
            gen_config=dict(do_sample=False),
            batch_size=spec.batch_size,
            run_cfg=dict(num_gpus=1),
        )
    return dict(
        type=_Name("ChatModel"),
        abbr=spec.abbr,
        path=str(spec.path),
        # OpenCompass's defaults are fp16, device_map "auto" and remote code on: always say all three.
        model_kwargs=dict(
            torch_dtype=spec.dtype,
            device_map="auto" if spec.gpu else "cpu",
            trust_remote_code=spec.trust_remote_code,
        ),
        tokenizer_kwargs=dict(trust_remote_code=spec.trust_remote_code),  # updates OpenCompass's defaults
        generation_kwargs=dict(do_sample=False),  # greedy
        batch_size=spec.batch_size,
        run_cfg=dict(num_gpus=1 if spec.gpu else 0),
        max_seq_len=spec.max_seq_len,
    )


def render_config(model: ModelSpec, datasets: Sequence[DatasetSpec]) -> str:
    """The config file's Python source."""
    body = {"models": [model_config(model)], "datasets": [dataset_config(d) for d in datasets]}
    imports = IMPORTS.format(model_class=BACKENDS[model.backend].model_class)
    return imports + "".join(f"\n{name} = {pprint.pformat(value, width=100)}\n" for name, value in body.items())
