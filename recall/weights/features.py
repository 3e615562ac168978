"""Layer-wise representations: mean-pooled hidden states over non-padding tokens.

The output is a .npy file of shape (n_samples, L+1, hidden) in float32. Rows are written to disk as
each batch finishes, so the number of samples is bounded by disk, not memory. Batches are formed from
length-sorted samples, which wastes little compute on padding. The model runs on the GPU when one is
visible, in bfloat16 where it supports it (`recall.models.default_dtype`); on the CPU in float32.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from recall.atomic import atomic_path
from recall.data import encode, read_examples
from recall.errors import RecallError
from recall.models import ModelInfo, default_device, default_dtype, describe, load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)


def load_features(path: str | os.PathLike) -> np.ndarray:
    """Features written by `extract_features`, memory-mapped: (n_samples, L+1, hidden), checked finite."""
    features = np.load(path, mmap_mode="r")
    if not np.isfinite(features.sum(dtype=np.float64)):
        bad = int((~np.isfinite(features)).sum())
        raise RecallError(
            f"{path} holds {bad} NaN/Inf values: the model that produced these features is "
            "damaged (a diverged fine-tune?); re-extract them from a sound model"
        )
    return features


def pooled_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, L+1, hidden): each layer's hidden states averaged over the real tokens of each sample."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    pooled = [(h.float() * mask).sum(1) / mask.sum(1) for h in out.hidden_states]
    return torch.stack(pooled, dim=1)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def extract_features(
    model: str | os.PathLike | ModelInfo,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    device: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Write the representations of `data` (or of its rows `indices`) under `model` to `out` (.npy).
    `device`, `dtype`: `recall.models.default_device()` and `default_dtype(device)` when None."""
    info = model if isinstance(model, ModelInfo) else describe(model)
    records = read_examples(data)
    if indices is not None:
        bad = [i for i in indices if not 0 <= i < len(records)]
        if bad:
            raise RecallError(f"sample indices {bad[:5]} are outside {data} ({len(records)} records)")
        records = [records[i] for i in indices]
    tokenizer = load_tokenizer(info)
    encoded = [encode(tokenizer, r, max_length).input_ids for r in records]
    if empty := [i for i, ids in enumerate(encoded) if not ids]:
        raise RecallError(f"{data}: records {empty[:5]} render to no tokens; remove empty samples")
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    lm = load_causal_lm(info, getattr(torch, dtype), device)
    log.info("features of %s: %d samples on %s in %s", info.spec, len(encoded), device, dtype)
    write_features(lm, tokenizer, encoded, out, batch_size, desc=Path(info.spec).name)
    return Path(out)


def write_features(
    lm, tokenizer, encoded: list[list[int]], out: str | os.PathLike, batch_size: int, desc: str = ""
) -> None:
    """Run `lm` over token sequences in length-sorted batches; write each row to `out` as it is done."""
    config = lm.config
    shape = (len(encoded), config.num_hidden_layers + 1, config.hidden_size)
    device = next(lm.parameters()).device
    tokenizer.padding_side = "right"
    with atomic_path(out) as tmp:
        header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        offset, row_bytes = header.offset, shape[1] * shape[2] * 4
        del header  # only the .npy layout is needed; rows go to disk with pwrite, never held in memory
        fd = os.open(tmp, os.O_WRONLY)
        try:
            bar = tqdm(
                length_sorted_batches([len(ids) for ids in encoded], batch_size),
                desc=f"features {desc}",
                unit="batch",
                disable=None,
            )
            tokens, start = 0, time.perf_counter()
            with torch.inference_mode():
                for batch in bar:
                    padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
                    ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
                    pooled = pooled_hidden_states(lm, ids, mask).cpu().numpy()
                    for row, i in zip(pooled, batch):
                        os.pwrite(fd, row.tobytes(), offset + i * row_bytes)
                    tokens += int(mask.sum())
                    bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
        finally:
            os.close(fd)
    log.info("wrote features %s %s", out, shape)
