"""RECALL's merge weights from representations (section 3, algorithm 1).

features of the reference model on its task data -> typical samples (KMeans per layer) -> features
of every model on the typical samples -> layer-wise similarity to the reference; the softmax per
layer (and, with several reference experts, each on its own task data, the mean of their rows) is
`recall.merge.methods.resolve_weights`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from recall.models import ModelInfo
from recall.weights.config import RecallSettings
from recall.weights.features import extract_features, load_features
from recall.weights.similarity import layer_sigmas, layer_similarity, similarity_range
from recall.weights.typical import select_typical

log = logging.getLogger(__name__)


def similarity_and_sigmas(
    models: list[ModelInfo],
    reference: int,
    data: Path,
    ref_features: np.ndarray,
    typical: list[int],
    settings: RecallSettings,
    workdir: Path,
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


def references_similarities(
    models: list[ModelInfo],
    references: list[tuple[int, Path]],
    settings: RecallSettings,
    workdir: Path | None = None,
) -> tuple[list[np.ndarray], dict]:
    """Per reference (model index, its task data): the similarity (L+1, N) of every model to it, and
    their provenance (settings; per reference: typical samples, similarities, per-layer sigmas).
    `recall.merge.methods.resolve_weights` turns them into weights."""
    settings.validate()
    sims, detail = [], []
    with tempfile.TemporaryDirectory(prefix="recall-features-") as tmp:
        work = Path(workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for index, data in references:
            sim, sigmas, typical = reference_similarity(models, index, Path(data), settings, work)
            sims.append(sim)
            detail.append(reference_record(models[index].spec, data, typical, sim, sigmas))
    return sims, {"settings": asdict(settings), "references": detail}


def reference_record(reference: str, data: Path, typical: list[int], sim: np.ndarray, sigmas: list) -> dict:
    """One reference model's similarities as merge_weights.json and the multi scenario's similarity.json
    record them: its data, typical samples, (L+1, N) similarities, per-layer sigmas and their range."""
    return {
        "reference": reference,
        "data": str(data),
        "typical": typical,
        "similarity": sim.tolist(),
        "sigmas": sigmas,
        "range": similarity_range(sim),
    }
