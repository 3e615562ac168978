"""RECALL's settings (`recall merge --method recall`'s options, params.yaml's `recall` section), kept apart
from the feature extraction in `recall.weights.representations` so that reading them imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from recall.settings import UNKNOWN, Settings, above, at_least, one_of, setting
from recall.weights.rows import CALIBRATIONS
from recall.weights.similarity import DEFAULT_METRIC, DEFAULT_SIGMA, METRICS, NORMALIZATIONS, NORMALIZE, SIGMA


@dataclass(frozen=True)
class RecallSettings(Settings):
    typical: int = setting(20, at_least(1))
    similarity: str = setting(DEFAULT_METRIC, one_of(*METRICS, message=UNKNOWN))
    # per layer, the median heuristic (it beat the paper's 1.0 at the sequential benchmark), or a number
    sigma: float | str = setting(DEFAULT_SIGMA, SIGMA)
    normalize: str = setting(NORMALIZATIONS[0], NORMALIZE)  # rescale the pooled states before the similarity
    temperature: float = setting(1.0, above(0))
    # the similarities before the softmax: as measured (the paper), or zscore (recall.weights.rows.calibrated)
    calibrate: str = setting("none", one_of(*CALIBRATIONS))
    batch_size: int = setting(8, at_least(1))
    max_length: int = setting(512, at_least(1))
    seed: int = 0
