"""Diagonal Fisher information of a model on a few task examples, for Fisher merging (Matena & Raffel, 2022).

F = mean over examples of the squared gradient of the example's answer loss (the empirical Fisher,
per-example as in the paper). It is written as a safetensors folder whose tensor names are the model
checkpoint's own, so the streaming merge engine reads it beside the weights, one tensor at a time.
Tied parameters (an lm_head sharing the embedding) get the one shared parameter's Fisher.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from recall.atomic import atomic_dir, write_json
from recall.errors import RecallError
from recall.hashing import sha256_file
from recall.models import ModelInfo, load_causal_lm, load_tokenizer, safetensors_folder
from recall.safetensors_io import SafetensorsModel, same_tensor
from recall.settings import Settings, at_least, setting
from recall.training.ewc import fisher_diagonal
from recall.weights.cocktail import example_records, labelled

log = logging.getLogger(__name__)
FISHER_FILE = "fisher.safetensors"


@dataclass(frozen=True)
class FisherSettings(Settings):
    examples: int = setting(32, at_least(1))  # per model, the first records of its --data file
    max_length: int = setting(512, at_least(1))


def checkpoint_parameter(params: dict[str, torch.nn.Parameter], name: str) -> torch.nn.Parameter:
    """The parameter stored as checkpoint tensor `name` (checkpoints may drop or add a prefix)."""
    if name in params:
        return params[name]
    for pname, p in params.items():
        if same_tensor(pname, name):
            return p
    raise RecallError(f"checkpoint tensor {name} is not a parameter of the loaded model; is the checkpoint complete?")


def model_fisher(info: ModelInfo, data: str | os.PathLike, out: Path, settings: FisherSettings) -> Path:
    """Write `info`'s diagonal Fisher on the first examples of `data` to the folder `out` (atomically)."""
    records = example_records([data], settings.examples)
    tokenizer = load_tokenizer(info)
    batches = [dict(zip(("input_ids", "labels"), labelled(tokenizer, r, settings.max_length))) for r in records]
    model = load_causal_lm(info, device="cpu").requires_grad_(True)
    fisher = fisher_diagonal(model, batches)
    params = dict(model.named_parameters(remove_duplicate=False))
    by_param = {id(p): fisher[n] for n, p in model.named_parameters()}
    checkpoint = SafetensorsModel(safetensors_folder(info)).tensors
    tensors = {name: by_param[id(checkpoint_parameter(params, name))].contiguous() for name in checkpoint}
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / FISHER_FILE))
        write_json(
            tmp / "fisher.json",
            {
                "model": info.spec,
                "data": str(data),
                "data_sha256": sha256_file(Path(data)),
                "n_examples": len(records),
                "max_length": settings.max_length,
            },
        )
    log.info("Fisher of %s on %d examples of %s -> %s", info.spec, len(records), data, out)
    return out


def fisher_folders(
    models: Sequence[ModelInfo], data: Sequence[str | os.PathLike], settings: FisherSettings, workdir: Path
) -> list[Path]:
    """One Fisher folder per model, each on that model's own task data."""
    settings.validate()
    if len(data) != len(models):
        raise RecallError(f"--method fisher needs --data: one JSONL file per model ({len(models)}), got {len(data)}")
    example_records(data, settings.examples)  # every file checked before the first (slow) Fisher
    return [model_fisher(m, d, workdir / f"fisher-{i}", settings) for i, (m, d) in enumerate(zip(models, data))]
