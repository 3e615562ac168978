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

from recall.data import Record, chat_prompt, read_records, render
from recall.errors import RecallError
from recall.models import ModelInfo, load_causal_lm, load_tokenizer
from recall.weights.rows import softmax_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocktailSettings:
    examples: int = 5  # per --data file (LM-Cocktail uses a handful of examples per task)
    temperature: float = 5.0  # the paper's default
    max_length: int = 512

    def validate(self) -> None:
        for name in ("examples", "max_length"):
            if getattr(self, name) < 1:
                raise RecallError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise RecallError(f"temperature must be > 0, got {self.temperature}")


def example_records(paths: Sequence[str | os.PathLike], n: int) -> list[Record]:
    """The first n records of each file (all files validated before any model is loaded)."""
    return [r for path in paths for r in read_records(path)[:n]]


def encode(tokenizer, record: Record, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of one record; labels are -100 on prompt tokens, which the loss ignores."""
    ids = tokenizer(render(tokenizer, record), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    if not ids:
        raise RecallError("an example renders to no tokens; remove empty records from --data")
    labels = list(ids)
    if record.prompt is not None and record.response:
        # A rendered prompt ends at a token boundary (the chat turn's end, a plain prompt's newline),
        # so its tokens are a prefix of the whole.
        n_prompt = len(tokenizer(chat_prompt(tokenizer, record.prompt), add_special_tokens=False)["input_ids"])
        if n_prompt < len(ids):
            labels[:n_prompt] = [-100] * n_prompt
    return torch.tensor([ids]), torch.tensor([labels])


def example_loss(model, input_ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean next-token loss over the labelled tokens of one example."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return float(model(input_ids=input_ids.to(device), labels=labels.to(device), use_cache=False).loss)


def model_loss(info: ModelInfo, records: list[Record], max_length: int) -> float:
    """A model's mean loss over the examples (LoRA adapters are applied to their base)."""
    tokenizer = load_tokenizer(info)
    encoded = [encode(tokenizer, r, max_length) for r in records]
    model = load_causal_lm(info)
    losses = [example_loss(model, ids, labels) for ids, labels in encoded]
    del model
    return float(np.mean(losses))


def cocktail_weights(
    models: list[ModelInfo], data: Sequence[str | os.PathLike], settings: CocktailSettings
) -> tuple[np.ndarray, dict]:
    """Per-model weights (N,) = softmax(-loss / T), and their provenance for merge_weights.json."""
    settings.validate()
    if not data:
        raise RecallError("--method lm_cocktail needs --data: JSONL files of examples of the target task(s)")
    records = example_records(data, settings.examples)
    losses = np.array([model_loss(m, records, settings.max_length) for m in models])
    log.info("lm_cocktail losses: %s", ", ".join(f"{loss:.4f}" for loss in losses))
    weights = softmax_weights(-losses[None], settings.temperature)[0]
    detail = {"data": [str(d) for d in data], "n_examples": len(records), "losses": losses.tolist()}
    return weights, {"settings": asdict(settings), "cocktail": detail}
