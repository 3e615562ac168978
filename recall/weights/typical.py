"""Typical samples: per layer, KMeans over the new model's representations; per centre, the nearest sample."""

from __future__ import annotations

import logging

import numpy as np

from recall.errors import RecallError

log = logging.getLogger(__name__)


def select_typical(features: np.ndarray, m: int = 20, seed: int = 0) -> list[int]:
    """Indices of the union over layers of the samples nearest to the m KMeans centres.

    `features` has shape (n_samples, n_layers, hidden). With m >= n_samples every sample is typical.
    """
    if m < 1:
        raise RecallError(f"the number of typical samples per layer must be >= 1, got {m}")
    n, n_layers, _ = features.shape
    if m >= n:
        log.info("typical samples: m=%d >= %d samples, so every sample is typical", m, n)
        return list(range(n))
    # scikit-learn (with SciPy, about a second to import) only here: every other stage process and
    # `recall params check` import this module through the pipeline and never cluster.
    from sklearn.cluster import KMeans
    from sklearn.metrics import pairwise_distances_argmin

    chosen: set[int] = set()
    for layer in range(n_layers):
        x = np.ascontiguousarray(features[:, layer, :], dtype=np.float64)
        centres = KMeans(n_clusters=m, n_init="auto", random_state=seed).fit(x).cluster_centers_
        chosen.update(pairwise_distances_argmin(centres, x).tolist())
    return sorted(chosen)
