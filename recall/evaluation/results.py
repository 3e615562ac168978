"""OpenCompass's per-dataset result files -> each task's metrics and per-example records, or an error
naming the task.

OpenCompass's exit status does not tell whether every dataset was scored, so each result file is
checked: present, free of an "error" entry, holding every metric expected of it and one detail per
test example. A task's metrics come from its datasets together: its own metrics (primary first) from
the scored dataset, then `nll`; its records merge the datasets' details example by example.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from recall.errors import RecallError
from recall.evaluation.config import DatasetSpec
from recall.tasks.base import Task

# The fields every examples/<task>.jsonl line starts with; task-specific ones (bleu_stats) follow.
RECORD_FIELDS = ("index", "score", "nll", "prediction", "reference")


def result_path(work_dir: Path, model_abbr: str, dataset: DatasetSpec) -> Path:
    return work_dir / "results" / model_abbr / f"{dataset.abbr}.json"


def prediction_path(work_dir: Path, model_abbr: str, dataset: DatasetSpec) -> Path:
    return work_dir / "predictions" / model_abbr / f"{dataset.abbr}.json"


def read_results(
    work_dir: Path, model_abbr: str, datasets: Sequence[DatasetSpec], log: Path, failure: str | None = None
) -> dict[str, dict]:
    """Every dataset's result, by abbr. `failure` is the crash message, if any, added to the error
    when results are missing."""
    missing = list(dict.fromkeys(d.task for d in datasets if not result_path(work_dir, model_abbr, d).is_file()))
    if missing:
        cause = f": {failure}" if failure else ""
        raise RecallError(f"OpenCompass produced no result for task(s) {', '.join(missing)}{cause}; see the log {log}")
    results = {}
    for dataset in datasets:
        path = result_path(work_dir, model_abbr, dataset)
        result = json.loads(path.read_text())
        if "error" in result:
            raise RecallError(
                f"OpenCompass could not score task {dataset.task}: {result['error']}; see {path} and {log}"
            )
        results[dataset.abbr] = result
    return results


def expected_metrics(task: Task, kind: str) -> tuple[str, ...]:
    return {"gen": task.metrics, "ppl": (*task.metrics, "nll"), "nll": ("nll",)}[kind]


def task_outcome(
    task: Task, datasets: Sequence[DatasetSpec], results: Mapping[str, dict], examples: int, where: str
) -> tuple[dict[str, float], list[dict]]:
    """(metrics in the task's order then `nll`, one record per example in test-file order) of one task
    from the results of its datasets. `where` names the files to look at in errors."""
    metrics: dict[str, float] = {}
    merged: list[dict] = [{} for _ in range(examples)]
    for dataset in datasets:
        result = results[dataset.abbr]
        absent = [m for m in expected_metrics(task, dataset.kind) if m not in result]
        if absent:
            raise RecallError(f"result of task {task.name} lacks metric(s) {', '.join(absent)}; {where}")
        metrics.update((m, float(result[m])) for m in expected_metrics(task, dataset.kind))
        details = example_details(result)
        if len(details) != examples:
            raise RecallError(
                f"result of task {task.name} ({dataset.kind}) has {len(details)} per-example details for "
                f"{examples} test examples; {where}"
            )
        for record, detail in zip(merged, details):
            record.update(detail)
    records = []
    for index, detail in enumerate(merged):
        absent = [f for f in RECORD_FIELDS[1:] if f not in detail]
        if absent:
            raise RecallError(f"per-example result of task {task.name} lacks {', '.join(absent)}; {where}")
        records.append(
            {
                "index": index,
                **{f: detail[f] for f in RECORD_FIELDS[1:]},
                **{k: v for k, v in detail.items() if k not in RECORD_FIELDS},
            }
        )
    return {m: metrics[m] for m in (*task.metrics, "nll")}, records


def example_details(result: Mapping) -> list[dict]:
    """An evaluator's `details` as OpenCompass writes them: one entry per example in test order, each
    field a list over the dataset's replicas (one here), beside the example's `example_abbr`."""
    details = result.get("details")
    if not isinstance(details, list):
        return []
    return [{k: v[0] for k, v in entry.items() if k != "example_abbr"} for entry in details]
