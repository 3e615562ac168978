"""LoRA fine-tuning of a causal LM on one task: files in, an ordinary HF model folder out.

OUT holds the LoRA-merged model (safetensors, config, tokenizer, generation config), the adapter in
OUT/adapter/ and OUT/train_metrics.json. Every input is checked before any weights are loaded, and
OUT appears only when complete. The base may itself be a fine-tuned or merged model (sequential
fine-tuning), a LoRA adapter folder or a .gguf file.

The loop is a plain torch loop: each example is the prompt followed by the answer and EOS, rendered
exactly as `recall.data.render` writes it (a user and an assistant turn of the model's chat template,
or plain text for a model without one; train_metrics.json records which); the loss covers the answer
tokens only.

Every `checkpoint_every` steps the training state (LoRA weights, optimizer, schedule, RNG, log so far)
is saved atomically to a hidden sibling of OUT, `.OUT.checkpoint/state.pt` (not inside OUT: DVC deletes
a stage's outputs before rerunning it). A killed run rerun with the same base, data and settings
resumes there and ends with the same weights as an uninterrupted run; a checkpoint of any other run is
ignored. The checkpoint is deleted once OUT is written.

The device is chosen once: the GPU when one is visible, else the CPU. Without --dtype the model is
loaded in float32 on the CPU (as always) and in bfloat16 on a GPU that supports it (float32 on one
that does not); train_metrics.json records the device, the dtype and the number of processes. Under
`accelerate launch` (WORLD_SIZE > 1) the same command trains data-parallel: see
`recall.training.parallel`. A single process without a launcher runs exactly the loop it always has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import pickle
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from recall.atomic import atomic_dir, atomic_path, check_output, write_json
from recall.data import IGNORE_INDEX, Encoded, Example, encode, read_examples, rendering
from recall.errors import RecallError
from recall.hashing import sha256_file, sha256_tree
from recall.models import (
    ModelInfo,
    default_dtype,
    describe,
    load_causal_lm,
    load_tokenizer,
    remote_code_record,
    saveable,
)
from recall.tasks import get_task
from recall.training.config import DTYPES, FinetuneConfig  # noqa: F401  (DTYPES: recall finetune --dtype)
from recall.training.ewc import EWCPenalty, fisher_diagonal, trainable
from recall.training.memory import large_pass
from recall.training.parallel import Processes

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
DEFAULTS = FinetuneConfig()


def load_examples(spec: str, data_dir: Path | None, limit: int | None = None) -> list[Example]:
    """Training examples from a task name (its train split) or a JSONL file of prompt/response lines."""
    path = Path(spec)
    if path.suffix == ".jsonl" or path.is_file():
        examples = read_examples(path)[:limit]
        bad = next((i for i, e in enumerate(examples, 1) if e.prompt is None or not e.answer), None)
        if bad is not None:
            raise RecallError(f"{path}: record {bad} needs both 'prompt' and a non-empty 'response' to train on")
        return examples
    return get_task(spec, data_dir).load("train", data_dir, limit)


def encode_examples(
    tokenizer, examples: list[Example], max_length: int, what: str, setting: str = "--max-length"
) -> list[Encoded]:
    """Every example encoded to learn its answer; fail, naming the longest and the `setting` to raise, if
    a prompt leaves no room."""
    encoded = [encode(tokenizer, example, max_length) for example in examples]
    if too_long := [(e.prompt_tokens, i) for i, e in enumerate(encoded) if e.prompt_tokens >= max_length]:
        longest, index = max(too_long)
        raise RecallError(
            f"{len(too_long)} of {len(examples)} {what} prompts do not fit {setting} {max_length} "
            f"(longest: example {index}, {longest} tokens); raise {setting} above {longest} or drop those examples"
        )
    return encoded


def check_prompts_fit(base: str | Path, tasks: list[str], data_dir: Path, config: FinetuneConfig, setting: str) -> None:
    """Fail now if any task's training prompts will not fit `config.max_length`: a sequence learns its
    tasks one by one, and a too-long prompt of the last task would otherwise stop it hours in."""
    tokenizer = load_tokenizer(describe(base))
    for task in tasks:
        examples = load_examples(task, data_dir, config.limit)
        encode_examples(tokenizer, examples, config.max_length, f"{task} training", setting)


def collate(items: list[Encoded], pad_id: int) -> Batch:
    """Right-pad to the longest item; padding is masked out of attention and loss."""
    width = max(len(it.input_ids) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it.input_ids)
        ids[row, :n] = torch.tensor(it.input_ids)
        labels[row, :n] = torch.tensor(it.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def total_steps(n_examples: int, config: FinetuneConfig) -> int:
    return config.max_steps or max(1, math.ceil(config.epochs * math.ceil(n_examples / config.batch_size)))


def iterate_batches(encoded: list[Encoded], batch_size: int, steps: int, seed: int, pad_id: int) -> Iterator[Batch]:
    """`steps` batches; each epoch is a fresh seeded shuffle (the last batch of an epoch may be short)."""
    rng = random.Random(seed)
    produced = 0
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            if produced == steps:
                return
            yield collate([encoded[i] for i in order[start : start + batch_size]], pad_id)
            produced += 1


def save_adapter(model, folder: Path) -> None:
    """adapter_config.json + adapter_model.safetensors. peft lists the target modules it resolved from a
    set, whose order changes with each process's string hashing: sorted, equal runs write equal files."""
    model.save_pretrained(folder)
    config = folder / "adapter_config.json"
    record = json.loads(config.read_text())
    if isinstance(record.get("target_modules"), list):
        record["target_modules"] = sorted(record["target_modules"])
        config.write_text(json.dumps(record, indent=2, sort_keys=True))


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


