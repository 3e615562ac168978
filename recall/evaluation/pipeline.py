"""`evaluate`: validate, write the OpenCompass inputs, run OpenCompass, collect `metrics.json` and
the per-example records.

Layout of `out/`:
    metrics.json           {"<task>": {"<metric>": score, ...}, ...}: the task's metrics (0-100, primary
                           first), then `nll`; written last, atomically
    evaluation.json        {"model", "rendering": "chat" | "plain" (how every prompt was rendered,
                           `recall.data.rendering`), "modes": {task: "ppl" | "gen"}, "backend", "device",
                           "dtype"}; written with metrics.json
    examples/<task>.jsonl  one line per test example, in test-file order: {"index", "score" (0-100, the
                           example's part of the primary metric), "nll", "prediction", "reference"}, and
                           with BLEU primary "bleu_stats"; `Task.aggregate` of the lines gives the primary
                           metric. The folder is written whole, atomically, just before metrics.json
    opencompass_config.py  the generated OpenCompass config
    data/<task>.jsonl      the test examples as OpenCompass custom datasets
    opencompass.log        everything OpenCompass printed
    opencompass/           OpenCompass's own outputs: predictions/, results/

`nll` is the mean over examples of the reference answer's mean negative log-likelihood per token
after the rendered prompt (natural log; lower is better), for every task and mode.

`backend` picks how OpenCompass runs the model (`recall.evaluation.config.BACKENDS`): `hf`
(transformers; the default, on the CPU or a GPU) or, on a CUDA GPU with the package installed, `vllm`
or `lmdeploy`. Those two only generate: every task must be in mode gen, and there is no `nll` (absent
from metrics.json, null in examples/). A backend that cannot run here fails before any work starts.
vllm and lmdeploy were not run on this project's machine (no GPU).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from recall.atomic import MARKER, atomic_dir, atomic_file, check_output, write_json
from recall.data import Example, rendering
from recall.errors import RecallError
from recall.evaluation.config import (
    BACKENDS,
    BATCH_SIZE,
    DEFAULT_BACKEND,
    DatasetSpec,
    ModelSpec,
    dataset_specs,
    model_abbr,
    render_config,
    reply_length,
    write_dataset,
)
from recall.evaluation.results import read_results, task_outcome
from recall.evaluation.runner import OpenCompass, last_error, run_opencompass
from recall.tasks.base import Task
from recall.tasks.formats import FORMATS
from recall.tasks.registry import get_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MODES = ("ppl", "gen")
# Each format's own mode: label and letter tasks are scored by likelihood unless asked otherwise.
DEFAULT_MODES = {name: cls.mode for name, cls in FORMATS.items()}

# Config fields that bound a model's sequence length, by architecture family.
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "seq_length")


def model_info(model: Path) -> tuple[PreTrainedTokenizerBase, int]:
    """(tokenizer, context length) of a model folder, checked.

    Reads the config and tokenizer only, so a wrong path fails in a second rather than after
    OpenCompass has started. The context is always given to OpenCompass, which would otherwise read the
    config again itself, with remote code enabled.
    """
    from transformers import AutoConfig, AutoTokenizer

    from recall.models import trusted

    if not (model / "config.json").is_file():
        raise RecallError(f"{model} is not a model folder (no config.json); give a Hugging Face model folder")
    trust_remote_code = trusted(model)  # refuses a folder with code before anything is loaded
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many types for a bad folder; all mean the same here
        raise RecallError(f"cannot load the config and tokenizer of {model}: {type(err).__name__}: {err}") from None
    text_config = config.get_text_config()
    context = next((getattr(text_config, f) for f in _CONTEXT_FIELDS if getattr(text_config, f, None)), None)
    if context is None:
        raise RecallError(
            f"{model / 'config.json'} states no context length ({', '.join(_CONTEXT_FIELDS)}); add the model's "
            "max_position_embeddings to it"
        )
    return tokenizer, context


def prompt_budget(model: Path, context: int, reply_tokens: int) -> int:
    """How many prompt tokens fit beside a generated reply."""
    if context <= reply_tokens:
        raise RecallError(
            f"{model} has a context of {context} tokens, too short for replies of up to {reply_tokens}; "
            "lower --max-new-tokens"
        )
    return context - reply_tokens


def resolve_tasks(names: Sequence[str], data_dir: Path | None = None) -> list[Task]:
    if not names:
        raise RecallError("no tasks given; name at least one (see `recall tasks list`)")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise RecallError(f"task(s) {', '.join(duplicates)} given more than once; name each task once")
    return [get_task(name, data_dir) for name in names]


def resolve_modes(modes: Mapping[str, str] | None) -> dict[str, str]:
    """Every task format's mode: `DEFAULT_MODES`, overridden by `modes`."""
    resolved = dict(DEFAULT_MODES)
    for fmt, mode in (modes or {}).items():
        if fmt not in resolved:
            raise RecallError(f"unknown task format {fmt!r} in the modes; the formats are {', '.join(FORMATS)}")
        if mode not in MODES:
            raise RecallError(f"mode {mode!r} for format {fmt} is not one of {', '.join(MODES)}")
        if mode == "ppl" and not FORMATS[fmt].ranked:
            raise RecallError(
                f"format {fmt} cannot be scored by likelihood (ppl): its answers are free text, not a fixed set "
                f"of choices; use {fmt}=gen"
            )
        resolved[fmt] = mode
    return resolved


