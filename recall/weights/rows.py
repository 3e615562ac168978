"""Per-layer merge weights from similarities (eq. 4)."""

from __future__ import annotations

import numpy as np

from recall.errors import RecallError


def softmax_weights(similarity: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (n_layers, N) similarities / temperature; each row sums to 1."""
    if temperature <= 0:
        raise RecallError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(similarity, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def uniform_weights(n_layers: int, model_weights: list[float]) -> np.ndarray:
    """The same per-model weights at every layer (methods with one weight per model)."""
    return np.tile(np.asarray(model_weights, dtype=np.float64), (n_layers, 1))
