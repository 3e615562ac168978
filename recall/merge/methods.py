"""Merge methods: a pure kernel (`recall.merge.kernels`) plus what the method needs, registered by name.

A method declares whether it needs a base model, where its per-model weights come from (its weight
source, `recall.weights.sources`: given by the user, RECALL's representation similarity, LM-Cocktail's
losses, each model's Fisher, LiNeS's depth), and which kernel parameters it takes. Parameters are
shared: `--density` means the same thing to every method that takes it, so each is defined once in
PARAMS with its check. A method's parameters and their defaults are its kernel's keyword-only
arguments and its weight source's (`Depth.reads` for LiNeS), read from their signatures; a keyword
without a default is one the user must give.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from recall.errors import RecallError
from recall.merge import kernels
from recall.models import ModelInfo
from recall.weights.sources import REQUIRED, WeightSource, get_source, keyword_defaults

Kernel = Callable[..., torch.Tensor]
KERNEL_INPUTS = ("fishers",)  # keyword-only kernel arguments that are inputs, not parameters


@dataclass(frozen=True)
class Param:
    """A kernel parameter: its type, the rule its values obey, and help for its `--flag`."""

    type: type
    check: Callable[[Any], bool]
    rule: str
    help: str


PARAMS: dict[str, Param] = {
    "density": Param(
        float,
        lambda v: 0 < v <= 1,
        "must be in (0, 1]",
        "fraction of each task vector kept (TIES: top by magnitude; DARE: at random)",
    ),
    "scale": Param(
        float,
        math.isfinite,
        "must be a finite number",
        "lambda: multiplies the merged task vector before it is added to the base",
    ),
    "seed": Param(
        int,
        lambda v: v >= 0,
        "must be >= 0",
        "random seed (recall: KMeans; DARE: each tensor's mask, drawn from the seed and the tensor name)",
    ),
    "normalize": Param(bool, lambda v: True, "", "TIES: divide by the summed weights of the agreeing models"),
    "floor": Param(
        float,
        lambda v: v > 0,
        "must be > 0",
        "fisher: least Fisher value of an entry, so entries no example moved are averaged",
    ),
    "chain": Param(
        bool,
        lambda v: True,
        "",
        "task vectors of a sequence, each model fine-tuned from the one before: each model minus the one "
        "before it (the first minus --base); default each minus --base",
    ),
    "energy": Param(
        float,
        lambda v: 0 < v < 1,
        "must be in (0, 1)",
        "opcm: share of the running merge's singular-value sum whose leading directions a new task vector "
        "is projected off as a block (the paper's alpha)",
    ),
    "common": Param(
        float,
        lambda v: 0 <= v <= 1,
        "must be in [0, 1]",
        "iso_cts: share of the summed task vectors' rank kept as the common subspace",
    ),
    "alpha": Param(float, math.isfinite, "must be a finite number", "lines: scale of the first block's task vector"),
    "beta": Param(
        float, math.isfinite, "must be a finite number", "lines: scale added by the last block (linear in depth)"
    ),
}


@dataclass(frozen=True)
class Method:
    name: str
    kernel: Kernel
    needs_base: bool = False
    weights: str = "given"  # its weight source, one of recall.weights.sources.SOURCES
    default_weight: float | None = None  # per-model weight when --weights is not given; None: 1/N
    params: Mapping[str, Any] = field(default_factory=dict)  # kernel keyword -> default (or REQUIRED)
    help: str = ""

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The kernel's parameters: `given` (None = not given) over the defaults, each checked.

        Fails on a parameter this method does not take, a required one missing, or a value out of range,
        with the flag named, before any weight is read.
        """
        given = {k: v for k, v in given.items() if v is not None}
        if extra := sorted(set(given) - set(self.params)):
            users = [m.name for m in METHODS.values() if extra[0] in m.params]
            raise RecallError(
                f"--{extra[0]} does not apply to --method {self.name}; "
                f"it is a parameter of {', '.join(users) or 'no method'}"
            )
        out = {}
        for name, default in self.params.items():
            value = given.get(name, default)
            spec = PARAMS[name]
            if value is REQUIRED:
                raise RecallError(f"--method {self.name} needs --{name}: the {spec.help}, {spec.rule}")
            try:
                value = spec.type(value)
            except (TypeError, ValueError):
                raise RecallError(f"--{name} must be a {spec.type.__name__}, got {value!r}") from None
            if not spec.check(value):
                raise RecallError(f"--{name} {spec.rule}, got {value}")
            out[name] = value
        return out

    @property
    def source(self) -> type[WeightSource]:
        return get_source(self.weights)

    @property
    def needs_fisher(self) -> bool:
        """The kernel also takes each model's diagonal Fisher (`fishers=`)."""
        return self.weights == "fisher"

    def kernel_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` less those the weight source reads."""
        return {k: v for k, v in params.items() if k not in self.source.reads}


METHODS: dict[str, Method] = {}


def register(
    name: str,
    *,
    needs_base: bool = False,
    weights: str = "given",
    default_weight: float | None = None,
    help: str = "",
) -> Callable[[Kernel], Kernel]:
    """Decorator adding a kernel to the registry as method `name`: its parameters are the weight source's
    and the kernel's keyword-only arguments, with their defaults (the declaration is checked at import)."""

    def add(kernel: Kernel) -> Kernel:
        params = {**get_source(weights).reads, **keyword_defaults(kernel, skip=KERNEL_INPUTS)}
        assert set(params) <= set(PARAMS), (name, weights, params)
        METHODS[name] = Method(name, kernel, needs_base, weights, default_weight, MappingProxyType(params), help)
        return kernel

    return add


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise RecallError(f"unknown merge method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def resolve_weights(method: Method, models: Sequence[ModelInfo], **evidence: Any) -> np.ndarray:
    """The merge weights (L+1 layer rows, one column per model) of `method` from its weight source's
    evidence (`given=`, `similarities=`, `losses=`, ..., `params=`; `recall.weights.sources`).
    `recall merge` and the pipeline both choose weights here."""
    return method.source.rows(method, models, **evidence)


def tensor_seed(seed: int, tensor_name: str) -> int:
    """A per-tensor seed from the user's seed and the tensor's name: random masks do not depend on order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{tensor_name}".encode()).digest()[:8], "little") >> 1


register("recall", weights="representations", help="RECALL: per-layer softmax of representation similarity")(
    kernels.weighted_sum
)
register("average", help="weighted average, one weight per model (default uniform)")(kernels.weighted_sum)
register(
    "lm_cocktail",
    weights="loss",
    help="LM-Cocktail: weights softmax(-loss/T) of each model's loss on a few task examples (--data)",
)(kernels.weighted_sum)
register(
    "task_arithmetic",
    needs_base=True,
    default_weight=1.0,
    help="task arithmetic: base + scale * sum_q w_q (theta_q - base); weights default 1",
)(kernels.task_arithmetic)
register(
    "ties",
    needs_base=True,
    default_weight=1.0,
    help="TIES: trim task vectors to --density by magnitude, elect signs, disjoint mean",
)(kernels.ties)
register(
    "dare_linear",
    needs_base=True,
    default_weight=1.0,
    help="DARE + task arithmetic: drop deltas with rate 1 - density, rescale by 1/density",
)(kernels.dare_linear)
register(
    "dare_ties",
    needs_base=True,
    default_weight=1.0,
    help="DARE + TIES sign election (unnormalized by default, as in mergekit)",
)(kernels.dare_ties)
register(
    "magmax",
    needs_base=True,
    default_weight=1.0,
    help="MagMax: per entry, the task vector of largest magnitude, added to base; weights default 1",
)(kernels.magmax)
register(
    "fisher",
    weights="fisher",
    help="Fisher merging: per-entry average weighted by each model's diagonal Fisher on its --data",
)(kernels.fisher)
register(
    "opcm",
    needs_base=True,
    default_weight=1.0,
    help="OPCM: models in order, each task vector projected off the running merge's singular subspace, "
    "the sum rescaled to the mean task-vector norm",
)(kernels.opcm)
register(
    "iso_c",
    needs_base=True,
    default_weight=1.0,
    help="Iso-C: per matrix, the summed task vectors with a flat spectrum (every singular value their mean)",
)(kernels.iso_c)
register(
    "iso_cts",
    needs_base=True,
    default_weight=1.0,
    help="Iso-CTS: Iso-C over the sum's common subspace plus each task's own top directions",
)(kernels.iso_cts)
register(
    "tsv_m",
    needs_base=True,
    default_weight=1.0,
    help="TSV-M: per matrix, each task vector's top 1/N singular components, decorrelated, summed",
)(kernels.tsv_m)
register(
    "lines",
    needs_base=True,
    weights="depth",
    default_weight=1.0,
    help="LiNeS: task arithmetic scaled by alpha at the first block, alpha + beta at the last, linear between",
)(kernels.lines)
