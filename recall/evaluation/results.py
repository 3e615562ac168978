"""OpenCompass's per-dataset result files -> `{task: {metric: score}}`, or an error naming the task.

OpenCompass's exit status does not tell whether every dataset was scored, so each result file is
checked: present, free of an "error" entry, and holding every metric the task declares.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from recall.errors import RecallError
from recall.evaluation.config import DatasetSpec


def result_path(work_dir: Path, model_abbr: str, dataset: DatasetSpec) -> Path:
    return work_dir / "results" / model_abbr / f"{dataset.abbr}.json"


def prediction_path(work_dir: Path, model_abbr: str, dataset: DatasetSpec) -> Path:
    return work_dir / "predictions" / model_abbr / f"{dataset.abbr}.json"


def read_metrics(
    work_dir: Path,
    model_abbr: str,
    datasets: Sequence[DatasetSpec],
    metrics: Mapping[str, Sequence[str]],
    log: Path,
    failure: str | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of every dataset, in the task's metric order (primary first).

    `metrics` maps each task to the metrics it must report; `failure` is the crash message, if any,
    added to the error when results are missing.
    """
    missing = [d.task for d in datasets if not result_path(work_dir, model_abbr, d).is_file()]
    if missing:
        cause = f": {failure}" if failure else ""
        raise RecallError(
            f"OpenCompass produced no result for task(s) {', '.join(missing)}{cause}; see the log {log}"
        )
    scores = {}
    for dataset in datasets:
        path = result_path(work_dir, model_abbr, dataset)
        result = json.loads(path.read_text())
        where = f"see {path} and {log}"
        if "error" in result:
            raise RecallError(f"OpenCompass could not score task {dataset.task}: {result['error']}; {where}")
        absent = [m for m in metrics[dataset.task] if m not in result]
        if absent:
            raise RecallError(f"result of task {dataset.task} lacks metric(s) {', '.join(absent)}; {where}")
        scores[dataset.task] = {m: float(result[m]) for m in metrics[dataset.task]}
    return scores
