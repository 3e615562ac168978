"""Layer-wise similarity between the reference model's representations and every model's (appendix F).

Every metric compares, at one layer, the reference's representations `ref` (m, E) of the typical
samples with each model's `reps` (N, m, E), and returns N similarities, higher meaning closer.

Kernel scale: rbf and mmd take a bandwidth sigma. The paper's sigma = 1 on raw mean-pooled hidden
states (norms in the tens) makes the RBF similarity of two different models ~0 beyond the first
layers, so the weights there are softmax([0, 1]) whatever the data. Two remedies, usable together:
sigma "median" (per layer, the median heuristic) and normalising the states before any metric.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recall.errors import RecallError
from recall.settings import Rule, one_of

Metric = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
METRICS: dict[str, Metric] = {}
MEDIAN = "median"  # the sigma that asks for the per-layer median heuristic
NORMALIZATIONS = ("none", "unit", "sqrt_dim")  # the first is the default
# The defaults of RECALL's similarity (`RecallSettings` and the functions here): the rbf kernel with
# the per-layer median heuristic (it beat the paper's sigma 1.0 at the sequential benchmark).
DEFAULT_METRIC = "rbf"
DEFAULT_SIGMA = MEDIAN
NORMALIZE = one_of(*NORMALIZATIONS)


def metric(name: str):
    def register(fn: Metric) -> Metric:
        METRICS[name] = fn
        return fn

    return register


@metric("rbf")
def rbf(ref, reps, sigma):
    """Eq. 1: mean over samples of exp(-||r_ref - r_q||^2 / (2 sigma^2)); 1 for identical representations."""
    sq = ((reps - ref) ** 2).sum(-1)
    return np.exp(-sq / (2 * sigma**2)).mean(-1)


@metric("cosine")
def cosine(ref, reps, sigma):
    """Eq. 7, averaged over samples."""
    num = (reps * ref).sum(-1)
    den = np.linalg.norm(reps, axis=-1) * np.linalg.norm(ref, axis=-1)
    return (num / np.maximum(den, 1e-12)).mean(-1)


@metric("euclidean")
def euclidean(ref, reps, sigma):
    """Eq. 8 turned into a similarity: 1 - mean distance / the largest mean distance over the models."""
    dist = np.linalg.norm(reps - ref, axis=-1).mean(-1)
    top = dist.max()
    return 1 - dist / top if top > 0 else np.ones_like(dist)


@metric("cka")
def cka(ref, reps, sigma):
    """Eq. 9, linear CKA on column-centred representations (Kornblith et al. 2019)."""
    if ref.shape[0] < 2:
        raise RecallError("cka needs at least 2 typical samples; raise --typical or use another --similarity")
    x = ref - ref.mean(0)
    out = []
    for rep in reps:
        y = rep - rep.mean(0)
        den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
        out.append(np.linalg.norm(x.T @ y) ** 2 / den if den > 0 else 1.0)
    return np.array(out)


@metric("mmd")
def mmd(ref, reps, sigma):
    """Eq. 10 with the RBF kernel of bandwidth sigma, as 1 - MMD^2 (1 for identical distributions)."""

    def k(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-sq / (2 * sigma**2))

    kxx = k(ref, ref).mean()
    return np.array([1 - (kxx + k(rep, rep).mean() - 2 * k(ref, rep).mean()) for rep in reps])


@metric("dot")
def dot(ref, reps, sigma):
    """Mean inner product (unnormalised: scale it with --temperature)."""
    return (reps * ref).sum(-1).mean(-1)


def valid_sigma(sigma: float | str) -> bool:
    """A bandwidth is a finite number > 0, or "median"."""
    number = isinstance(sigma, (int, float)) and not isinstance(sigma, bool)
    return sigma == MEDIAN or (number and 0 < sigma < np.inf)


SIGMA = Rule(valid_sigma, f"{{name}} must be > 0 or {MEDIAN!r} (the per-layer median heuristic), got {{value!r}}")


def normalize_states(x: np.ndarray, mode: str) -> np.ndarray:
    """Representations (..., E) rescaled: `unit` to L2 norm 1 (only directions count, as in cosine),
    `sqrt_dim` divided by sqrt(E) (distances comparable across hidden sizes), `none` unchanged."""
    NORMALIZE.check("normalize", mode)
    if mode == "unit":
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # a zero state stays zero
    if mode == "sqrt_dim":
        return x / np.sqrt(x.shape[-1])
    return x


def median_distance(points: np.ndarray) -> float:
    """The median heuristic (Gretton et al. 2012): the median Euclidean distance over the distinct pairs
    of `points` (n, E), self-pairs (always 0) left out.

    If half the pairs or more coincide (median 0), the median of the nonzero distances, so the kernel
    still sees the points that differ; if all points coincide, 1.0 (every kernel value is then 1
    whatever sigma is).
    """
    # One row at a time: exact (a Gram-matrix shortcut turns coincident points into rounding noise)
    # in O(nE) memory; n is at most models x typical samples.
    pairs = [np.linalg.norm(points[i + 1 :] - points[i], axis=-1) for i in range(len(points) - 1)]
    d = np.concatenate(pairs) if pairs else np.zeros(0)
    if d.size and (median := float(np.median(d))) > 0:
        return median
    positive = d[d > 0]
    return float(np.median(positive)) if positive.size else 1.0


def layer_sigmas(
    reps: np.ndarray, sigma: float | str = DEFAULT_SIGMA, normalize: str = NORMALIZATIONS[0]
) -> np.ndarray:
    """The bandwidth rbf and mmd use at each layer, from reps (N, m, n_layers, E): `sigma` itself, or
    with "median" the median distance at that layer over every model's (normalised) representations
    of the typical samples, pooled.

    Pooling all models (the reference is one of them in RECALL) is the two-sample median heuristic of
    MMD: the kernel compares states across models, so its scale must cover both the spread of the
    samples and the drift between models. The reference's states alone would ignore the drift (the
    saturation returns where models drift further than the samples spread); the reference-to-model
    distances the rbf averages would measure the drift with a yardstick made of that drift (with one
    other model, its similarity would be about the same however far it drifted).
    """
    SIGMA.check("sigma", sigma)
    reps = normalize_states(np.asarray(reps, dtype=np.float64), normalize)
    n_layers, width = reps.shape[2], reps.shape[3]
    if sigma != MEDIAN:
        return np.full(n_layers, float(sigma))
    return np.array([median_distance(reps[:, :, i].reshape(-1, width)) for i in range(n_layers)])


def layer_similarity(
    ref: np.ndarray,
    reps: np.ndarray,
    name: str = DEFAULT_METRIC,
    sigma: float | str = DEFAULT_SIGMA,
    normalize: str = NORMALIZATIONS[0],
) -> np.ndarray:
    """Similarity matrix (n_layers, N) from ref (m, n_layers, E) and reps (N, m, n_layers, E).

    Both are normalised first (`normalize`); each layer's bandwidth is `layer_sigmas(reps, sigma)`.
    """
    if name not in METRICS:
        raise RecallError(f"unknown similarity {name!r}; choose one of {', '.join(METRICS)}")
    ref = normalize_states(np.asarray(ref, dtype=np.float64), normalize)
    reps = normalize_states(np.asarray(reps, dtype=np.float64), normalize)
    sigmas = layer_sigmas(reps, sigma)
    return np.stack([METRICS[name](ref[:, i], reps[:, :, i], s) for i, s in enumerate(sigmas)])


def similarity_range(similarity: np.ndarray) -> dict[str, list[float]]:
    """Per layer, the lowest and highest similarity over the models of a (n_layers, N) matrix: a lowest
    near 0 deep in the network means the kernel saturated there."""
    s = np.asarray(similarity, dtype=np.float64)
    return {"min": s.min(axis=1).tolist(), "max": s.max(axis=1).tolist()}
