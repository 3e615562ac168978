"""Layer-wise similarity between the reference model's representations and every model's (appendix F).

Every metric compares, at one layer, the reference's representations `ref` (m, E) of the typical
samples with each model's `reps` (N, m, E), and returns N similarities, higher meaning closer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recall.errors import RecallError

Metric = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
METRICS: dict[str, Metric] = {}


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


def layer_similarity(ref: np.ndarray, reps: np.ndarray, name: str = "rbf", sigma: float = 1.0) -> np.ndarray:
    """Similarity matrix (n_layers, N) from ref (m, n_layers, E) and reps (N, m, n_layers, E)."""
    if name not in METRICS:
        raise RecallError(f"unknown similarity {name!r}; choose one of {', '.join(METRICS)}")
    if sigma <= 0:
        raise RecallError(f"sigma must be > 0, got {sigma}")
    ref = np.asarray(ref, dtype=np.float64)
    reps = np.asarray(reps, dtype=np.float64)
    return np.stack([METRICS[name](ref[:, i], reps[:, :, i], sigma) for i in range(ref.shape[1])])
