"""RECALL's merge weights from representations (section 3, algorithm 1).

features of the reference model on its task data -> typical samples (KMeans per layer) -> features
of every model on the typical samples -> layer-wise similarity to the reference -> softmax per layer.
With several reference experts (no single new model), each expert's rows are computed on its own
task data and the rows are averaged.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recall.errors import RecallError
from recall.weights.features import extract_features, load_features
from recall.models import ModelInfo
from recall.weights.similarity import METRICS, NORMALIZATIONS, check_sigma, layer_sigmas, layer_similarity
from recall.weights.typical import select_typical
from recall.weights.rows import softmax_weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecallSettings:
    typical: int = 20
    similarity: str = "rbf"
    sigma: float | str = 1.0  # the paper's bandwidth, or "median": per layer, the median heuristic
    normalize: str = "none"  # none | unit | sqrt_dim: rescale the pooled states before the similarity
    temperature: float = 1.0
    batch_size: int = 8
    max_length: int = 512
    seed: int = 0

    def validate(self) -> None:
        if self.similarity not in METRICS:
            raise RecallError(f"unknown similarity {self.similarity!r}; choose one of {', '.join(METRICS)}")
        for name in ("typical", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise RecallError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise RecallError(f"temperature must be > 0, got {self.temperature}")
        check_sigma(self.sigma)
        if self.normalize not in NORMALIZATIONS:
            raise RecallError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}")


def similarity_and_sigmas(
    models: list[ModelInfo], reference: int, data: Path, ref_features: np.ndarray, typical: list[int],
    settings: RecallSettings, workdir: Path,
) -> tuple[np.ndarray, list[float]]:
    """Similarity (L+1, N) of every model to models[reference] on the typical samples of `data`, and
    the bandwidth used at each of the L+1 layers (settings.sigma everywhere unless it is "median").

    `ref_features` are the reference's features of all of `data`; the others' are extracted here,
    for the typical samples only.
    """
    kw = dict(batch_size=settings.batch_size, max_length=settings.max_length)
    reps = []
    for q, info in enumerate(models):
        if q == reference:
            reps.append(np.asarray(ref_features[typical]))
        else:
            path = extract_features(info, data, workdir / f"ref{reference}-model{q}.npy", indices=typical, **kw)
            reps.append(np.asarray(load_features(path)))
    reps = np.stack(reps)
    sim = layer_similarity(reps[reference], reps, settings.similarity, settings.sigma, settings.normalize)
    return sim, layer_sigmas(reps, settings.sigma, settings.normalize).tolist()


def reference_similarity(
    models: list[ModelInfo], reference: int, data: Path, settings: RecallSettings, workdir: Path
) -> tuple[np.ndarray, list[float], list[int]]:
    """Features of the reference on all of `data` -> typical samples -> similarity of every model
    (and the per-layer sigmas, and the typical samples)."""
    ref_path = workdir / f"ref{reference}-all.npy"
    extract_features(models[reference], data, ref_path, batch_size=settings.batch_size, max_length=settings.max_length)
    ref_features = load_features(ref_path)
    typical = select_typical(ref_features, settings.typical, settings.seed)
    return *similarity_and_sigmas(models, reference, data, ref_features, typical, settings, workdir), typical


def recall_weights(
    models: list[ModelInfo],
    references: list[tuple[int, Path]],
    settings: RecallSettings,
    workdir: Path | None = None,
) -> tuple[np.ndarray, dict]:
    """Per-layer weights (L+1, N) and their provenance (settings; per reference: typical samples,
    similarities and the per-layer sigmas)."""
    settings.validate()
    rows, detail = [], []
    with tempfile.TemporaryDirectory(prefix="recall-features-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for index, data in references:
            sim, sigmas, typical = reference_similarity(models, index, Path(data), settings, work)
            rows.append(softmax_weights(sim, settings.temperature))
            detail.append({"reference": models[index].spec, "data": str(data), "typical": typical,
                           "similarity": sim.tolist(), "sigmas": sigmas})
    weights = np.mean(rows, axis=0)
    return weights, {"settings": asdict(settings), "references": detail}
