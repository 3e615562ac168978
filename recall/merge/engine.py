"""The streaming merge engine: for each tensor, read it from every input, combine, write.

Inputs are copy-on-write mappings of the files, one tensor at a time, with the next tensor's pages
faulted in on a thread while this one merges: peak memory is about 2N x the largest tensor (plus the
kernel's output), never N x the model. The output folder is built in a temporary sibling and renamed
into place when complete.
"""

from __future__ import annotations

import logging
import mmap
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from recall.atomic import atomic_dir
from recall.errors import RecallError
from recall.layers import tensor_groups
from recall.merge.methods import Method, tensor_seed
from recall.merge.provenance import write_provenance
from recall.merge.sources import FullModel, open_source
from recall.models import ModelInfo, check_compatible, remote_code_record, safetensors_folder
from recall.safetensors_io import DTYPES, StreamingWriter
from recall.weights.rows import NEAR_UNIFORM, near_uniform, weight_spread

log = logging.getLogger(__name__)

# Small files that make the output a complete HF model folder.
AUX_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
)


@dataclass
class MergePlan:
    """Everything a merge needs; validated before any weight is read."""

    models: list[ModelInfo]
    method: Method
    weights: np.ndarray  # (n_layer_groups, n_models)
    base: ModelInfo | None = None
    params: dict = field(default_factory=dict)
    reference: int = -1  # whose config and tokenizer the output carries
    extra: dict = field(default_factory=dict)  # provenance for merge_weights.json (similarity, typical samples)
    fisher: list[Path] | None = (
        None  # methods that need it: each model's diagonal Fisher folder (recall.weights.fisher)
    )
    allow_tokenizer_mismatch: bool = False


def merge(plan: MergePlan, out: str | Path, max_shard_bytes: int = 2 << 30, overwrite: bool = False) -> Path:
    """Merge `plan.models` into the HF model folder `out`, with its provenance (`recall.merge.provenance`).
    An existing `out` that recall did not write is refused unless `overwrite`."""
    models, method = plan.models, plan.method
    params = method.resolve(plan.params)
    base_info = plan.base or next((m.base for m in models if m.kind == "lora"), None)
    if method.needs_base and base_info is None:
        raise RecallError(f"method {method.name} needs --base (the model the others were fine-tuned from)")
    check_compatible(models + ([plan.base] if plan.base else []), tokenizers=not plan.allow_tokenizer_mismatch)
    n_groups = models[0].num_layers + 1
    if plan.weights.shape != (n_groups, len(models)):
        raise RecallError(f"merge weights have shape {plan.weights.shape}, expected ({n_groups}, {len(models)})")

    bases: dict = {}
    sources = [open_source(m, bases) for m in models]
    base_src = open_source(base_info, bases) if base_info else None
    reference = plan.reference % len(models)  # an index into `models`, never into the base appended below
    ref_src = sources[reference]
    for info, src in zip(models, sources):
        if src.tensors.keys() != ref_src.tensors.keys():
            diff = sorted(set(src.tensors) ^ set(ref_src.tensors))
            raise RecallError(f"{info.spec} does not have the same tensors as {models[reference].spec}: {diff[:3]}")
        for name, ti in src.tensors.items():
            if ti.shape != ref_src.tensors[name].shape:
                raise RecallError(
                    f"{info.spec}: tensor {name} has shape {ti.shape}, expected {ref_src.tensors[name].shape}"
                )
    fishers = fisher_sources(plan, ref_src.tensors)
    groups = tensor_groups(models[0].config, ref_src.tensors)

    out = Path(out)
    needed = sum(info.nbytes for info in ref_src.tensors.values())
    with atomic_dir(out, overwrite, needed) as tmp:
        writer = StreamingWriter(tmp, ref_src.tensors, max_shard_bytes)
        weights = torch.tensor(plan.weights, dtype=torch.float32)
        inputs = sources + ([base_src] if base_src else []) + fishers
        labels = (
            [m.spec for m in models]
            + ([f"base {base_info.spec}"] if base_src else [])
            + ([f"Fisher {f}" for f in plan.fisher] if fishers else [])
        )
        names, kernel_params = list(ref_src.tensors), method.kernel_params(params)
        for name, tensors in tqdm(
            prefetched(inputs, names, labels),
            total=len(names),
            desc=f"merge ({method.name})",
            unit="tensor",
            disable=None,
        ):
            dtype = DTYPES[ref_src.tensors[name].dtype]
            if not dtype.is_floating_point:
                writer.write(name, tensors[reference])
                continue
            tensors = [t.float() for t in tensors]
            extra = {"fishers": [tensors.pop() for _ in fishers][::-1]} if fishers else {}  # inputs end with them
            base = tensors.pop() if base_src else None
            merged = method.kernel(tensors, weights[groups[name]], base, **tensor_params(kernel_params, name), **extra)
            merged = merged.to(dtype)
            if bad := nonfinite(merged):  # after the cast: a half-precision output can overflow
                raise RecallError(
                    f"the {method.name} merge produced {bad} NaN/Inf values in tensor {name} "
                    f"({dtype}) from finite inputs; check the method's parameters {params}"
                )
            writer.write(name, merged)
            del tensors, base, merged, extra
        writer.close()
        _copy_aux(safetensors_folder(models[reference]), tmp)
        record = {
            "method": method.name,
            "models": [m.spec for m in models],
            "base": base_info.spec if base_info else None,
            "params": params,
            **({"fisher": [str(f) for f in plan.fisher]} if fishers else {}),
            "layers": plan.weights.tolist(),
            **spread_record(method, plan.weights),
            "tensor_groups": groups,
            **plan.extra,
            **remote_code_record(),
        }
        write_provenance(tmp, record)
    log.info("merged %d models with %s into %s", len(models), method.name, out)
    return out