@dataclass
class TrainLog:
    steps: list[dict] = dataclasses.field(default_factory=list)
    train_tokens: int = 0  # non-padding tokens processed
    answer_tokens: int = 0  # tokens the loss covered
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Checkpoint:
    """A run's training state in `folder`/state.pt, tagged with the run's fingerprint, saved every
    `every` steps (0: never)."""

    folder: Path
    fingerprint: str
    every: int

    @property
    def file(self) -> Path:
        return self.folder / "state.pt"

    def load(self) -> dict | None:
        """The saved state, if there is one and it belongs to this run. A file that is no weights-only
        training state (corrupt, or planted: unpickling it would run code) is set aside and the run starts over."""
        if not self.file.is_file():
            return None
        try:
            state = torch.load(self.file, map_location="cpu", weights_only=True)
            fingerprint = state["fingerprint"]
        except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError) as err:
            aside = self.folder.with_name(f"{self.folder.name}-rejected-state.pt")
            with contextlib.suppress(FileNotFoundError):  # another process of the run set it aside first
                self.file.replace(aside)
            log.warning(
                "checkpoint %s is not a weights-only training state (%s: %s); set it aside as %s and starting over",
                self.file,
                type(err).__name__,
                str(err).split("\n")[0][:200],
                aside,
            )
            return None
        if fingerprint != self.fingerprint:
            log.warning(
                "ignoring stale checkpoint %s: it is from another run (base, data or settings differ); starting over",
                self.folder,
            )
            return None
        return state

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        record: TrainLog,
        processes: Processes | None = None,
    ) -> None:
        """Called by every process (it gathers their RNG states); only the main one writes."""
        processes = processes or Processes.alone()
        rng = processes.gather(processes.rng_state())
        if not processes.main:
            return
        state = {
            "fingerprint": self.fingerprint,
            "step": step,
            "model": {name: p.detach().cpu() for name, p in trainable(model).items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "rng": rng[0],
            "log": dataclasses.asdict(record),
        }
        if processes.world > 1:  # each process's own, so that each one's dropout goes on where it was
            state["rng_ranks"] = rng
        # A kill mid-save leaves the previous state.pt intact; its temp file dies with the folder.
        with atomic_path(self.file) as tmp:
            torch.save(state, tmp)

    @staticmethod
    def restore(
        state: dict,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        processes: Processes | None = None,
    ) -> tuple[int, TrainLog]:
        """Put a saved state back into freshly built ones; returns the step it was saved at and the log."""
        processes = processes or Processes.alone()
        params = trainable(model)
        with torch.no_grad():
            for name, value in state["model"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        # dropout continues as if never interrupted
        processes.set_rng_state(state["rng_ranks"][processes.rank] if "rng_ranks" in state else state["rng"])
        return state["step"], TrainLog(**state["log"])

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def checkpoint_folder(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.checkpoint"


def run_fingerprint(
    info: ModelInfo,
    task: str,
    data_dir: Path | None,
    config: FinetuneConfig,
    encoded: list[Encoded],
    processes: int = 1,
) -> str:
    """What a checkpoint must match to be resumed: the base (resolved path and content hash: a rerun
    upstream stage that changes its bytes starts the fine-tune over, a `dvc checkout` that restores
    the same bytes with new file times does not), the task, the tokenised examples, every setting but
    `checkpoint_every`, which does not change the result, and (when more than one) the number of
    data-parallel processes, whose RNG states it holds. Hashing costs ~1 s per GB, once per run."""
    settings = dataclasses.asdict(config)
    del settings["checkpoint_every"]
    paths = [info.path] + ([info.base.path] if info.base else [])
    described = {
        "base": {str(p.resolve()): sha256_file(p) if p.is_file() else sha256_tree(p) for p in paths},
        "task": task,
        "data_dir": str(data_dir.resolve()) if data_dir else None,
        "config": settings,
    }
    if processes > 1:  # one process's fingerprint stays what it always was
        described["processes"] = processes
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for e in encoded:
        digest.update(f"{e.input_ids}{e.labels}".encode())
    return digest.hexdigest()


# Padded tokens per forward pass. A larger batch runs as micro-batches whose gradients add up to the
# batch's (gradient accumulation): four RACE articles of ~1400 tokens at once needed 24 GB.
FORWARD_TOKENS = 4096


def micro_batches(batch: Batch, max_tokens: int) -> list[Batch]:
    """`batch` split by rows into micro-batches of at most `max_tokens` padded tokens (at least one row
    each), each cut to its own longest row; a batch that fits is returned whole."""
    rows, width = batch["input_ids"].shape
    per = max(1, max_tokens // width)
    if per >= rows:
        return [batch]
    parts = [{k: v[i : i + per] for k, v in batch.items()} for i in range(0, rows, per)]
    return [{k: v[:, : int(part["attention_mask"].sum(1).max())] for k, v in part.items()} for part in parts]


def loss_tokens(batch: Batch) -> int:
    """The tokens a causal LM's loss averages over: labels are shifted by one position."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def train_loop(
    model: torch.nn.Module,
    batches: Iterator[Batch],
    steps: int,
    lr: float,
    penalty: Callable[[], torch.Tensor] | None = None,
    desc: str = "finetune",
    checkpoint: Checkpoint | None = None,
    resume: dict | None = None,
    processes: Processes | None = None,
) -> TrainLog:
    """AdamW with linear decay to 0 and gradient clipping at 1.0; a progress bar shows loss and tokens/s.

    With `checkpoint` the state is saved every `checkpoint.every` steps; `resume`, a state that
    `Checkpoint.load` returned, continues that run from where it was saved (`batches` are still the
    whole run's: those already trained on are skipped). With `processes` of several, each trains on
    its shard of every batch and the gradients are summed over them (`recall.training.parallel`);
    the log (tokens, each step's loss) is the whole batch's in every process."""
    processes = processes or Processes.alone()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / steps)
    device = next(model.parameters()).device
    shape = (model.config.num_hidden_layers, model.config.num_attention_heads)  # a pass's memory (large_pass)
    done, record = Checkpoint.restore(resume, model, optimizer, schedule, processes) if resume else (0, TrainLog())
    batches = itertools.islice(batches, done, None)
    model.train()
    start = time.perf_counter() - record.seconds  # seconds accumulate across a resume
    quiet = {} if processes.main else {"disable": True}  # TQDM_DISABLE still rules the main process's bar
    with tqdm(total=steps, initial=done, desc=desc, unit="step", **quiet) as bar:
        for step, batch in enumerate(batches, done + 1):
            record.train_tokens += int(batch["attention_mask"].sum())
            record.answer_tokens += int((batch["labels"] != IGNORE_INDEX).sum())
            loss, total = 0.0, loss_tokens(batch)
            shard = processes.shard(batch)  # the batch itself when alone
            for part in micro_batches(shard, FORWARD_TOKENS) if shard is not None else []:
                if share := loss_tokens(part) / total:  # each part's mean loss, weighted by the batch's tokens
                    with large_pass(*part["input_ids"].shape, *shape):
                        part_loss = model(**to_device(part, device)).loss * share
                        part_loss.backward()
                    loss += part_loss.item()
            if processes.world > 1:
                processes.sum_gradients(params)
                loss = processes.sum(loss)
            extra = penalty() if penalty else None
            if extra is not None:
                extra.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            entry = {"step": step, "loss": round(loss, 6)}
            if extra is not None:
                entry["ewc_penalty"] = round(extra.item(), 6)
            record.steps.append(entry)
            record.seconds = time.perf_counter() - start
            if checkpoint and checkpoint.every and step % checkpoint.every == 0 and step < steps:
                checkpoint.save(step, model, optimizer, schedule, record, processes)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", tok_s=f"{record.tokens_per_s:.0f}")
            bar.update()
    return record


def add_lora(model: torch.nn.Module, config: FinetuneConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def finetune(
    base: str | Path,
    task: str,
    out: str | Path,
    data_dir: str | Path | None = None,
    config: FinetuneConfig = DEFAULTS,
    overwrite: bool = False,
) -> Path:
    """Fine-tune `base` with LoRA on `task` (a task name or a prompt/response JSONL) into `out`; an
    existing `out` that recall did not write is refused unless `overwrite`. Under a launcher
    (WORLD_SIZE > 1) this process is one of several data-parallel ones and only the first writes."""
    run = prepare(base, task, out, data_dir, config, overwrite)
    model, penalty = build_model(run)
    record = train(run, model, penalty)
    save(run, model, record, penalty)
    return Path(out)


@dataclass(frozen=True)
class Run:
    """A fine-tune's checked inputs, settled before any weights are loaded."""

    base: str | Path
    task: str
    out: str | Path
    overwrite: bool
    data_dir: Path | None
    config: FinetuneConfig  # its dtype settled: the fingerprint and train_metrics.json hold the one trained in
    processes: Processes
    info: ModelInfo
    tokenizer: Any
    encoded: list[Encoded]  # the task's training examples
    previous_encoded: list[Encoded]  # EWC: the sample of the previous task the Fisher is estimated on
    steps: int
    checkpoint: Checkpoint
    resume: dict | None  # the checkpoint's state, when an interrupted run goes on

    def say(self, *args) -> None:
        """Log at info level in the main process, at debug level in the others."""
        (log.info if self.processes.main else log.debug)(*args)


def prepare(
    base: str | Path, task: str, out: str | Path, data_dir: str | Path | None, config: FinetuneConfig, overwrite: bool
) -> Run:
    """Everything that can be wrong with the inputs, checked before any weights are loaded: settings,
    output, examples (tokenised: every prompt must fit), and the checkpoint to resume from, if any."""
    config.validate()
    check_output(out, overwrite)
    processes = Processes.from_environment()
    # The dtype is settled here, so the fingerprint and train_metrics.json hold the one trained in.
    config = dataclasses.replace(config, dtype=config.dtype or default_dtype(processes.device))
    data_dir = Path(data_dir) if data_dir is not None else None
    info = describe(base)
    examples = load_examples(task, data_dir, config.limit)
    previous = load_examples(config.ewc_from, data_dir) if config.ewc_from else []
    tokenizer = load_tokenizer(info)
    encoded = encode_examples(tokenizer, examples, config.max_length, f"{task} training")
    if previous:
        previous = random.Random(config.seed).sample(previous, min(config.ewc_samples, len(previous)))
    previous_encoded = encode_examples(tokenizer, previous, config.max_length, f"{config.ewc_from} (EWC)")
    steps = total_steps(len(encoded), config)
    checkpoint = Checkpoint(
        checkpoint_folder(out),
        run_fingerprint(info, task, data_dir, config, encoded + previous_encoded, processes.world),
        config.checkpoint_every,
    )
    resume = checkpoint.load()
    return Run(
        base,
        task,
        out,
        overwrite,
        data_dir,
        config,
        processes,
        info,
        tokenizer,
        encoded,
        previous_encoded,
        steps,
        checkpoint,
        resume,
    )


def build_model(run: Run) -> tuple[torch.nn.Module, EWCPenalty | None]:
    """The base with fresh LoRA adapters, seeded, on this process's device; with EWC, the penalty of the
    Fisher estimated on the previous task's sample."""
    from transformers import set_seed

    config, processes = run.config, run.processes
    set_seed(config.seed)  # LoRA init, dropout and the data order are all reproducible
    model = add_lora(load_causal_lm(run.info, getattr(torch, config.dtype), str(processes.device)), config)
    device = next(model.parameters()).device
    if processes.world > 1:
        processes.broadcast([p for p in model.parameters() if p.requires_grad])  # equal from the start
        if processes.rank:  # process 0 goes on with the single-process stream; the others draw their own dropout
            torch.manual_seed(config.seed + processes.rank)
    penalty = None
    if run.previous_encoded:
        run.say("estimating the Fisher on %d examples of %s", len(run.previous_encoded), config.ewc_from)
        pad_id = run.tokenizer.pad_token_id
        fisher = fisher_diagonal(model, (to_device(collate([e], pad_id), device) for e in run.previous_encoded))
        processes.broadcast(list(fisher.values()))  # one Fisher for all, should GPU kernels differ in the last bit
        penalty = EWCPenalty(model, fisher, config.ewc_lambda)
    return model, penalty


def train(run: Run, model: torch.nn.Module, penalty: EWCPenalty | None) -> TrainLog:
    """The training loop over the run's batches, from its checkpoint when it resumes."""
    config, processes, steps = run.config, run.processes, run.steps
    run.say(
        "fine-tuning %s on %s: %d examples, %d steps of batch %d (%s, %s)",
        run.base,
        run.task,
        len(run.encoded),
        steps,
        config.batch_size,
        next(model.parameters()).device,
        config.dtype,
    )
    if processes.world > 1:
        run.say("%d data-parallel processes, each taking its share of every batch", processes.world)
        if config.batch_size < processes.world and processes.main:
            log.warning(
                "--batch-size %d is smaller than the %d processes: some have nothing to do",
                config.batch_size,
                processes.world,
            )
    if run.resume:
        folder = run.checkpoint.folder
        run.say("resuming %s from step %d of %d (checkpoint %s)", run.task, run.resume["step"], steps, folder)
    # The RNG is restored (on resume) only now: building the model and LoRA init consumed it.
    return train_loop(
        model,
        iterate_batches(run.encoded, config.batch_size, steps, config.seed, run.tokenizer.pad_token_id),
        steps,
        config.lr,
        penalty,
        desc=f"finetune {run.task}",
        checkpoint=run.checkpoint,
        resume=run.resume,
        processes=processes,
    )


def save(run: Run, model: torch.nn.Module, record: TrainLog, penalty: EWCPenalty | None) -> None:
    """OUT, written whole by the main process: the LoRA-merged model, the adapter, the tokenizer and
    train_metrics.json; the checkpoint then goes. Every process returns once OUT exists."""
    config, processes = run.config, run.processes
    metrics = {
        "base": str(run.base),
        "task": run.task,
        "data_dir": str(run.data_dir) if run.data_dir else None,
        "examples": len(run.encoded),
        "steps": record.steps,
        "final_loss": record.steps[-1]["loss"],
        "train_tokens": record.train_tokens,
        "answer_tokens": record.answer_tokens,
        "train_seconds": round(record.seconds, 3),
        "tokens_per_s": round(record.tokens_per_s, 2),
        "device": str(next(model.parameters()).device),
        "dtype": config.dtype,
        "processes": processes.world,
        "rendering": rendering(run.tokenizer),
        "ewc": {"from": config.ewc_from, "samples": len(run.previous_encoded), **penalty.stats()} if penalty else None,
        "config": dataclasses.asdict(config),
        **remote_code_record(),
    }
    if processes.main:
        with atomic_dir(run.out, run.overwrite) as tmp:
            save_adapter(model, tmp / "adapter")
            merged = saveable(model.merge_and_unload())
            merged.save_pretrained(tmp)
            run.tokenizer.save_pretrained(tmp)
            write_json(tmp / "train_metrics.json", metrics)
        run.checkpoint.remove()
        log.info("wrote %s (final loss %.4f, %.0f tokens/s)", run.out, metrics["final_loss"], record.tokens_per_s)
    processes.wait()  # every process returns once OUT exists
