"""Per-layer merge weights from similarities (eq. 4), their optional calibration, and their spread."""

from __future__ import annotations

import numpy as np

from recall.errors import RecallError

CALIBRATIONS = ("none", "zscore")
NEAR_UNIFORM = 0.05  # a softmax-weighted merge whose weights all lie this close to 1/N is nearly the average


def softmax_weights(similarity: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of (n_layers, N) similarities / temperature; each row sums to 1."""
    if temperature <= 0:
        raise RecallError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(similarity, dtype=np.float64) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def calibrated(similarity: np.ndarray, rule: str = "none") -> np.ndarray:
    """(n_layers, N) similarities as the softmax sees them. none: as measured (the paper's rule). zscore:
    each layer's similarities minus their mean over the models, divided by the root mean square of
    those differences over every layer and model, so the temperature acts on the differences in units
    of their own spread. One scale for the whole merge rather than one per layer: with two models a
    per-layer standardisation would leave only the sign of the difference (+-1 at every layer).
    """
    s = np.asarray(similarity, dtype=np.float64)
    if rule == "none":
        return s
    centred = s - s.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(centred**2))
    # Differences below a millionth of the similarities (float32 features) are rounding, not evidence.
    return centred / rms if rms > 1e-6 * np.abs(s).max() else np.zeros_like(s)


def weight_spread(weights: np.ndarray) -> dict:
    """Per layer group: the largest minus the smallest weight, and the entropy of the (normalised) row
    in nats (ln N for the uniform row, which is `uniform_entropy`)."""
    w = np.asarray(weights, dtype=np.float64)
    p = w / w.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
    return {
        "range": (w.max(axis=1) - w.min(axis=1)).tolist(),
        "entropy": entropy.tolist(),
        "uniform_entropy": float(np.log(w.shape[1])),
    }


def uniform_deviation(weights: np.ndarray) -> float:
    """The largest deviation of any weight of (n_layers, N) rows from 1/N (0: the plain average)."""
    w = np.asarray(weights, dtype=np.float64)
    return float(np.abs(w - 1.0 / w.shape[1]).max())


def near_uniform(weights: np.ndarray) -> float | None:
    """The largest deviation of any weight from 1/N, when every weight lies within NEAR_UNIFORM of it."""
    deviation = uniform_deviation(weights)
    return deviation if deviation <= NEAR_UNIFORM else None


def uniform_weights(n_layers: int, model_weights: list[float]) -> np.ndarray:
    """The same per-model weights at every layer (methods with one weight per model)."""
    return np.tile(np.asarray(model_weights, dtype=np.float64), (n_layers, 1))
