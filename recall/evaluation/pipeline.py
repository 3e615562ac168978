"""`evaluate`: validate, write the OpenCompass inputs, run OpenCompass, collect `metrics.json`.

Layout of `out/`:
    metrics.json           {"<task>": {"<metric>": score 0-100, ...}, ...}; written last, atomically
    opencompass_config.py  the generated OpenCompass config
    data/<task>.jsonl      the test examples as OpenCompass custom datasets
    opencompass.log        everything OpenCompass printed
    opencompass/           OpenCompass's own outputs: predictions/, results/, summary/, configs/
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from recall.atomic import atomic_file, write_json
from recall.errors import RecallError
from recall.evaluation.config import (
    MAX_NEW_TOKENS,
    DatasetSpec,
    ModelSpec,
    dataset_abbr,
    model_abbr,
    render_config,
    write_dataset,
)
from recall.evaluation.results import read_metrics
from recall.evaluation.runner import last_error, run_opencompass
from recall.tasks.base import Task, get_task

log = logging.getLogger(__name__)

# Config fields that bound a model's sequence length, by architecture family.
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "seq_length")


def prompt_budget(model: Path, reply_tokens: int) -> int | None:
    """Check that `model` is a chat model folder; return how many prompt tokens fit beside a reply.

    Reads the config and tokenizer only, so a wrong path fails in a second rather than after
    OpenCompass has started. None when the config states no context length.
    """
    from transformers import AutoConfig, AutoTokenizer

    if not (model / "config.json").is_file():
        raise RecallError(f"{model} is not a model folder (no config.json); give a Hugging Face model folder")
    try:
        config = AutoConfig.from_pretrained(model)
        tokenizer = AutoTokenizer.from_pretrained(model)
    except Exception as err:  # transformers raises many types for a bad folder; all mean the same here
        raise RecallError(f"cannot load the config and tokenizer of {model}: {type(err).__name__}: {err}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise RecallError(
            f"the tokenizer of {model} has no chat template; evaluation prompts are chat turns, so add a "
            "`chat_template` to its tokenizer_config.json"
        )
    text_config = config.get_text_config()
    context = next((getattr(text_config, f) for f in _CONTEXT_FIELDS if getattr(text_config, f, None)), None)
    if context is None:
        return None
    if context <= reply_tokens:
        raise RecallError(
            f"{model} has a context of {context} tokens, too short for replies of up to {reply_tokens}; "
            "lower --max-new-tokens"
        )
    return context - reply_tokens


def resolve_tasks(names: Sequence[str]) -> list[Task]:
    if not names:
        raise RecallError("no tasks given; name at least one (see `recall tasks list`)")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise RecallError(f"task(s) {', '.join(duplicates)} given more than once; name each task once")
    return [get_task(name) for name in names]


def use_gpu() -> tuple[bool, str]:
    """(GPU available, dtype to evaluate in): fp32 on CPU, bf16 on GPUs that have it, else fp16."""
    import torch

    if not torch.cuda.is_available():
        return False, "float32"
    return True, "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def evaluate(
    model: str | os.PathLike,
    tasks: Sequence[str],
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
) -> dict[str, dict[str, float]]:
    """Score `model` on the test split of each task (first `limit` examples) with OpenCompass.

    Returns and writes `out/metrics.json`. Raises RecallError on bad input before OpenCompass
    starts, and naming the task and log file when any task fails; metrics.json then does not exist.
    Predictions OpenCompass already made in `out/` for the very same model files, examples and reply
    length are reused, so a killed run resumes; scores are always recomputed.
    """
    model, out = Path(model).resolve(), Path(out).resolve()
    if batch_size < 1:
        raise RecallError(f"--batch-size must be at least 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise RecallError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    task_list = resolve_tasks(tasks)
    reply_tokens = {t.name: max_new_tokens or MAX_NEW_TOKENS[t.format] for t in task_list}
    max_seq_len = prompt_budget(model, max(reply_tokens.values()))
    examples = {t.name: t.load("test", Path(data_dir) if data_dir is not None else None, limit) for t in task_list}

    out.mkdir(parents=True, exist_ok=True)
    # Whatever happens next, an older metrics.json must not pass for this run's result.
    (out / "metrics.json").unlink(missing_ok=True)
    datasets = []
    for task in task_list:
        path, length = out / "data" / f"{task.name}.jsonl", reply_tokens[task.name]
        write_dataset(examples[task.name], path)
        datasets.append(DatasetSpec(task.name, dataset_abbr(task.name, path, length), path, length))
    gpu, dtype = use_gpu()
    spec = ModelSpec(model, model_abbr(model), batch_size, max_seq_len, gpu, dtype)
    config = out / "opencompass_config.py"
    with atomic_file(config) as fh:
        fh.write(render_config(spec, datasets))

    work_dir, log_path = out / "opencompass", out / "opencompass.log"
    shutil.rmtree(work_dir / "results", ignore_errors=True)  # scores always come from this run
    log.info(
        "evaluating %s on %s (%s examples) with OpenCompass on %s; log: %s",
        model, ", ".join(examples), sum(map(len, examples.values())), "GPU" if gpu else "CPU", log_path,
    )
    started = time.monotonic()
    status = run_opencompass(config, work_dir, log_path)
    failure = f"OpenCompass exited with status {status}: {last_error(log_path)}" if status else None
    metrics = read_metrics(work_dir, spec.abbr, datasets, {t.name: t.metrics for t in task_list}, log_path, failure)
    if failure:  # every result present yet the run crashed (e.g. in the summary): do not trust it
        raise RecallError(f"{failure}; see the log {log_path}")
    write_json(out / "metrics.json", metrics)
    log.info("evaluated in %.0f s: %s", time.monotonic() - started, metrics)
    return metrics
