"""LM-Cocktail's merge weights (Xiao et al. 2023): softmax over models of -loss / T.

Each model's loss is measured on a few examples of the target task(s): the first `examples` records
of every --data file, so the weights are deterministic. The loss of a prompt/response record counts
only the response tokens (the prompt is the condition, as in LM-Cocktail's own code); a `text` record,
a prompt without a response, or a record whose response is truncated away counts every token. A
model's loss is the mean over examples of each example's mean token loss, so it does not depend on
batching or on how long each example is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from recall.data import Example, encode, read_examples
from recall.errors import RecallError
from recall.models import ModelInfo, load_causal_lm, load_tokenizer
from recall.settings import Settings, above, at_least, setting

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocktailSettings(Settings):
    examples: int = setting(5, at_least(1))  # per --data file (LM-Cocktail uses a handful of examples per task)
    temperature: float = setting(5.0, above(0))  # the paper's default
    max_length: int = setting(512, at_least(1))


def example_records(paths: Sequence[str | os.PathLike], n: int) -> list[Example]:
    """The first n records of each file (all files validated before any model is loaded)."""
    return [r for path in paths for r in read_examples(path)[:n]]


def labelled(tokenizer, record: Example, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of one record as a batch of one (`recall.data.encode`)."""
    encoded = encode(tokenizer, record, max_length)
    if not encoded.input_ids:
        raise RecallError("an example renders to no tokens; remove empty records from --data")
    return torch.tensor([encoded.input_ids]), torch.tensor([encoded.labels])


def example_loss(model, input_ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean next-token loss over the labelled tokens of one example."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return float(model(input_ids=input_ids.to(device), labels=labels.to(device), use_cache=False).loss)


def model_loss(info: ModelInfo, records: list[Example], max_length: int) -> float:
    """A model's mean loss over the examples (LoRA adapters are applied to their base)."""
    tokenizer = load_tokenizer(info)
    encoded = [labelled(tokenizer, r, max_length) for r in records]
    model = load_causal_lm(info)
    losses = [example_loss(model, ids, labels) for ids, labels in encoded]
    del model
    return float(np.mean(losses))


def cocktail_losses(
    models: list[ModelInfo], data: Sequence[str | os.PathLike], settings: CocktailSettings
) -> tuple[np.ndarray, dict]:
    """Each model's loss (N,) on the examples, and the provenance for merge_weights.json;
    `recall.merge.methods.resolve_weights` turns them into softmax(-loss / T)."""
    settings.validate()
    if not data:
        raise RecallError("--method lm_cocktail needs --data: JSONL files of examples of the target task(s)")
    records = example_records(data, settings.examples)
    losses = np.array([model_loss(m, records, settings.max_length) for m in models])
    log.info("lm_cocktail losses: %s", ", ".join(f"{loss:.4f}" for loss in losses))
    detail = {"data": [str(d) for d in data], "n_examples": len(records), "losses": losses.tolist()}
    return losses, {"settings": asdict(settings), "cocktail": detail}