def check_backend(backend: str, ppl: Mapping[str, str], environment: bool = True) -> None:
    """`backend` is known and can score the tasks to be ranked by likelihood (`ppl`: task -> its
    format); with `environment`, also that its package is installed and the GPU it needs is visible.
    Reads no model."""
    if backend not in BACKENDS:
        raise RecallError(f"unknown evaluation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    spec = BACKENDS[backend]
    if ppl and not spec.likelihood:
        formats = sorted(set(ppl.values()))
        raise RecallError(
            f"evaluation backend {backend} only generates (it scores no likelihoods), so it cannot rank the "
            f"choices of {', '.join(f'{t} ({f})' for t, f in ppl.items())} in mode ppl; set mode gen for "
            f"{', '.join(formats)} (params.yaml: evaluate.mode: {{{', '.join(f + ': gen' for f in formats)}}}; "
            f"recall evaluate: {' '.join('--mode ' + f + '=gen' for f in formats)}), or use backend hf"
        )
    if not environment:
        return
    if spec.package and importlib.util.find_spec(spec.package) is None:
        raise RecallError(
            f"evaluation backend {backend} needs the {spec.package} package, which is not installed: "
            f"pip install {spec.package} on a machine with a CUDA GPU, or use backend hf"
        )
    if spec.gpu_only:
        import torch

        if not torch.cuda.is_available():
            raise RecallError(
                f"evaluation backend {backend} runs on a CUDA GPU and none is visible here; "
                "run on a machine with one, or use backend hf"
            )


def write_examples(folder: Path, records: Mapping[str, Sequence[dict]]) -> None:
    """examples/<task>.jsonl for every task, the folder replaced as a whole."""
    with atomic_dir(folder) as tmp:
        for task, lines in records.items():
            with (tmp / f"{task}.jsonl").open("w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def evaluate(
    model: str | os.PathLike,
    tasks: Sequence[str],
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    limit: int | Mapping[str, int | None] | None = None,
    batch_size: int = BATCH_SIZE,
    max_new_tokens: int | None = None,
    modes: Mapping[str, str] | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    backend: str = DEFAULT_BACKEND,
) -> dict[str, dict[str, float]]:
    """Score `model` on the test split of each task (first `limit` examples, or limit[task]) with OpenCompass.

    `modes` maps a task format to "ppl" (choices ranked by likelihood) or "gen" (greedy replies); by
    default `DEFAULT_MODES`. `batch_size` is prompts per forward pass (when scoring likelihoods, each
    prompt runs once for all its candidates). `max_new_tokens` bounds generated replies;
    `threads` sets the CPU threads of OpenCompass's process. `backend`: a key of `BACKENDS`; vllm
    and lmdeploy need a CUDA GPU and their package, run tasks in mode gen only and give no `nll`.

    Returns and writes `out/metrics.json`, after `out/examples/`. Raises RecallError on bad input
    before OpenCompass runs (its process, started first to import meanwhile, is stopped unused), and
    naming the task and log file when any task fails; metrics.json and
    examples/ then do not exist. Predictions OpenCompass already made in `out/` for the very same model
    files, examples, mode and reply length are reused, so a killed run resumes; scores are always
    recomputed. An existing `out` that recall did not write is refused unless `overwrite`.
    """
    model, out = Path(model).resolve(), Path(out).resolve()
    check_settings(batch_size, max_new_tokens, threads)
    check_output(out, overwrite)
    # OpenCompass's process imports (seconds) while the inputs are checked and written; stopped on bad input.
    with OpenCompass(threads) as child:
        inputs = prepare(model, tasks, data_dir, limit, max_new_tokens, modes, backend)
        datasets = write_inputs(inputs, out)
        spec, run = write_config(inputs, out, datasets, batch_size)
        started = time.monotonic()
        metrics, records = score(inputs, out, spec, datasets, threads, run, child)
    write_examples(out / "examples", records)
    write_json(out / "evaluation.json", run)
    write_json(out / "metrics.json", metrics)
    log.info("evaluated in %.0f s: %s", time.monotonic() - started, metrics)
    return metrics


def check_settings(batch_size: int, max_new_tokens: int | None, threads: int | None) -> None:
    if batch_size < 1:
        raise RecallError(f"--batch-size must be at least 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise RecallError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if threads is not None and threads < 1:
        raise RecallError(f"--threads must be at least 1, got {threads}")


@dataclass(frozen=True)
class Inputs:
    """An evaluation's checked inputs: what runs, on which examples, in which mode."""

    model: Path
    backend: str
    tasks: list[Task]
    mode_of: dict[str, str]  # task format -> "ppl" | "gen"
    reply_tokens: dict[str, int]  # task name -> the longest reply generated
    tokenizer: PreTrainedTokenizerBase
    max_seq_len: int  # prompt tokens that fit beside the longest reply
    examples: dict[str, list[Example]]  # task name -> its test examples


def prepare(
    model: Path,
    tasks: Sequence[str],
    data_dir: str | os.PathLike | None,
    limit: int | Mapping[str, int | None] | None,
    max_new_tokens: int | None,
    modes: Mapping[str, str] | None,
    backend: str,
) -> Inputs:
    """Everything that can be wrong with the tasks, modes, backend and model, checked before anything
    is written; the test examples loaded."""
    data_dir = Path(data_dir) if data_dir is not None else None
    task_list = resolve_tasks(tasks, data_dir)
    mode_of = resolve_modes(modes)
    check_backend(backend, {t.name: t.format for t in task_list if mode_of[t.format] == "ppl"})
    replies = {t.name: reply_length(t.format, max_new_tokens) for t in task_list}
    generated = [replies[t.name] for t in task_list if mode_of[t.format] == "gen"]
    tokenizer, context = model_info(model)
    max_seq_len = prompt_budget(model, context, max(generated, default=0))
    limits = limit if isinstance(limit, Mapping) else {t.name: limit for t in task_list}
    examples = {t.name: t.load("test", data_dir, limits.get(t.name)) for t in task_list}
    return Inputs(model, backend, task_list, mode_of, replies, tokenizer, max_seq_len, examples)


def write_inputs(inputs: Inputs, out: Path) -> dict[str, list[DatasetSpec]]:
    """Claim `out`, drop any earlier result from it, and write each task's test examples as an
    OpenCompass dataset; returns each task's dataset specs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()  # recall's from here on: a rerun may resume in it and replace it
    # Whatever happens next, an older metrics.json or examples/ must not pass for this run's result.
    (out / "metrics.json").unlink(missing_ok=True)
    (out / "evaluation.json").unlink(missing_ok=True)
    shutil.rmtree(out / "examples", ignore_errors=True)
    likelihood = BACKENDS[inputs.backend].likelihood
    datasets: dict[str, list[DatasetSpec]] = {}
    for task in inputs.tasks:
        path = out / "data" / f"{task.name}.jsonl"
        write_dataset(inputs.examples[task.name], inputs.tokenizer, path)
        mode = inputs.mode_of[task.format]
        definition = task.spec.as_dict()
        reply_tokens = inputs.reply_tokens[task.name]
        datasets[task.name] = dataset_specs(task.name, mode, path, reply_tokens, definition, likelihood)
    return datasets


def write_config(
    inputs: Inputs, out: Path, datasets: Mapping[str, list[DatasetSpec]], batch_size: int
) -> tuple[ModelSpec, dict]:
    """out/opencompass_config.py for the model on this machine's device; returns the model's spec and
    the run's description (evaluation.json)."""
    from recall.models import (  # torch, only once there is work to do
        default_device,
        default_dtype,
        remote_code_record,
        trusted,
    )

    model, backend = inputs.model, inputs.backend
    device = default_device()
    gpu, dtype = device == "cuda", default_dtype(device)
    remote_code = trusted(model)
    spec = ModelSpec(
        model, model_abbr(model, backend), batch_size, inputs.max_seq_len, gpu, dtype, backend, remote_code
    )
    with atomic_file(out / "opencompass_config.py") as fh:
        fh.write(render_config(spec, [d for specs in datasets.values() for d in specs]))
    run = {
        "model": str(model),
        "rendering": rendering(inputs.tokenizer),
        "modes": {t.name: inputs.mode_of[t.format] for t in inputs.tasks},
        "backend": backend,
        "device": "cuda" if gpu else "cpu",
        "dtype": dtype,
        **remote_code_record(),
    }
    return spec, run


def score(
    inputs: Inputs,
    out: Path,
    spec: ModelSpec,
    datasets: Mapping[str, list[DatasetSpec]],
    threads: int | None,
    run: Mapping,
    child: OpenCompass | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict]]]:
    """Run OpenCompass on the written config (in `child`, if already started) and score its results:
    each task's metrics and its per-example records. Raises RecallError naming the task and log file
    when any task fails."""
    everything = [d for specs in datasets.values() for d in specs]
    work_dir, log_path = out / "opencompass", out / "opencompass.log"
    shutil.rmtree(work_dir / "results", ignore_errors=True)  # scores always come from this run
    examples = inputs.examples
    log.info(
        "evaluating %s (%s prompts) on %s (%s examples; %s) with OpenCompass (%s) on %s in %s; log: %s",
        inputs.model,
        run["rendering"],
        ", ".join(examples),
        sum(map(len, examples.values())),
        ", ".join(f"{t} {m}" for t, m in run["modes"].items()),
        spec.backend,
        "GPU" if spec.gpu else "CPU",
        spec.dtype,
        log_path,
    )
    status = run_opencompass(out / "opencompass_config.py", work_dir, log_path, threads, started=child)
    failure = f"OpenCompass exited with status {status}: {last_error(log_path)}" if status else None
    results = read_results(work_dir, spec.abbr, everything, log_path, failure)
    if failure:  # every result present yet the run crashed (e.g. in the summary): do not trust it
        raise RecallError(f"{failure}; see the log {log_path}")
    where = f"see {work_dir / 'results'} and {log_path}"
    metrics, records = {}, {}
    for task in inputs.tasks:
        metrics[task.name], records[task.name] = task_outcome(
            task, datasets[task.name], results, len(examples[task.name]), where
        )
    return metrics, records
