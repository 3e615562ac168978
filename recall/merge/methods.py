"""Merge methods: each a small pure kernel over one tensor of every model, registered by name.

A kernel receives the N models' versions of one tensor (float32), their weights for this tensor's
layer group, and the base model's version when the method uses one; it returns the merged tensor.
Kernels never see files, so the streaming engine serves them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from recall.errors import RecallError

Kernel = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Method:
    name: str
    kernel: Kernel
    needs_base: bool = False
    layer_weights: bool = False  # weights differ per layer group (computed from representations)
    help: str = ""


METHODS: dict[str, Method] = {}


def register(name: str, *, needs_base: bool = False, layer_weights: bool = False, help: str = ""):
    def add(kernel: Kernel) -> Kernel:
        METHODS[name] = Method(name, kernel, needs_base, layer_weights, help)
        return kernel

    return add


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise RecallError(f"unknown merge method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def weighted_sum(tensors: list[torch.Tensor], weights: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """sum_q w_q theta_q, or theta_0 + sum_q w_q (theta_q - theta_0) in delta space when a base is given."""
    if base is None:
        out = tensors[0] * weights[0]
        for t, w in zip(tensors[1:], weights[1:]):
            out.add_(t, alpha=float(w))
        return out
    out = base.clone()
    for t, w in zip(tensors, weights):
        out.add_(t - base, alpha=float(w))
    return out


register("recall", layer_weights=True, help="RECALL: per-layer softmax of representation similarity")(weighted_sum)
register("average", help="weighted average, one weight per model (default uniform)")(weighted_sum)