def spread_record(method: Method, weights: np.ndarray) -> dict:
    """For softmax weights (RECALL, LM-Cocktail): each layer group's spread, and whether every weight
    stays within NEAR_UNIFORM of 1/N, which makes the merge nearly the plain average (logged as a warning)."""
    if not method.source.softmax:
        return {}
    deviation = near_uniform(weights)
    if deviation is not None:
        log.warning(
            "%s's weights stay within %.2f of uniform (1/%d) in every layer (largest deviation %.3f): "
            "this merge is nearly the plain average; recall.calibrate: zscore (--calibrate zscore) or a "
            "lower temperature lets them leave it",
            method.name,
            NEAR_UNIFORM,
            weights.shape[1],
            deviation,
        )
    return {"spread": weight_spread(weights), "near_uniform": deviation}


def fisher_sources(plan: MergePlan, tensors: dict) -> list[FullModel]:
    """Readers of each model's Fisher folder when the method needs them, checked against the model's tensors."""
    if not plan.method.needs_fisher:
        return []
    if not plan.fisher or len(plan.fisher) != len(plan.models):
        raise RecallError(
            f"method {plan.method.name} needs one Fisher folder per model ({len(plan.models)}); "
            "compute them with recall.weights.fisher.fisher_folders (`recall merge --data`)"
        )
    sources = [FullModel(Path(f)) for f in plan.fisher]
    for folder, src in zip(plan.fisher, sources):
        for name, ti in tensors.items():
            if DTYPES[ti.dtype].is_floating_point and (name not in src.tensors or src.tensors[name].shape != ti.shape):
                raise RecallError(
                    f"Fisher folder {folder} has no tensor {name} of shape {ti.shape}; "
                    "it was computed for a different model"
                )
    return sources


def prefetched(sources: list, names: list[str], labels: list[str]) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """Yield (name, that tensor of every source; `labels` name the sources in errors), faulting the
    next tensor's pages in on a thread while this one is merged. Tensors are copy-on-write mappings of the files (see
    `SafetensorsFile.mapped`): no copy out of the page cache, resident only while referenced."""

    def read(k: int) -> list[torch.Tensor]:
        tensors = [s.read(names[k]) for s in sources]
        for t, label in zip(tensors, labels):
            # The page faults happen here, off the merging thread (torch releases the GIL). A float
            # tensor is summed whole, which faults its pages in and checks it for NaN/Inf in one pass.
            if t.is_floating_point():
                if bad := nonfinite(t):
                    raise RecallError(
                        f"{label}: tensor {names[k]} holds {bad} NaN/Inf values (of {t.numel()}); "
                        "the checkpoint is damaged or its training diverged, so nothing was merged"
                    )
            elif t.numel():
                t.reshape(-1).view(torch.uint8)[:: mmap.PAGESIZE].sum()
        return tensors

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(read, 0) if names else None
        for k, name in enumerate(names):
            current = future.result()
            if k + 1 < len(names):
                future = pool.submit(read, k + 1)
            yield name, current
            del current


def nonfinite(tensor: torch.Tensor) -> int:
    """How many NaN/Inf entries `tensor` holds, in one pass (a sum) when there are none."""
    if torch.isfinite(tensor.sum()):
        return 0
    return int((~torch.isfinite(tensor)).sum())  # the sum may also have overflowed on finite values


def tensor_params(params: dict, name: str) -> dict:
    """The kernel's parameters for tensor `name`: a random method's seed becomes this tensor's own seed."""
    return {**params, "seed": tensor_seed(params["seed"], name)} if "seed" in params else params


def _copy_aux(src: Path, dst: Path) -> None:
    for name in AUX_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
